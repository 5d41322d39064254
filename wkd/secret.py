"""A buffer for clear key material: locked in RAM, left out of core dumps, wiped on release.

Python copies bytes freely, so the rule in wkd is: clear key bytes live in a `SecretKey`, are
handed to C (libcryptsetup) by address, and any transient `bytes` object that had to exist
(python-pkcs11 returns CKA_VALUE as `bytes`) is scrubbed in place with `scrub_bytes` at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import sys
from types import TracebackType
from typing import Final

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mlock.restype = ctypes.c_int
_libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munlock.restype = ctypes.c_int
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]

_PR_SET_DUMPABLE: Final = 4
_PR_GET_DUMPABLE: Final = 3
MAX_KEY_BYTES: Final = 4096
# Offset of the character array inside a CPython bytes object (PyBytesObject.ob_sval):
# sys.getsizeof(b"") is the header plus the one trailing NUL byte.
_BYTES_DATA_OFFSET: Final = sys.getsizeof(b"") - 1


class SecretKey:
    """Clear key bytes in an anonymous, mlock'ed, MADV_DONTDUMP mapping.

    No repr or str shows the content; `bytes(key)` is refused. Use it as a context manager
    (or call `wipe()`) so the pages are zeroed as soon as the key has been used.
    """

    __slots__ = ("_addr", "_len", "_locked", "_map", "_view")

    def __init__(self, length: int) -> None:
        if not 0 < length <= MAX_KEY_BYTES:
            raise ValueError(f"key length {length} out of range 1..{MAX_KEY_BYTES}")
        self._len = length
        size = max(mmap.PAGESIZE, -(-length // mmap.PAGESIZE) * mmap.PAGESIZE)
        self._map: mmap.mmap | None = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE |
                                                mmap.MAP_ANONYMOUS)
        # MADV_DONTDUMP keeps the page out of core files even if dumpability is restored.
        self._map.madvise(mmap.MADV_DONTDUMP)
        buf = (ctypes.c_char * size).from_buffer(self._map)
        self._view = buf
        self._addr = ctypes.addressof(buf)
        # mlock can fail under a tight RLIMIT_MEMLOCK; the key is still wiped, so carry on
        # rather than refuse service, and let `locked` tell the truth.
        self._locked = int(_libc.mlock(self._addr, size)) == 0

    @classmethod
    def from_bytes(cls, data: bytes | bytearray) -> SecretKey:
        """Copy `data` into a new SecretKey and scrub the source."""
        key = cls(len(data))
        ctypes.memmove(key._addr, bytes(data) if isinstance(data, bytearray) else data,
                       len(data))
        if isinstance(data, bytearray):
            data[:] = b"\0" * len(data)
        else:
            scrub_bytes(data)
        return key

    @property
    def length(self) -> int:
        return self._len

    @property
    def locked(self) -> bool:
        return self._locked

    @property
    def address(self) -> int:
        """Address of the first key byte, for passing to C by pointer."""
        if self._map is None:
            raise ValueError("secret already wiped")
        return self._addr

    def as_char_p(self) -> ctypes.c_char_p:
        return ctypes.cast(self.address, ctypes.c_char_p)

    def equals(self, other: SecretKey) -> bool:
        """Constant-time comparison without creating Python bytes of either key."""
        if self._len != other._len:
            return False
        diff = 0
        a = ctypes.cast(self.address, ctypes.POINTER(ctypes.c_ubyte))
        b = ctypes.cast(other.address, ctypes.POINTER(ctypes.c_ubyte))
        for i in range(self._len):
            diff |= a[i] ^ b[i]
        return diff == 0

    def reveal_for_test(self) -> bytes:
        """The clear bytes. Only tests call this, to search logs and bus captures for them."""
        return ctypes.string_at(self.address, self._len)

    def wipe(self) -> None:
        if self._map is None:
            return
        size = len(self._map)
        ctypes.memset(self._addr, 0, size)
        if self._locked:
            _libc.munlock(self._addr, size)
        del self._view  # release the buffer export so the mapping can close
        self._map.close()
        self._map = None

    def __enter__(self) -> SecretKey:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.wipe()

    def __del__(self) -> None:
        # Best effort: at interpreter shutdown ctypes or mmap may already be gone.
        with contextlib.suppress(Exception):
            self.wipe()

    def __repr__(self) -> str:
        return f"<SecretKey {self._len} bytes>"

    __str__ = __repr__

    def __bytes__(self) -> bytes:
        raise TypeError("SecretKey cannot be converted to bytes")

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("SecretKey cannot be pickled")


def scrub_bytes(data: bytes) -> None:
    """Overwrite the content of an immutable CPython `bytes` object in place.

    python-pkcs11 hands CKA_VALUE back as `bytes`; this is the only way to not leave that copy
    in the heap. Length 0 and 1 objects are interned singletons and are left alone (a key is
    never that short).
    """
    if type(data) is bytes and len(data) > 1:
        ctypes.memset(id(data) + _BYTES_DATA_OFFSET, 0, len(data))


def make_process_undumpable() -> None:
    """PR_SET_DUMPABLE=0: no core dumps, and ptrace/proc/<pid>/mem need CAP_SYS_PTRACE."""
    if _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_DUMPABLE, 0) failed")


def process_dumpable() -> bool:
    return int(_libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)) == 1
