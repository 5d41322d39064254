"""The LUKS2 token of type "wkd": JSON text <-> `WkdToken`, with strict validation.

A LUKS2 header keeps tokens as JSON objects in its `tokens` section (LUKS2 On-Disk Format
Specification, section "Tokens"). libcryptsetup requires a string "type" and a "keyslots"
array of keyslot-number strings, refuses types starting with "luks2-" (reserved for its
built-in tokens), and hands the object back from crypt_token_json_get() exactly as stored:
it adds no keys of its own. Everything else in the object is ours; its schema is
docs/token-format.md and this module is its only reader and writer.

Pure: no I/O. Every failure is `wkd.errors.InvalidToken`, whose message names the field and
the problem and never carries the wrapped key or a large piece of the input.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NoReturn, TypeVar

from wkd.errors import InvalidName, InvalidToken
from wkd.model import Backend, Mechanism, TokenState, WrappedKey
from wkd.values import ALLOWED_KEY_BYTES, validate_kek_label

TOKEN_TYPE: Final = "wkd"  # noqa: S105 - a LUKS2 token type, not a password
SCHEMA_VERSION: Final = 1
# A generous bound on the token's JSON text: a real token is ~500 bytes. The LUKS2 JSON area
# is at most a few MiB and shared by everything in the header, so a token that is not small
# is not one we wrote.
MAX_TOKEN_JSON: Final = 16384
# Our schema nests two levels (object -> "keyslots" array). Allow a little more so that a
# wrong-typed value gets a precise message, and refuse deeper input before json.loads can
# recurse on it.
MAX_NESTING: Final = 8
# Largest integer every JSON implementation (json-c in libcryptsetup, jq, JavaScript) keeps
# exactly.
MAX_JSON_INT: Final = 2**53 - 1
# LUKS2 supports keyslots 0..31 (LUKS2_KEYSLOTS_MAX in libcryptsetup).
LUKS2_KEYSLOTS_MAX: Final = 32

KEY_BYTES_ALLOWED: Final = tuple(sorted(ALLOWED_KEY_BYTES))  # wkd.values.KeySize
KEK_ID_MAX_HEX: Final = 128
CIPHER_MAX: Final = 64

_KEK_ID = re.compile(r"(?:[0-9a-f]{2}){1,64}")
# dm-crypt cipher specification "cipher-chainmode-ivmode[:ivopts]" as cryptsetup writes it
# into the LUKS2 segment (e.g. "aes-xts-plain64", "serpent-cbc-essiv:sha256").
_CIPHER = re.compile(r"[a-z0-9]+(?:-[a-z0-9_]+)*(?::[a-z0-9_]+)?")
# RFC 3339 "date-time" restricted to UTC with "Z" and whole seconds: one spelling per
# instant, so parse(render(t)) == t holds.
_CREATED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_CREATED_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"
_KEYSLOT = re.compile(r"0|[1-9][0-9]?")
# Key names echoed in error messages must look like field names; anything else is counted.
_PRINTABLE_KEY = re.compile(r"[a-z_]{1,32}")

_E = TypeVar("_E", Backend, Mechanism, TokenState)

# Every key of the token object. "type" and "keyslots" are the two LUKS2 requires.
_FIELDS: Final = frozenset(
    {
        "type",
        "keyslots",
        "version",
        "backend",
        "kek_label",
        "kek_id",
        "mechanism",
        "wrapped_key",
        "key_bytes",
        "cipher",
        "state",
        "created",
        "auto_unlock",
        "generation",
    }
)


def wrapped_length(key_bytes: int) -> int:
    """Length of an RFC 5649 (AES key wrap with padding) output for a key of `key_bytes`:
    the key padded to a multiple of 8 bytes, plus the 8-byte integrity block (RFC 5649 §4.1)."""
    return -(-key_bytes // 8) * 8 + 8


def _fail(message: str) -> NoReturn:
    raise InvalidToken(message)


@dataclass(frozen=True, slots=True)
class WkdToken:
    """A validated wkd token. Constructing one with an invalid field raises InvalidToken, so
    every `WkdToken` value can be rendered and parsed back unchanged."""

    version: int
    backend: Backend
    kek_label: str
    kek_id: str  # CKA_ID of the KEK, lowercase hex
    mechanism: Mechanism
    wrapped_key: bytes  # RFC 5649 output; never logged (see __repr__)
    key_bytes: int
    cipher: str
    state: TokenState
    created: str  # RFC 3339 UTC, whole seconds, "Z"
    auto_unlock: bool
    # Incremented by every rewrap, so that when a crash leaves two verified active tokens the
    # newest one wins (docs/token-format.md, "Start-up reconciliation").
    generation: int

    def __post_init__(self) -> None:
        _check_int("version", self.version, 1, MAX_JSON_INT)
        if self.version > SCHEMA_VERSION:
            _fail(f"unsupported token schema version {self.version}")
        _check_enum("backend", self.backend, Backend)
        try:
            validate_kek_label(self.kek_label)
        except InvalidName as exc:
            _fail(f"field 'kek_label' is not a valid KEK label: {exc.message}")
        if not isinstance(self.kek_id, str) or _KEK_ID.fullmatch(self.kek_id) is None:
            _fail(
                "field 'kek_id' must be lowercase hex with an even number of digits, "
                f"2..{KEK_ID_MAX_HEX} characters"
            )
        _check_enum("mechanism", self.mechanism, Mechanism)
        if type(self.key_bytes) is not int or self.key_bytes not in KEY_BYTES_ALLOWED:
            _fail("field 'key_bytes' must be the integer 32 or 64")
        if type(self.wrapped_key) is not bytes:
            _fail("field 'wrapped_key' must be bytes")
        if len(self.wrapped_key) != wrapped_length(self.key_bytes):
            _fail(
                f"field 'wrapped_key' must decode to {wrapped_length(self.key_bytes)} bytes "
                f"for key_bytes={self.key_bytes} (RFC 5649), got {len(self.wrapped_key)}"
            )
        if (
            not isinstance(self.cipher, str)
            or len(self.cipher) > CIPHER_MAX
            or _CIPHER.fullmatch(self.cipher) is None
        ):
            _fail(
                "field 'cipher' must be a dm-crypt cipher specification such as "
                f"'aes-xts-plain64' (at most {CIPHER_MAX} characters)"
            )
        _check_enum("state", self.state, TokenState)
        _check_created(self.created)
        if type(self.auto_unlock) is not bool:
            _fail("field 'auto_unlock' must be a boolean")
        _check_int("generation", self.generation, 1, MAX_JSON_INT)

    def wrapped(self) -> WrappedKey:
        """The wrapped key in the form the HSM backend takes for unwrapping."""
        return WrappedKey(
            kek_label=self.kek_label,
            kek_id=self.kek_id,
            mechanism=self.mechanism,
            blob=self.wrapped_key,
            key_bytes=self.key_bytes,
        )

    def with_state(self, state: TokenState) -> WkdToken:
        return dataclasses.replace(self, state=state)

    def __repr__(self) -> str:
        # The blob plus a stolen HSM PIN is all an attacker needs: show its length only.
        return (
            f"WkdToken(version={self.version}, backend={self.backend.value!r}, "
            f"kek_label={self.kek_label!r}, kek_id={self.kek_id!r}, "
            f"mechanism={self.mechanism.value!r}, "
            f"wrapped_key=<{len(self.wrapped_key)} bytes>, key_bytes={self.key_bytes}, "
            f"cipher={self.cipher!r}, state={self.state.value!r}, "
            f"created={self.created!r}, auto_unlock={self.auto_unlock}, "
            f"generation={self.generation})"
        )


def _check_int(field: str, value: object, low: int, high: int) -> None:
    # `type(...) is int`: bool is a subclass of int, and JSON true must not pass as 1.
    if type(value) is not int:
        _fail(f"field {field!r} must be an integer")
    if not low <= value <= high:
        _fail(f"field {field!r} must be between {low} and {high}")


def _check_enum(field: str, value: object, enum_type: type[Backend | Mechanism | TokenState]
                ) -> None:
    if not isinstance(value, enum_type):
        _fail(f"field {field!r} must be a {enum_type.__name__}")


def _check_created(value: object) -> None:
    if not isinstance(value, str) or _CREATED.fullmatch(value) is None:
        _fail("field 'created' must be an RFC 3339 UTC time like 2026-11-28T09:05:10Z")
    try:
        datetime.strptime(value, _CREATED_FORMAT)
    except ValueError:
        _fail("field 'created' is not a valid calendar date and time")


# --- parsing ----------------------------------------------------------------------------


def _nesting_depth_exceeds(text: str, limit: int) -> bool:
    """True if brackets outside JSON strings nest deeper than `limit`. Runs before json.loads
    so hostile input cannot drive the decoder into RecursionError."""
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _reject_constant(name: str) -> NoReturn:
    _fail(f"token JSON contains the non-standard constant {name}")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json-c and Python's json keep the last of duplicate keys silently; two readers could
    # then disagree about one header. Refuse duplicates instead.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            _fail(f"token JSON has a key more than once: {_describe_keys([key])}")
        result[key] = value
    return result


def _describe_keys(keys: list[str]) -> str:
    shown = [repr(key) for key in keys if _PRINTABLE_KEY.fullmatch(key)][:8]
    odd = len(keys) - len(shown)
    if odd:
        shown.append(f"{odd} other(s)")
    return ", ".join(shown)


def _decode_json(text: object) -> object:
    if isinstance(text, bytes | bytearray):
        if len(text) > MAX_TOKEN_JSON:
            _fail(f"token JSON is larger than {MAX_TOKEN_JSON} bytes")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            _fail("token JSON is not valid UTF-8")
    if not isinstance(text, str):
        _fail("token JSON must be str or bytes")
    if len(text) > MAX_TOKEN_JSON:
        _fail(f"token JSON is larger than {MAX_TOKEN_JSON} characters")
    if _nesting_depth_exceeds(text, MAX_NESTING):
        _fail(f"token JSON nests deeper than {MAX_NESTING} levels")
    try:
        return json.loads(
            text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant
        )
    except InvalidToken:
        raise
    except (ValueError, RecursionError):
        # JSONDecodeError and the int-digits limit are ValueErrors; their text quotes the
        # input, so it is not passed on.
        _fail("token is not valid JSON")


def _get_str(obj: dict[str, object], field: str) -> str:
    value = obj[field]
    if not isinstance(value, str):
        _fail(f"field {field!r} must be a string")
    return value


def _get_enum(obj: dict[str, object], field: str, enum_type: type[_E]) -> _E:
    value = _get_str(obj, field)
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in enum_type)
        _fail(f"field {field!r} must be one of {allowed}")


def _check_keyslots(value: object) -> None:
    # wkd writes "keyslots": [] (the wrapped key opens no keyslot: the VK is verified against
    # the LUKS2 digest). An administrator may still assign the token to a recovery keyslot
    # with `cryptsetup token assign`; that must not make the volume unopenable, so any list
    # of valid keyslot numbers is accepted (and not preserved by render_token).
    if not isinstance(value, list):
        _fail("field 'keyslots' must be an array")
    if len(value) > LUKS2_KEYSLOTS_MAX:
        _fail(f"field 'keyslots' has more than {LUKS2_KEYSLOTS_MAX} entries")
    for slot in value:
        if (
            not isinstance(slot, str)
            or _KEYSLOT.fullmatch(slot) is None
            or int(slot) >= LUKS2_KEYSLOTS_MAX
        ):
            _fail(
                "field 'keyslots' must contain keyslot numbers as strings "
                f"('0'..'{LUKS2_KEYSLOTS_MAX - 1}')"
            )


def _decode_wrapped_key(obj: dict[str, object]) -> bytes:
    text = _get_str(obj, "wrapped_key")
    try:
        # validate=True: refuse characters outside the standard alphabet and bad padding
        # rather than silently skipping them.
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        _fail("field 'wrapped_key' is not valid standard padded base64")
    # One spelling per blob: refuse non-zero padding bits, which decode to the same bytes.
    if base64.b64encode(raw).decode("ascii") != text:
        _fail("field 'wrapped_key' is not canonical base64")
    return raw


def parse_token(text: str | bytes) -> WkdToken:
    """Parse and validate the JSON of a wkd token. Raises InvalidToken and nothing else."""
    obj = _decode_json(text)
    if not isinstance(obj, dict):
        _fail("token JSON must be an object")
    if "type" in obj and obj["type"] != TOKEN_TYPE:
        _fail(f"field 'type' must be {TOKEN_TYPE!r}")
    # The version comes before the key set: a newer schema may add, drop or change any
    # other field, and "unsupported version" is the message that tells the admin why.
    version = obj.get("version")
    if type(version) is int and version > SCHEMA_VERSION:
        _fail(f"unsupported token schema version {version}")
    missing = sorted(_FIELDS - obj.keys())
    if missing:
        _fail(f"token is missing field(s): {', '.join(missing)}")
    unknown = sorted(obj.keys() - _FIELDS)
    if unknown:
        _fail(f"token has unknown field(s): {_describe_keys(unknown)}")
    _check_keyslots(obj["keyslots"])
    _check_int("version", version, 1, SCHEMA_VERSION)
    assert isinstance(version, int)
    created = obj["created"]
    _check_created(created)
    assert isinstance(created, str)
    for field in ("key_bytes", "generation"):
        if type(obj[field]) is not int:
            _fail(f"field {field!r} must be an integer")
    auto_unlock = obj["auto_unlock"]
    if type(auto_unlock) is not bool:
        _fail("field 'auto_unlock' must be a boolean")
    key_bytes = obj["key_bytes"]
    generation = obj["generation"]
    assert isinstance(key_bytes, int)
    assert isinstance(generation, int)
    return WkdToken(
        version=version,
        backend=_get_enum(obj, "backend", Backend),
        kek_label=_get_str(obj, "kek_label"),
        kek_id=_get_str(obj, "kek_id"),
        mechanism=_get_enum(obj, "mechanism", Mechanism),
        wrapped_key=_decode_wrapped_key(obj),
        key_bytes=key_bytes,
        cipher=_get_str(obj, "cipher"),
        state=_get_enum(obj, "state", TokenState),
        created=created,
        auto_unlock=auto_unlock,
        generation=generation,
    )


def render_token(token: WkdToken) -> str:
    """The token's JSON as stored in the LUKS2 header (compact, keys in schema order)."""
    obj: dict[str, object] = {
        "type": TOKEN_TYPE,
        "keyslots": [],
        "version": token.version,
        "backend": token.backend.value,
        "kek_label": token.kek_label,
        "kek_id": token.kek_id,
        "mechanism": token.mechanism.value,
        "wrapped_key": base64.b64encode(token.wrapped_key).decode("ascii"),
        "key_bytes": token.key_bytes,
        "cipher": token.cipher,
        "state": token.state.value,
        "created": token.created,
        "auto_unlock": token.auto_unlock,
        "generation": token.generation,
    }
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


