"""The raw ctypes binding to libcryptsetup (libcryptsetup.so.12, API of cryptsetup 2.6).

Loading the library, the prototypes of the ~20 functions wkd calls, the structs they take
(layouts mirror /usr/include/libcryptsetup.h of 2.6.1), the process-wide log callback, and
the helpers that turn return codes into typed errors. `wkd.disk.luks2` builds the
Pythonic face on top. Every call blocks (ctypes.CDLL releases the GIL around it).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from typing import Final

from wkd.errors import DeviceNotFound, LuksError, NotABlockDevice

log = logging.getLogger("wkd.luks2")

LIBNAME: Final = "libcryptsetup.so.12"
LUKS2: Final = b"LUKS2"
DM_CONTROL: Final = "/dev/mapper/control"

# libcryptsetup.h constants (2.6.1).
CRYPT_ANY_SLOT: Final = -1
CRYPT_ANY_TOKEN: Final = -1
CRYPT_PBKDF_NO_BENCHMARK: Final = 1 << 1
CRYPT_ACTIVATE_READONLY: Final = 1 << 0
CRYPT_ACTIVATE_ALLOW_DISCARDS: Final = 1 << 3
CRYPT_DEACTIVATE_DEFERRED: Final = 1 << 0
CRYPT_LOG_DEBUG_JSON: Final = -2
# crypt_token_info: INVALID, INACTIVE, INTERNAL, INTERNAL_UNKNOWN, EXTERNAL, EXTERNAL_UNKNOWN.
CRYPT_TOKEN_INVALID: Final = 0
CRYPT_TOKEN_INACTIVE: Final = 1
# LUKS2 allows token ids 0..31 (LUKS2 on-disk format spec, "tokens" object; crypt_token_max).
MAX_TOKENS: Final = 32
# The smallest PBKDF2 iteration count libcryptsetup accepts (MIN_PBKDF2_ITERATIONS).
MIN_PBKDF2_ITERATIONS: Final = 1000


class PbkdfType(ctypes.Structure):
    """struct crypt_pbkdf_type."""

    _fields_ = (
        ("type", ctypes.c_char_p),
        ("hash", ctypes.c_char_p),
        ("time_ms", ctypes.c_uint32),
        ("iterations", ctypes.c_uint32),
        ("max_memory_kb", ctypes.c_uint32),
        ("parallel_threads", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    )


class ParamsLuks2(ctypes.Structure):
    """struct crypt_params_luks2."""

    _fields_ = (
        ("pbkdf", ctypes.POINTER(PbkdfType)),
        ("integrity", ctypes.c_char_p),
        ("integrity_params", ctypes.c_void_p),
        ("data_alignment", ctypes.c_size_t),
        ("data_device", ctypes.c_char_p),
        ("sector_size", ctypes.c_uint32),
        ("label", ctypes.c_char_p),
        ("subsystem", ctypes.c_char_p),
    )


_LogFunc = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_cd_p = ctypes.c_void_p
_cd_pp = ctypes.POINTER(ctypes.c_void_p)
_c_int = ctypes.c_int
_c_str = ctypes.c_char_p
_c_size = ctypes.c_size_t
_c_u32 = ctypes.c_uint32

lib = ctypes.CDLL(LIBNAME)
_SIGNATURES: Final[dict[str, tuple[object, list[object]]]] = {
    "crypt_init": (_c_int, [_cd_pp, _c_str]),
    "crypt_init_by_name": (_c_int, [_cd_pp, _c_str]),
    "crypt_free": (None, [_cd_p]),
    "crypt_load": (_c_int, [_cd_p, _c_str, ctypes.c_void_p]),
    "crypt_format": (_c_int, [_cd_p, _c_str, _c_str, _c_str, _c_str, _c_str, _c_size,
                              ctypes.c_void_p]),
    "crypt_set_pbkdf_type": (_c_int, [_cd_p, ctypes.POINTER(PbkdfType)]),
    "crypt_get_type": (_c_str, [_cd_p]),
    "crypt_get_uuid": (_c_str, [_cd_p]),
    "crypt_get_label": (_c_str, [_cd_p]),
    "crypt_get_cipher": (_c_str, [_cd_p]),
    "crypt_get_cipher_mode": (_c_str, [_cd_p]),
    "crypt_get_data_offset": (ctypes.c_uint64, [_cd_p]),
    "crypt_token_status": (_c_int, [_cd_p, _c_int, ctypes.POINTER(_c_str)]),
    "crypt_token_json_get": (_c_int, [_cd_p, _c_int, ctypes.POINTER(_c_str)]),
    "crypt_token_json_set": (_c_int, [_cd_p, _c_int, _c_str]),
    "crypt_activate_by_volume_key": (_c_int, [_cd_p, _c_str, _c_str, _c_size, _c_u32]),
    "crypt_deactivate_by_name": (_c_int, [_cd_p, _c_str, _c_u32]),
    "crypt_volume_key_keyring": (_c_int, [_cd_p, _c_int]),
    "crypt_keyslot_add_by_volume_key": (_c_int, [_cd_p, _c_int, _c_str, _c_size, _c_str,
                                                 _c_size]),
    "crypt_status": (_c_int, [_cd_p, _c_str]),
    "crypt_set_log_callback": (None, [_cd_p, _LogFunc, ctypes.c_void_p]),
    "crypt_token_external_disable": (None, []),
}
for _name, (_restype, _argtypes) in _SIGNATURES.items():
    _fn = getattr(lib, _name)
    _fn.restype = _restype
    _fn.argtypes = _argtypes


def _log_from_libcryptsetup(level: int, msg: bytes | None, _usrptr: int | None) -> None:
    # libcryptsetup never prints key bytes in its messages; the only level that can carry
    # header JSON (and so a wrapped key from our token) is CRYPT_LOG_DEBUG_JSON, dropped here.
    # An exception must not escape into C, so the body cannot raise.
    try:
        if msg is None or level == CRYPT_LOG_DEBUG_JSON:
            return
        log.debug("libcryptsetup[%d]: %s", level,
                  msg.decode("utf-8", "replace").rstrip("\n"))
    except Exception:  # noqa: S110 - a log line is not worth crashing the C caller
        pass


# The library keeps only the function pointer: this module-level reference keeps the ctypes
# thunk alive for the life of the process.
_LOG_CALLBACK: Final = _LogFunc(_log_from_libcryptsetup)
# cd=NULL sets the default log function, used by every context (including those created by
# crypt_init, which logs before a per-context callback could be set).
lib.crypt_set_log_callback(None, _LOG_CALLBACK, None)
# wkd never uses external token plugins (libcryptsetup-token-*.so); disabling them keeps the
# library from dlopen()ing code from the plugin directory inside the daemon.
lib.crypt_token_external_disable()


def error(op: str, where: str, rc: int) -> LuksError:
    return LuksError(f"{op} on {where} failed: {os.strerror(-rc)}")


def check(rc: int, op: str, where: str) -> int:
    if rc < 0:
        raise error(op, where, rc)
    return rc


def decode(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value is not None else ""


def init(path: str) -> ctypes.c_void_p:
    cd = ctypes.c_void_p()
    rc = lib.crypt_init(ctypes.byref(cd), os.fsencode(path))
    if rc == -errno.ENOENT or (rc < 0 and not os.path.exists(path)):
        raise DeviceNotFound(f"{path} does not exist")
    if rc == -errno.ENOTBLK:
        raise NotABlockDevice(f"{path} is neither a block device nor an image file")
    check(rc, "crypt_init", path)
    return cd


def pbkdf_benchmarked(kind: str, time_ms: int) -> PbkdfType:
    """A PBKDF libcryptsetup benchmarks to cost `time_ms` per open (cryptsetup's defaults for
    argon2: up to 1 GiB of memory, 4 threads; the library lowers both to what the machine
    has)."""
    argon = kind.startswith("argon2")
    return PbkdfType(type=kind.encode(), hash=b"sha256", time_ms=time_ms, iterations=0,
                      max_memory_kb=1048576 if argon else 0,
                      parallel_threads=4 if argon else 0, flags=0)


def pbkdf2_fixed(iterations: int) -> PbkdfType:
    return PbkdfType(type=b"pbkdf2", hash=b"sha256", time_ms=0, iterations=iterations,
                      max_memory_kb=0, parallel_threads=0, flags=CRYPT_PBKDF_NO_BENCHMARK)
