"""Watchdog: a daemon that stops answering (SIGSTOP) is killed and restarted by systemd."""
# wkd-test: boot=1 timeout=180
import subprocess

from wkdtest import Scenario


def show(prop: str) -> str:
    return subprocess.run(["systemctl", "show", "-p", prop, "--value", "wkd.service"],
                          capture_output=True, text=True, check=False).stdout.strip()


with Scenario() as t:
    t.get_property("/org/wkd1", "org.wkd1.Manager", "HsmState")  # make sure it runs
    # `systemctl show` prints "30s"; the D-Bus property is the raw microseconds (t).
    watchdog_usec = t.busctl_json("Get", "ss", "org.freedesktop.systemd1.Service",
                                  "WatchdogUSec", service="org.freedesktop.systemd1",
                                  obj="/org/freedesktop/systemd1/unit/wkd_2eservice",
                                  iface="org.freedesktop.DBus.Properties")[0]["data"]
    t.require("wkd.service has a watchdog", watchdog_usec > 0, f"WatchdogUSec={watchdog_usec}")
    pid, restarts = show("MainPID"), int(show("NRestarts") or 0)
    t.run("kill", "-STOP", pid)  # a hung event loop sends no WATCHDOG=1 heartbeats either
    limit = 2 * watchdog_usec / 1e6 + 30
    took = t.wait_for("watchdog restart", lambda: int(show("NRestarts") or 0) > restarts
                      and show("ActiveState") == "active" and show("MainPID") not in ("0", pid),
                      limit, interval=1)
    t.check(f"systemd restarted the hung daemon within {limit:.0f}s", took is not None,
            f"took {took}s; NRestarts={show('NRestarts')} MainPID={show('MainPID')} was {pid}")
    state = t.get_property("/org/wkd1", "org.wkd1.Manager", "HsmState")
    t.check("the restarted daemon answers on the bus", state == "ready", str(state))
    result = subprocess.run(["journalctl", "-b", "-u", "wkd.service", "--no-pager", "-q",
                             "-g", "[Ww]atchdog"], capture_output=True, text=True,
                            check=False).stdout
    t.check("the journal says the watchdog fired", "atchdog" in result, result[-500:])
