"""Trust decisions about volumes: which devices carry a volume, in what condition, and which
one an operation may act on. One function decides the condition every view shows
(`assess`), and one decides the device an operation uses (`choose`), so ListVolumes, the
Volume objects and the operations cannot disagree.

The rules (docs/design.md, "Trust"):
  * a header is believed only when libcryptsetup loaded it; a device with LUKS magic whose
    header it refuses is DAMAGED, and so is a volume whose only wkd tokens are invalid;
  * a volume UUID is a name anyone can copy: two present devices carrying one UUID make the
    volume DUPLICATE, calls by UUID are refused naming both, and only a call by device path
    (an administrator's choice) acts on one of them;
  * a device that newly carries a known UUID while the recorded device still carries it is a
    duplicate, never a replacement; one that carries it after the recorded device stopped
    doing so is a move, and is journaled as one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wkd import errors
from wkd.core.facts import DmState, Header, Probe
from wkd.core.reconcile import unlock_order
from wkd.model import Mapping as MappingInfo
from wkd.model import VolumeCondition, VolumeInfo
from wkd.values import DevicePath, VolumeRef, VolumeUuid


@dataclass(frozen=True, slots=True)
class Assessment:
    """One volume as every view shows it."""

    uuid: VolumeUuid
    condition: VolumeCondition
    detail: str
    primary: Probe  # the device shown as the volume's (the recorded one when it carries it)
    carriers: tuple[Probe, ...]  # every present device carrying this UUID


def carries(probe: Probe, uuid: VolumeUuid) -> bool:
    """Does this device claim to be volume `uuid` as a wkd volume (or a damaged header)?"""
    read = probe.read
    if read.header is not None:
        return read.header.uuid == uuid and read.header.has_wkd_token
    return bool(read.damaged) and read.raw_uuid == uuid


def damage_of(probe: Probe) -> str:
    """Why this device's volume is DAMAGED, or "" when it is not."""
    read = probe.read
    if read.header is None:
        return read.damaged and f"libcryptsetup refuses the header of {read.path}: {read.damaged}"
    if not read.header.tokens and read.header.invalid:
        tid, why = sorted(read.header.invalid.items())[0]
        return f"the wkd token {tid} of {read.path} is invalid: {why}"
    return ""


def assess(uuid: VolumeUuid, recorded: str | None, probes: Iterable[Probe]
           ) -> Assessment | None:
    """The condition of volume `uuid` given fresh probes of every device it was seen on.
    None when no present device carries it (the volume is not here)."""
    carriers = tuple(sorted((p for p in probes if carries(p, uuid)),
                            key=lambda p: (p.device.path != recorded, p.device.path)))
    if not carriers:
        return None
    primary = carriers[0]
    if len(carriers) > 1:
        names = " and ".join(p.device.path for p in carriers)
        return Assessment(uuid, VolumeCondition.DUPLICATE,
                          f"devices {names} all carry volume UUID {uuid}; a copy of a "
                          "volume's header gives its UUID to another disk, so wkd acts on "
                          "neither by UUID: name one by its device path", primary, carriers)
    damage = damage_of(primary)
    if damage:
        return Assessment(uuid, VolumeCondition.DAMAGED, damage, primary, carriers)
    return Assessment(uuid, VolumeCondition.OK, "", primary, carriers)


def refuse_condition(assessment: Assessment, *, by_path: bool) -> None:
    """Raise the typed error an operation on this volume meets, if any. A call by device path
    may act on one of several duplicates (it names the device); a damaged header never."""
    if assessment.condition is VolumeCondition.DUPLICATE and not by_path:
        raise errors.DuplicateVolume(assessment.detail)
    damage = damage_of(assessment.primary)
    if damage:
        raise errors.VolumeDamaged(damage)


