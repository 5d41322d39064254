"""Unlock with real dm-crypt activation: wkd vs systemd-cryptsetup (PKCS#11) vs cryptsetup.

Runs only where device-mapper and systemd exist: inside the system-test VM (the host kernel has
no device-mapper). Two faces:

* guest: :func:`measure` (standard library + bench.stats only, so the VM needs nothing from
  the repository but bench/) formats three spare disks and times interleaved rounds. The
  system-test scenario ``tests/system/scenarios/30_bench_unlock.py`` calls it; by hand, as root
  in a VM with wkd installed and a checkout of bench/ on PYTHONPATH::

      python3 -m bench.vm_bench DISK_PEER DISK_WKD DISK_PASS [--runs N] > vm-unlock.json

* host: :func:`vm_rows` turns that JSON (or the scenario's result file, or the tier's
  summary.json) into table rows with ratios, for ``python -m bench.run --vm-json FILE``.

Subjects, each timed around one process (or one D-Bus call) that leaves the volume active:

* peer: ``systemd-cryptsetup attach NAME DEV none pkcs11-uri=auto,headless=true`` with ``$PIN``
  in the environment. The disk was enrolled with ``systemd-cryptenroll
  --pkcs11-token-uri=pkcs11:token=<label>`` against a SoftHSM2 token holding an RSA key and
  certificate; its passphrase keyslot is then removed so attach must go through the token.
  ``auto`` makes systemd-cryptsetup use the URI of the ``systemd-pkcs11`` LUKS2 token;
  ``headless=true`` forbids asking, and systemd-cryptsetup 252 then takes the PIN from
  ``$PIN`` (its message: "PIN querying disabled via 'headless' option. Use the '$PIN'
  environment variable."). Detach: ``systemd-cryptsetup detach NAME``.
* wkd Unlock over the system bus, as a ``busctl call`` process and as a call from a connected
  dbus-fast client (the package's vendored copy), each followed by Lock; and the boot path
  without D-Bus, ``wkd attach NAME --wkdtab FILE`` / ``wkd detach NAME`` (the daemon is
  stopped meanwhile, as at boot, so two processes never share the embedded token).
* reference: ``cryptsetup open --key-file`` on a passphrase keyslot with the defaults
  (argon2id, benchmarked at luksFormat time to ~2 s) and on one with PBKDF2 at 1000 iterations
  (tool overhead without a PBKDF); ``cryptsetup close``.

One round runs every subject once, back to back, so a slow stretch of the emulated VM hits all
of them alike; ratios are medians of per-round ratios (bench/stats.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.stats import Row, speedup, summarize

VENDOR = "/usr/lib/wkd/vendor"  # the wkd package's vendored dbus-fast
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
PEER_LABEL = "bench-peer"
PEER_PIN = "123456"  # a throw-away SoftHSM2 token made for this benchmark only
NAMES = {"peer": "bench-peer", "wkd": "bench-wkd", "pass": "bench-pass"}

# key -> (table subject, note); the first is the peer every wkd row is compared with.
SUBJECTS: dict[str, tuple[str, str]] = {
    "peer_attach": ("systemd-cryptsetup attach (PKCS#11, SoftHSM2)",
                    "RSA-decrypts the keyslot secret in the token, PBKDF2-1000 keyslot"),
    "wkd_unlock_busctl": ("wkd Unlock, busctl process (activates)",
                          "process-for-process with systemd-cryptsetup"),
    "wkd_unlock_call": ("wkd Unlock, D-Bus call (activates)", "connected client"),
    "wkd_attach": ("wkd attach (boot path, no D-Bus)", "one-shot process, opens the token"),
    "open_argon2id": ("cryptsetup open, argon2id keyslot (defaults)", "reference"),
    "open_pbkdf2": ("cryptsetup open, pbkdf2-1000 keyslot", "reference: no PBKDF cost"),
    "peer_detach": ("systemd-cryptsetup detach", ""),
    "wkd_lock_busctl": ("wkd Lock, busctl process", ""),
    "wkd_lock_call": ("wkd Lock, D-Bus call", ""),
    "wkd_detach": ("wkd detach (no D-Bus)", ""),
    "close": ("cryptsetup close", ""),
}
UNLOCKS = ("wkd_unlock_busctl", "wkd_unlock_call", "wkd_attach")
REFERENCES = ("open_argon2id", "open_pbkdf2")


class VmBenchError(Exception):
    pass


# --- guest side -----------------------------------------------------------------------------
def _run(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 300
         ) -> float:
    """Run one command, return its wall time; a failure is an error (a benchmark of a
    failing command measures nothing)."""
    t0 = time.perf_counter()
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise VmBenchError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr[-800:]}")
    return elapsed


def _busctl(method: str, signature: str, *args: str) -> list[str]:
    return ["busctl", "--system", "--timeout=120", "call", "org.wkd1", "/org/wkd1",
            "org.wkd1.Manager", method, signature, *args]


def _systemd_cryptsetup() -> str:
    for path in ("/lib/systemd/systemd-cryptsetup", "/usr/lib/systemd/systemd-cryptsetup"):
        if os.access(path, os.X_OK):
            return path
    raise VmBenchError("systemd-cryptsetup not found")


def _prepare_peer(work: Path, dev: str, env: dict[str, str]) -> None:
    """A SoftHSM2 token with an RSA key + certificate, and `dev` enrolled to it."""
    (work / "tokens").mkdir()
    Path(env["SOFTHSM2_CONF"]).write_text(
        f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\n")
    _run(["softhsm2-util", "--init-token", "--free", "--label", PEER_LABEL, "--pin", PEER_PIN,
          "--so-pin", "12345678"], env=env)
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=wkd-bench",
          "-days", "2", "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")])
    _run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", str(work / "key.pem"),
          "-outform", "DER", "-out", str(work / "key.der")])
    _run(["openssl", "x509", "-in", str(work / "cert.pem"), "-outform", "DER",
          "-out", str(work / "cert.der")])
    p11 = ["pkcs11-tool", "--module", SOFTHSM, "--token-label", PEER_LABEL, "--login",
           "--pin", PEER_PIN]
    _run([*p11, "--write-object", str(work / "key.der"), "--type", "privkey", "--id", "01",
          "--label", "bench", "--usage-decrypt"], env=env)
    _run([*p11, "--write-object", str(work / "cert.der"), "--type", "cert", "--id", "01",
          "--label", "bench"], env=env)
    # systemd reaches PKCS#11 modules through p11-kit's registry; keep OpenSC's module (only
    # installed for pkcs11-tool) out of the peer's way, so it loads SoftHSM2 alone, as on a
    # machine set up just for it. p11-kit: a same-named file in /etc/pkcs11/modules overrides.
    if Path("/usr/share/p11-kit/modules/opensc-pkcs11.module").exists():
        Path("/etc/pkcs11/modules").mkdir(parents=True, exist_ok=True)
        Path("/etc/pkcs11/modules/opensc-pkcs11.module").write_text(
            "module: opensc-pkcs11.so\nenable-in: pkcs11-tool\n")
    # The passphrase has no newline: systemd-cryptenroll gets it through $PASSWORD, which
    # must equal the key file's bytes exactly.
    passphrase = os.urandom(24).hex()
    (work / "peer.pass").write_text(passphrase)
    _run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
          "--pbkdf-force-iterations", "1000", "--key-file", str(work / "peer.pass"), dev])
    _run(["systemd-cryptenroll", f"--pkcs11-token-uri=pkcs11:token={PEER_LABEL}", dev],
         env={**env, "PIN": PEER_PIN, "PASSWORD": passphrase})
    # Only the token's keyslot stays: attach must go through the token. (With --key-file,
    # luksKillSlot wants a passphrase of a slot that stays; --batch-mode needs none.)
    _run(["cryptsetup", "luksKillSlot", "--batch-mode", dev, "0"])


def _prepare_pass(work: Path, dev: str) -> None:
    """Keyslot 0 with cryptsetup's defaults (argon2id), keyslot 1 PBKDF2-1000, one key file."""
    (work / "pass.key").write_bytes(os.urandom(64))
    key = str(work / "pass.key")
    _run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--key-file", key,
          dev], timeout=600)
    _run(["cryptsetup", "luksAddKey", "--batch-mode", "--key-file", key, "--pbkdf", "pbkdf2",
          "--pbkdf-force-iterations", "1000", dev, key], timeout=600)


