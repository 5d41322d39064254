"""Validated values: each type checks itself when constructed, so holding one proves it valid.

The rule of the house (STYLE: "validate at the edge into a type, then trust the type"): text
from a client, a wkdtab line, the configuration or a token is turned into one of these types
once, where it enters, and every layer inside takes the type, never a plain `str` or `int`.
mypy then refuses a plain string where a `MappingName` is due, and no layer re-checks.

The string types subclass `str` (cheap, printable, usable wherever text is), so a value is
valid for its whole life: there is no way to build an unchecked instance short of
`str.__new__` trickery. Pure: no I/O.
"""

from __future__ import annotations

import enum
from typing import Final

from wkd.errors import InvalidArgument, InvalidName
from wkd.names import validate_kek_label, validate_mapping_name, validate_uuid

# Names under /dev/mapper that belong to device-mapper itself: "control" is its control
# node (/dev/mapper/control, Documentation/admin-guide/device-mapper). A mapping of that
# name cannot be created, and asking for it is a mistake or an attack on the node's name.
RESERVED_MAPPING_NAMES: Final = frozenset({"control"})
# PATH_MAX (linux/limits.h): the longest path the kernel accepts.
PATH_MAX: Final = 4096


class KekLabel(str):
    """A KEK label: 1..64 of [A-Za-z0-9._-], not starting with '-' or '.'."""

    __slots__ = ()

    def __new__(cls, text: object) -> KekLabel:
        return super().__new__(cls, validate_kek_label(text))


class MappingName(str):
    """A device-mapper name safe under /dev/mapper and not reserved by device-mapper."""

    __slots__ = ()

    def __new__(cls, text: object) -> MappingName:
        name = validate_mapping_name(text)
        if name in RESERVED_MAPPING_NAMES:
            raise InvalidName(f"mapping name {name!r} is reserved by device-mapper")
        return super().__new__(cls, name)


class VolumeUuid(str):
    """A LUKS UUID in canonical lowercase form."""

    __slots__ = ()

    def __new__(cls, text: object) -> VolumeUuid:
        return super().__new__(cls, validate_uuid(text))

    @property
    def default_mapping(self) -> MappingName:
        """The mapping name used when a caller gives none: "wkd-<uuid>"."""
        return MappingName("wkd-" + self)


class DevicePath(str):
    """An absolute path naming a device (or, where configured, an image file).

    Only the form is checked here; whether something is there, and what, is the disk
    layer's question (it resolves symlinks and inspects the node).
    """

    __slots__ = ()

    def __new__(cls, text: object) -> DevicePath:
        if not isinstance(text, str) or not text.startswith("/"):
            raise InvalidArgument("a device must be given as an absolute path such as /dev/sdb")
        if "\0" in text:
            raise InvalidArgument("a device path must not contain NUL characters")
        if len(text.encode("utf-8", "surrogateescape")) > PATH_MAX:
            raise InvalidArgument(f"a device path is at most {PATH_MAX} bytes")
        return super().__new__(cls, text)


VolumeRef = VolumeUuid | DevicePath


def parse_volume_ref(text: object) -> VolumeRef:
    """A volume named by a device path, a LUKS UUID or "UUID=<uuid>" (as in fstab)."""
    if isinstance(text, str) and text.startswith("/"):
        return DevicePath(text)
    if isinstance(text, str) and text[:5].upper() == "UUID=":
        text = text[5:]
    if isinstance(text, str):
        try:
            return VolumeUuid(text.lower())
        except InvalidArgument:
            pass
    raise InvalidArgument("a volume is named by a device path (/dev/...) or a LUKS UUID")


class KeySize(enum.IntEnum):
    """Volume key sizes for aes-xts-plain64: XTS splits the key in two (IEEE 1619)."""

    AES_128_XTS = 256
    AES_256_XTS = 512

    @classmethod
    def from_bits(cls, bits: object) -> KeySize:
        if type(bits) is not int or bits not in (256, 512):
            raise InvalidArgument("key-bits must be 256 or 512 (aes-xts-plain64)")
        return cls(bits)

    @property
    def key_bytes(self) -> int:
        return int(self) // 8
