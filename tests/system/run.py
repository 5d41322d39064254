"""Run the system-test tier: build the .deb, boot the guest, run scenarios, summarize.

    python3 -m tests.system.run [--deb FILE] [--only NAME ...] [--json FILE] [--bench]

Exit status: 0 all scenarios passed, 1 any failed, 2 the tier could not run (missing
tools, image or package build failure).  See docs/system-tests.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.system.image import ensure_image
from tests.system.vm import Disk, Vm

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORK = HERE / "work"
SCENARIOS = HERE / "scenarios"
DISK_MB = 64
TOOLS = ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mke2fs", "dpkg-buildpackage")
# Measured on 2 TCG cores: qemu start -> runner 25-56 s.  Twice the worst case, as the
# environment notes advise; poweroff with --force takes ~1 s, journal export a few.
BOOT_TIMEOUT = 120.0
SHUTDOWN_TIMEOUT = 60.0
HEADER = re.compile(r"^#\s*wkd-test:\s*(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    file: Path
    boot: int
    timeout: float
    disks: tuple[str, ...]
    summary: str
    bench: bool = False  # header bench=1: a benchmark, run only with --bench


def discover(include_bench: bool = False) -> list[ScenarioSpec]:
    """Scenarios are tests/system/scenarios/NN_name.py with a header line
    ``# wkd-test: boot=1 timeout=120 disks=a,b`` and a docstring's first line as summary.
    Benchmarks (``bench=1`` in the header) are left out unless include_bench."""
    specs = []
    for path in sorted(SCENARIOS.glob("[0-9][0-9]_*.py")):
        text = path.read_text()
        match = HEADER.search(text)
        fields = dict(kv.split("=", 1) for kv in match.group(1).split()) if match else {}
        doc = re.search(r'^"""(.*?)(?:""")?$', text, re.MULTILINE)
        specs.append(ScenarioSpec(
            name=path.stem, file=path, boot=int(fields.get("boot", "1")),
            timeout=float(fields.get("timeout", "120")),
            disks=tuple(d for d in fields.get("disks", "").split(",") if d),
            summary=doc.group(1).strip() if doc else "",
            bench=fields.get("bench", "0") == "1"))
    return [s for s in specs if include_bench or not s.bench]


def log(msg: str) -> None:
    print(f"[system-tests] {msg}", flush=True)


def build_deb() -> Path:
    out = HERE / "cache" / "deb"
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    proc = subprocess.run([str(REPO / "packaging" / "build-deb.sh"), str(out)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"packaging/build-deb.sh failed:\n{proc.stderr[-3000:]}")
    deb = Path(proc.stdout.strip().splitlines()[-1])
    log(f"built {deb.name} in {time.monotonic() - started:.0f}s")
    return deb


def prepare_share(rundir: Path, deb: Path) -> Path:
    share = rundir / "share"
    share.mkdir(parents=True)
    shutil.copytree(HERE / "guest", share / "guest",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(SCENARIOS, share / "scenarios",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(deb, share / "wkd.deb")
    # The benchmark scenarios import bench.vm_bench and bench.stats (standard library only).
    (share / "bench").mkdir()
    for name in ("__init__.py", "stats.py", "vm_bench.py"):
        shutil.copy(REPO / "bench" / name, share / "bench" / name)
    (share / "results").mkdir()
    (share / "requests").mkdir()
    return share


def run_boot(vm: Vm, boot: int, specs: list[ScenarioSpec], install: bool) -> dict[str, float]:
    """One boot: write the plan, start QEMU, answer guest requests until it powers off."""
    share = vm.share
    plan = {"boot": boot, "install": install,
            "scenarios": [{"name": s.name, "file": f"scenarios/{s.file.name}",
                           "timeout": s.timeout} for s in specs]}
    (share / "plan.json").write_text(json.dumps(plan, indent=1))
    started_marker = share / "results" / f"started-boot{boot}"
    budget = BOOT_TIMEOUT + sum(s.timeout for s in specs) + SHUTDOWN_TIMEOUT
    log(f"boot {boot}: starting QEMU for {len(specs)} scenario(s) "
        f"(boot timeout {BOOT_TIMEOUT:.0f}s, total budget {budget:.0f}s)")
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    vm.start(boot)
    try:
        while vm.running():
            now = time.monotonic() - t0
            if "boot" not in timings and started_marker.exists():
                timings["boot"] = now
                log(f"boot {boot}: guest runner started after {now:.0f}s")
            if "boot" not in timings and now > BOOT_TIMEOUT:
                log(f"boot {boot}: guest did not start the runner within {BOOT_TIMEOUT:.0f}s")
                break
            if now > budget:
                log(f"boot {boot}: over the {budget:.0f}s budget, killing QEMU")
                break
            vm.serve_requests()
            time.sleep(0.2)
    finally:
        vm.kill()
        vm.close()
    timings["total"] = time.monotonic() - t0
    log(f"boot {boot}: QEMU exited after {timings['total']:.0f}s")
    return timings


def collect(share: Path, boot: int, specs: list[ScenarioSpec], console: Path) -> list[dict]:
    results = []
    for spec in specs:
        path = share / "results" / f"boot{boot}-{spec.name}.json"
        try:
            result = json.loads(path.read_text())
            # A result file without "seconds" was written by the scenario, not finalized
            # by the runner: the VM died or was killed while the scenario ran.
            if "seconds" not in result:
                result["checks"].append({"name": "runner finalized the result", "ok": False,
                                         "detail": "VM stopped during the scenario"})
                result["ok"] = False
        except (OSError, ValueError):
            tail = console.read_text(errors="replace")[-1500:] if console.exists() else ""
            result = {"name": spec.name, "ok": False, "checks": [
                {"name": "scenario ran", "ok": False,
                 "detail": f"no result (VM did not reach or finish it); console tail:\n{tail}"}]}
        result.setdefault("seconds", None)
        result["boot"] = boot
        result["summary"] = spec.summary
        results.append(result)
    return results


def print_summary(results: list[dict], timings: dict[str, object], rundir: Path) -> None:
    width = max(len(r["name"]) for r in results)
    print("\n==== wkd system tests " + "=" * 50)
    for r in results:
        secs = f"{r['seconds']:6.1f}s" if r.get("seconds") is not None else "     - "
        status = "PASS" if r["ok"] else "FAIL"
        passed = sum(c["ok"] for c in r["checks"])
        print(f"{status}  boot{r['boot']}  {r['name']:<{width}}  {secs}  "
              f"{passed}/{len(r['checks'])} checks  {r.get('summary', '')}")
        for c in r["checks"]:
            if not c["ok"]:
                detail = c.get("detail", "").strip().replace("\n", "\n          ")
                print(f"      x {c['name']}\n          {detail[:1500]}")
    print("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()
                                  if isinstance(v, float)))
    print(f"artifacts (journal, console, bus capture, per-scenario output): {rundir}")
    npass = sum(r["ok"] for r in results)
    print(f"{npass} passed, {len(results) - npass} failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb", type=Path, help="use this .deb instead of building one")
    parser.add_argument("--only", nargs="*", default=[],
                        help="run only scenarios whose name contains one of these")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--bench", action="store_true",
                        help="also run benchmark scenarios (header bench=1; skipped by "
                             "default), e.g. --bench --only bench")
    args = parser.parse_args(argv)

    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing or os.geteuid() != 0:
        log(f"cannot run: missing tools {missing} (apt-get install qemu-system-x86 qemu-utils "
            "mmdebstrap e2fsprogs debhelper dh-python pybuild-plugin-pyproject) "
            f"or not root (euid {os.geteuid()})")
        return 2

    specs = [s for s in discover(include_bench=args.bench)
             if not args.only or any(o in s.name for o in args.only)]
    timings: dict[str, object] = {}
    try:
        image = ensure_image(log)
        if image.built_seconds is not None:
            timings["image build"] = image.built_seconds
        started = time.monotonic()
        deb = args.deb.resolve() if args.deb else build_deb()
        if not args.deb:
            timings["deb build"] = time.monotonic() - started
    except RuntimeError as exc:
        log(str(exc))
        return 2

    WORK.mkdir(exist_ok=True)
    rundir = WORK / time.strftime("run-%Y%m%d-%H%M%S")
    rundir.mkdir()
    latest = WORK / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(rundir.name)
    for old in sorted(WORK.glob("run-*"))[:-3]:  # keep the last three runs' artifacts
        shutil.rmtree(old, ignore_errors=True)

    share = prepare_share(rundir, deb)
    disk_names = sorted({d for s in specs for d in s.disks})
    disks = []
    for name in disk_names:
        path = rundir / f"disk-{name}.raw"
        with open(path, "wb") as f:
            f.truncate(DISK_MB * 1024 * 1024)
        disks.append(Disk(name, path))
    overlay = rundir / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.rootfs),
                    "-F", "raw", str(overlay)], check=True)
    vm = Vm(image.kernel, image.initrd, overlay, share, disks, rundir)

    results: list[dict] = []
    for boot in sorted({s.boot for s in specs} | {1}):
        boot_specs = [s for s in specs if s.boot == boot]
        boot_timings = run_boot(vm, boot, boot_specs, install=(boot == 1))
        for k, v in boot_timings.items():
            timings[f"boot{boot} {'to runner' if k == 'boot' else 'total'}"] = v
        results += collect(share, boot, boot_specs, rundir / f"console-boot{boot}.log")

    print_summary(results, timings, rundir)
    payload = {"results": results, "timings": timings, "rundir": str(rundir)}
    (rundir / "summary.json").write_text(json.dumps(payload, indent=1))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1))
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
