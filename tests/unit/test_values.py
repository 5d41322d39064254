"""wkd.values: each type refuses what its validator refuses, and a held value is valid."""

from __future__ import annotations

import pytest

from wkd.errors import InvalidArgument, InvalidName
from wkd.values import (
    DevicePath,
    KekLabel,
    KeySize,
    MappingName,
    VolumeUuid,
    parse_volume_ref,
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
