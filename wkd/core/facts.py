"""What the disk layer observes, as plain values: the facts the planners decide on.

The disk layer (wkd/disk) produces these from sysfs, /proc, the device's bytes and
libcryptsetup; the core (wkd/core) decides on them; the engine carries them from one to the
other. Nothing here does I/O. Everything read from a device is attacker-controlled: these
values say what was found, never that it is trustworthy (see `HeaderRead`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from wkd.token import WkdToken
from wkd.values import LuksLabel, VolumeUuid

# Tests of crash safety pass one to kill or stop the process at named steps.
Checkpoint = Callable[[str], None]


class DeviceKind(enum.StrEnum):
    BLOCK = "block"
    FILE = "file"  # a regular image file, accepted only when the config allows it


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    path: str  # canonical path (symlinks resolved)
    kind: DeviceKind
    size: int
    rdev: int  # st_rdev for block devices, 0 for files


@dataclass(frozen=True, slots=True)
class Header:
    """A LUKS2 header that libcryptsetup loaded (so both its checksums held), summarised."""

    path: str
    uuid: VolumeUuid
    label: str
    cipher: str
    tokens: Mapping[int, WkdToken]  # the wkd tokens that parse
    # wkd-typed tokens that do not parse: token id -> why (feeds VolumeCondition.DAMAGED)
    invalid: Mapping[int, str] = field(default_factory=dict)
    keyslots: int = 0  # number of keyslots (a recovery passphrase adds one)

    @property
    def has_wkd_token(self) -> bool:
        return bool(self.tokens) or bool(self.invalid)


@dataclass(frozen=True, slots=True)
class HeaderRead:
    """One look at one device's LUKS2 header.

    Exactly one of three outcomes: `header` is set (libcryptsetup loaded it), `damaged` is set
    (the device carries LUKS magic but libcryptsetup refuses the header; `raw_uuid` is the
    UUID field of its binary header if that field is well-formed), or neither (no LUKS magic
    at all: not a volume).
    """

    path: str
    header: Header | None = None
    damaged: str = ""
    raw_uuid: VolumeUuid | None = None

    @property
    def uuid(self) -> VolumeUuid | None:
        """The volume UUID this device claims, however damaged its header is."""
        return self.header.uuid if self.header is not None else self.raw_uuid


@dataclass(frozen=True, slots=True)
class DmMapping:
    """One device-mapper device as sysfs shows it. Anyone with CAP_SYS_ADMIN can create one
    with any name and dm UUID, so neither proves who made it (that is `MappingRecord`'s job)."""

    name: str
    dm_uuid: str
    node: str  # /dev/dm-N
    dev: int  # its own dev_t
    # What it is stacked on: kernel names of /sys/block/dm-N/slaves (e.g. "vdb", "loop3"),
    # their dev_t where still readable, and for loop devices the file behind them.
    backing_names: tuple[str, ...] = ()
    backing_devs: tuple[int, ...] = ()
    backing_files: tuple[str, ...] = ()
    read_only: bool = False

    def belongs_to(self, uuid: VolumeUuid) -> bool:
        # libcryptsetup names its dm devices "CRYPT-LUKS2-<uuid without dashes>-<name>"
        # (lib/setup.c, crypt_activate_by_volume_key), whatever mapping name was chosen.
        prefix = "CRYPT-LUKS2-" + uuid.replace("-", "") + "-"
        return self.dm_uuid.lower().startswith(prefix.lower())

    def backed_by(self, device: DeviceFacts) -> bool:
        """True when this mapping sits on `device` (a block device or an image file)."""
        if device.kind is DeviceKind.FILE:
            return device.path in self.backing_files
        if device.rdev and device.rdev in self.backing_devs:
            return True
        return device.path.removeprefix("/dev/") in self.backing_names


@dataclass(frozen=True, slots=True)
class MappingRecord:
    """wkd's own, root-only note that it made a mapping (this boot). The only ground for
    calling a mapping "ours": dm names and dm UUIDs can be chosen by anyone."""

    name: str
    uuid: VolumeUuid
    device: str  # canonical path of the device it was opened on
    backing_dev: int  # that device's dev_t (0 for an image file)

    def matches(self, mapping: DmMapping) -> bool:
        if mapping.name != self.name or not mapping.belongs_to(self.uuid):
            return False
        if not (mapping.backing_names or mapping.backing_devs or mapping.backing_files):
            return True  # its disk is gone from sysfs altogether: name and dm UUID must do
        if self.backing_dev:
            return (self.backing_dev in mapping.backing_devs
                    or self.device.removeprefix("/dev/") in mapping.backing_names)
        return self.device in mapping.backing_files or not mapping.backing_files


@dataclass(frozen=True, slots=True)
class Probe:
    """A device as seen by one look: what it is, its header, and the dm state around it."""

    device: DeviceFacts
    read: HeaderRead


@dataclass(frozen=True, slots=True)
class DmState:
    """All device-mapper devices at one instant (one sysfs walk)."""

    available: bool  # the kernel has device-mapper at all
    mappings: tuple[DmMapping, ...] = ()

    def named(self, name: str) -> DmMapping | None:
        return next((m for m in self.mappings if m.name == name), None)

    def of_volume(self, uuid: VolumeUuid, device: DeviceFacts | None = None
                  ) -> tuple[DmMapping, ...]:
        """Mappings of the volume `uuid`; with `device`, only those stacked on it."""
        return tuple(m for m in self.mappings if m.belongs_to(uuid)
                     and (device is None or m.backed_by(device)))


@dataclass(frozen=True, slots=True)
class FormatFacts:
    """What Format must know about a device before it may write to it."""

    device: DeviceFacts
    in_use: tuple[str, ...]  # why it is busy: "mounted", "held by dm-0", ... (empty: free)
    signatures: tuple[str, ...]  # blkid TYPE/PTTYPE values and LUKS magic found


@dataclass(frozen=True, slots=True)
class FormatIntent:
    """The journal entry Format writes to the state directory before it touches a device:
    enough for the next start to tell what an interrupted Format left and to finish or roll
    it back. Nothing secret: the token holds the wrapped key only (as the header will)."""

    device: str  # canonical path
    rdev: int  # dev_t, to recognise the same device (0 for an image file)
    uuid: VolumeUuid  # chosen by wkd and given to libcryptsetup
    token: WkdToken
    label: LuksLabel | None
    recovery: bool  # a recovery keyslot was asked for (its passphrase is never stored)
    region: int  # bytes at the start of the device that Format overwrites
    before: str  # SHA-256 (hex) of that region before Format wrote anything


@dataclass(frozen=True, slots=True)
class FormatObservation:
    """What is on the device of a pending `FormatIntent` now."""

    present: bool  # the same device is there (same dev_t, or the image file exists)
    read: HeaderRead | None = None
    region_digest: str = ""  # SHA-256 (hex) of the region now
    foreign_signatures: tuple[str, ...] = ()  # non-LUKS signatures blkid finds
    in_use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Survey:
    """Several devices and the dm state, seen in one call."""

    probes: Mapping[str, Probe]  # by the path asked for; devices that are gone are absent
    dm: DmState


@dataclass(frozen=True, slots=True)
class FormatRequest:
    """What Format writes: decided by the engine, carried out by the disk layer."""

    device: DeviceFacts
    uuid: VolumeUuid  # chosen by wkd, recorded before the device is touched
    token: WkdToken
    cipher: str  # "aes-xts-plain64"
    label: LuksLabel | None = None
    recovery_pbkdf: str = "argon2id"
    recovery_pbkdf_ms: int = 2000
