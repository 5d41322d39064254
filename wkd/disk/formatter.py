"""Format, crash-atomic: build the whole header off the device, then write it in a safe order.

libcryptsetup's crypt_format writes the header to the device at once, and wkd's token only
in a second write: a kill between the two left a LUKS2 header with no wkd token, neither the
device as it was nor a wkd volume (issue 9.6). So Format here:

1. opens the device O_EXCL and keeps it open: the kernel refuses that while the device or
   any partition of it is mounted, mapped or claimed (block/bdev.c, bd_may_claim), and every
   byte wkd writes goes through that descriptor, so no write, undo included, ever reaches a
   device someone else holds (issue 10.4);
2. builds the complete header (LUKS2 header with the caller's UUID, the recovery keyslot if
   asked for, the wkd token) with libcryptsetup in an anonymous memory file (memfd) of the
   device's size, with the encryption sector size libcryptsetup would pick for the device
   itself, and checks it there (the token reads back, the digest accepts the key);
3. records a `FormatIntent` in the state directory (a full or read-only state directory
   refuses Format here, before the device is touched);
4. writes the header area except the two 4 KiB binary headers, then the secondary binary
   header, then the primary, with fsync after each: until the secondary lands no LUKS2
   header on the device verifies (the JSON areas changed under any old one), and from then
   on the device is a complete wkd volume (libcryptsetup loads the secondary copy while the
   primary is not yet written; LUKS2 On-Disk Format, §2 "header redundancy");
5. checks the header on the device, and removes the intent.

A failure after writing began puts the saved bytes back through the same exclusive
descriptor. A kill leaves the intent for `plan_recovery` (wkd/core/format.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import struct
from collections.abc import Iterator

from wkd import errors
from wkd.core.facts import Checkpoint, DeviceFacts, DeviceKind, FormatIntent, FormatRequest, Header
from wkd.disk import luks2
from wkd.disk.headers import load_header
from wkd.disk.state import StateFiles
from wkd.secret import SecretKey
from wkd.token import render_token
from wkd.values import VolumeUuid

log = logging.getLogger("wkd.format")

# <linux/fs.h>: BLKSSZGET = _IO(0x12, 104), BLKPBSZGET = _IO(0x12, 123).
_BLKSSZGET = 0x1268
_BLKPBSZGET = 0x127B
_SECTOR = 512
_MAX_SECTOR = 4096
_BINARY_HEADER = 4096


@contextlib.contextmanager
def exclusive(device: DeviceFacts) -> Iterator[int]:
    """A read-write descriptor on `device`, O_EXCL for a block device; DeviceInUse if busy,
    and DeviceNotFound if the path now names another device."""
    flags = os.O_RDWR | os.O_CLOEXEC
    if device.kind is DeviceKind.BLOCK:
        flags |= os.O_EXCL
    try:
        fd = os.open(device.path, flags)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise errors.DeviceInUse(f"{device.path} is in use (another program holds it "
                                     "exclusively); wkd will not write to it") from None
        raise errors.DeviceNotFound(f"{device.path} cannot be opened ({e.strerror})") from None
    try:
        if os.fstat(fd).st_rdev != device.rdev:
            raise errors.DeviceNotFound(f"{device.path} now names another device")
        yield fd
    finally:
        os.close(fd)


def sector_size_for(fd: int, kind: DeviceKind) -> int:
    """The encryption sector size libcryptsetup 2.6 picks for a device when none is asked
    for (lib/utils_device.c, device_optimal_encryption_sector_size): the logical block size,
    raised to the physical one when that is larger and at most 4096; 4096 for files."""
    if kind is DeviceKind.FILE:
        return _MAX_SECTOR
    try:
        logical = struct.unpack("i", fcntl.ioctl(fd, _BLKSSZGET, b"\0" * 4))[0]
        physical = struct.unpack("I", fcntl.ioctl(fd, _BLKPBSZGET, b"\0" * 4))[0]
    except OSError:
        return _SECTOR
    if logical >= _MAX_SECTOR:
        return _SECTOR if int(logical) % _MAX_SECTOR else _MAX_SECTOR
    if (logical <= 0 or logical >= physical or physical <= _SECTOR or physical > _MAX_SECTOR
            or physical % logical):
        return max(int(logical), _SECTOR)
    return int(physical)


def build_image(spec: FormatRequest, key: SecretKey, recovery: SecretKey | None,
                sector_size: int) -> bytes:
    """The device's first bytes (up to the data offset) as Format will write them."""
    cipher, _, mode = spec.cipher.partition("-")
    mem = os.memfd_create("wkd-format", os.MFD_CLOEXEC)
    try:
        os.ftruncate(mem, spec.device.size)
        path = f"/proc/self/fd/{mem}"
        with luks2.Luks2Device.format(path, key, cipher=cipher, cipher_mode=mode,
                                      label=spec.label, sector_size=sector_size,
                                      uuid=spec.uuid) as dev:
            if recovery is not None:
                dev.add_passphrase_keyslot(key, recovery, pbkdf=spec.recovery_pbkdf,
                                           time_ms=spec.recovery_pbkdf_ms)
            dev.token_json_set(None, render_token(spec.token))
            region = dev.data_offset
        _check_written(path, spec, key)
        return os.pread(mem, region, 0)
    finally:
        os.close(mem)


