"""Reading a device's LUKS2 header: believed only when libcryptsetup loads it, cached safely.

A full read (libcryptsetup crypt_load: both binary headers, both JSON areas, their SHA-256
checksums) costs about 0.45 ms; listing 1000 volumes that way costs half a second per call,
so headers are cached. The cache must never serve a header libcryptsetup would now refuse:
a cache keyed on the first 512 bytes served a header whose JSON area had a bit flipped at
offset 1000 (both copies), while `cryptsetup luksDump` called the device invalid (issue 9.3).

So the cache key covers every byte crypt_load checks: both header copies whole, the binary
header and JSON area of each (LUKS2 On-Disk Format, §2: the primary at offset 0 and the
secondary at offset hdr_size, each hdr_size bytes with its checksum over all of them), plus
the device size. Identical bytes load identically, so a hit is exactly as good as a load; any
change, by wkd, cryptsetup or an attacker, is a miss. Only headers that loaded are cached; a
refused one is re-read every time and reported as damaged (`HeaderRead.damaged`), never
served. Reading 32 KiB and hashing it costs about 0.05 ms.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from dataclasses import dataclass
from typing import Final

from wkd import errors
from wkd.core.facts import Header, HeaderRead
from wkd.disk import luks2
from wkd.token import TOKEN_TYPE, WkdToken, parse_token
from wkd.values import VolumeUuid

log = logging.getLogger("wkd.headers")

PRIMARY_MAGIC: Final = b"LUKS\xba\xbe"
SECONDARY_MAGIC: Final = b"SKUL\xba\xbe"
# The LUKS2 header size (binary header + JSON area) is one of these, and the secondary header
# sits at that offset (LUKS2 On-Disk Format, §2 and §3.1 "hdr_size").
HDR_SIZES: Final = tuple(0x4000 << i for i in range(9))  # 16 KiB .. 4 MiB
_BINARY_HEADER: Final = 4096
# struct luks2_hdr_disk: magic[6] version(u16 BE) hdr_size(u64 BE) ... uuid[40] at 168.
_UUID_OFFSET: Final = 168
_UUID_LEN: Final = 40


@dataclass(frozen=True, slots=True)
class RawHeader:
    """What the bytes say before libcryptsetup is asked: cheap, and not to be believed."""

    luks2: bool  # a LUKS version 2 magic in the primary or a secondary position
    key: bytes  # SHA-256 over both header copies and the device size ("" if not luks2)
    uuid: VolumeUuid | None  # the UUID field of the binary header with magic, if well-formed


def _uuid_field(binary: bytes) -> VolumeUuid | None:
    text = binary[_UUID_OFFSET:_UUID_OFFSET + _UUID_LEN].split(b"\0", 1)[0]
    try:
        return VolumeUuid(text.decode("ascii").lower())
    except (UnicodeDecodeError, errors.InvalidArgument):
        return None


def _binary_at(f: int, offset: int, magic: bytes) -> tuple[int, bytes] | None:
    """(hdr_size, binary header) of a LUKS2 header copy at `offset`, if one is there."""
    binary = os.pread(f, _BINARY_HEADER, offset)
    if len(binary) < 16 or binary[:6] != magic:
        return None
    version, hdr_size = struct.unpack(">HQ", binary[6:16])
    if version != 2:
        return None  # LUKS1 (or garbage): not a LUKS2 volume at all
    return hdr_size, binary


def read_raw(path: str) -> RawHeader:
    """Look at the header bytes of `path`. Raises OSError if it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        primary = _binary_at(fd, 0, PRIMARY_MAGIC)
        found = primary if primary is not None and primary[0] in HDR_SIZES else None
        if found is None:
            for offset in HDR_SIZES:
                secondary = _binary_at(fd, offset, SECONDARY_MAGIC)
                if secondary is not None:
                    found = (offset, secondary[1])
                    break
        if found is None:
            # Magic with an impossible header size is a damaged header (libcryptsetup will
            # say so); no key, so it is never cached.
            uuid = _uuid_field(primary[1]) if primary is not None else None
            return RawHeader(luks2=primary is not None, key=b"", uuid=uuid)
        hdr_size, binary = found
        digest = hashlib.sha256(str(size).encode())
        digest.update(os.pread(fd, 2 * hdr_size, 0))
        return RawHeader(luks2=True, key=digest.digest(), uuid=_uuid_field(binary))
    finally:
        os.close(fd)


def load_header(path: str) -> Header:
    """libcryptsetup's reading of the header; raises NotAWkdVolume/LuksError if it refuses."""
    with luks2.Luks2Device.open(path) as dev:
        return header_of(dev)


def header_of(dev: luks2.Luks2Device) -> Header:
    tokens: dict[int, WkdToken] = {}
    invalid: dict[int, str] = {}
    for tid, ttype in dev.token_list().items():
        if ttype != TOKEN_TYPE:
            continue
        try:
            tokens[tid] = parse_token(dev.token_json_get(tid))
        except errors.InvalidToken as e:
            log.warning("%s: malformed wkd token %d: %s", dev.path, tid, e)
            invalid[tid] = e.message
    return Header(path=dev.path, uuid=VolumeUuid(dev.uuid.lower()), label=dev.label or "",
                  cipher=f"{dev.cipher}-{dev.cipher_mode}", tokens=tokens, invalid=invalid)


class HeaderCache:
    """path -> (key, HeaderRead) of headers libcryptsetup loaded. Thread-safe: reads run in
    worker threads."""

    def __init__(self, max_entries: int = 65536) -> None:
        self._entries: dict[str, tuple[bytes, HeaderRead]] = {}
        self._lock = threading.Lock()
        self._max = max_entries

    def read(self, path: str) -> HeaderRead:
        """The header of `path`; a damaged one is reported, never served from the cache."""
        try:
            raw = read_raw(path)
        except OSError as e:
            raise errors.DeviceNotFound(f"{path} cannot be read ({e.strerror})") from None
        if not raw.luks2:
            return HeaderRead(path=path)
        with self._lock:
            hit = self._entries.get(path)
        if hit is not None and hit[0] == raw.key:
            return hit[1]
        try:
            result = HeaderRead(path=path, header=load_header(path))
        except errors.NotAWkdVolume:
            # crypt_load's -EINVAL: a checksum, the JSON or the metadata does not verify.
            return HeaderRead(path=path, damaged="its checksum or metadata does not verify "
                              "(cryptsetup luksDump refuses it too)", raw_uuid=raw.uuid)
        except errors.LuksError as e:
            return HeaderRead(path=path, damaged=str(e), raw_uuid=raw.uuid)
        if not raw.key:
            return result
        # Cache only if the bytes did not change while libcryptsetup read them: then the
        # entry describes exactly the bytes its key was computed from.
        try:
            again = read_raw(path)
        except OSError:
            return result
        if again.key == raw.key:
            with self._lock:
                if len(self._entries) >= self._max:
                    self._entries.clear()
                self._entries[path] = (raw.key, result)
        return result
