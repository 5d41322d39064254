"""Benchmark (opt-in, --bench): wkd Unlock vs systemd-cryptsetup attach (PKCS#11), real dm-crypt."""
# wkd-test: boot=1 timeout=1200 disks=bpeer,bwkd,bpass bench=1
# Skipped by default (CI does not pay for it); run it with
#   python3 -m tests.system.run --bench --only bench
# The measurement itself is bench/vm_bench.py (the runner copies bench/ into the share); its
# samples and summaries go into this scenario's result file under "bench", which
#   .venv/bin/python -m bench.run --vm-json tests/system/work/latest/summary.json
# turns into table rows with ratios (docs/performance.md).
import json
import os
import subprocess
import sys

from wkdtest import SHARE, Scenario, disk

sys.path.insert(0, str(SHARE))
from bench.vm_bench import SUBJECTS, measure

RUNS = int(os.environ.get("WKD_BENCH_RUNS", "10"))


class BenchScenario(Scenario):
    """A Scenario whose result file also carries the measurement (key "bench")."""

    def __init__(self) -> None:
        self.bench: dict = {}
        super().__init__()

    def _save(self) -> None:
        super()._save()
        if self.bench:
            data = json.loads(self.result_path.read_text())
            data["bench"] = self.bench
            tmp = self.result_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.result_path)


with BenchScenario() as t:
    # Run alone (--only bench), 00_install has not run: install the package under test here.
    if subprocess.run(["dpkg-query", "-W", "wkd"], capture_output=True).returncode != 0:
        proc = t.run("dpkg", "-i", str(SHARE / "wkd.deb"), check=False, timeout=170)
        t.require("wkd .deb installed", proc.returncode == 0, proc.stderr[-1500:])
    for tool in ("systemd-cryptenroll", "pkcs11-tool", "openssl", "softhsm2-util", "wkd"):
        t.require(f"{tool} is installed", subprocess.run(["which", tool],
                  capture_output=True).returncode == 0)
    disks = {"peer": disk("bpeer"), "wkd": disk("bwkd"), "pass": disk("bpass")}
    t.bench = measure(disks, RUNS, t.log)
    t.check(f"{RUNS} rounds measured for every subject",
            all(len(t.bench["samples_s"][k]) >= RUNS for k in SUBJECTS if k != "close"),
            json.dumps({k: len(v) for k, v in t.bench["samples_s"].items()}))
    t.check("the peer volume has only the systemd-pkcs11 token's keyslot",
            t.bench["tokens"]["peer"] == ["systemd-pkcs11"]
            and list(t.bench["keyslots"]["peer"]) == ["1"], json.dumps(t.bench["keyslots"]))
    t.check("the passphrase volume has an argon2id and a pbkdf2-1000 keyslot",
            t.bench["keyslots"]["pass"]["0"]["pbkdf"] == "argon2id"
            and t.bench["keyslots"]["pass"]["1"]["iterations"] == 1000,
            json.dumps(t.bench["keyslots"]["pass"]))
    summary = t.bench["summary"]
    t.check("medians and ratios computed",
            all(k in summary for k in ("peer_attach", "wkd_unlock_busctl", "wkd_attach")),
            json.dumps({k: round(v["median"], 4) for k, v in summary.items()}))
