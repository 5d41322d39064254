"""Faults: SIGKILL the daemon during RewrapAll; systemd restarts it; every volume unlocks."""
# wkd-test: boot=1 timeout=420 disks=rw1,rw2,rw3,rw4
import json
import os
import subprocess
import time

from wkdtest import CommandFailed, Scenario, disk, dm_exists

DISKS = ["rw1", "rw2", "rw3", "rw4"]


def restarts() -> int:
    out = subprocess.run(["systemctl", "show", "-p", "NRestarts", "--value", "wkd.service"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return int(out or 0)


with Scenario() as t:
    t.busctl("CreateKek", "sa{sv}", "sys-rot-a", "0")
    t.busctl("CreateKek", "sa{sv}", "sys-rot-b", "0")
    marks = {}
    for name in DISKS:
        dev = disk(name)
        t.busctl("Format", "ssa{sv}", dev, "sys-rot-a", "0")
        t.busctl("Unlock", "sa{sv}", dev, "1", "name", "s", f"m-{name}")
        marks[name] = os.urandom(4096)
        with open(f"/dev/mapper/m-{name}", "r+b") as f:
            f.write(marks[name])
            os.fsync(f.fileno())
        t.busctl("Lock", "sa{sv}", dev, "0")

    before = restarts()
    job = t.busctl_json("RewrapAll", "ssa{sv}", "sys-rot-a", "sys-rot-b", "0")[0]
    done = total = None
    started = time.monotonic()
    while time.monotonic() - started < 5:
        try:
            done = t.get_property(job, "org.wkd1.Job", "Done")
            total = t.get_property(job, "org.wkd1.Job", "Total")
        except CommandFailed:  # the job object may be gone if it already ended
            break
        if done and done >= 1:
            break
        time.sleep(0.05)
    t.run("systemctl", "kill", "--signal=SIGKILL", "wkd.service")
    t.check("SIGKILL landed while the job was unfinished",
            done is not None and total is not None and done < total,
            f"done={done} total={total}")
    came_back = t.wait_for("wkd.service restart", lambda: restarts() > before and subprocess.run(
        ["systemctl", "is-active", "--quiet", "wkd.service"], check=False).returncode == 0, 60)
    t.require("systemd restarted wkd.service (Restart=on-failure)", came_back is not None,
              f"NRestarts {before} -> {restarts()}")

    for name in DISKS:
        dev = disk(name)
        proc = t.busctl("Unlock", "sa{sv}", dev, "1", "name", "s", f"m-{name}", check=False)
        ok = proc.returncode == 0 and os.path.exists(f"/dev/mapper/m-{name}")
        if ok:
            with open(f"/dev/mapper/m-{name}", "rb") as f:
                ok = f.read(4096) == marks[name]
        t.check(f"{name} unlocks after the crash and its data is intact", ok, proc.stderr)
        t.busctl("Lock", "sa{sv}", dev, "0", check=False)
        t.check(f"{name} mapping removed", not dm_exists(f"m-{name}"))

    job = t.busctl_json("RewrapAll", "ssa{sv}", "sys-rot-a", "sys-rot-b", "0")[0]
    state = None
    finished = t.wait_for("resumed RewrapAll", lambda: t.get_property(
        job, "org.wkd1.Job", "State") != "running", 120, interval=0.5)
    state = t.get_property(job, "org.wkd1.Job", "State") if finished is not None else "running"
    t.check("a second RewrapAll completes the rotation", state == "completed", f"{state}")
    for name in DISKS:
        proc = t.busctl("Unlock", "sa{sv}", disk(name), "1", "verify-only", "b", "true",
                        check=False)
        meta = json.loads(t.run("cryptsetup", "luksDump", "--dump-json-metadata",
                                disk(name)).stdout)
        labels = [tok.get("kek_label") for tok in meta.get("tokens", {}).values()
                  if tok.get("type") == "wkd"]
        t.check(f"{name} verifies and has one token, under the new KEK, after rotation",
                proc.returncode == 0 and labels == ["sys-rot-b"], f"{labels} {proc.stderr}")
