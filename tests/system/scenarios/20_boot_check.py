"""Boot, part 2 (after reboot): the wkdtab volume is unlocked and mounted; no failed units."""
# wkd-test: boot=2 timeout=180 disks=boot
import json
import subprocess
from pathlib import Path

from wkdtest import KEYRING_REF, Scenario, dm_table_with_keys, journal_entries, sha256_of

with Scenario() as t:
    state = json.loads(Path("/var/lib/wkdtest/boot.json").read_text())
    running = t.run("systemctl", "is-system-running", "--wait", check=False,
                    timeout=120).stdout.strip()
    failed = t.run("systemctl", "--failed", "--plain", "--no-legend").stdout.strip()
    t.check("systemctl is-system-running reports running", running == "running",
            f"{running}; failed: {failed}")
    t.check("systemctl --failed is empty", failed == "", failed)
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", state["mnt"]],
                            capture_output=True, text=True, check=False).stdout.strip()
    t.check(f"{state['mnt']} is mounted from /dev/mapper/{state['map']}",
            source == f"/dev/mapper/{state['map']}", f"source={source!r}")
    if source:
        t.check("file written before the reboot reads back",
                sha256_of(f"{state['mnt']}/hello.bin") == state["sha256"])
    key_field = (dm_table_with_keys(state["map"]).split() + [""] * 5)[4]
    t.check("boot-time mapping uses a keyring key reference",
            bool(KEYRING_REF.fullmatch(key_field)), key_field[:20])
    units = t.run("systemctl", "list-units", "--all", "--plain", "--no-legend",
                  f"*{state['map']}*").stdout
    t.check("a generated unit handled the volume", "wkd" in units, units)
    entries = journal_entries(WKD_VOLUME_UUID=state["uuid"])
    t.check("the boot-time unlock is in the journal with structured fields",
            any(e.get("WKD_RESULT") for e in entries), f"{len(entries)} entries")
