"""The state directory: atomic files, this boot's mapping records, Format intents, and a typed
error (never an internal one) when the directory is full or read-only."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from wkd import errors
from wkd.core.facts import FormatIntent, MappingRecord
from wkd.disk.state import StateFiles
from wkd.model import Mechanism, WrappedKey
from wkd.token import new_token
from wkd.values import MappingName, VolumeUuid

U1 = VolumeUuid("4f6c2a8e-3c1b-4d0e-9a57-0d1f3c2b1a00")


def _token():
    wrapped = WrappedKey("kek-a", "0a", Mechanism.AES_KEY_WRAP_PAD, b"\x01" * 72, 64)
    return new_token(wrapped, cipher="aes-xts-plain64", auto_unlock=False)


def test_registry_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    state = StateFiles(str(tmp_path))
    assert state.load_registry() == {}
    state.save_registry({U1: "/dev/vdb"})
    assert json.loads((tmp_path / "volumes.json").read_text())["volumes"] == {U1: "/dev/vdb"}
    assert StateFiles(str(tmp_path)).load_registry() == {U1: "/dev/vdb"}
    (tmp_path / "volumes.json").write_text("{not json")
    assert state.load_registry() == {}  # a corrupt registry is not fatal: a rescan finds all
    (tmp_path / "volumes.json").write_text(json.dumps(
        {"volumes": {"not-a-uuid": "/dev/x", U1: "relative"}}))
    assert state.load_registry() == {}


def test_mapping_records_are_per_boot_and_per_name(tmp_path: Path) -> None:
    state = StateFiles(str(tmp_path))
    rec = MappingRecord(name=MappingName("data"), uuid=U1, device="/dev/vdb", backing_dev=64)
    state.add_mapping_record(rec)
    state.add_mapping_record(MappingRecord(MappingName("other"), U1, "/dev/vdc", 65))
    assert set(StateFiles(str(tmp_path)).mapping_records()) == {
        rec, MappingRecord(MappingName("other"), U1, "/dev/vdc", 65)}
    # A record from an earlier boot is ignored: its mapping died with that kernel.
    path = tmp_path / "mappings" / "other.json"
    path.write_text(path.read_text().replace(StateFiles(str(tmp_path))._boot, "old-boot"))
    assert state.mapping_records() == [rec]
    state.remove_mapping_record("data")
    assert state.mapping_records() == []


def test_format_intents_round_trip(tmp_path: Path) -> None:
    state = StateFiles(str(tmp_path))
    intent = FormatIntent(device="/dev/vdb", rdev=64, uuid=U1, token=_token(), label=None,
                          recovery=False, region=16 << 20, before="ab" * 32)
    state.add_format_intent(intent)
    assert StateFiles(str(tmp_path)).format_intents() == [intent]
    (tmp_path / "formats" / "junk.json").write_text("[]")
    assert state.format_intents() == [intent]  # a malformed record is skipped, not fatal
    state.remove_format_intent(U1)
    assert state.format_intents() == []


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> None:
    """Fill the file system under `directory` to the last block."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_full_state_directory_is_a_typed_error(tiny_tmpfs: Path) -> None:
    state = StateFiles(str(tiny_tmpfs))
    state.save_registry({U1: "/dev/vdb"})
    fill(tiny_tmpfs)
    with pytest.raises(errors.StateUnwritable, match="No space left"):
        state.save_registry({U1: "/dev/vdc"})
    with pytest.raises(errors.StateUnwritable):
        state.add_mapping_record(MappingRecord(MappingName("data"), U1, "/dev/vdb", 64))
    # The old file is intact, and no temporary file is left behind.
    assert state.load_registry() == {U1: "/dev/vdb"}
    assert not [p for p in tiny_tmpfs.rglob("*") if p.name.endswith(".tmp")]


def test_read_only_state_directory_is_a_typed_error(tiny_tmpfs: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with pytest.raises(errors.StateUnwritable, match="Read-only"):
        StateFiles(str(tiny_tmpfs)).save_registry({U1: "/dev/vdb"})
