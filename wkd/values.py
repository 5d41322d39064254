"""Validated values: each type checks itself when constructed, so holding one proves it valid.

The rule of the house (STYLE: "validate at the edge into a type, then trust the type"): text
from a client, a wkdtab line, the configuration or a token is turned into one of these types
once, where it enters, and every layer inside takes the type, never a plain `str` or `int`.
mypy then refuses a plain string where a `MappingName` is due, and no layer re-checks.

The string types subclass `str` (cheap, printable, usable wherever text is), so a value is
valid for its whole life: there is no way to build an unchecked instance short of
`str.__new__` trickery. Pure: no I/O.

Rejection messages say which rule was broken and never echo the whole input (it may be huge
or contain control characters); at most one offending character is shown, as its repr.
"""

from __future__ import annotations

import enum
import re
from typing import Final

from wkd.errors import InvalidArgument, InvalidName

# device-mapper names live in a 128-byte field including the NUL (DM_NAME_LEN in
# <linux/dm-ioctl.h>), so at most 127 characters. The character set is the one udev and
# libdevmapper keep without mangling (libdevmapper "dm_mangle" whitelist: alphanumerics and
# "#+-.:=@_"); anything else would be hex-escaped or refused, and "/" would escape
# /dev/mapper/.
MAPPING_NAME_MAX: Final = 127
MAPPING_NAME_CHARS: Final = "A-Za-z0-9#+-.:=@_"
_MAPPING_CHAR = re.compile(r"[A-Za-z0-9#+\-.:=@_]")
# Names under /dev/mapper that belong to device-mapper itself: "control" is its control
# node (/dev/mapper/control, Documentation/admin-guide/device-mapper). A mapping of that
# name cannot be created, and asking for it is a mistake or an attack on the node's name.
RESERVED_MAPPING_NAMES: Final = frozenset({"control"})
MAPPING_PREFIX: Final = "wkd-"

# KEK labels become CKA_LABEL in the HSM and appear in the token and in `wkdctl` output; keep
# them short, ASCII, and free of anything a shell or a path would interpret.
KEK_LABEL_MAX: Final = 64
KEK_LABEL_CHARS: Final = "A-Za-z0-9._-"
_KEK_CHAR = re.compile(r"[A-Za-z0-9._\-]")

# RFC 4122 textual form, lowercase as the kernel, blkid and libcryptsetup print it.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# PATH_MAX (linux/limits.h): the longest path the kernel accepts.
PATH_MAX: Final = 4096
# The LUKS2 binary header's label field is 48 bytes including the NUL (LUKS2 On-Disk Format
# Specification, "binary header": char label[48]).
LUKS_LABEL_MAX: Final = 47


def _first_bad(text: str, allowed: re.Pattern[str]) -> str | None:
    for char in text:
        if not allowed.fullmatch(char):
            return char
    return None


def validate_mapping_name(name: object) -> str:
    """`name` if it is a safe device-mapper name (reserved names aside), else InvalidName."""
    if not isinstance(name, str):
        raise InvalidName("mapping name must be a string")
    if not 1 <= len(name) <= MAPPING_NAME_MAX:
        raise InvalidName(
            f"mapping name must be 1..{MAPPING_NAME_MAX} characters long (got {len(name)})")
    if name in {".", ".."}:
        raise InvalidName("mapping name must not be '.' or '..'")
    if "/" in name:
        raise InvalidName("mapping name must not contain '/'")
    bad = _first_bad(name, _MAPPING_CHAR)
    if bad is not None:
        raise InvalidName(f"mapping name may only contain [{MAPPING_NAME_CHARS}] (found {bad!r})")
    if name.startswith("-"):
        # A leading '-' would be read as an option by dmsetup, cryptsetup and friends.
        raise InvalidName("mapping name must not start with '-'")
    return name


def validate_kek_label(label: object) -> str:
    """`label` if it is an acceptable KEK label, else InvalidName."""
    if not isinstance(label, str):
        raise InvalidName("KEK label must be a string")
    if not 1 <= len(label) <= KEK_LABEL_MAX:
        raise InvalidName(
            f"KEK label must be 1..{KEK_LABEL_MAX} characters long (got {len(label)})")
    bad = _first_bad(label, _KEK_CHAR)
    if bad is not None:
        raise InvalidName(f"KEK label may only contain [{KEK_LABEL_CHARS}] (found {bad!r})")
    if label[0] in "-.":
        # '-' reads as an option; '.' makes hidden files and '.'/'..' path components.
        raise InvalidName("KEK label must not start with '-' or '.'")
    return label


def validate_uuid(text: object) -> str:
    """`text` if it is a canonical lowercase UUID, else InvalidArgument."""
    # fullmatch, not match with '$': '$' would accept a trailing newline.
    if not isinstance(text, str) or _UUID.fullmatch(text) is None:
        raise InvalidArgument(
            "volume UUID must be in canonical lowercase form "
            "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits)")
    return text


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
        return MappingName(MAPPING_PREFIX + self)


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


class LuksLabel(str):
    """A LUKS2 label: at most 47 bytes of UTF-8, no NUL (it is a C string in the header)."""

    __slots__ = ()

    def __new__(cls, text: object) -> LuksLabel:
        if not isinstance(text, str):
            raise InvalidArgument("a LUKS2 label must be a string")
        if "\0" in text:
            raise InvalidArgument("a LUKS2 label must not contain NUL characters")
        if len(text.encode("utf-8", "surrogateescape")) > LUKS_LABEL_MAX:
            raise InvalidArgument(f"a LUKS2 label is at most {LUKS_LABEL_MAX} bytes")
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
    """Volume key sizes for aes-xts-plain64: XTS splits the key in two (IEEE 1619).

    The one list of allowed sizes: the configuration, the bus options, the token schema and
    the HSM backend all derive theirs from it.
    """

    AES_128_XTS = 256
    AES_256_XTS = 512

    @classmethod
    def from_bits(cls, bits: object) -> KeySize:
        if type(bits) is not int or bits not in cls._value2member_map_:
            allowed = " or ".join(str(int(k)) for k in cls)
            raise InvalidArgument(f"key-bits must be {allowed} (aes-xts-plain64)")
        return cls(bits)

    @property
    def key_bytes(self) -> int:
        return int(self) // 8


ALLOWED_KEY_BYTES: Final = frozenset(k.key_bytes for k in KeySize)
