"""Decoding of the `a{sv}` options argument every org.wkd1 method takes.

Pure: takes the dict of D-Bus variants a method received and returns the frozen option value
from wkd.model, or raises a wkd.errors error naming the offending key. Unknown keys are refused
(UnknownOption) rather than ignored, so a typo such as "readonly" can never silently give a
writable mapping. Option keys use dashes, as UDisks2 and systemd do ("read-only").

The key `interactive` (b) is accepted by every method: it lets a caller that cannot set the
ALLOW_INTERACTIVE_AUTHORIZATION header flag (busctl can, older libraries cannot) ask polkit
for an interactive authentication dialog.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from wkd.errors import InvalidArgument, UnknownOption
from wkd.model import FormatOptions, LockOptions, UnlockOptions
from wkd.secret import SecretKey
from wkd.values import KeySize, MappingName

# Upper bounds on what a caller may send, checked before anything else looks at the value:
# the bus accepts messages up to 128 MiB, the daemon has no reason to accept more than this.
MAX_OPTIONS: Final = 32
MAX_LABEL_CHARS: Final = 47  # LUKS2 label field: 48 bytes including the NUL (LUKS2 spec §2.1)
MAX_PASSPHRASE_BYTES: Final = 512  # cryptsetup's default keyfile limit for passphrases is 512


class _VariantLike(Protocol):
    @property
    def signature(self) -> str: ...

    @property
    def value(self) -> Any: ...


Options = Mapping[str, _VariantLike]

COMMON_KEYS: Final = frozenset({"interactive"})


@dataclass(frozen=True, slots=True)
class Common:
    """Options every method accepts (they shape the call, not the operation)."""

    interactive: bool = False


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
            f"option {key!r} must have type {signature!r}, not {variant.signature!r}"
        )
    return variant.value


def _bool(options: Options, key: str) -> bool:
    return bool(_get(options, key, "b"))


def common(options: Options) -> Common:
    """The options shared by every method; call after the method's own decoder."""
    if "interactive" in options:
        return Common(interactive=_bool(options, "interactive"))
    return Common()


def no_options(options: Options, method: str) -> Common:
    """For methods that take only the common options."""
    _check_keys(options, frozenset(), method)
    return common(options)


FORMAT_KEYS: Final = frozenset(
    {"force", "auto-unlock", "label", "key-bits", "recovery-passphrase",
     "recovery-passphrase-fd"}
)


def format_options(options: Options,
                   read_fd: Callable[[object, int], bytes] | None = None) -> FormatOptions:
    """`read_fd(fd, limit)` reads a passed descriptor (the adapter's I/O, kept out of here);
    without it, descriptors are refused."""
    _check_keys(options, FORMAT_KEYS, "Format")
    label: str | None = None
    if "label" in options:
        label = _get(options, "label", "s")
        assert isinstance(label, str)
        if len(label.encode("utf-8")) > MAX_LABEL_CHARS:
            raise InvalidArgument(f"label must be at most {MAX_LABEL_CHARS} bytes")
        if not label.isprintable():
            raise InvalidArgument("label must contain printable characters only")
    key_size: KeySize | None = None
    if "key-bits" in options:
        key_size = KeySize.from_bits(int(_get(options, "key-bits", "u")))
    passphrase: bytes | None = None
    if "recovery-passphrase" in options and "recovery-passphrase-fd" in options:
        raise InvalidArgument("give recovery-passphrase or recovery-passphrase-fd, not both")
    if "recovery-passphrase-fd" in options:
        # "h": the preferred way; the passphrase never appears in the message itself.
        fd = _get(options, "recovery-passphrase-fd", "h")
        if read_fd is None:
            raise InvalidArgument("recovery-passphrase-fd is not accepted here")
        passphrase = read_fd(fd, MAX_PASSPHRASE_BYTES)
        if not passphrase:
            raise InvalidArgument("recovery-passphrase-fd gave no data")
    if "recovery-passphrase" in options:
        # "ay", not "s": a passphrase is bytes, and "ay" keeps it out of string handling.
        raw = _get(options, "recovery-passphrase", "ay")
        # `bytes(raw)` is `raw` itself: SecretKey.from_bytes below scrubs the message's copy
        # in place once it is in locked memory.
        passphrase = bytes(raw)
        if not 1 <= len(passphrase) <= MAX_PASSPHRASE_BYTES:
            raise InvalidArgument(
                f"recovery-passphrase must be 1..{MAX_PASSPHRASE_BYTES} bytes long"
            )
    return FormatOptions(
        force=_bool(options, "force") if "force" in options else False,
        auto_unlock=_bool(options, "auto-unlock") if "auto-unlock" in options else False,
        label=label,
        key_size=key_size,
        recovery_passphrase=SecretKey.from_bytes(passphrase) if passphrase else None,
    )


UNLOCK_KEYS: Final = frozenset({"name", "read-only", "verify-only", "allow-discards"})


def unlock_options(options: Options) -> UnlockOptions:
    _check_keys(options, UNLOCK_KEYS, "Unlock")
    name: MappingName | None = None
    if "name" in options:
        name = MappingName(_get(options, "name", "s"))
    return UnlockOptions(
        name=name,
        read_only=_bool(options, "read-only") if "read-only" in options else False,
        verify_only=_bool(options, "verify-only") if "verify-only" in options else False,
        allow_discards=(
            _bool(options, "allow-discards") if "allow-discards" in options else False
        ),
    )


LOCK_KEYS: Final = frozenset({"deferred"})


def lock_options(options: Options) -> LockOptions:
    _check_keys(options, LOCK_KEYS, "Lock")
    return LockOptions(deferred=_bool(options, "deferred") if "deferred" in options else False)
