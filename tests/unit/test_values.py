"""wkd.values: each type refuses what its validator refuses, and a held value is valid; the
validators' tables (which names are accepted, and which rule a rejection names)."""

from __future__ import annotations

import pytest

from wkd.errors import InvalidArgument, InvalidName
from wkd.values import (
    ALLOWED_KEY_BYTES,
    DevicePath,
    KekLabel,
    KeySize,
    LuksLabel,
    MappingName,
    VolumeUuid,
    parse_volume_ref,
    validate_kek_label,
    validate_mapping_name,
    validate_uuid,
)

UUID = "4f6c2a8e-3c1b-4d0e-9a57-0d1f3c2b1a00"


def test_types_are_their_text() -> None:
    assert KekLabel("rotation-2026") == "rotation-2026"
    assert isinstance(MappingName("data"), str)
    assert VolumeUuid(UUID).default_mapping == "wkd-" + UUID
    assert isinstance(VolumeUuid(UUID).default_mapping, MappingName)


@pytest.mark.parametrize("bad", ["", "-x", ".hidden", "a b", "x" * 65, None, 3])
def test_kek_label_refused(bad: object) -> None:
    with pytest.raises(InvalidName):
        KekLabel(bad)


@pytest.mark.parametrize("bad", ["control", "", ".", "..", "a/b", "-x", "x" * 128, "a b"])
def test_mapping_name_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        MappingName(bad)


@pytest.mark.parametrize("bad", ["dev/sdb", "/dev/\0x", "/" + "a" * 4096, "", None])
def test_device_path_refused(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        DevicePath(bad)


def test_volume_ref() -> None:
    assert isinstance(parse_volume_ref("/dev/vdb"), DevicePath)
    assert parse_volume_ref("UUID=" + UUID.upper()) == UUID
    assert isinstance(parse_volume_ref(UUID), VolumeUuid)
    with pytest.raises(InvalidArgument):
        parse_volume_ref("sdb")
    with pytest.raises(InvalidArgument):
        parse_volume_ref(7)


def test_key_size() -> None:
    assert KeySize.from_bits(512).key_bytes == 64
    for bad in (128, True, "512", 0):
        with pytest.raises(InvalidArgument):
            KeySize.from_bits(bad)


def test_key_sizes_have_one_source() -> None:
    from wkd import config, token

    assert {32, 64} == ALLOWED_KEY_BYTES
    assert set(token.KEY_BYTES_ALLOWED) == ALLOWED_KEY_BYTES
    assert set(config.ALLOWED_KEY_BITS) == {int(k) for k in KeySize}


@pytest.mark.parametrize("good", ["", "data", "x" * 47, "\u00e9" * 23])
def test_luks_label_accepted(good: str) -> None:
    assert LuksLabel(good) == good


@pytest.mark.parametrize("bad", ["x" * 48, "\u00e9" * 24, "a\0b", None, 3])
def test_luks_label_refused(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        LuksLabel(bad)


# --- the validators' tables (formerly wkd/names.py) -------------------------------------

NAME_UUID = "3f1c2b4a-9d8e-4f7a-b6c5-0123456789ab"


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "data",
        "wkd-" + NAME_UUID,
        "luks-home_01",
        "A.b:c=d@e+f#g",
        "x" * 127,
        "...",  # only "." and ".." are path-special
        "a-",
        "_leading_underscore",
    ],
)
def test_mapping_name_accepted(name):
    assert validate_mapping_name(name) == name


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "1..127"),
        ("x" * 128, "1..127"),
        (".", "'.' or '..'"),
        ("..", "'.' or '..'"),
        ("a/b", "'/'"),
        ("/dev/mapper/x", "'/'"),
        ("-rf", "start with '-'"),
        ("a b", "may only contain"),
        ("a\nb", "may only contain"),
        ("name\n", "may only contain"),
        ("a\x00b", "may only contain"),
        ("h\u00e9", "may only contain"),
        ("a*b", "may only contain"),
        ("a$b", "may only contain"),
        ("a\\b", "may only contain"),
        (42, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_mapping_name_rejected(name, rule):
    with pytest.raises(InvalidName) as info:
        validate_mapping_name(name)
    assert rule in info.value.message


def test_mapping_name_message_shows_only_the_bad_character():
    with pytest.raises(InvalidName) as info:
        validate_mapping_name("ok" * 20 + "!" + "z" * 50)
    assert "'!'" in info.value.message
    assert "z" * 10 not in info.value.message


@pytest.mark.parametrize(
    "label",
    ["wkd-default", "k", "KEK_2026.11", "a" * 64, "0rotation", "x-"],
)
def test_kek_label_accepted(label):
    assert validate_kek_label(label) == label


@pytest.mark.parametrize(
    ("label", "rule"),
    [
        ("", "1..64"),
        ("a" * 65, "1..64"),
        ("-kek", "start with '-' or '.'"),
        (".kek", "start with '-' or '.'"),
        ("..", "start with '-' or '.'"),
        ("a/b", "may only contain"),
        ("a b", "may only contain"),
        ("a:b", "may only contain"),
        ("kek\n", "may only contain"),
        ("k\u00e9k", "may only contain"),
        (b"kek", "must be a string"),
    ],
)
def test_kek_label_rejected(label, rule):
    with pytest.raises(InvalidName) as info:
        validate_kek_label(label)
    assert rule in info.value.message


def test_invalid_name_is_an_invalid_argument():
    # The D-Bus layer maps InvalidName to its own error name, but callers catching
    # InvalidArgument must also see it.
    with pytest.raises(InvalidArgument):
        validate_kek_label("")


@pytest.mark.parametrize(
    "text",
    [NAME_UUID, "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"],
)
def test_uuid_accepted(text):
    assert validate_uuid(text) == text


@pytest.mark.parametrize(
    "text",
    [
        NAME_UUID.upper(),
        NAME_UUID + "\n",
        " " + NAME_UUID,
        NAME_UUID.replace("-", ""),
        "{" + NAME_UUID + "}",
        "urn:uuid:" + NAME_UUID,
        NAME_UUID[:-1],
        NAME_UUID + "0",
        NAME_UUID[:-1] + "g",
        "3f1c2b4a9-d8e-4f7a-b6c5-0123456789ab",
        "",
        None,
        12,
    ],
)
def test_uuid_rejected(text):
    with pytest.raises(InvalidArgument) as info:
        validate_uuid(text)
    assert not isinstance(info.value, InvalidName)
    assert "canonical lowercase" in info.value.message


def test_default_mapping_name():
    name = VolumeUuid(NAME_UUID).default_mapping
    assert name == "wkd-" + NAME_UUID
    assert validate_mapping_name(name) == name
