"""Table tests for wkd.names: which names are accepted, and which rule a rejection names."""

from __future__ import annotations

import pytest

from wkd.errors import InvalidArgument, InvalidName
from wkd.names import (
    default_mapping_name,
    validate_kek_label,
    validate_mapping_name,
    validate_uuid,
)

UUID = "3f1c2b4a-9d8e-4f7a-b6c5-0123456789ab"


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "data",
        "wkd-" + UUID,
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
    "text", [UUID, "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"]
)
def test_uuid_accepted(text):
    assert validate_uuid(text) == text


@pytest.mark.parametrize(
    "text",
    [
        UUID.upper(),
        UUID + "\n",
        " " + UUID,
        UUID.replace("-", ""),
        "{" + UUID + "}",
        "urn:uuid:" + UUID,
        UUID[:-1],
        UUID + "0",
        UUID[:-1] + "g",
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
    name = default_mapping_name(UUID)
    assert name == "wkd-" + UUID
    assert validate_mapping_name(name) == name


def test_default_mapping_name_refuses_bad_uuid():
    with pytest.raises(InvalidArgument):
        default_mapping_name("../../etc")
