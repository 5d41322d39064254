"""The header cache never serves a stale header, nor one libcryptsetup would refuse (issue 9.3)."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from tests.host import engine_helpers as h
from wkd import errors
from wkd.disk.headers import HeaderCache, read_raw
from wkd.model import FormatOptions, LockOptions, UnlockOptions, VolumeCondition
from wkd.values import DevicePath, KekLabel, LuksLabel, VolumeUuid

_skip = h.need_tools()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")


async def _formatted(tmp_path: Path, name: str = "v.img") -> Path:
    eng = h.new_engine(tmp_path / "state")
    await eng.start()
    try:
        img = h.make_image(tmp_path / name)
        await eng.format(DevicePath(str(img)), None, FormatOptions(label=LuksLabel("one")))
    finally:
        await eng.stop()
    return img


def flip_in_both_copies(img: Path, offset: int) -> None:
    """Flip one bit at `offset` of the primary header and at the same offset of the secondary
    (the first 512 bytes, which the old cache keyed on, stay as they were)."""
    with open(img, "r+b") as f:
        hdr_size = struct.unpack(">Q", f.read(16)[8:16])[0]
        for base in (0, hdr_size):
            f.seek(base + offset)
            byte = f.read(1)[0]
            f.seek(base + offset)
            f.write(bytes([byte ^ 0x01]))


async def test_cache_hits_and_sees_outside_changes(tmp_path: Path) -> None:
    img = await _formatted(tmp_path)
    cache = HeaderCache()
    first = cache.read(str(img))
    assert first.header is not None
    assert cache.read(str(img)) is first, "an unchanged header must be served from the cache"
    # An administrator changes the header behind wkd's back (cryptsetup, another process).
    subprocess.run(["cryptsetup", "config", "--label", "two", str(img)], check=True)
    second = cache.read(str(img))
    assert second is not first and second.header is not None and second.header.label == "two"
    # A token added by cryptsetup is seen too.
    (tok,) = h.wkd_tokens(img).values()
    doc = dict(tok, generation=5)
    subprocess.run(["cryptsetup", "token", "import", str(img)], input=json.dumps(doc),
                   text=True, check=True)
    third = cache.read(str(img))
    assert third.header is not None
    assert sorted(t.generation for t in third.header.tokens.values()) == [1, 5]


@pytest.mark.parametrize("offset", [1000, 4096 + 100, 12000])
async def test_a_header_libcryptsetup_refuses_is_never_served_from_the_cache(
        tmp_path: Path, offset: int) -> None:
    """Issue 9.3: flip a bit past the first 512 bytes in both copies. luksDump refuses the
    device; the cache, warm before the flip, must not answer with the old header."""
    img = await _formatted(tmp_path)
    cache = HeaderCache()
    good = cache.read(str(img))
    assert good.header is not None
    flip_in_both_copies(img, offset)
    dump = subprocess.run(["cryptsetup", "luksDump", str(img)], capture_output=True, text=True)
    assert dump.returncode != 0, "the bit flip should make libcryptsetup refuse the header"
    for _ in range(2):  # and never cached as damaged either: asked again, same answer
        read = cache.read(str(img))
        assert read.header is None and read.damaged
        assert read.raw_uuid == good.header.uuid, "the UUID field is still readable"
    flip_in_both_copies(img, offset)  # flipped back: the bytes loaded before load again
    assert cache.read(str(img)).header is not None


def test_not_luks_is_neither_a_header_nor_damaged(tmp_path: Path) -> None:
    img = h.make_image(tmp_path / "x.img")
    with open(img, "r+b") as f:
        f.write(b"not luks")
    read = HeaderCache().read(str(img))
    assert read.header is None and not read.damaged and read.raw_uuid is None
    assert not read_raw(str(img)).luks2


def test_luks1_is_not_a_luks2_header(tmp_path: Path) -> None:
    img = h.make_image(tmp_path / "l1.img")
    subprocess.run(["cryptsetup", "luksFormat", "--type", "luks1", "-q", "--pbkdf-force-iterations",
                    "1000", "--key-file", "-", str(img)], input=b"pw", check=True,
                   capture_output=True)
    read = HeaderCache().read(str(img))
    assert read.header is None and not read.damaged


async def test_the_key_covers_both_header_copies(tmp_path: Path) -> None:
    img = await _formatted(tmp_path)
    before = read_raw(str(img)).key
    with open(img, "r+b") as f:
        hdr_size = struct.unpack(">Q", f.read(16)[8:16])[0]
        f.seek(2 * hdr_size - 1)  # the last byte of the secondary JSON area
        last = f.read(1)[0]
        f.seek(2 * hdr_size - 1)
        f.write(bytes([last ^ 0x80]))
    assert read_raw(str(img)).key != before


async def test_a_damaged_header_is_damaged_in_every_view_and_refused(tmp_path: Path) -> None:
    """Issue 9.3 through the engine: after the flip, no view serves the old header and no
    operation acts on it (before, Rewrap to the current KEK answered success)."""
    eng = h.new_engine(tmp_path / "state")
    await eng.start()
    try:
        img = h.make_image(tmp_path / "v.img")
        info = await eng.format(DevicePath(str(img)), None, FormatOptions())
        uuid = VolumeUuid(info.uuid)
        assert (await eng.get_volume(uuid)).condition is VolumeCondition.OK  # cache warm
        flip_in_both_copies(img, 1000)
        (listed,) = [v for v in await eng.list_volumes() if v.uuid == uuid]
        for view in (listed, await eng.get_volume(uuid),
                     await eng.get_volume(DevicePath(str(img)))):
            assert view.condition is VolumeCondition.DAMAGED
            assert "libcryptsetup refuses" in view.condition_detail
            assert view.kek_label == "", "nothing from the refused header is shown"
        before = h.header_bytes(img)
        for ref in (uuid, DevicePath(str(img))):
            for call in (eng.unlock(ref, UnlockOptions(verify_only=True)),
                         eng.rewrap(ref, KekLabel("wkd-default")),
                         eng.lock(ref, LockOptions())):
                with pytest.raises(errors.VolumeDamaged):
                    await call
        assert h.header_bytes(img) == before
    finally:
        await eng.stop()
