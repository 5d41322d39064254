"""A small ctypes binding to libcryptsetup (libcryptsetup.so.12, API of cryptsetup 2.6).

No maintained Python binding exists, and wkd needs only a handful of calls: format a LUKS2
header around a volume key the caller already holds (generated in the HSM), read and write
LUKS2 tokens, check a key against the LUKS2 digest, activate by volume key through the kernel
keyring, and deactivate. Struct layouts below mirror /usr/include/libcryptsetup.h of 2.6.1.

Every function blocks; the engine calls them from a worker thread (ctypes.CDLL releases the
GIL around each C call). A `Luks2Device` owns one `struct crypt_device *` and must be used by
one thread at a time.

Secrets: keys are handed to C by address from a `SecretKey`; they never become Python `bytes`
here. Error messages name the operation, the device and `strerror`, never key or token content.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import logging
import os
from types import TracebackType
from typing import Final

from wkd.errors import (
    DeviceMapperUnavailable,
    DeviceNotFound,
    KeyMismatch,
    LuksError,
    MappingNameInUse,
    NotABlockDevice,
    NotAWkdVolume,
    NotUnlocked,
    VolumeBusy,
)
from wkd.secret import SecretKey

log = logging.getLogger("wkd.luks2")

_LIBNAME: Final = "libcryptsetup.so.12"
_LUKS2: Final = b"LUKS2"
_DM_CONTROL: Final = "/dev/mapper/control"

# libcryptsetup.h constants (2.6.1).
CRYPT_ANY_SLOT: Final = -1
CRYPT_ANY_TOKEN: Final = -1
_CRYPT_PBKDF_NO_BENCHMARK: Final = 1 << 1
_CRYPT_ACTIVATE_READONLY: Final = 1 << 0
_CRYPT_ACTIVATE_ALLOW_DISCARDS: Final = 1 << 3
_CRYPT_DEACTIVATE_DEFERRED: Final = 1 << 0
_CRYPT_LOG_DEBUG_JSON: Final = -2
# crypt_token_info: INVALID, INACTIVE, INTERNAL, INTERNAL_UNKNOWN, EXTERNAL, EXTERNAL_UNKNOWN.
_CRYPT_TOKEN_INVALID: Final = 0
_CRYPT_TOKEN_INACTIVE: Final = 1
# LUKS2 allows token ids 0..31 (LUKS2 on-disk format spec, "tokens" object; crypt_token_max).
MAX_TOKENS: Final = 32
# The smallest PBKDF2 iteration count libcryptsetup accepts (MIN_PBKDF2_ITERATIONS).
MIN_PBKDF2_ITERATIONS: Final = 1000


class _PbkdfType(ctypes.Structure):
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


class _ParamsLuks2(ctypes.Structure):
    """struct crypt_params_luks2."""

    _fields_ = (
        ("pbkdf", ctypes.POINTER(_PbkdfType)),
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

_lib = ctypes.CDLL(_LIBNAME)
_SIGNATURES: Final[dict[str, tuple[object, list[object]]]] = {
    "crypt_init": (_c_int, [_cd_pp, _c_str]),
    "crypt_init_by_name": (_c_int, [_cd_pp, _c_str]),
    "crypt_free": (None, [_cd_p]),
    "crypt_load": (_c_int, [_cd_p, _c_str, ctypes.c_void_p]),
    "crypt_format": (_c_int, [_cd_p, _c_str, _c_str, _c_str, _c_str, _c_str, _c_size,
                              ctypes.c_void_p]),
    "crypt_set_pbkdf_type": (_c_int, [_cd_p, ctypes.POINTER(_PbkdfType)]),
    "crypt_get_type": (_c_str, [_cd_p]),
    "crypt_get_uuid": (_c_str, [_cd_p]),
    "crypt_get_label": (_c_str, [_cd_p]),
    "crypt_get_cipher": (_c_str, [_cd_p]),
    "crypt_get_cipher_mode": (_c_str, [_cd_p]),
    "crypt_get_device_name": (_c_str, [_cd_p]),
    "crypt_get_volume_key_size": (_c_int, [_cd_p]),
    "crypt_token_status": (_c_int, [_cd_p, _c_int, ctypes.POINTER(_c_str)]),
    "crypt_token_json_get": (_c_int, [_cd_p, _c_int, ctypes.POINTER(_c_str)]),
    "crypt_token_json_set": (_c_int, [_cd_p, _c_int, _c_str]),
    "crypt_activate_by_volume_key": (_c_int, [_cd_p, _c_str, _c_str, _c_size, _c_u32]),
    "crypt_deactivate_by_name": (_c_int, [_cd_p, _c_str, _c_u32]),
    "crypt_volume_key_keyring": (_c_int, [_cd_p, _c_int]),
    "crypt_keyslot_add_by_volume_key": (_c_int, [_cd_p, _c_int, _c_str, _c_size, _c_str,
                                                 _c_size]),
    "crypt_header_backup": (_c_int, [_cd_p, _c_str, _c_str]),
    "crypt_status": (_c_int, [_cd_p, _c_str]),
    "crypt_set_log_callback": (None, [_cd_p, _LogFunc, ctypes.c_void_p]),
    "crypt_token_external_disable": (None, []),
}
for _name, (_restype, _argtypes) in _SIGNATURES.items():
    _fn = getattr(_lib, _name)
    _fn.restype = _restype
    _fn.argtypes = _argtypes


def _log_from_libcryptsetup(level: int, msg: bytes | None, _usrptr: int | None) -> None:
    # libcryptsetup never prints key bytes in its messages; the only level that can carry
    # header JSON (and so a wrapped key from our token) is CRYPT_LOG_DEBUG_JSON, dropped here.
    # An exception must not escape into C, so the body cannot raise.
    try:
        if msg is None or level == _CRYPT_LOG_DEBUG_JSON:
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
_lib.crypt_set_log_callback(None, _LOG_CALLBACK, None)
# wkd never uses external token plugins (libcryptsetup-token-*.so); disabling them keeps the
# library from dlopen()ing code from the plugin directory inside the daemon.
_lib.crypt_token_external_disable()


class ActiveState(enum.StrEnum):
    """crypt_status_info."""

    INVALID = "invalid"
    INACTIVE = "inactive"
    ACTIVE = "active"
    BUSY = "busy"


_STATUS: Final = (ActiveState.INVALID, ActiveState.INACTIVE, ActiveState.ACTIVE,
                  ActiveState.BUSY)


def device_mapper_available() -> bool:
    """True when the kernel offers device-mapper, so activation can work at all.

    The existence of /dev/mapper/control proves nothing: libdevmapper mknod()s that node
    (misc 10:236) whenever libcryptsetup touches device-mapper, even on a kernel without it
    (measured: crypt_format and a volume-key check both leave a dead node behind). So ask the
    kernel: /proc/misc lists "device-mapper" once the driver is registered; otherwise opening
    the node succeeds only if the driver exists (the open also lets the kernel autoload dm_mod
    through its "char-major-10-236" alias).
    """
    try:
        with open("/proc/misc", encoding="ascii", errors="replace") as misc:
            if any(line.split()[1:2] == ["device-mapper"] for line in misc):
                return True
    except OSError:
        pass
    try:
        fd = os.open(_DM_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False  # ENOENT: no node; ENODEV/ENXIO: a node without a driver
    os.close(fd)
    return True


def _error(op: str, where: str, rc: int) -> LuksError:
    return LuksError(f"{op} on {where} failed: {os.strerror(-rc)}")


def _check(rc: int, op: str, where: str) -> int:
    if rc < 0:
        raise _error(op, where, rc)
    return rc


def _decode(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value is not None else ""


def _init(path: str) -> ctypes.c_void_p:
    cd = ctypes.c_void_p()
    rc = _lib.crypt_init(ctypes.byref(cd), os.fsencode(path))
    if rc == -errno.ENOENT or (rc < 0 and not os.path.exists(path)):
        raise DeviceNotFound(f"{path} does not exist")
    if rc == -errno.ENOTBLK:
        raise NotABlockDevice(f"{path} is neither a block device nor an image file")
    _check(rc, "crypt_init", path)
    return cd


def _pbkdf_benchmarked(kind: str, time_ms: int) -> _PbkdfType:
    """A PBKDF libcryptsetup benchmarks to cost `time_ms` per open (cryptsetup's defaults for
    argon2: up to 1 GiB of memory, 4 threads; the library lowers both to what the machine
    has)."""
    argon = kind.startswith("argon2")
    return _PbkdfType(type=kind.encode(), hash=b"sha256", time_ms=time_ms, iterations=0,
                      max_memory_kb=1048576 if argon else 0,
                      parallel_threads=4 if argon else 0, flags=0)


def _pbkdf2_fixed(iterations: int) -> _PbkdfType:
    return _PbkdfType(type=b"pbkdf2", hash=b"sha256", time_ms=0, iterations=iterations,
                      max_memory_kb=0, parallel_threads=0, flags=_CRYPT_PBKDF_NO_BENCHMARK)


class Luks2Device:
    """One LUKS2 header, opened with crypt_init + crypt_load (or created by crypt_format)."""

    def __init__(self, path: str, cd: ctypes.c_void_p) -> None:
        self.path = path
        self._cd: ctypes.c_void_p | None = cd

    # --- construction ------------------------------------------------------------------
    @classmethod
    def open(cls, path: str) -> Luks2Device:
        cd = _init(path)
        rc = _lib.crypt_load(cd, _LUKS2, None)
        if rc < 0:
            _lib.crypt_free(cd)
            # -EINVAL is what crypt_load returns when there is no LUKS2 header (no magic, a
            # LUKS1 header, or a header that fails its checksum).
            if rc == -errno.EINVAL:
                raise NotAWkdVolume(f"{path} is not a LUKS2 volume")
            raise _error("crypt_load", path, rc)
        return cls(path, cd)

    @classmethod
    def format(cls, path: str, key: SecretKey, *, cipher: str = "aes",
               cipher_mode: str = "xts-plain64", label: str | None = None,
               sector_size: int = 0) -> Luks2Device:
        """Write a LUKS2 header for `key` (the caller's volume key); no keyslot is created.

        The header keeps a PBKDF2 digest of the volume key (LUKS2 on-disk format, "digests")
        so a key can be checked before activation. PBKDF2 exists to slow down guessing of
        low-entropy passphrases; the VK here is a random 256..512-bit key, so guessing it is
        infeasible at any iteration count and the digest needs no work factor. With the
        library default (benchmarked to ~1/8 s) every unlock would spend that time in PBKDF2;
        pbkdf2-sha256 at the minimum 1000 iterations with CRYPT_PBKDF_NO_BENCHMARK makes the
        check cost well under a millisecond (libcryptsetup uses MIN_PBKDF2_ITERATIONS for the
        digest when the context PBKDF has NO_BENCHMARK set).
        """
        cd = _init(path)
        try:
            pbkdf = _pbkdf2_fixed(MIN_PBKDF2_ITERATIONS)
            _check(_lib.crypt_set_pbkdf_type(cd, ctypes.byref(pbkdf)),
                   "crypt_set_pbkdf_type", path)
            params = _ParamsLuks2(
                pbkdf=ctypes.pointer(pbkdf),
                sector_size=sector_size,
                label=label.encode() if label is not None else None,
            )
            rc = _lib.crypt_format(cd, _LUKS2, cipher.encode(), cipher_mode.encode(), None,
                                   key.as_char_p(), key.length, ctypes.byref(params))
            _check(rc, "crypt_format", path)
        except BaseException:
            _lib.crypt_free(cd)
            raise
        return cls(path, cd)

    # --- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        # crypt_free wipes the copy of the volume key the context may hold.
        if self._cd is not None:
            _lib.crypt_free(self._cd)
            self._cd = None

    def __enter__(self) -> Luks2Device:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # best effort at interpreter shutdown
            self.close()

    def __repr__(self) -> str:
        return f"<Luks2Device {self.path!r}{'' if self._cd is not None else ' closed'}>"

    def _handle(self) -> ctypes.c_void_p:
        if self._cd is None:
            raise ValueError(f"Luks2Device for {self.path} is closed")
        return self._cd

    # --- header fields -----------------------------------------------------------------
    @property
    def uuid(self) -> str:
        return _decode(_lib.crypt_get_uuid(self._handle()))

    @property
    def label(self) -> str:
        return _decode(_lib.crypt_get_label(self._handle()))

    @property
    def cipher(self) -> str:
        return _decode(_lib.crypt_get_cipher(self._handle()))

    @property
    def cipher_mode(self) -> str:
        return _decode(_lib.crypt_get_cipher_mode(self._handle()))

    @property
    def volume_key_size(self) -> int:
        """Volume key size in bytes, or 0 when the header does not say.

        A LUKS2 header records the key size only in keyslots (LUKS2 on-disk format: the
        segment names the cipher, the digest has no length), so libcryptsetup 2.6.1 reports
        0 for a header with no keyslot after `open()`. It is known after `format()` in the
        same context, or once any keyslot exists; otherwise use the size in the wkd token.
        """
        return _check(_lib.crypt_get_volume_key_size(self._handle()),
                      "crypt_get_volume_key_size", self.path)

    # --- tokens ------------------------------------------------------------------------
    def token_list(self) -> dict[int, str]:
        """Token id -> token type, for every token present."""
        cd = self._handle()
        tokens: dict[int, str] = {}
        for token_id in range(MAX_TOKENS):
            type_p = ctypes.c_char_p()
            info = _lib.crypt_token_status(cd, token_id, ctypes.byref(type_p))
            if info in (_CRYPT_TOKEN_INVALID, _CRYPT_TOKEN_INACTIVE):
                continue
            # The type string lives in the library's JSON object; ctypes copies it now, before
            # any other call could invalidate it.
            tokens[token_id] = _decode(type_p.value)
        return tokens

    def token_json_get(self, token_id: int) -> str:
        json_p = ctypes.c_char_p()
        rc = _lib.crypt_token_json_get(self._handle(), token_id, ctypes.byref(json_p))
        _check(rc, f"crypt_token_json_get (token {token_id})", self.path)
        return _decode(json_p.value)

    def token_json_set(self, token_id: int | None, json_text: str) -> int:
        """Write a token (None: first free id); returns the id. Needs "type" and "keyslots"."""
        tid = CRYPT_ANY_TOKEN if token_id is None else token_id
        rc = _lib.crypt_token_json_set(self._handle(), tid, json_text.encode())
        what = "any" if token_id is None else str(token_id)
        return _check(rc, f"crypt_token_json_set (token {what})", self.path)

    def token_remove(self, token_id: int) -> None:
        rc = _lib.crypt_token_json_set(self._handle(), token_id, None)
        _check(rc, f"crypt_token_json_set (remove token {token_id})", self.path)

    # --- volume key --------------------------------------------------------------------
    def verify_volume_key(self, key: SecretKey) -> bool:
        """True if `key` matches the LUKS2 digest (crypt_activate_by_volume_key, name NULL)."""
        # A key of the wrong length fails the digest check too (-EPERM), so no length test.
        rc = _lib.crypt_activate_by_volume_key(self._handle(), None, key.as_char_p(), key.length, 0)
        if rc == -errno.EPERM:  # "Volume key does not match the volume."
            return False
        _check(rc, "crypt_activate_by_volume_key (verify)", self.path)
        return True

    def activate(self, name: str, key: SecretKey, *, read_only: bool = False,
                 allow_discards: bool = False) -> None:
        """Create the dm-crypt mapping /dev/mapper/<name> with `key`.

        With the kernel keyring enabled, libcryptsetup loads a LUKS2 volume key as a `logon`
        key and the dm-crypt table names that key (":64:logon:cryptsetup:<uuid>-d0") instead of
        holding the hex key, so `dmsetup table --showkeys` reveals no key material.
        """
        cd = self._handle()
        if not device_mapper_available():
            raise DeviceMapperUnavailable(
                f"cannot activate {self.path} as {name}: the kernel offers no device-mapper "
                f"({_DM_CONTROL} is missing)")
        # The switch is global in the library; set it every time so nothing else turned it off.
        _lib.crypt_volume_key_keyring(cd, 1)
        flags = ((_CRYPT_ACTIVATE_READONLY if read_only else 0)
                 | (_CRYPT_ACTIVATE_ALLOW_DISCARDS if allow_discards else 0))
        rc = _lib.crypt_activate_by_volume_key(cd, name.encode(), key.as_char_p(), key.length,
                                               flags)
        if rc == -errno.EPERM:
            raise KeyMismatch(f"activating {self.path} as {name} failed: the volume key does "
                              "not match the volume")
        if rc == -errno.EEXIST:
            raise MappingNameInUse(f"a device-mapper device named {name} already exists")
        _check(rc, f"crypt_activate_by_volume_key ({name})", self.path)

    def add_passphrase_keyslot(self, key: SecretKey, passphrase: SecretKey, *,
                               pbkdf: str = "argon2id", time_ms: int = 2000,
                               pbkdf_iterations: int | None = None) -> int:
        """Add a passphrase keyslot for `key`; returns the keyslot number.

        For an administrator's recovery passphrase: a human secret, so by default argon2id
        benchmarked to `time_ms` per open, as `cryptsetup luksAddKey` does. Tests pass
        `pbkdf_iterations` for a fixed, cheap PBKDF2 instead.
        """
        cd = self._handle()
        kdf = (_pbkdf2_fixed(pbkdf_iterations) if pbkdf_iterations is not None
               else _pbkdf_benchmarked(pbkdf, time_ms))
        _check(_lib.crypt_set_pbkdf_type(cd, ctypes.byref(kdf)), "crypt_set_pbkdf_type",
               self.path)
        rc = _lib.crypt_keyslot_add_by_volume_key(cd, CRYPT_ANY_SLOT, key.as_char_p(),
                                                  key.length, passphrase.as_char_p(),
                                                  passphrase.length)
        if rc == -errno.EPERM:
            raise KeyMismatch(f"adding a keyslot to {self.path} failed: the volume key does "
                              "not match the volume")
        return _check(rc, "crypt_keyslot_add_by_volume_key", self.path)

    def header_backup(self, backup_path: str) -> None:
        """Write the LUKS2 header and keyslot area to a new file (as luksHeaderBackup)."""
        rc = _lib.crypt_header_backup(self._handle(), _LUKS2, os.fsencode(backup_path))
        _check(rc, f"crypt_header_backup (to {backup_path})", self.path)


# --- active mappings (by name) ---------------------------------------------------------
def status(name: str) -> ActiveState:
    """State of /dev/mapper/<name>. Without device-mapper nothing can be active: INACTIVE."""
    if not device_mapper_available():
        return ActiveState.INACTIVE
    info = _lib.crypt_status(None, name.encode())
    return _STATUS[info] if 0 <= info < len(_STATUS) else ActiveState.INVALID


def _init_by_name(name: str) -> ctypes.c_void_p | None:
    """A context for an active mapping, or None when no such mapping exists."""
    if status(name) is ActiveState.INACTIVE:
        return None
    cd = ctypes.c_void_p()
    rc = _lib.crypt_init_by_name(ctypes.byref(cd), name.encode())
    if rc == -errno.ENODEV:
        return None
    _check(rc, "crypt_init_by_name", name)
    return cd


def deactivate(name: str, *, deferred: bool = False) -> None:
    """Remove /dev/mapper/<name>; `deferred` removes it once its last user closes it."""
    cd = _init_by_name(name)
    if cd is None:
        raise NotUnlocked(f"{name} is not active")
    try:
        rc = _lib.crypt_deactivate_by_name(cd, name.encode(),
                                           _CRYPT_DEACTIVATE_DEFERRED if deferred else 0)
    finally:
        _lib.crypt_free(cd)
    if rc == -errno.EBUSY:
        raise VolumeBusy(f"{name} is in use (mounted or held open)")
    if rc == -errno.ENODEV:
        raise NotUnlocked(f"{name} is not active")
    _check(rc, "crypt_deactivate_by_name", name)


def active_backing_device(name: str) -> str | None:
    """The device under an active mapping, or None when `name` is not active."""
    cd = _init_by_name(name)
    if cd is None:
        return None
    try:
        device = _lib.crypt_get_device_name(cd)
        return _decode(device) if device is not None else None
    finally:
        _lib.crypt_free(cd)


def active_uuid(name: str) -> str | None:
    """The LUKS UUID of an active mapping, or None when inactive or not LUKS."""
    cd = _init_by_name(name)
    if cd is None:
        return None
    try:
        uuid = _lib.crypt_get_uuid(cd)
        return _decode(uuid) if uuid else None
    finally:
        _lib.crypt_free(cd)


def read_uuid(path: str) -> str | None:
    """The LUKS (1 or 2) UUID of a device or image, None if it holds no LUKS header.

    A missing path raises DeviceNotFound.
    """
    cd = _init(path)
    try:
        # type NULL (CRYPT_LUKS) loads either LUKS version.
        rc = _lib.crypt_load(cd, None, None)
        if rc == -errno.EINVAL:
            return None
        _check(rc, "crypt_load", path)
        uuid = _lib.crypt_get_uuid(cd)
        return _decode(uuid) if uuid else None
    finally:
        _lib.crypt_free(cd)
