"""libcryptsetup for wkd: `Luks2Device` and the activation calls (on wkd.disk.libcryptsetup).

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
import os
from types import TracebackType
from typing import Final

from wkd.disk import libcryptsetup as c
from wkd.errors import (
    DeviceMapperUnavailable,
    KeyMismatch,
    MappingNameInUse,
    NotAWkdVolume,
    NotUnlocked,
    VolumeBusy,
)
from wkd.secret import SecretKey

# libcryptsetup.h constants (2.6.1) callers use.
CRYPT_ANY_SLOT: Final = c.CRYPT_ANY_SLOT
MAX_TOKENS: Final = c.MAX_TOKENS
MIN_PBKDF2_ITERATIONS: Final = c.MIN_PBKDF2_ITERATIONS


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
        fd = os.open(c.DM_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False  # ENOENT: no node; ENODEV/ENXIO: a node without a driver
    os.close(fd)
    return True


class Luks2Device:
    """One LUKS2 header, opened with crypt_init + crypt_load (or created by crypt_format)."""

    def __init__(self, path: str, cd: ctypes.c_void_p) -> None:
        self.path = path
        self._cd: ctypes.c_void_p | None = cd

    # --- construction ------------------------------------------------------------------
    @classmethod
    def open(cls, path: str) -> Luks2Device:
        cd = c.init(path)
        rc = c.lib.crypt_load(cd, c.LUKS2, None)
        if rc < 0:
            c.lib.crypt_free(cd)
            # -EINVAL is what crypt_load returns when there is no LUKS2 header (no magic, a
            # LUKS1 header, or a header that fails its checksum).
            if rc == -errno.EINVAL:
                raise NotAWkdVolume(f"{path} is not a LUKS2 volume")
            raise c.error("crypt_load", path, rc)
        return cls(path, cd)

    @classmethod
    def format(cls, path: str, key: SecretKey, *, cipher: str = "aes",
               cipher_mode: str = "xts-plain64", label: str | None = None,
               sector_size: int = 0, uuid: str | None = None) -> Luks2Device:
        """Write a LUKS2 header for `key` (the caller's volume key); no keyslot is created.

        `uuid` sets the volume UUID (None: libcryptsetup picks one); `sector_size` 0 lets
        libcryptsetup pick the encryption sector size for the device at `path`.

        The header keeps a PBKDF2 digest of the volume key (LUKS2 on-disk format, "digests")
        so a key can be checked before activation. PBKDF2 exists to slow down guessing of
        low-entropy passphrases; the VK here is a random 256..512-bit key, so guessing it is
        infeasible at any iteration count and the digest needs no work factor. With the
        library default (benchmarked to ~1/8 s) every unlock would spend that time in PBKDF2;
        pbkdf2-sha256 at the minimum 1000 iterations with CRYPT_PBKDF_NO_BENCHMARK makes the
        check cost well under a millisecond (libcryptsetup uses MIN_PBKDF2_ITERATIONS for the
        digest when the context PBKDF has NO_BENCHMARK set).
        """
        cd = c.init(path)
        try:
            pbkdf = c.pbkdf2_fixed(MIN_PBKDF2_ITERATIONS)
            c.check(c.lib.crypt_set_pbkdf_type(cd, ctypes.byref(pbkdf)),
                   "crypt_set_pbkdf_type", path)
            params = c.ParamsLuks2(
                pbkdf=ctypes.pointer(pbkdf),
                sector_size=sector_size,
                label=label.encode() if label is not None else None,
            )
            rc = c.lib.crypt_format(cd, c.LUKS2, cipher.encode(), cipher_mode.encode(),
                                   uuid.encode() if uuid is not None else None,
                                   key.as_char_p(), key.length, ctypes.byref(params))
            c.check(rc, "crypt_format", path)
        except BaseException:
            c.lib.crypt_free(cd)
            raise
        return cls(path, cd)

    # --- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        # crypt_free wipes the copy of the volume key the context may hold.
        if self._cd is not None:
            c.lib.crypt_free(self._cd)
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
        return c.decode(c.lib.crypt_get_uuid(self._handle()))

    @property
    def label(self) -> str:
        return c.decode(c.lib.crypt_get_label(self._handle()))

    @property
    def cipher(self) -> str:
        return c.decode(c.lib.crypt_get_cipher(self._handle()))

    @property
    def cipher_mode(self) -> str:
        return c.decode(c.lib.crypt_get_cipher_mode(self._handle()))

    @property
    def data_offset(self) -> int:
        """Where the data segment starts, in bytes (everything before it is header and
        keyslot area: LUKS2 On-Disk Format, "segments")."""
        return int(c.lib.crypt_get_data_offset(self._handle())) * 512

    # --- tokens ------------------------------------------------------------------------
    def token_list(self) -> dict[int, str]:
        """Token id -> token type, for every token present."""
        cd = self._handle()
        tokens: dict[int, str] = {}
        for token_id in range(MAX_TOKENS):
            type_p = ctypes.c_char_p()
            info = c.lib.crypt_token_status(cd, token_id, ctypes.byref(type_p))
            if info in (c.CRYPT_TOKEN_INVALID, c.CRYPT_TOKEN_INACTIVE):
                continue
            # The type string lives in the library's JSON object; ctypes copies it now, before
            # any other call could invalidate it.
            tokens[token_id] = c.decode(type_p.value)
        return tokens

    def token_json_get(self, token_id: int) -> str:
        json_p = ctypes.c_char_p()
        rc = c.lib.crypt_token_json_get(self._handle(), token_id, ctypes.byref(json_p))
        c.check(rc, f"crypt_token_json_get (token {token_id})", self.path)
        return c.decode(json_p.value)

    def token_json_set(self, token_id: int | None, json_text: str) -> int:
        """Write a token (None: first free id); returns the id. Needs "type" and "keyslots"."""
        tid = c.CRYPT_ANY_TOKEN if token_id is None else token_id
        rc = c.lib.crypt_token_json_set(self._handle(), tid, json_text.encode())
        what = "any" if token_id is None else str(token_id)
        return c.check(rc, f"crypt_token_json_set (token {what})", self.path)

    def token_remove(self, token_id: int) -> None:
        rc = c.lib.crypt_token_json_set(self._handle(), token_id, None)
        c.check(rc, f"crypt_token_json_set (remove token {token_id})", self.path)

    # --- volume key --------------------------------------------------------------------
    def verify_volume_key(self, key: SecretKey) -> bool:
        """True if `key` matches the LUKS2 digest (crypt_activate_by_volume_key, name NULL)."""
        # A key of the wrong length fails the digest check too (-EPERM), so no length test.
        rc = c.lib.crypt_activate_by_volume_key(self._handle(), None, key.as_char_p(),
                                                key.length, 0)
        if rc == -errno.EPERM:  # "Volume key does not match the volume."
            return False
        c.check(rc, "crypt_activate_by_volume_key (verify)", self.path)
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
                f"({c.DM_CONTROL} is missing)")
        # The switch is global in the library; set it every time so nothing else turned it off.
        c.lib.crypt_volume_key_keyring(cd, 1)
        flags = ((c.CRYPT_ACTIVATE_READONLY if read_only else 0)
                 | (c.CRYPT_ACTIVATE_ALLOW_DISCARDS if allow_discards else 0))
        rc = c.lib.crypt_activate_by_volume_key(cd, name.encode(), key.as_char_p(), key.length,
                                               flags)
        if rc == -errno.EPERM:
            raise KeyMismatch(f"activating {self.path} as {name} failed: the volume key does "
                              "not match the volume")
        if rc == -errno.EEXIST:
            raise MappingNameInUse(f"a device-mapper device named {name} already exists")
        c.check(rc, f"crypt_activate_by_volume_key ({name})", self.path)

    def add_passphrase_keyslot(self, key: SecretKey, passphrase: SecretKey, *,
                               pbkdf: str = "argon2id", time_ms: int = 2000,
                               pbkdf_iterations: int | None = None) -> int:
        """Add a passphrase keyslot for `key`; returns the keyslot number.

        For an administrator's recovery passphrase: a human secret, so by default argon2id
        benchmarked to `time_ms` per open, as `cryptsetup luksAddKey` does. Tests pass
        `pbkdf_iterations` for a fixed, cheap PBKDF2 instead.
        """
        cd = self._handle()
        kdf = (c.pbkdf2_fixed(pbkdf_iterations) if pbkdf_iterations is not None
               else c.pbkdf_benchmarked(pbkdf, time_ms))
        c.check(c.lib.crypt_set_pbkdf_type(cd, ctypes.byref(kdf)), "crypt_set_pbkdf_type",
               self.path)
        rc = c.lib.crypt_keyslot_add_by_volume_key(cd, CRYPT_ANY_SLOT, key.as_char_p(),
                                                  key.length, passphrase.as_char_p(),
                                                  passphrase.length)
        if rc == -errno.EPERM:
            raise KeyMismatch(f"adding a keyslot to {self.path} failed: the volume key does "
                              "not match the volume")
        return c.check(rc, "crypt_keyslot_add_by_volume_key", self.path)


# --- active mappings (by name) ---------------------------------------------------------
def status(name: str) -> ActiveState:
    """State of /dev/mapper/<name>. Without device-mapper nothing can be active: INACTIVE."""
    if not device_mapper_available():
        return ActiveState.INACTIVE
    info = c.lib.crypt_status(None, name.encode())
    return _STATUS[info] if 0 <= info < len(_STATUS) else ActiveState.INVALID


def _init_by_name(name: str) -> ctypes.c_void_p | None:
    """A context for an active mapping, or None when no such mapping exists."""
    if status(name) is ActiveState.INACTIVE:
        return None
    cd = ctypes.c_void_p()
    rc = c.lib.crypt_init_by_name(ctypes.byref(cd), name.encode())
    if rc == -errno.ENODEV:
        return None
    c.check(rc, "crypt_init_by_name", name)
    return cd


def deactivate(name: str, *, deferred: bool = False) -> None:
    """Remove /dev/mapper/<name>; `deferred` removes it once its last user closes it."""
    cd = _init_by_name(name)
    if cd is None:
        raise NotUnlocked(f"{name} is not active")
    try:
        rc = c.lib.crypt_deactivate_by_name(cd, name.encode(),
                                           c.CRYPT_DEACTIVATE_DEFERRED if deferred else 0)
    finally:
        c.lib.crypt_free(cd)
    if rc == -errno.EBUSY:
        raise VolumeBusy(f"{name} is in use (mounted or held open)")
    if rc == -errno.ENODEV:
        raise NotUnlocked(f"{name} is not active")
    c.check(rc, "crypt_deactivate_by_name", name)