def _check_written(path: str, spec: FormatRequest, key: SecretKey) -> Header:
    """The header at `path` has our UUID, our token, and a digest that accepts the key."""
    header = load_header(path)
    if header.uuid != spec.uuid or [t.wrapped_key for t in header.tokens.values()] != [
            spec.token.wrapped_key]:
        raise errors.Failed("the written token did not read back")
    with luks2.Luks2Device.open(path) as dev:
        if not dev.verify_volume_key(key):
            raise errors.KeyMismatch("the new header does not accept the volume key")
    return header


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def commit(fd: int, image: bytes, checkpoint: Checkpoint) -> None:
    """Write `image` so that the device is never half a volume for libcryptsetup."""
    hdr_size = struct.unpack(">Q", image[8:16])[0]
    _pwrite_all(fd, image[_BINARY_HEADER:hdr_size], _BINARY_HEADER)
    _pwrite_all(fd, image[hdr_size + _BINARY_HEADER:], hdr_size + _BINARY_HEADER)
    os.fsync(fd)
    checkpoint("body-written")
    _pwrite_all(fd, image[hdr_size:hdr_size + _BINARY_HEADER], hdr_size)
    os.fsync(fd)
    checkpoint("secondary-written")
    _pwrite_all(fd, image[:_BINARY_HEADER], 0)
    os.fsync(fd)
    checkpoint("primary-written")


def _restore(fd: int, before: bytes, path: str) -> bool:
    try:
        _pwrite_all(fd, before, 0)
        os.fsync(fd)
        return True
    except OSError as e:
        log.error("could not restore the start of %s after a failed Format: %s", path,
                  e.strerror)
        return False


def format_device(spec: FormatRequest, key: SecretKey, recovery: SecretKey | None,
                  state: StateFiles, checkpoint: Checkpoint) -> Header:
    """Steps 1-5 of the module docstring. Returns the header as it reads from the device."""
    with exclusive(spec.device) as fd:
        image = build_image(spec, key, recovery, sector_size_for(fd, spec.device.kind))
        before = os.pread(fd, len(image), 0)
        intent = FormatIntent(
            device=spec.device.path, rdev=spec.device.rdev, uuid=spec.uuid, token=spec.token,
            label=spec.label, recovery=recovery is not None, region=len(image),
            before=hashlib.sha256(before).hexdigest())
        state.add_format_intent(intent)  # StateUnwritable: the device is untouched
        checkpoint("journaled")
        try:
            commit(fd, image, checkpoint)
            header = _check_written(spec.device.path, spec, key)
        except BaseException:
            if _restore(fd, before, spec.device.path):
                _forget_intent(state, spec.uuid)
            raise
    _forget_intent(state, spec.uuid)
    return header


def roll_back(intent: FormatIntent, device: DeviceFacts) -> None:
    """Erase the region an interrupted Format had begun to write (it cannot be finished)."""
    with exclusive(device) as fd:
        _pwrite_all(fd, bytes(intent.region), 0)
        os.fsync(fd)


def region_digest(path: str, length: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(length)).hexdigest()


def _forget_intent(state: StateFiles, uuid: VolumeUuid) -> None:
    try:
        state.remove_format_intent(uuid)
    except errors.StateUnwritable as e:
        # The Format stands; the next start finds the intent and sees the volume complete.
        log.warning("Format of volume %s is done, but its record stays: %s", uuid, e)
