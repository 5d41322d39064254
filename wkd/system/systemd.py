"""The sd_notify(3) protocol and the service watchdog, in plain socket code.

No libsystemd is needed: a notification is one datagram of newline-separated `KEY=VALUE`
assignments sent to the AF_UNIX socket named by $NOTIFY_SOCKET (sd_notify(3), "Notes"). A name
starting with "@" is in the abstract namespace (the "@" stands for the leading NUL byte).

The watchdog heartbeat is sent from the asyncio event loop on purpose: if the loop hangs (a
blocking call, a deadlock), the heartbeats stop, systemd sees WatchdogSec= expire and restarts
the daemon (systemd.service(5), WatchdogSec=; Restart=on-failure covers the watchdog case).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Final

log = logging.getLogger(__name__)

_SEND_TIMEOUT: Final = 1.0


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # Abstract namespace: "@name" is "\0name" on the wire (unix(7), "Abstract sockets").
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # vsock: and other transports of newer systemd are not used for services on one host.
    return None


def notify(*states: str) -> bool:
    """Send `states` (e.g. "READY=1", "STATUS=...") to the service manager.

    Returns False when not run under a manager that listens ($NOTIFY_SOCKET unset) or when the
    send fails; notification is best effort, as with sd_notify(3).
    """
    if not states:
        return False
    for state in states:
        if "\n" in state or "=" not in state:
            raise ValueError(f"malformed notify assignment {state!r}")
    target = os.environ.get("NOTIFY_SOCKET", "")
    address = _socket_address(target) if target else None
    if address is None:
        return False
    payload = "\n".join(states).encode("utf-8")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(_SEND_TIMEOUT)
        try:
            sock.sendto(payload, address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", target, exc)
            return False
    return True


def ready(status: str | None = None) -> bool:
    """Tell systemd start-up is complete (Type=notify units leave "activating")."""
    states = ["READY=1"]
    if status is not None:
        states.append(f"STATUS={status}")
    return notify(*states)


def status(text: str) -> bool:
    """Set the free-form status line shown by `systemctl status`."""
    return notify(f"STATUS={text}")


def stopping() -> bool:
    return notify("STOPPING=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for more start-up/shut-down time (EXTEND_TIMEOUT_USEC=, systemd 236+), e.g. while
    waiting for a slow HSM, instead of raising TimeoutStartSec= for everyone."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds, or None when the watchdog is off for this process.

    Mirrors sd_watchdog_enabled(3): $WATCHDOG_USEC must be a positive integer, and when
    $WATCHDOG_PID is set it must name this process (the variables leak into children).
    """
    usec_text = os.environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid_text = os.environ.get("WATCHDOG_PID")
    if pid_text:
        try:
            if int(pid_text) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


async def watchdog_loop(interval: float | None = None) -> None:
    """Send WATCHDOG=1 every half interval until cancelled; return at once if no watchdog.

    sd_watchdog_enabled(3) recommends half the timeout so one late wake-up is tolerated.
    """
    timeout = watchdog_interval() if interval is None else interval
    if timeout is None:
        return
    period = timeout / 2
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(period)
