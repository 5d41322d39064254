"""Decoding of what a caller sends into the typed values of wkd/values.py and wkd/model.py.

The edge of "validate once" (STYLE): a bus argument becomes a DevicePath, a VolumeRef, a
KekLabel, a MappingName, a KeySize or a frozen option value here, and every layer below
takes that type and trusts it. Pure: the only I/O a decoder may need (reading a passed
descriptor) is handed in as a function.

Options are the `a{sv}` every method takes. Unknown keys are refused (UnknownOption) rather
than ignored, so a typo such as "readonly" can never silently give a writable mapping. Keys
use dashes, as UDisks2 and systemd do ("read-only"). The key `interactive` (b) is accepted
by every method: it asks polkit for an authentication dialog for callers that cannot set
the ALLOW_INTERACTIVE_AUTHORIZATION header flag; it is the one option read before
authorization (wkd/bus/call.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from wkd.bus.api import uuid_from_path
from wkd.errors import InvalidArgument, UnknownOption
from wkd.model import FormatOptions, LockOptions, UnlockOptions
from wkd.secret import SecretKey
from wkd.values import (
    DevicePath,
    KekLabel,
    KeySize,
    LuksLabel,
    MappingName,
    VolumeRef,
    VolumeUuid,
    parse_volume_ref,
)

# Upper bounds on what a caller may send, checked before anything else looks at the value.
MAX_OPTIONS: Final = 32
MAX_STRING: Final = 4096  # PATH_MAX (linux/limits.h): the longest legitimate argument
MAX_LABEL_CHARS: Final = 47  # LUKS2 label field: 48 bytes including the NUL (LUKS2 spec §2.1)
MAX_PASSPHRASE_BYTES: Final = 512  # cryptsetup's default keyfile limit for passphrases is 512

AY_ROUTE_REFUSAL: Final = (
    "recovery-passphrase (ay) is refused: a passphrase in the message itself crosses the bus "
    "in clear and stays in bus captures and in dbus-daemon's memory. Pass it as a file "
    "descriptor instead with the option recovery-passphrase-fd (h) -- wkdctl format "
    "--recovery-passphrase-file FILE or --ask-recovery-passphrase does -- or have the "
    "administrator set [daemon] allow_passphrase_in_message = true in /etc/wkd/wkd.toml")


class _VariantLike(Protocol):
    @property
    def signature(self) -> str: ...

    @property
    def value(self) -> Any: ...


Options = Mapping[str, _VariantLike]
ReadSecret = Callable[[object, int], SecretKey]
COMMON_KEYS: Final = frozenset({"interactive"})


# --- positional arguments -------------------------------------------------------------------
def text(value: object, what: str) -> str:
    """Refuse non-strings, NULs and over-long strings before anything parses them."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string")
    if len(value) > MAX_STRING:
        raise InvalidArgument(f"{what} is too long ({len(value)} > {MAX_STRING} characters)")
    if "\0" in value:
        raise InvalidArgument(f"{what} must not contain NUL characters")
    return value


def volume_ref(value: object) -> VolumeRef:
    """A device path, a LUKS UUID ("UUID=" allowed) or a volume object path."""
    raw = text(value, "volume")
    uuid = uuid_from_path(raw)
    if uuid is not None:
        return VolumeUuid(uuid)
    try:
        return parse_volume_ref(raw)
    except InvalidArgument:
        raise InvalidArgument(
            "volume must be a device path (/dev/...), a LUKS UUID or a volume object "
            "path (/org/wkd1/volume/...)") from None


def device_path(value: object) -> DevicePath:
    return DevicePath(text(value, "device"))


def kek_label(value: object, what: str = "KEK label") -> KekLabel:
    return KekLabel(text(value, what))


def optional_kek_label(value: object) -> KekLabel | None:
    """"" means the default KEK."""
    return kek_label(value) if text(value, "KEK label") else None


# --- options ----------------------------------------------------------------------------------
def _check_keys(options: Options, allowed: frozenset[str], method: str) -> None:
    if len(options) > MAX_OPTIONS:
        raise InvalidArgument(f"too many options ({len(options)} > {MAX_OPTIONS})")
    for key in options:
        if key not in allowed and key not in COMMON_KEYS:
            shown = key if len(key) <= 40 and key.isprintable() else key[:40].encode(
                "unicode_escape").decode("ascii") + "..."
            known = ", ".join(sorted(allowed | COMMON_KEYS))
            raise UnknownOption(f"{method}: unknown option {shown!r} (known: {known})")


