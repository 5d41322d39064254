"""Hot-plug: decide which block-device events unlock or clean up a wkd volume.

Two layers, as in sans-I/O protocol code (STYLE.md, h11):

* `HotplugPolicy` is pure. It takes `BlockEvent` values and a clock reading and returns
  actions (`Unlock`, `Cleanup`, `Nothing` with the reason). Tests drive it with synthetic
  events; no udev is needed.
* `UdevMonitor` is the thin pyudev adapter: it subscribes to udev's netlink multicast group
  FIRST and only then enumerates the block devices that already exist, feeding them to the
  policy as synthetic "add" events (STYLE.md principle 6). A device that appears between the
  two steps is then seen twice (once enumerated, once as a queued event) rather than never;
  the policy suppresses the duplicate. Events reach asyncio through loop.add_reader on the
  monitor's socket.

What counts as a candidate: a device udev identified as LUKS (ID_FS_TYPE=crypto_LUKS, from
blkid) that the daemon's `is_auto_unlock(devnode, uuid)` callback accepts — it reads the wkd
token's auto-unlock flag and consults /etc/wkdtab. Every other device, LUKS or not, is left
alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from wkd.errors import WkdError

log = logging.getLogger(__name__)

LUKS_FS_TYPE: Final = "crypto_LUKS"
DEFAULT_DEBOUNCE: Final = 2.0  # seconds


@dataclass(frozen=True, slots=True)
class BlockEvent:
    """One uevent of the "block" subsystem, reduced to what the policy needs."""

    action: str  # "add", "change", "remove" (others such as "bind" are ignored)
    devnode: str  # /dev/sdb
    fs_type: str | None  # udev ID_FS_TYPE
    fs_uuid: str | None  # udev ID_FS_UUID (the LUKS UUID for crypto_LUKS)
    seqnum: int  # kernel SEQNUM; 0 for synthetic events from enumeration


@dataclass(frozen=True, slots=True)
class Unlock:
    devnode: str
    uuid: str


@dataclass(frozen=True, slots=True)
class Cleanup:
    """The disk behind an auto-unlocked volume is gone: remove its mapping and objects."""

    uuid: str
    devnode: str


@dataclass(frozen=True, slots=True)
class Nothing:
    reason: str  # for debug logging and tests


Action = Unlock | Cleanup | Nothing
IsAutoUnlock = Callable[[str, str], bool]


@dataclass(slots=True)
class _Seen:
    uuid: str
    last_handled: float


@dataclass(slots=True)
class HotplugPolicy:
    """The pure decision core. Not thread-safe; call it from the event loop only."""

    is_auto_unlock: IsAutoUnlock
    debounce: float = DEFAULT_DEBOUNCE
    # devnode -> LUKS device last decided on (to debounce change storms)
    _seen: dict[str, _Seen] = field(default_factory=dict)
    # devnode -> uuid we asked to unlock and that has not been cleaned up or forgotten
    _unlocked: dict[str, str] = field(default_factory=dict)
    _last_seqnum: int = 0

    def on_event(self, ev: BlockEvent, now: float) -> list[Action]:
        # A real event older than one already handled is a replay; kernel SEQNUMs increase
        # monotonically (Documentation/ABI/testing/sysfs-kernel-uevent_seqnum).
        if ev.seqnum:
            if ev.seqnum <= self._last_seqnum:
                return [Nothing(f"stale event (seqnum {ev.seqnum})")]
            self._last_seqnum = ev.seqnum
        if ev.action == "remove":
            return self._on_remove(ev)
        if ev.action not in ("add", "change"):
            return [Nothing(f"action {ev.action!r} ignored")]
        return self._on_appear(ev, now)

    def _on_remove(self, ev: BlockEvent) -> list[Action]:
        self._seen.pop(ev.devnode, None)
        uuid = self._unlocked.pop(ev.devnode, None)
        if uuid is None:
            return [Nothing("removed device was not auto-unlocked by us")]
        return [Cleanup(uuid=uuid, devnode=ev.devnode)]

    def _on_appear(self, ev: BlockEvent, now: float) -> list[Action]:
        actions: list[Action] = []
        known = self._unlocked.get(ev.devnode)
        if ev.fs_type != LUKS_FS_TYPE or not ev.fs_uuid:
            if known is not None:
                # The LUKS header vanished (wiped or re-formatted) under an open mapping.
                del self._unlocked[ev.devnode]
                self._seen.pop(ev.devnode, None)
                return [Cleanup(uuid=known, devnode=ev.devnode)]
            return [Nothing("not a LUKS device")]
        uuid = ev.fs_uuid
        if known is not None:
            if known == uuid:
                # Enumerated and then seen again as a queued event, or a later "change":
                # the volume is already handled.
                return [Nothing("already unlocked")]
            # Same node, different volume without a remove in between: drop the old one.
            del self._unlocked[ev.devnode]
            actions.append(Cleanup(uuid=known, devnode=ev.devnode))
        seen = self._seen.get(ev.devnode)
        if (seen is not None and seen.uuid == uuid and
                0 <= now - seen.last_handled < self.debounce):
            return [*actions, Nothing("debounced")]
        self._seen[ev.devnode] = _Seen(uuid=uuid, last_handled=now)
        try:
            marked = self.is_auto_unlock(ev.devnode, uuid)
        except WkdError as exc:
            # An unreadable or foreign header: not ours to unlock, and not worth a crash.
            return [*actions, Nothing(f"auto-unlock check failed: {exc}")]
        if not marked:
            return [*actions, Nothing("not marked for auto-unlock")]
        self._unlocked[ev.devnode] = uuid
        return [*actions, Unlock(devnode=ev.devnode, uuid=uuid)]

    def unlock_failed(self, devnode: str) -> None:
        """The daemon could not unlock: a later change event may try again after debounce."""
        self._unlocked.pop(devnode, None)

    def forget(self, uuid: str) -> None:
        """The volume was locked by other means (D-Bus Lock): no Cleanup on removal."""
        for devnode, known in list(self._unlocked.items()):
            if known == uuid:
                del self._unlocked[devnode]

    @property
    def unlocked(self) -> dict[str, str]:
        """devnode -> uuid of volumes this policy unlocked (a copy)."""
        return dict(self._unlocked)


# --- pyudev adapter --------------------------------------------------------------------

def event_from_device(device: Any, action: str | None = None) -> BlockEvent | None:
    """Build a BlockEvent from a pyudev.Device; None when it has no device node."""
    devnode = device.device_node
    if not devnode:
        return None
    props = device.properties
    return BlockEvent(
        action=action or device.action or "add",
        devnode=str(devnode),
        fs_type=props.get("ID_FS_TYPE") or None,
        fs_uuid=props.get("ID_FS_UUID") or None,
        seqnum=int(device.sequence_number or 0) if action is None else 0,
    )


class UdevMonitor:
    """Watch udev block events, decide with a HotplugPolicy, and call the daemon back.

    Construction subscribes and enumerates at once (so it raises if udev's netlink socket
    cannot be opened; the daemon treats hot-plug as optional then). The callbacks run on the
    event loop; `on_unlock(devnode, uuid)` and `on_cleanup(uuid)` should schedule the slow,
    HSM-bound work as tasks and return at once. `is_auto_unlock(devnode, uuid)` is called
    only for LUKS devices and at most once per debounce window per device.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_unlock: Callable[[str, str], None],
                 on_cleanup: Callable[[str], None], is_auto_unlock: IsAutoUnlock, *,
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
                else:
                    self.on_cleanup(action.uuid)
            except Exception:
                # One failing handler must not stop hot-plug handling for every other disk.
                log.exception("hot-plug handler failed for %s", ev.devnode)
