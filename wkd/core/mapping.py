"""Unlock, Lock and hot-unplug clean-up decisions: which mapping to make, keep or remove.

wkd knows which mappings it made only from its own root-only records (`MappingRecord`,
written before each activation); a device-mapper name or dm UUID proves nothing, as anyone
with CAP_SYS_ADMIN chooses them. So:
  * Unlock of a volume that is already mapped returns that mapping (idempotent) unless the
    caller asked for another name, which is an error naming the mapping;
  * Lock removes a mapping wkd made; one it did not make is refused unless `force`;
  * when a device leaves, only mappings wkd made *on that device* are removed: the dm
    device's backing device is compared with the one that left, never the volume UUID alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from wkd import errors
from wkd.core.facts import DeviceFacts, DmMapping, DmState, MappingRecord
from wkd.model import LockOptions, UnlockOptions
from wkd.values import MappingName, VolumeUuid


@dataclass(frozen=True, slots=True)
class UnlockPlan:
    existing: DmMapping | None  # already unlocked: report it, open nothing
    name: MappingName | None  # activate under this name (None: verify only, or existing)


def plan_unlock(uuid: VolumeUuid, device: DeviceFacts, dm: DmState,
                options: UnlockOptions) -> UnlockPlan:
    """Decide an Unlock before any key is unwrapped. Raises the refusing typed error."""
    if options.verify_only:
        return UnlockPlan(existing=None, name=None)
    existing = dm.of_volume(uuid, device)
    if existing:
        mapping = existing[0]
        if options.name is not None and options.name != mapping.name:
            raise errors.AlreadyUnlocked(
                f"volume {uuid} is already unlocked as {mapping.name}; lock it first to map "
                f"it as {options.name}")
        return UnlockPlan(existing=mapping, name=None)
    if not dm.available:
        raise errors.DeviceMapperUnavailable(
            "this kernel has no device-mapper; use the verify-only option to check that the "
            "volume opens")
    name = options.name or uuid.default_mapping
    if dm.named(name) is not None:
        raise errors.MappingNameInUse(f"a device-mapper device named {name} already exists")
    return UnlockPlan(existing=None, name=name)


@dataclass(frozen=True, slots=True)
class LockPlan:
    mapping: DmMapping
    ours: bool  # wkd's records say it made this mapping


def plan_lock(uuid: VolumeUuid, device: DeviceFacts, dm: DmState,
              records: Iterable[MappingRecord], options: LockOptions) -> LockPlan:
    """Decide a Lock: the mapping to remove, or the typed error that refuses it."""
    found = dm.of_volume(uuid, device)
    if not found:
        raise errors.NotUnlocked(f"volume {uuid} is not unlocked")
    mapping = found[0]
    ours = any(r.matches(mapping) for r in records)
    if not ours and not options.force:
        raise errors.ForeignMapping(
            f"the mapping {mapping.name} of volume {uuid} was not made by wkd (it has no "
            "record of it this boot: opened with cryptsetup or before wkd kept records); "
            "pass the force option to lock it anyway")
    return LockPlan(mapping=mapping, ours=ours)


@dataclass(frozen=True, slots=True)
class Removal:
    mapping: DmMapping
    record: MappingRecord


def plan_cleanup(devnode: str, devnum: int, dm: DmState,
                 records: Iterable[MappingRecord]) -> list[Removal]:
    """Mappings to remove because the device `devnode` (dev_t `devnum`, 0 if unknown) left:
    those wkd made on exactly that device and that still sit on it. A mapping of the same
    volume UUID on another device (the original of a copy that was unplugged) stays."""
    name = devnode.removeprefix("/dev/")
    out: list[Removal] = []
    for record in records:
        same_device = (record.device == devnode
                       or (devnum != 0 and record.backing_dev == devnum))
        if not same_device:
            continue
        mapping = dm.named(record.name)
        if mapping is None or not record.matches(mapping):
            continue
        # sysfs may show the slave by dev_t, by its kernel name (a dangling link once the
        # disk is gone), or not at all any more; in the last case the record alone ties the
        # mapping to the device that left (a mapping on another, present disk shows it).
        orphaned = not (mapping.backing_names or mapping.backing_devs or mapping.backing_files)
        on_it = ((devnum != 0 and devnum in mapping.backing_devs) or orphaned
                 or name in mapping.backing_names or devnode in mapping.backing_files)
        if on_it:
            out.append(Removal(mapping=mapping, record=record))
    return out
