"""Format refuses before it writes: a device in use through a partition or another opener
(issue 10.4), and a state directory it cannot write (issue 9.8), leave every byte as it was."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.host import engine_helpers as h
from tests.host.test_state import fill
from wkd import errors
from wkd.model import FormatOptions
from wkd.values import DevicePath

_skip = h.need_tools()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")


def digest(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_mbr(img: Path, start: int, sectors: int) -> None:
    """One Linux partition in a DOS partition table (MBR: entry 1 at byte 446, type 0x83,
    LBA start and length; boot signature 0x55AA at 510)."""
    entry = (bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + start.to_bytes(4, "little")
             + sectors.to_bytes(4, "little"))
    with open(img, "r+b") as f:
        f.seek(446)
        f.write(entry)
        f.seek(510)
        f.write(b"\x55\xaa")


@pytest.fixture
def partitioned_loop(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A 64 MiB loop device with one partition (losetup -P): (whole disk, partition)."""
    img = h.make_image(tmp_path / "disk.img", 64 * 1024 * 1024)
    write_mbr(img, start=2048, sectors=64 * 2048 - 2048)
    res = subprocess.run(["losetup", "-P", "--find", "--show", str(img)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"no loop device available: {res.stderr.strip()}")
    dev = res.stdout.strip()
    try:
        part = f"{dev}p1"
        subprocess.run(["udevadm", "settle"], check=False, capture_output=True)
        for _ in range(50):
            if os.path.exists(part):
                break
            subprocess.run(["partx", "-a", dev], check=False, capture_output=True)
        if not os.path.exists(part):
            pytest.skip(f"the kernel did not create {part}")
        yield dev, part
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


async def test_whole_disk_with_a_mounted_partition_is_in_use(
        tmp_path: Path, partitioned_loop: tuple[str, str]) -> None:
    disk, part = partitioned_loop
    subprocess.run(["mkfs.ext4", "-q", "-F", part], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", part, str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a loop partition here: {res.stderr.strip()}")
    eng = h.new_engine(tmp_path / "state", allow_files=False)
    await eng.start()
    try:
        (mnt / "data").write_bytes(os.urandom(4096))
        subprocess.run(["sync"], check=True)
        before = digest(disk)
        with pytest.raises(errors.DeviceInUse, match="mounted"):
            await eng.format(DevicePath(disk), None, FormatOptions(force=True))
        assert digest(disk) == before, "Format wrote to a device in use"
        assert not list((tmp_path / "state" / "formats").glob("*.json"))
    finally:
        await eng.stop()
        subprocess.run(["umount", str(mnt)], check=False)


async def test_a_device_another_program_holds_exclusively_is_in_use(
        tmp_path: Path, partitioned_loop: tuple[str, str]) -> None:
    disk, _part = partitioned_loop
    eng = h.new_engine(tmp_path / "state", allow_files=False)
    await eng.start()
    holder = os.open(disk, os.O_RDONLY | os.O_EXCL)  # as a filesystem or dm would hold it
    try:
        before = digest(disk)
        with pytest.raises(errors.DeviceInUse, match="exclusively"):
            await eng.format(DevicePath(disk), None, FormatOptions(force=True))
        assert digest(disk) == before
    finally:
        os.close(holder)
        await eng.stop()


@pytest.fixture
def tiny_state(tmp_path: Path) -> Iterator[Path]:
    """A state directory on a 4 MiB tmpfs with the embedded token already in it."""
    mnt = tmp_path / "state"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("how", ["full", "read-only"])
async def test_format_with_an_unwritable_state_directory_writes_nothing(
        tmp_path: Path, tiny_state: Path, how: str) -> None:
    """Issue 9.8: the typed error comes before the disk is touched (the Format record, which
    makes Format crash-atomic, cannot be written), never an internal error after it."""
    image = h.make_image(tmp_path / "vol.img")
    with open(image, "r+b") as f:
        f.write(os.urandom(17 * 1024 * 1024))
    eng = h.new_engine(tiny_state)
    await eng.start()  # creates the embedded token while there is room
    try:
        first = await eng.format(DevicePath(str(image)), None, FormatOptions(force=True))
        await eng._ctx.flush()
        before = digest(image)
        if how == "full":
            fill(tiny_state)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(tiny_state)], check=True)
        with pytest.raises(errors.StateUnwritable) as e:
            await eng.format(DevicePath(str(image)), None, FormatOptions(force=True))
        assert "state directory" in e.value.message
        assert digest(image) == before, "a refused Format changed the device"
        # The volume Format made before is still there and still listed.
        assert first.uuid in {v.uuid for v in await eng.list_volumes()}
    finally:
        if how == "read-only":
            subprocess.run(["mount", "-o", "remount,rw", str(tiny_state)], check=False)
        await eng.stop()
