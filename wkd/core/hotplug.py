"""The hot-plug policy: which block-device events lead to an auto-unlock or a clean-up.

Pure, as sans-I/O protocol code is (STYLE.md, h11): `HotplugPolicy` takes `BlockEvent` values
and a clock reading and returns actions (`Unlock`, `Cleanup`, `Nothing` with the reason).
Tests drive it with synthetic events; the pyudev adapter is wkd/system/udev.py.

What counts as a candidate: a device udev identified as LUKS (ID_FS_TYPE=crypto_LUKS, from
blkid) that the daemon's `is_auto_unlock(devnode, uuid)` callback accepts. A `Cleanup` says
only "this LUKS device left"; the engine then removes the mappings its own records say it
made on exactly that device (wkd/core/mapping.py, `plan_cleanup`), never by volume UUID.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from wkd.errors import WkdError

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
    devnum: int = 0  # the device's dev_t (MAJOR/MINOR of the uevent); 0 if unknown


@dataclass(frozen=True, slots=True)
class Unlock:
    devnode: str
    uuid: str


@dataclass(frozen=True, slots=True)
class Cleanup:
    """A LUKS device left: the engine removes the mappings it made on that device."""

    devnode: str
    devnum: int


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
    # devnode -> LUKS device last decided on (to debounce change storms, and to know that a
    # removed node was a LUKS device worth a clean-up)
    _seen: dict[str, _Seen] = field(default_factory=dict)
    # devnode -> uuid we asked to unlock and that has not left
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
        seen = self._seen.pop(ev.devnode, None)
        unlocked = self._unlocked.pop(ev.devnode, None)
        if seen is None and unlocked is None:
            return [Nothing("removed device was never seen as LUKS")]
        return [Cleanup(devnode=ev.devnode, devnum=ev.devnum)]

    def _on_appear(self, ev: BlockEvent, now: float) -> list[Action]:
        known = self._unlocked.get(ev.devnode)
        if ev.fs_type != LUKS_FS_TYPE or not ev.fs_uuid:
            if known is not None:
                # The LUKS header vanished (wiped or re-formatted) while the device stays:
                # its mapping keeps working and stays until the device leaves or is locked.
                del self._unlocked[ev.devnode]
                return [Nothing("LUKS header gone from an unlocked device; mapping kept")]
            return [Nothing("not a LUKS device")]
        uuid = ev.fs_uuid
        if known is not None:
            if known == uuid:
                # Enumerated and then seen again as a queued event, or a later "change":
                # the volume is already handled.
                return [Nothing("already unlocked")]
            del self._unlocked[ev.devnode]  # same node, another volume: consider it afresh
        seen = self._seen.get(ev.devnode)
        if (seen is not None and seen.uuid == uuid and
                0 <= now - seen.last_handled < self.debounce):
            return [Nothing("debounced")]
        self._seen[ev.devnode] = _Seen(uuid=uuid, last_handled=now)
        try:
            marked = self.is_auto_unlock(ev.devnode, uuid)
        except WkdError as exc:
            # An unreadable or foreign header: not ours to unlock, and not worth a crash.
            return [Nothing(f"auto-unlock check failed: {exc}")]
        if not marked:
            return [Nothing("not marked for auto-unlock")]
        self._unlocked[ev.devnode] = uuid
        return [Unlock(devnode=ev.devnode, uuid=uuid)]

    def unlock_failed(self, devnode: str) -> None:
        """The daemon could not unlock: a later change event may try again after debounce."""
        self._unlocked.pop(devnode, None)

    @property
    def unlocked(self) -> dict[str, str]:
        """devnode -> uuid of volumes this policy unlocked (a copy)."""
        return dict(self._unlocked)
