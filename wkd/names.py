"""Validators for names that cross trust boundaries (D-Bus arguments, wkdtab, tokens).

Pure functions: each takes the untrusted text and returns it unchanged when it is acceptable,
or raises a `wkd.errors` error whose message says which rule was broken. Messages never echo
the whole input (it may be huge or contain control characters); at most one offending
character is shown, as its repr.
"""

from __future__ import annotations

import re
from typing import Final

from wkd.errors import InvalidArgument, InvalidName

# device-mapper names live in a 128-byte field including the NUL (DM_NAME_LEN in
# <linux/dm-ioctl.h>), so at most 127 characters. The character set is the one udev and
# libdevmapper keep without mangling (libdevmapper "dm_mangle" whitelist:
# alphanumerics and "#+-.:=@_"); anything else would be hex-escaped or refused, and "/"
# would escape /dev/mapper/.
MAPPING_NAME_MAX: Final = 127
MAPPING_NAME_CHARS: Final = "A-Za-z0-9#+-.:=@_"
_MAPPING_CHAR = re.compile(r"[A-Za-z0-9#+\-.:=@_]")

# KEK labels become CKA_LABEL in the HSM and appear in the token and in `wkdctl` output; keep
# them short, ASCII, and free of anything a shell or a path would interpret.
KEK_LABEL_MAX: Final = 64
KEK_LABEL_CHARS: Final = "A-Za-z0-9._-"
_KEK_CHAR = re.compile(r"[A-Za-z0-9._\-]")

# RFC 4122 textual form, lowercase as the kernel, blkid and libcryptsetup print it.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

MAPPING_PREFIX: Final = "wkd-"


def _first_bad(text: str, allowed: re.Pattern[str]) -> str | None:
    for char in text:
        if not allowed.fullmatch(char):
            return char
    return None


def validate_mapping_name(name: object) -> str:
    """Return `name` if it is a safe device-mapper name, else raise InvalidName."""
    if not isinstance(name, str):
        raise InvalidName("mapping name must be a string")
    if not 1 <= len(name) <= MAPPING_NAME_MAX:
        raise InvalidName(
            f"mapping name must be 1..{MAPPING_NAME_MAX} characters long (got {len(name)})"
        )
    if name in {".", ".."}:
        raise InvalidName("mapping name must not be '.' or '..'")
    if "/" in name:
        raise InvalidName("mapping name must not contain '/'")
    bad = _first_bad(name, _MAPPING_CHAR)
    if bad is not None:
        raise InvalidName(
            f"mapping name may only contain [{MAPPING_NAME_CHARS}] (found {bad!r})"
        )
    if name.startswith("-"):
        # A leading '-' would be read as an option by dmsetup, cryptsetup and friends.
        raise InvalidName("mapping name must not start with '-'")
    return name


def validate_kek_label(label: object) -> str:
    """Return `label` if it is an acceptable KEK label, else raise InvalidName."""
    if not isinstance(label, str):
        raise InvalidName("KEK label must be a string")
    if not 1 <= len(label) <= KEK_LABEL_MAX:
        raise InvalidName(
            f"KEK label must be 1..{KEK_LABEL_MAX} characters long (got {len(label)})"
        )
    bad = _first_bad(label, _KEK_CHAR)
    if bad is not None:
        raise InvalidName(f"KEK label may only contain [{KEK_LABEL_CHARS}] (found {bad!r})")
    if label[0] in "-.":
        # '-' reads as an option; '.' makes hidden files and '.'/'..' path components.
        raise InvalidName("KEK label must not start with '-' or '.'")
    return label


def validate_uuid(text: object) -> str:
    """Return `text` if it is a canonical lowercase UUID, else raise InvalidArgument."""
    # fullmatch, not match with '$': '$' would accept a trailing newline.
    if not isinstance(text, str) or _UUID.fullmatch(text) is None:
        raise InvalidArgument(
            "volume UUID must be in canonical lowercase form "
            "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits)"
        )
    return text


def default_mapping_name(uuid: str) -> str:
    """The mapping name used when the caller gives none: "wkd-<uuid>"."""
    return validate_mapping_name(MAPPING_PREFIX + validate_uuid(uuid))
