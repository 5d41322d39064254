"""Guest side of the system-test tier: run this boot's scenarios, then power off.

Started by wkd-test-runner.service (baked into the image) as
``python3 /mnt/share/guest/runner.py /mnt/share``.  Standard library only: it must work
before wkd is installed.  Reads share/plan.json, writes share/results/*.json (one per
scenario), the journal and a bus capture, and always ends with a forced power-off so a
broken scenario cannot keep the VM (and CI) waiting.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RUNDIR = Path("/run/wkdtest")


def log(msg: str) -> None:
    print(f"[runner] {msg}", flush=True)


def write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def run_scenario(share: Path, results: Path, boot: int, sc: dict) -> None:
    name, timeout = sc["name"], float(sc["timeout"])
    result_path = results / f"boot{boot}-{name}.json"
    env = dict(os.environ, WKDTEST_SHARE=str(share), WKDTEST_RESULT=str(result_path),
               WKDTEST_NAME=name, WKDTEST_BOOT=str(boot),
               PYTHONPATH=str(share / "guest"), PYTHONUNBUFFERED="1")
    log(f"scenario {name} (timeout {timeout:.0f}s)")
    started = time.monotonic()
    out_path = results / f"boot{boot}-{name}.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(share / sc["file"])], env=env,
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            timed_out = True
    elapsed = time.monotonic() - started
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        result = {"name": name, "checks": []}
    result.update(name=name, boot=boot, seconds=round(elapsed, 1), exit_code=rc)
    if timed_out:
        result["checks"].append({"name": "finished within timeout", "ok": False,
                                 "detail": f"killed after {timeout:.0f}s"})
    elif rc != 0 and all(c["ok"] for c in result["checks"]):
        tail = out_path.read_text(errors="replace")[-1500:]
        result["checks"].append({"name": "scenario exited cleanly", "ok": False,
                                 "detail": f"exit code {rc}: {tail}"})
    if not result["checks"]:
        result["checks"].append({"name": "scenario made checks", "ok": False,
                                 "detail": "no check was recorded"})
    result["ok"] = all(c["ok"] for c in result["checks"])
    write_json(result_path, result)
    log(f"scenario {name}: {'PASS' if result['ok'] else 'FAIL'} in {elapsed:.1f}s")


def main() -> int:
    share = Path(sys.argv[1])
    plan = json.loads((share / "plan.json").read_text())
    boot = int(plan["boot"])
    results = share / "results"
    results.mkdir(exist_ok=True)
    RUNDIR.mkdir(exist_ok=True)
    (results / f"started-boot{boot}").write_text(str(time.time()))
    log(f"boot {boot}: {len(plan['scenarios'])} scenario(s)")

    # Capture all system-bus traffic of this boot for the leak scenario (it stops the
    # capture itself, through the pid file, before searching it).
    cap = subprocess.Popen(["busctl", "capture", "--system"],
                           stdout=open(RUNDIR / "bus.pcap", "wb"),  # noqa: SIM115
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    (RUNDIR / "capture.pid").write_text(str(cap.pid))

    try:
        for sc in plan["scenarios"]:
            run_scenario(share, results, boot, sc)
    finally:
        if cap.poll() is None:
            cap.send_signal(signal.SIGINT)
            try:
                cap.wait(timeout=10)
            except subprocess.TimeoutExpired:
                cap.kill()
        with open(results / f"journal-boot{boot}.txt", "wb") as out:
            subprocess.run(["journalctl", "-b", "--no-pager", "-o", "short-precise"],
                           stdout=out, check=False)
        with open(results / f"failed-units-boot{boot}.txt", "wb") as out:
            subprocess.run(["systemctl", "--failed", "--no-pager"], stdout=out, check=False)
        (results / f"done-boot{boot}").write_text(str(time.time()))
        os.sync()
        log("powering off")
        subprocess.run(["systemctl", "--force", "poweroff"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
