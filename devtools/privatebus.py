"""A private dbus-daemon with a system-bus-like policy, for the demo and the bus tests.

Like the system bus: any uid may connect (auth EXTERNAL), method calls are denied by default,
and wkd's own bus policy (dbus/org.wkd1.conf) is included unchanged, so whoever runs on this
bus meets the same rules as on the real one: only root owns org.wkd1, anyone may call it.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.process import stop_process

BUS_CONF_TEMPLATE = """<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <policy user="root">
    <allow own="*"/>
    <allow send_type="method_call"/>
  </policy>
  <include>{wkd_conf}</include>
  <limit name="max_message_size">33554432</limit>
</busconfig>
"""

_INSTALLED_POLICY = "/usr/share/dbus-1/system.d/org.wkd1.conf"


def wkd_bus_policy() -> str:
    """dbus/org.wkd1.conf of this source tree, else the installed copy."""
    here = Path(__file__).resolve().parents[1] / "dbus" / "org.wkd1.conf"  # the source tree
    if here.exists():
        return str(here)
    if os.path.exists(_INSTALLED_POLICY):
        return _INSTALLED_POLICY
    raise FileNotFoundError("cannot find org.wkd1.conf (the wkd bus policy)")


@dataclass
class PrivateBus:
    address: str
    socket: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)


def start_private_bus(workdir: str | Path, *, timeout: float = 10.0) -> PrivateBus:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Other uids (the unprivileged clients of the tests) must reach the socket.
    os.chmod(workdir, 0o755)  # noqa: S103 - a socket directory, nothing secret in it
    socket = workdir / "bus.sock"
    conf = workdir / "bus.conf"
    conf.write_text(BUS_CONF_TEMPLATE.format(socket=socket, wkd_conf=wkd_bus_policy()))
    proc = subprocess.Popen(["dbus-daemon", "--nofork", "--nopidfile",
                             f"--config-file={conf}", "--print-address"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc, timeout=5)
            raise RuntimeError("the private dbus-daemon did not start")
        time.sleep(0.02)
    return PrivateBus(address=f"unix:path={socket}", socket=str(socket), proc=proc)
