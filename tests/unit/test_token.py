"""wkd.token: round trip, strict validation, and "InvalidToken or a valid token, nothing else"
for arbitrary and mutated input."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wkd.errors import InvalidToken
from wkd.model import Backend, Mechanism, TokenState, WrappedKey
from wkd.token import (
    MAX_TOKEN_JSON,
    SCHEMA_VERSION,
    TOKEN_TYPE,
    WkdToken,
    is_wkd_token_json,
    new_token,
    parse_token,
    render_token,
    wrapped_length,
)

BLOB = bytes(range(1, 73))  # 72 bytes: RFC 5649 output for a 64-byte key
BLOB_B64 = base64.b64encode(BLOB).decode()

EXAMPLE = {
    "type": "wkd",
    "keyslots": [],
    "version": 1,
    "backend": "pkcs11",
    "kek_label": "wkd-default",
    "kek_id": "a1b2c3d4",
    "mechanism": "aes-key-wrap-pad",
    "wrapped_key": BLOB_B64,
    "key_bytes": 64,
    "cipher": "aes-xts-plain64",
    "state": "active",
    "created": "2026-11-28T09:05:10Z",
    "auto_unlock": True,
    "generation": 1,
}


def example_json(**changes):
    obj = dict(EXAMPLE)
    obj.update(changes)
    return json.dumps(obj)


# --- strategies -------------------------------------------------------------------------

labels = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", fullmatch=True)
kek_ids = st.binary(min_size=1, max_size=64).map(bytes.hex)
key_sizes = st.sampled_from([32, 64])
ciphers = st.sampled_from(["aes-xts-plain64", "aes-cbc-essiv:sha256", "serpent-xts-plain64"])
times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)
).map(lambda moment: moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ"))


@st.composite
def tokens(draw):
    key_bytes = draw(key_sizes)
    return WkdToken(
        version=SCHEMA_VERSION,
        backend=draw(st.sampled_from(Backend)),
        kek_label=draw(labels),
        kek_id=draw(kek_ids),
        mechanism=draw(st.sampled_from(Mechanism)),
        wrapped_key=draw(st.binary(min_size=wrapped_length(key_bytes),
                                   max_size=wrapped_length(key_bytes))),
        key_bytes=key_bytes,
        cipher=draw(ciphers),
        state=draw(st.sampled_from(TokenState)),
        created=draw(times),
        auto_unlock=draw(st.booleans()),
        generation=draw(st.integers(min_value=1, max_value=2**53 - 1)),
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)

# Values of every JSON type, including the awkward ones (bool where an int is wanted,
# floats equal to valid ints, huge strings and integers, nested containers).
wrong_values = st.one_of(
    json_values,
    st.sampled_from([True, False, 1.0, 64.0, 0, -1, 2**64, 10**30, "", "1", "64", [], {}]),
    st.text(min_size=5000, max_size=6000),
)


def assert_parses_or_invalid(text):
    try:
        token = parse_token(text)
    except InvalidToken as exc:
        assert BLOB_B64 not in exc.message
        assert BLOB_B64[:16] not in exc.message
        return None
    # Anything that parses must survive a round trip unchanged.
    assert isinstance(token, WkdToken)
    assert parse_token(render_token(token)) == token
    return token


# --- round trip -------------------------------------------------------------------------


@given(tokens())
def test_round_trip(token):
    text = render_token(token)
    assert parse_token(text) == token
    assert parse_token(text.encode()) == token
    assert is_wkd_token_json(text)
    obj = json.loads(text)
    # What libcryptsetup requires of every token (LUKS2 format doc, "Tokens").
    assert obj["type"] == TOKEN_TYPE
    assert obj["keyslots"] == []
    assert base64.b64decode(obj["wrapped_key"], validate=True) == token.wrapped_key


def test_example_parses_to_expected_values():
    token = parse_token(example_json())
    assert token.version == 1
    assert token.backend is Backend.PKCS11
    assert token.kek_label == "wkd-default"
    assert token.kek_id == "a1b2c3d4"
    assert token.mechanism is Mechanism.AES_KEY_WRAP_PAD
    assert token.wrapped_key == BLOB
    assert token.key_bytes == 64
    assert token.cipher == "aes-xts-plain64"
    assert token.state is TokenState.ACTIVE
    assert token.created == "2026-11-28T09:05:10Z"
    assert token.auto_unlock is True
    assert token.generation == 1
    assert json.loads(render_token(token)) == EXAMPLE


def test_json_with_escaped_slashes_parses():
    # json-c may escape "/" as "\/" when it re-serializes the header; base64 contains "/".
    text = example_json(wrapped_key=base64.b64encode(b"\xff" * 72).decode())
    escaped = text.replace("/", "\\/")
    assert parse_token(escaped) == parse_token(text)


def test_keyslots_assigned_by_administrator_are_accepted():
    # `cryptsetup token assign` may add a recovery keyslot; the volume must stay openable.
    assert parse_token(example_json(keyslots=["0", "31"])) == parse_token(example_json())


def test_wrapped_and_with_state():
    token = parse_token(example_json())
    wrapped = token.wrapped()
    assert wrapped == WrappedKey(
        kek_label="wkd-default",
        kek_id="a1b2c3d4",
        mechanism=Mechanism.AES_KEY_WRAP_PAD,
        blob=BLOB,
        key_bytes=64,
    )
    staged = token.with_state(TokenState.STAGED)
    assert staged.state is TokenState.STAGED
    assert staged.generation == token.generation
    assert token.state is TokenState.ACTIVE  # frozen: the original is unchanged


def test_repr_hides_wrapped_key():
    token = parse_token(example_json())
    text = repr(token)
    assert "<72 bytes>" in text
    assert BLOB_B64 not in text
    assert repr(BLOB) not in text
    assert BLOB.hex() not in text
    assert "wkd-default" in text


def test_new_token():
    wrapped = WrappedKey("kek-2", "0a0b", Mechanism.AES_KEY_WRAP_PAD, bytes(40), 32)
    moment = datetime(2026, 11, 28, 10, 5, 10, 987654, tzinfo=timezone(timedelta(hours=1)))
    token = new_token(wrapped, cipher="aes-xts-plain64", auto_unlock=False, generation=3,
                      now=moment)
    assert token.created == "2026-11-28T09:05:10Z"  # converted to UTC, whole seconds
    assert token.state is TokenState.ACTIVE
    assert token.generation == 3
    assert token.version == SCHEMA_VERSION
    assert token.backend is Backend.PKCS11
    assert token.wrapped() == wrapped
    assert parse_token(render_token(token)) == token
    staged = new_token(wrapped, cipher="aes-xts-plain64", auto_unlock=True,
                       state=TokenState.STAGED)
    assert staged.state is TokenState.STAGED
    before = datetime.now(UTC).replace(microsecond=0)
    assert datetime.strptime(staged.created, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC) >= before


def test_new_token_refuses_naive_time():
    wrapped = WrappedKey("kek", "0a", Mechanism.AES_KEY_WRAP_PAD, bytes(40), 32)
    with pytest.raises(ValueError, match="timezone-aware"):
        new_token(wrapped, cipher="aes-xts-plain64", auto_unlock=False,
                  now=datetime(2026, 1, 1))


def test_new_token_refuses_inconsistent_blob():
    wrapped = WrappedKey("kek", "0a", Mechanism.AES_KEY_WRAP_PAD, bytes(72), 32)
    with pytest.raises(InvalidToken, match="wrapped_key"):
        new_token(wrapped, cipher="aes-xts-plain64", auto_unlock=False)


def test_wrapped_length_matches_rfc5649():
    # RFC 5649 §4.1: pad to a multiple of 8 octets, then one 8-octet block more.
    assert wrapped_length(32) == 40
    assert wrapped_length(64) == 72
    assert wrapped_length(1) == 16
    assert wrapped_length(9) == 24


# --- table of rejections ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"type": "luks2-wkd"}, "'type'"),
        ({"type": "WKD"}, "'type'"),
        ({"keyslots": "0"}, "'keyslots'"),
        ({"keyslots": [0]}, "'keyslots'"),
        ({"keyslots": ["32"]}, "'keyslots'"),
        ({"keyslots": ["01"]}, "'keyslots'"),
        ({"version": 0}, "'version'"),
        ({"version": True}, "'version'"),
        ({"version": 1.0}, "'version'"),
        ({"version": "1"}, "'version'"),
        ({"backend": "tpm2"}, "'backend'"),
        ({"backend": 1}, "'backend'"),
        ({"kek_label": ""}, "'kek_label'"),
        ({"kek_label": "-x"}, "'kek_label'"),
        ({"kek_label": "a/b"}, "'kek_label'"),
        ({"kek_label": "a" * 65}, "'kek_label'"),
        ({"kek_id": ""}, "'kek_id'"),
        ({"kek_id": "A1"}, "'kek_id'"),
        ({"kek_id": "abc"}, "'kek_id'"),
        ({"kek_id": "zz"}, "'kek_id'"),
        ({"kek_id": "ab" * 65}, "'kek_id'"),
        ({"mechanism": "aes-key-wrap"}, "'mechanism'"),
        ({"wrapped_key": BLOB_B64[:-4]}, "'wrapped_key'"),
        ({"wrapped_key": BLOB_B64 + "\n"}, "'wrapped_key'"),
        ({"wrapped_key": BLOB_B64.replace("A", "-")}, "'wrapped_key'"),
        ({"wrapped_key": base64.b64encode(bytes(71)).decode().rstrip("=")}, "'wrapped_key'"),
        ({"wrapped_key": BLOB_B64[:-2] + "=="}, "'wrapped_key'"),
        ({"wrapped_key": base64.b64encode(bytes(40)).decode()}, "'wrapped_key'"),
        ({"wrapped_key": base64.b64encode(bytes(71)).decode()}, "'wrapped_key'"),
        ({"wrapped_key": base64.urlsafe_b64encode(b"\xfb" * 72).decode()}, "'wrapped_key'"),
        ({"wrapped_key": 5}, "'wrapped_key'"),
        ({"key_bytes": 48}, "'key_bytes'"),
        ({"key_bytes": 32}, "'wrapped_key'"),  # blob is 72 bytes, 32-byte keys wrap to 40
        ({"key_bytes": 64.0}, "'key_bytes'"),
        ({"cipher": ""}, "'cipher'"),
        ({"cipher": "AES-XTS-PLAIN64"}, "'cipher'"),
        ({"cipher": "aes xts"}, "'cipher'"),
        ({"cipher": "a" * 65}, "'cipher'"),
        ({"state": "retired"}, "'state'"),
        ({"created": "2026-11-28 09:05:10Z"}, "'created'"),
        ({"created": "2026-11-28T09:05:10+00:00"}, "'created'"),
        ({"created": "2026-11-28T09:05:10.5Z"}, "'created'"),
        ({"created": "2026-02-30T09:05:10Z"}, "'created'"),
        ({"created": "2026-11-28T24:00:00Z"}, "'created'"),
        ({"created": 1764320710}, "'created'"),
        ({"auto_unlock": 1}, "'auto_unlock'"),
        ({"auto_unlock": "true"}, "'auto_unlock'"),
        ({"generation": 0}, "'generation'"),
        ({"generation": False}, "'generation'"),
        ({"generation": 2**53}, "'generation'"),
        ({"generation": 1.5}, "'generation'"),
    ],
)
def test_field_rejected_with_its_name(changes, field):
    with pytest.raises(InvalidToken) as info:
        parse_token(example_json(**changes))
    assert field in info.value.message
    assert BLOB_B64 not in info.value.message


def test_bool_for_int_in_valid_positions():
    # JSON true is not 1 and false is not 0 anywhere in the schema.
    for field in ("version", "key_bytes", "generation"):
        with pytest.raises(InvalidToken, match=field):
            parse_token(example_json(**{field: True}))


def test_newer_schema_version():
    with pytest.raises(InvalidToken) as info:
        parse_token(example_json(version=2, new_field="x"))
    assert info.value.message == "unsupported token schema version 2"


@pytest.mark.parametrize("field", sorted(EXAMPLE))
def test_missing_field(field):
    obj = dict(EXAMPLE)
    del obj[field]
    with pytest.raises(InvalidToken) as info:
        parse_token(json.dumps(obj))
    assert "missing" in info.value.message
    assert field in info.value.message


def test_unknown_field_named():
    with pytest.raises(InvalidToken) as info:
        parse_token(example_json(comment="hi"))
    assert "unknown field" in info.value.message
    assert "'comment'" in info.value.message


def test_unknown_field_with_odd_name_is_counted_not_echoed():
    with pytest.raises(InvalidToken) as info:
        parse_token(example_json(**{BLOB_B64: 1}))
    assert BLOB_B64[:8] not in info.value.message
    assert "1 other(s)" in info.value.message


def test_duplicate_key_rejected():
    text = example_json()[:-1] + ', "state": "staged"}'
    with pytest.raises(InvalidToken, match="more than once"):
        parse_token(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "null",
        "[]",
        '"wkd"',
        "{",
        "{}",
        example_json()[:-1],
        example_json().replace("1,", "NaN,", 1),
        example_json(generation=1).replace('"generation": 1', '"generation": Infinity'),
        "[" * 100_000,
        "[" * 1000 + "]" * 1000,
        '{"a":' * 50 + "1" + "}" * 50,
        " " * (MAX_TOKEN_JSON + 1),
        "1" * 5000,
        example_json(cipher="x" * MAX_TOKEN_JSON),
    ],
)
def test_garbage_is_invalid_token(text):
    with pytest.raises(InvalidToken):
        parse_token(text)
    assert is_wkd_token_json(text) is False


@pytest.mark.parametrize("data", [b"\xff\xfe", b"{\"type\":\"wkd\xc3\"}", bytearray(b"[]")])
def test_bad_bytes_are_invalid_token(data):
    with pytest.raises(InvalidToken):
        parse_token(data)


def test_error_message_does_not_quote_json_input():
    # json's own messages quote the document; they must not reach the caller.
    text = '{"wrapped_key": "' + BLOB_B64 + '" garbage'
    with pytest.raises(InvalidToken) as info:
        parse_token(text)
    assert BLOB_B64[:8] not in info.value.message


def test_is_wkd_token_json():
    assert is_wkd_token_json(example_json())
    assert is_wkd_token_json('{"type":"wkd","keyslots":[]}')  # cheap: not validated
    assert is_wkd_token_json(b'{"type":"wkd"}')
    assert not is_wkd_token_json('{"type":"systemd-tpm2","keyslots":["0"]}')
    assert not is_wkd_token_json('["wkd"]')
    assert not is_wkd_token_json("not json")


def test_constructor_validates():
    token = parse_token(example_json())
    with pytest.raises(InvalidToken, match="generation"):
        WkdToken(**{**{f: getattr(token, f) for f in token.__dataclass_fields__},
                    "generation": 0})
    with pytest.raises(InvalidToken, match="unsupported token schema version 7"):
        WkdToken(**{**{f: getattr(token, f) for f in token.__dataclass_fields__},
                    "version": 7})


# --- properties: arbitrary and mutated input --------------------------------------------


@given(st.text(max_size=300))
def test_arbitrary_text(text):
    assert_parses_or_invalid(text)
    assert isinstance(is_wkd_token_json(text), bool)


@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
    assert_parses_or_invalid(data)
    assert isinstance(is_wkd_token_json(data), bool)


@given(json_values)
def test_arbitrary_json(value):
    assert_parses_or_invalid(json.dumps(value))


@given(st.sampled_from(sorted(EXAMPLE)))
def test_mutation_drop_key(field):
    obj = dict(EXAMPLE)
    del obj[field]
    assert assert_parses_or_invalid(json.dumps(obj)) is None


@given(st.text(min_size=1, max_size=40).filter(lambda key: key not in EXAMPLE), json_values)
def test_mutation_add_key(key, value):
    obj = dict(EXAMPLE)
    obj[key] = value
    assert assert_parses_or_invalid(json.dumps(obj)) is None


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(EXAMPLE)), wrong_values)
def test_mutation_replace_value(field, value):
    obj = dict(EXAMPLE)
    obj[field] = value
    token = assert_parses_or_invalid(json.dumps(obj))
    if token is not None:
        # Only a replacement that is itself valid may parse.
        assert json.loads(render_token(token))[field] == value


@given(st.sampled_from(sorted(EXAMPLE)), st.integers(min_value=1, max_value=60))
def test_mutation_deep_nesting(field, depth):
    obj = dict(EXAMPLE)
    obj[field] = json.loads("[" * depth + "]" * depth)
    token = assert_parses_or_invalid(json.dumps(obj))
    # The one nested value that is valid: "keyslots": [].
    assert (token is not None) == (field == "keyslots" and depth == 1)


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n",
               max_size=120))
def test_mutation_base64(text):
    token = assert_parses_or_invalid(example_json(wrapped_key=text))
    if token is not None:
        assert base64.b64encode(token.wrapped_key).decode() == text


@given(st.data())
def test_mutation_truncate_or_corrupt_text(data):
    text = example_json()
    position = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    if data.draw(st.booleans()):
        mutated = text[:position]
    else:
        mutated = text[:position] + data.draw(st.characters()) + text[position + 1:]
    assert_parses_or_invalid(mutated)
    assert_parses_or_invalid(mutated.encode("utf-8", "surrogatepass"))