def is_wkd_token_json(text: str | bytes) -> bool:
    """Cheap test for listing: is this a token object whose "type" is "wkd"? It does not
    validate the rest (parse_token does) and never raises."""
    try:
        obj = _decode_json(text)
    except InvalidToken:
        return False
    return isinstance(obj, dict) and obj.get("type") == TOKEN_TYPE


def format_created(now: datetime) -> str:
    """`now` (timezone-aware) as the token's RFC 3339 UTC form, whole seconds."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is required")
    return now.astimezone(UTC).strftime(_CREATED_FORMAT)


def new_token(
    wrapped: WrappedKey,
    *,
    cipher: str,
    auto_unlock: bool,
    generation: int = 1,
    state: TokenState = TokenState.ACTIVE,
    now: datetime | None = None,
) -> WkdToken:
    """A token for a freshly wrapped volume key. A rewrap passes generation=old+1 and
    state=STAGED (docs/token-format.md, "Rewrap protocol")."""
    return WkdToken(
        version=SCHEMA_VERSION,
        backend=Backend.PKCS11,
        kek_label=wrapped.kek_label,
        kek_id=wrapped.kek_id,
        mechanism=wrapped.mechanism,
        wrapped_key=wrapped.blob,
        key_bytes=wrapped.key_bytes,
        cipher=cipher,
        state=state,
        created=format_created(now if now is not None else datetime.now(UTC)),
        auto_unlock=auto_unlock,
        generation=generation,
    )


def rewrapped(current: WkdToken, wrapped: WrappedKey, generation: int) -> WkdToken:
    """The staged token a rewrap writes beside `current`: the same volume key, now wrapped
    by `wrapped`'s KEK, one generation on (docs/token-format.md, "Rewrap protocol")."""
    return dataclasses.replace(
        current,
        kek_label=wrapped.kek_label,
        kek_id=wrapped.kek_id,
        mechanism=wrapped.mechanism,
        wrapped_key=wrapped.blob,
        key_bytes=wrapped.key_bytes,
        state=TokenState.STAGED,
        generation=generation,
    )
