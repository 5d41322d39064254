"""The pyudev adapter of the hot-plug policy (wkd/core/hotplug.py).

`UdevMonitor` subscribes to udev's netlink multicast group FIRST and only then enumerates
the block devices that already exist, feeding them to the policy as synthetic "add" events
(STYLE.md principle 6). A device that appears between the two steps is then seen twice (once
enumerated, once as a queued event) rather than never; the policy suppresses the duplicate.
Events reach asyncio through loop.add_reader on the monitor's socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from wkd.core.hotplug import (
    DEFAULT_DEBOUNCE,
    LUKS_FS_TYPE,
    BlockEvent,
    Cleanup,
    HotplugPolicy,
    IsAutoUnlock,
    Nothing,
    Unlock,
)

log = logging.getLogger(__name__)


# --- pyudev adapter --------------------------------------------------------------------

def event_from_device(device: Any, action: str | None = None) -> BlockEvent | None:
    """Build a BlockEvent from a pyudev.Device; None when it has no device node."""
    devnode = device.device_node
    if not devnode:
        return None
    props = device.properties
    try:
        devnum = int(device.device_number or 0)
    except (TypeError, ValueError):
        devnum = 0
    return BlockEvent(
        action=action or device.action or "add",
        devnode=str(devnode),
        fs_type=props.get("ID_FS_TYPE") or None,
        fs_uuid=props.get("ID_FS_UUID") or None,
        seqnum=int(device.sequence_number or 0) if action is None else 0,
        devnum=devnum,
    )


class UdevMonitor:
    """Watch udev block events, decide with a HotplugPolicy, and call the daemon back.

    Construction subscribes and enumerates at once (so it raises if udev's netlink socket
    cannot be opened; the daemon treats hot-plug as optional then). The callbacks run on the
    event loop; `on_unlock(devnode, uuid)` and `on_cleanup(devnode, devnum)` schedule the slow,
    HSM-bound work as tasks and return at once. `is_auto_unlock(devnode, uuid)` is called
    only for LUKS devices and at most once per debounce window per device.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_unlock: Callable[[str, str], None],
                 on_cleanup: Callable[[str, int], None], is_auto_unlock: IsAutoUnlock, *,
                 debounce: float = DEFAULT_DEBOUNCE,
                 clock: Callable[[], float] = time.monotonic, start: bool = True) -> None:
        self.policy = HotplugPolicy(is_auto_unlock, debounce=debounce)
        self.on_unlock = on_unlock
        self.on_cleanup = on_cleanup
        self.clock = clock
        self._loop = loop
        self._monitor: Any = None
        if start:
            self.start()

    def start(self) -> None:
        import pyudev  # noqa: PLC0415 - keep the pure core importable without libudev

        context = pyudev.Context()
        # source="udev": events after udevd has run blkid and set ID_FS_*; kernel events
        # arrive earlier but carry no file system type or UUID.
        monitor = pyudev.Monitor.from_netlink(context, source="udev")
        monitor.filter_by(subsystem="block")
        monitor.start()  # binds the socket: from here on no event is lost (subscribe first)
        self._monitor = monitor
        # ... then enumerate what already exists.
        for device in context.list_devices(subsystem="block", ID_FS_TYPE=LUKS_FS_TYPE):
            ev = event_from_device(device, action="add")
            if ev is not None:
                self._dispatch(ev)
        self._loop.add_reader(monitor.fileno(), self._on_readable)

    def close(self) -> None:
        if self._monitor is not None:
            self._loop.remove_reader(self._monitor.fileno())
            self._monitor = None

    stop = close

    def _on_readable(self) -> None:
        monitor = self._monitor
        if monitor is None:
            return
        while True:
            device = monitor.poll(timeout=0)
            if device is None:
                return
            ev = event_from_device(device)
            if ev is not None:
                self._dispatch(ev)

    def _dispatch(self, ev: BlockEvent) -> None:
        for action in self.policy.on_event(ev, self.clock()):
            if isinstance(action, Nothing):
                log.debug("udev %s %s: %s", ev.action, ev.devnode, action.reason)
                continue
            try:
                if isinstance(action, Unlock):
                    self.on_unlock(action.devnode, action.uuid)
                elif isinstance(action, Cleanup):
                    self.on_cleanup(action.devnode, action.devnum)
            except Exception:
                # One failing handler must not stop hot-plug handling for every other disk.
                log.exception("hot-plug handler failed for %s", ev.devnode)