def choose(ref: VolumeRef, assessment: Assessment | None, probe: Probe | None) -> Probe:
    """The device an operation on `ref` acts on, or the typed error that refuses it.

    `probe` is the probe of the named device (for a path), `assessment` that of its UUID."""
    if isinstance(ref, DevicePath):
        if probe is None:
            raise errors.DeviceNotFound(f"{ref}: no such device")
        read = probe.read
        if read.header is None and not read.damaged:
            raise errors.NotAWkdVolume(f"{probe.device.path} is not a LUKS2 volume")
        if read.header is not None and not read.header.has_wkd_token:
            raise errors.NotAWkdVolume(f"{probe.device.path} is LUKS2 but has no wkd token")
        damage = damage_of(probe)
        if damage:
            raise errors.VolumeDamaged(damage)
        return probe
    if assessment is None:
        raise errors.VolumeNotFound(f"no present device carries volume {ref}")
    refuse_condition(assessment, by_path=False)
    return assessment.primary


def volume_info(assessment: Assessment, dm: DmState) -> VolumeInfo:
    """The view of one volume, the same in every interface."""
    probe = assessment.primary
    header = probe.read.header
    mapping = _mapping_on(assessment, dm)
    if header is None or not header.tokens:
        return VolumeInfo(uuid=assessment.uuid, device=probe.device.path, kek_label="",
                          kek_id="", cipher=header.cipher if header else "", key_bits=0,
                          auto_unlock=False, created="", mapping=mapping,
                          label=header.label if header else "",
                          condition=assessment.condition, condition_detail=assessment.detail)
    best = header.tokens[unlock_order(header.tokens)[0]]
    return VolumeInfo(uuid=assessment.uuid, device=probe.device.path, kek_label=best.kek_label,
                      kek_id=best.kek_id, cipher=header.cipher,
                      # The size comes from the token: a header without keyslots does not
                      # record it (libcryptsetup reports 0 after crypt_load).
                      key_bits=best.key_bytes * 8, auto_unlock=best.auto_unlock,
                      created=best.created, mapping=mapping, label=header.label,
                      condition=assessment.condition, condition_detail=assessment.detail)


def _mapping_on(assessment: Assessment, dm: DmState) -> MappingInfo | None:
    """The volume's mapping: the one on its shown device, else (the backing device gone or
    not identifiable) any mapping of the UUID that sits on none of the other carriers."""
    on_primary = dm.of_volume(assessment.uuid, assessment.primary.device)
    others = [p.device for p in assessment.carriers[1:]]
    found = on_primary or tuple(
        m for m in dm.of_volume(assessment.uuid)
        if not any(m.backed_by(d) for d in others))
    if not found:
        return None
    m = found[0]
    return MappingInfo(name=m.name, device=f"/dev/mapper/{m.name}", read_only=m.read_only)


def header_of(probe: Probe) -> Header:
    """The loaded header of a chosen device (`choose` guarantees there is one)."""
    if probe.read.header is None:  # pragma: no cover - choose() refuses these
        raise errors.VolumeDamaged(probe.read.damaged or "no header")
    return probe.read.header


@dataclass(frozen=True, slots=True)
class Sighting:
    """What a newly seen device means for the registry (hot-plug, scan, a call by path)."""

    record: bool  # write path as the volume's device
    duplicate_of: str | None  # the recorded device still carrying the UUID
    moved_from: str | None  # the recorded device no longer carrying it


def sighting(uuid: VolumeUuid, path: str, recorded: Mapping[VolumeUuid, str],
             still_carries: bool) -> Sighting:
    """A device at `path` carries `uuid`. `still_carries` says whether the recorded device of
    `uuid` (if any, and not `path`) still carries it now. Never a silent takeover."""
    known = recorded.get(uuid)
    if known is None:
        return Sighting(record=True, duplicate_of=None, moved_from=None)
    if known == path:
        return Sighting(record=False, duplicate_of=None, moved_from=None)
    if still_carries:
        return Sighting(record=False, duplicate_of=known, moved_from=None)
    return Sighting(record=True, duplicate_of=None, moved_from=known)