def _luks_json(dev: str) -> dict[str, Any]:
    out = subprocess.run(["cryptsetup", "luksDump", "--dump-json-metadata", dev],
                         capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


def _use_vendored_dbus_fast() -> None:
    # In the VM, dbus-fast exists only as the wkd package's vendored copy; imported lazily so
    # the host side (vm_rows) needs none of this.
    if VENDOR not in sys.path and os.path.isdir(VENDOR):
        sys.path.insert(0, VENDOR)


async def _connect() -> Any:
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus
    return await MessageBus(bus_type=BusType.SYSTEM).connect()


async def _call(bus: Any, member: str, signature: str, body: list[Any]) -> float:
    from dbus_fast import Message, MessageType
    t0 = time.perf_counter()
    reply = await bus.call(Message(destination="org.wkd1", path="/org/wkd1",
                                   interface="org.wkd1.Manager", member=member,
                                   signature=signature, body=body))
    elapsed = time.perf_counter() - t0
    if reply.message_type == MessageType.ERROR:
        raise VmBenchError(f"{member}: {reply.error_name} {reply.body}")
    return elapsed


async def _measure(disks: dict[str, str], runs: int, log: Callable[[str], None]
                   ) -> dict[str, Any]:
    _use_vendored_dbus_fast()
    from dbus_fast import Variant
    work = Path(tempfile.mkdtemp(prefix="wkd-vm-bench.", dir="/run"))
    env = {**os.environ, "SOFTHSM2_CONF": str(work / "softhsm2.conf")}
    scs = _systemd_cryptsetup()
    samples: dict[str, list[float]] = {k: [] for k in SUBJECTS}
    try:
        subprocess.run(["modprobe", "dm_crypt"], check=False)
        log("preparing the peer's SoftHSM2 token and systemd-cryptenroll volume")
        _prepare_peer(work, disks["peer"], env)
        log("preparing the passphrase volume (argon2id defaults + pbkdf2-1000 keyslots)")
        _prepare_pass(work, disks["pass"])
        log("formatting wkd's volume over the system bus")
        _run(["systemctl", "start", "wkd.service"])
        _run(_busctl("Format", "ssa{sv}", disks["wkd"], "", "1", "force", "b", "true"))
        wkdtab = work / "wkdtab"
        wkdtab.write_text(f"{NAMES['wkd']} {disks['wkd']}\n")
        layout = {
            "peer": _luks_json(disks["peer"]), "pass": _luks_json(disks["pass"]),
            "wkd": _luks_json(disks["wkd"]),
        }
        bus = await _connect()
        peer_env = {**env, "PIN": PEER_PIN}
        unlock_opts = {"name": Variant("s", NAMES["wkd"])}
        key = str(work / "pass.key")
        for i in range(runs):
            s = samples
            s["peer_attach"].append(_run(
                [scs, "attach", NAMES["peer"], disks["peer"], "none",
                 "pkcs11-uri=auto,headless=true"], env=peer_env))
            s["peer_detach"].append(_run([scs, "detach", NAMES["peer"]]))
            s["wkd_unlock_busctl"].append(_run(_busctl(
                "Unlock", "sa{sv}", disks["wkd"], "1", "name", "s", NAMES["wkd"])))
            s["wkd_lock_busctl"].append(_run(_busctl("Lock", "sa{sv}", disks["wkd"], "0")))
            s["wkd_unlock_call"].append(
                await _call(bus, "Unlock", "sa{sv}", [disks["wkd"], unlock_opts]))
            s["wkd_lock_call"].append(await _call(bus, "Lock", "sa{sv}", [disks["wkd"], {}]))
            for slot, subject in (("0", "open_argon2id"), ("1", "open_pbkdf2")):
                s[subject].append(_run(["cryptsetup", "open", "--key-file", key, "--key-slot",
                                        slot, disks["pass"], NAMES["pass"]]))
                s["close"].append(_run(["cryptsetup", "close", NAMES["pass"]]))
            # The boot path: the daemon is not running at boot, and it must not share the
            # embedded token with a second process.
            _run(["systemctl", "stop", "wkd.service"])
            s["wkd_attach"].append(_run(["wkd", "attach", NAMES["wkd"], "--wkdtab",
                                         str(wkdtab)]))
            s["wkd_detach"].append(_run(["wkd", "detach", NAMES["wkd"]]))
            _run(["systemctl", "start", "wkd.service"])
            log(f"round {i + 1}/{runs}: " + ", ".join(
                f"{k} {v[-1] * 1000:.0f}ms" for k, v in s.items()
                if k in ("peer_attach", *UNLOCKS, *REFERENCES)))
        bus.disconnect()
    finally:
        for argv in ([scs, "detach", NAMES["peer"]], ["cryptsetup", "close", NAMES["pass"]],
                     ["wkd", "detach", NAMES["wkd"]]):
            subprocess.run(argv, capture_output=True, check=False)
        subprocess.run(["systemctl", "start", "wkd.service"], capture_output=True,
                       check=False)
        shutil.rmtree(work, ignore_errors=True)
    return {"runs": runs, "samples_s": samples, "summary": summaries(samples),
            "kernel": platform.release(), "cpus": os.cpu_count(),
            "keyslots": {name: {k: {"pbkdf": v.get("kdf", {}).get("type"),
                                    "iterations": v.get("kdf", {}).get("iterations"),
                                    "memory_kb": v.get("kdf", {}).get("memory")}
                                for k, v in meta.get("keyslots", {}).items()}
                         for name, meta in layout.items()},
            "tokens": {name: sorted(t.get("type", "?") for t in meta.get("tokens", {}).values())
                       for name, meta in layout.items()}}


def measure(disks: dict[str, str], runs: int = 10,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Format the disks {"peer", "wkd", "pass"} (destroys them) and time `runs` rounds."""
    return asyncio.run(_measure(disks, runs, log))


def summaries(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median, quartiles, min, max per subject, and each unlock's ratio to the peer."""
    out: dict[str, dict[str, float]] = {}
    for key, xs in samples.items():
        if not xs:
            continue
        s = summarize(xs)
        out[key] = {"n": s.n, "median": s.median, "q1": s.q1, "q3": s.q3,
                    "min": s.minimum, "max": s.maximum}
        if key in (*UNLOCKS, *REFERENCES) and samples.get("peer_attach"):
            out[key]["speedup_vs_peer"] = speedup(xs, samples["peer_attach"])
    return out


# --- host side ------------------------------------------------------------------------------
def _find_bench(data: dict[str, Any]) -> dict[str, Any]:
    """The measurement in any of the shapes we write: measure()'s dict, the scenario's result
    (key "bench"), or the tier's summary.json (a "results" list holding that result)."""
    if "samples_s" in data:
        return data
    if isinstance(data.get("bench"), dict):
        return _find_bench(data["bench"])
    for result in data.get("results", []):
        if isinstance(result, dict) and isinstance(result.get("bench"), dict):
            return _find_bench(result["bench"])
    raise VmBenchError("no VM unlock measurement in this JSON (expected bench/vm_bench.py "
                       "output, the 30_bench_unlock result, or a tests/system summary.json)")


def vm_rows(data: dict[str, Any]) -> list[Row]:
    """Table rows: each wkd unlock and the references with their ratio to the peer, the peer,
    then the lock/detach times. Accepts the old bench/vm_unlock.sh shape too."""
    if "systemd_cryptsetup_attach_s" in data:  # the first script's output
        data = {"samples_s": {"peer_attach": data["systemd_cryptsetup_attach_s"],
                              "wkd_unlock_busctl": data.get("wkd_unlock_dbus_s", []),
                              "wkd_attach": data.get("wkd_attach_s", [])},
                "kernel": data.get("kernel")}
    bench = _find_bench(data)
    samples: dict[str, list[float]] = bench["samples_s"]
    peer_samples = tuple(samples["peer_attach"])
    peer_subject = SUBJECTS["peer_attach"][0]
    rows = []
    for key in (*UNLOCKS, *REFERENCES, "peer_attach", "wkd_lock_busctl", "wkd_lock_call",
                "wkd_detach", "peer_detach", "close"):
        if not samples.get(key):
            continue
        subject, note = SUBJECTS[key]
        if key == "peer_attach":
            note = f"{note}; VM kernel {bench.get('kernel', '?')}, TCG"
        ratios = ({peer_subject: speedup(samples[key], peer_samples)}
                  if key in (*UNLOCKS, *REFERENCES) else {})
        rows.append(Row("vm-unlock", subject, "s", tuple(samples[key]), ratios=ratios,
                        note=note))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.vm_bench", description=__doc__
                                .splitlines()[0])
    p.add_argument("peer_disk")
    p.add_argument("wkd_disk")
    p.add_argument("pass_disk")
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("vm_bench: run as root, inside the VM", file=sys.stderr)
        return 2
    disks = {"peer": args.peer_disk, "wkd": args.wkd_disk, "pass": args.pass_disk}
    result = measure(disks, args.runs, lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
