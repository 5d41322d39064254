"""Leaks: the volume key is in neither the journal, the bus capture nor the state files."""
# wkd-test: boot=1 timeout=300 disks=leak
import base64
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from wkdtest import SHARE, Scenario, ay, disk, luks_uuid

PASS = b"leak-test-recovery-passphrase"
CAPTURE = Path("/run/wkdtest/bus.pcap")


def forms(key: bytes) -> dict[str, bytes]:
    """Encodings a leak could take: raw, hex, base64 (std and url-safe) of the whole key
    and of each half (aes-xts keys are two AES keys; half a key is still a leak)."""
    out = {}
    for part, blob in (("key", key), ("half1", key[: len(key) // 2]),
                       ("half2", key[len(key) // 2:])):
        out[f"{part} raw"] = blob
        out[f"{part} hex"] = blob.hex().encode()
        out[f"{part} HEX"] = blob.hex().upper().encode()
        out[f"{part} base64"] = base64.b64encode(blob).rstrip(b"=")
        out[f"{part} base64url"] = base64.urlsafe_b64encode(blob).rstrip(b"=")
    return out


def hits(haystack: bytes, key: bytes) -> list[str]:
    return [name for name, needle in forms(key).items() if needle in haystack]


with Scenario() as t:
    dev = disk("leak")
    t.busctl("CreateKek", "sa{sv}", "sys-leak-kek", "0")
    # The passphrase in the message itself (ay, busctl's only way) is refused by default...
    refused = t.busctl("Format", "ssa{sv}", dev, "", "1", "recovery-passphrase", *ay(PASS),
                       check=False)
    t.check("busctl Format with recovery-passphrase (ay) is refused by default, naming the "
            "descriptor route", refused.returncode != 0
            and "recovery-passphrase-fd" in refused.stderr, refused.stderr[-400:])
    # ...so wkdctl passes it as a descriptor.
    secret = Path("/run/wkdtest/recovery-passphrase")
    secret.write_bytes(PASS)
    secret.chmod(0o600)
    t.run("wkdctl", "format", dev, "--recovery-passphrase-file", str(secret))
    secret.unlink()
    uuid = luks_uuid(dev)
    t.busctl("Unlock", "sa{sv}", dev, "1", "name", "s", "wkdleak")
    t.busctl("Rewrap", "ssa{sv}", dev, "sys-leak-kek", "0")
    t.busctl("Lock", "sa{sv}", dev, "0")
    t.busctl("Unlock", "sa{sv}", dev, "1", "verify-only", "b", "true")
    t.run("wkdctl", "status", check=False)
    t.run("wkdctl", "--json", "status", check=False)

    dump = t.run("cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode",
                 "--key-file", "-", dev, input=PASS, timeout=120).stdout
    hexkey = "".join(re.findall(r"\b[0-9a-f]{2}\b", dump.split("MK dump:", 1)[-1]))
    key = bytes.fromhex(hexkey)
    t.require("the recovery keyslot yields the volume key (64 bytes)", len(key) == 64,
              f"{len(key)} bytes")
    proc = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--volume-key-file",
                           "/dev/stdin", dev], input=key, capture_output=True, check=False)
    t.check("that key is really the volume key (cryptsetup verifies it)",
            proc.returncode == 0, proc.stderr.decode(errors="replace"))

    pid = int(Path("/run/wkdtest/capture.pid").read_text())
    os.kill(pid, signal.SIGINT)
    t.wait_for("busctl capture exit", lambda: not Path(f"/proc/{pid}").exists(), 10)
    pcap = CAPTURE.read_bytes()
    shutil.copy(CAPTURE, SHARE / "results" / "bus-boot1.pcap")
    t.check("bus capture is real (has org.wkd1 traffic about this volume)",
            b"org.wkd1.Manager" in pcap and uuid.encode() in pcap, f"{len(pcap)} bytes")
    found = hits(pcap, key)
    t.check("volume key absent from the bus capture", not found, ", ".join(found))

    time.sleep(1)  # let journald take the last entries
    journal = subprocess.run(["journalctl", "-o", "export", "--no-pager"],
                             capture_output=True, check=False).stdout
    t.check("journal export is real (mentions this volume)", uuid.encode() in journal,
            f"{len(journal)} bytes")
    found = hits(journal, key)
    t.check("volume key absent from the journal (all fields, all entries)", not found,
            ", ".join(found))

    state_hits = []
    for root in ("/var/lib/wkd", "/run/wkd", "/etc/wkd"):
        for path in Path(root).rglob("*") if Path(root).exists() else []:
            if path.is_file():
                state_hits += [f"{path}: {h}" for h in hits(path.read_bytes(), key)]
    t.check("volume key absent from wkd's state and config files", not state_hits,
            "; ".join(state_hits))
