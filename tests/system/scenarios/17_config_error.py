"""Configuration error: one start, EX_CONFIG (78), failed, the message in systemctl status."""
# wkd-test: boot=1 timeout=180
import subprocess
import time
from pathlib import Path

from wkdtest import Scenario, unit_log

CONF = Path("/etc/wkd/wkd.toml")
UNIT = "wkd.service"
BAD = "[daemon]\nallow_image_file = true\n"  # a misspelt key
EXPECTED = f"{CONF}: [daemon] unknown key 'allow_image_file'"


def show(prop: str) -> str:
    return subprocess.run(["systemctl", "show", "-p", prop, "--value", UNIT],
                          capture_output=True, text=True, check=False).stdout.strip()


def daemon_starts(since: float) -> int:
    """How many times the daemon's process started since `since` (one line each)."""
    out = subprocess.run(["journalctl", "-u", UNIT, f"--since=@{since:.0f}", "--no-pager",
                          "-o", "cat"], capture_output=True, text=True, check=False).stdout
    return out.count("configuration error")


with Scenario() as t:
    saved = CONF.read_bytes() if CONF.exists() else None
    t.run("systemctl", "stop", UNIT)
    CONF.parent.mkdir(exist_ok=True)
    CONF.write_text(BAD)
    t.run("systemctl", "reset-failed", UNIT, check=False)
    restarts_before = int(show("NRestarts") or 0)
    since = time.time() - 1
    try:
        # A client's call starts the daemon through bus activation (dbus/org.wkd1.service).
        started = time.monotonic()
        proc = t.busctl("ListKeks", "a{sv}", "0", check=False, timeout=60)
        took = time.monotonic() - started
        t.check("bus activation with a broken configuration fails with the message naming "
                "file, section and key", proc.returncode != 0 and EXPECTED in proc.stderr,
                proc.stderr.strip())
        # The message above already shows the daemon answered (a timeout says "timed out
        # (service_start_timeout=25000ms)"); the time is a margin against that timeout.
        t.check(f"...before dbus-daemon's 25 s activation timeout ({took:.1f} s)",
                took < 20, f"{took:.1f} s: {proc.stderr.strip()}")
        failed = t.wait_for("the unit to fail", lambda: show("ActiveState") == "failed", 30)
        t.check("wkd.service ends failed", failed is not None,
                f"ActiveState={show('ActiveState')} SubState={show('SubState')}")
        t.check("with status 78 (EX_CONFIG)", show("ExecMainStatus") == "78",
                f"ExecMainStatus={show('ExecMainStatus')} Result={show('Result')}")
        time.sleep(5)  # RestartSec=2s: a restart would have happened by now
        t.check("after ONE start: systemd did not restart it",
                show("ActiveState") == "failed"
                and int(show("NRestarts") or 0) == restarts_before
                and daemon_starts(since) == 1,
                f"NRestarts {restarts_before} -> {show('NRestarts')}, "
                f"{daemon_starts(since)} start(s) logged")
        status = t.run("systemctl", "status", UNIT, "--no-pager", "-n", "20", check=False)
        t.check("systemctl status wkd shows the message naming file, section and key",
                EXPECTED in status.stdout, status.stdout[-1500:])
        # Last: wkdctl's call is a new bus activation, so a new (failing) start.
        wkdctl = t.run("wkdctl", "status", check=False)
        t.check("wkdctl says why the daemon could not start",
                wkdctl.returncode != 0 and EXPECTED in wkdctl.stderr, wkdctl.stderr[-600:])
        log = unit_log(UNIT, 60)
        t.check("no traceback in the journal", "Traceback" not in log, log[-1500:])
    finally:
        if saved is None:
            CONF.unlink(missing_ok=True)
        else:
            CONF.write_bytes(saved)
        t.run("systemctl", "reset-failed", UNIT, check=False)
        t.run("systemctl", "start", UNIT, check=False)
    state = t.get_property("/org/wkd1", "org.wkd1.Manager", "HsmState")
    t.check("with the configuration fixed, wkd starts and serves again", state == "ready",
            str(state))