def _get(options: Options, key: str, signature: str) -> Any:
    variant = options[key]
    if variant.signature != signature:
        raise InvalidArgument(
            f"option {key!r} must have type {signature!r}, not {variant.signature!r}")
    return variant.value


def _bool(options: Options, key: str) -> bool:
    return bool(_get(options, key, "b")) if key in options else False


def no_options(options: Options, method: str) -> None:
    """For methods that take only the common options."""
    _check_keys(options, frozenset(), method)
    if "interactive" in options:
        _bool(options, "interactive")  # a wrong type is still an error


FORMAT_KEYS: Final = frozenset(
    {"force", "auto-unlock", "label", "key-bits", "recovery-passphrase",
     "recovery-passphrase-fd"})


def _label(options: Options) -> LuksLabel | None:
    if "label" not in options:
        return None
    label = text(_get(options, "label", "s"), "label")
    if len(label.encode("utf-8")) > MAX_LABEL_CHARS:
        raise InvalidArgument(f"label must be at most {MAX_LABEL_CHARS} bytes")
    if not label.isprintable():
        raise InvalidArgument("label must contain printable characters only")
    return LuksLabel(label)


def _passphrase(options: Options, read_fd: ReadSecret | None,
                allow_in_message: bool) -> SecretKey | None:
    if "recovery-passphrase" in options and "recovery-passphrase-fd" in options:
        raise InvalidArgument("give recovery-passphrase or recovery-passphrase-fd, not both")
    if "recovery-passphrase-fd" in options:
        # "h": the passphrase never appears in the message itself.
        fd = _get(options, "recovery-passphrase-fd", "h")
        if read_fd is None:
            raise InvalidArgument("recovery-passphrase-fd is not accepted here")
        return read_fd(fd, MAX_PASSPHRASE_BYTES)
    if "recovery-passphrase" not in options:
        return None
    if not allow_in_message:
        raise InvalidArgument(AY_ROUTE_REFUSAL)
    # "ay", not "s": a passphrase is bytes, and "ay" keeps it out of string handling.
    raw = _get(options, "recovery-passphrase", "ay")
    if not isinstance(raw, bytes) or not 1 <= len(raw) <= MAX_PASSPHRASE_BYTES:
        raise InvalidArgument(
            f"recovery-passphrase must be 1..{MAX_PASSPHRASE_BYTES} bytes long")
    # SecretKey.from_bytes scrubs the message's copy in place once it is in locked memory.
    return SecretKey.from_bytes(raw)


def format_options(options: Options, read_fd: ReadSecret | None = None, *,
                   allow_passphrase_in_message: bool = False) -> FormatOptions:
    """`read_fd(fd, limit)` reads a passed descriptor (the adapter's I/O, kept out of here);
    without it, descriptors are refused. The passphrase is decoded last, so a mistake in any
    other option wipes nothing and reads no descriptor."""
    _check_keys(options, FORMAT_KEYS, "Format")
    label = _label(options)
    key_size = KeySize.from_bits(_get(options, "key-bits", "u")) \
        if "key-bits" in options else None
    force, auto_unlock = _bool(options, "force"), _bool(options, "auto-unlock")
    _bool(options, "interactive")
    passphrase = _passphrase(options, read_fd, allow_passphrase_in_message)
    return FormatOptions(force=force, auto_unlock=auto_unlock, label=label,
                         key_size=key_size, recovery_passphrase=passphrase)


UNLOCK_KEYS: Final = frozenset({"name", "read-only", "verify-only", "allow-discards"})


def unlock_options(options: Options) -> UnlockOptions:
    _check_keys(options, UNLOCK_KEYS, "Unlock")
    name = MappingName(text(_get(options, "name", "s"), "name")) if "name" in options else None
    _bool(options, "interactive")
    return UnlockOptions(name=name, read_only=_bool(options, "read-only"),
                         verify_only=_bool(options, "verify-only"),
                         allow_discards=_bool(options, "allow-discards"))


LOCK_KEYS: Final = frozenset({"deferred", "force"})


def lock_options(options: Options) -> LockOptions:
    _check_keys(options, LOCK_KEYS, "Lock")
    _bool(options, "interactive")
    return LockOptions(deferred=_bool(options, "deferred"), force=_bool(options, "force"))
