"""The PKCS#11 backend (python-pkcs11), tested against SoftHSM2 2.6.1.

Threading. python-pkcs11 calls C_Initialize(NULL), i.e. without CKF_OS_LOCKING_OK, so the
module may assume a single-threaded application (PKCS#11 v2.40 base §5.4, "C_Initialize");
SoftHSM2 then crashes when two threads call it at once. Every call into one module therefore
runs on ONE thread, owned by a per-module `_Module` shared by every backend of this process
that uses that module path (two backends with their own threads would race again).

Sessions. Login state belongs to the application, not the session (v2.40 base §5.6): a
second C_Login fails with CKR_USER_ALREADY_LOGGED_IN and one C_Logout logs every session out.
Backends of one process on the same token therefore share one logged-in R/W session.

Module lifetime. python-pkcs11 caches one `lib` per path; SoftHSM2 reads SOFTHSM2_CONF at
C_Initialize. When the last backend of a module closes, the module is finalized, so the next
open() re-initializes it and re-reads the configuration (tests use this for fresh tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11e

from wkd import errors
from wkd.model import Backend, HsmInfo, KekInfo, WrappedKey
from wkd.model import Mechanism as WrapMechanism
from wkd.secret import SecretKey, scrub_bytes
from wkd.values import ALLOWED_KEY_BYTES  # the one list of volume-key sizes (KeySize)

log = logging.getLogger(__name__)

T = TypeVar("T")

KEK_BITS: Final = 256
_KEK_ID_BYTES: Final = 16
_LABEL_RE: Final = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,63}")
# CKM_AES_KEY_WRAP_PAD (v2.40 current mechanisms §2.14.4) = RFC 5649: wraps any length, and
# the integrity check makes a wrong KEK or a flipped bit fail instead of giving a wrong key.
_WRAP_MECH: Final = Mechanism.AES_KEY_WRAP_PAD

# Return values after which the session (or the whole token) is gone and a fresh session +
# login may work: a restarted token daemon, a re-plugged HSM, a closed session.
_SESSION_LOST: Final = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.TokenNotPresent,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.UserNotLoggedIn,
)
# What a bad wrapped key looks like. SoftHSM2 answers CKR_GENERAL_ERROR for both a wrong KEK
# and a tampered blob (the RFC 5649 integrity check fails inside its OpenSSL call); other
# modules use the specific codes.
_UNWRAP_REFUSED: Final = (
    p11e.GeneralError,
    p11e.WrappedKeyInvalid,
    p11e.WrappedKeyLenRange,
    p11e.EncryptedDataInvalid,
    p11e.EncryptedDataLenRange,
    p11e.DataInvalid,
    p11e.DataLenRange,
    p11e.FunctionFailed,
)
_PIN_REFUSED: Final = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
    p11e.PinExpired,
    p11e.UserPinNotInitialized,
)

# Template of a volume key while it is inside the token: a session object (CKA_TOKEN false)
# that can do nothing but be wrapped. v2.40 base §4.9: CKA_EXTRACTABLE is required for
# C_WrapKey, CKA_SENSITIVE keeps CKA_VALUE unreadable.
_VK_NO_USE: Final[dict[Attribute, Any]] = {
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}


def validate_label(label: str) -> str:
    """KEK labels: 1..64 of [A-Za-z0-9._-], not starting with '-' (safe on command lines)."""
    if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
        raise errors.InvalidName(
            "a KEK label must be 1 to 64 characters from A-Z a-z 0-9 . _ - "
            "and must not start with '-'"
        )
    return label


# --- one loaded module, its thread and its shared sessions --------------------------------
@dataclass
class _TokenSession:
    token: Any  # pkcs11.Token
    session: Any  # pkcs11.Session
    pin: str
    users: int = 0


@dataclass
class _Module:
    path: str
    executor: ThreadPoolExecutor
    users: int = 0
    lib: Any = None  # pkcs11.lib; touched only on `executor`'s thread
    tokens: dict[str, _TokenSession] = field(default_factory=dict)


_modules: dict[str, _Module] = {}
_modules_lock = threading.Lock()


def _acquire_module(path: str) -> _Module:
    with _modules_lock:
        mod = _modules.get(path)
        if mod is None:
            mod = _Module(path, ThreadPoolExecutor(max_workers=1, thread_name_prefix="pkcs11"))
            _modules[path] = mod
        mod.users += 1
        return mod


def _release_module(mod: _Module) -> bool:
    """Drop one user; True when this was the last one (the caller then finalizes)."""
    with _modules_lock:
        mod.users -= 1
        if mod.users > 0:
            return False
        del _modules[mod.path]
        return True


class Pkcs11Backend:
    """An `HsmBackend` on a PKCS#11 token. Every method is a coroutine; all PKCS#11 work runs
    on the module's one thread."""

    def __init__(self, module: str, token_label: str, pin: str, *,
                 embedded: bool = False) -> None:
        self._module_path = module
        self._token_label = token_label
        self._pin = pin
        self._embedded = embedded
        self._mod: _Module | None = None
        self._ts: _TokenSession | None = None

    def __repr__(self) -> str:  # never the PIN
        return f"<Pkcs11Backend module={self._module_path!r} token={self._token_label!r}>"

    # --- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        if self._mod is not None:
            return
        mod = _acquire_module(self._module_path)
        try:
            self._ts = await self._on_thread(mod, lambda: self._open_sync(mod))
        except BaseException:
            await self._release(mod)
            raise
        self._mod = mod

    async def close(self) -> None:
        mod, self._mod = self._mod, None
        if mod is None:
            return
        ts, self._ts = self._ts, None
        if ts is not None:
            await self._on_thread(mod, lambda: self._close_session_sync(mod, ts))
        await self._release(mod)

    async def _release(self, mod: _Module) -> None:
        if _release_module(mod):
            await self._on_thread(mod, lambda: _finalize_sync(mod))
            mod.executor.shutdown(wait=True)

    def _open_sync(self, mod: _Module) -> _TokenSession:
        if mod.lib is None or not mod.lib.initialized:
            try:
                mod.lib = pkcs11.lib(self._module_path)
            except p11e.PKCS11Error as e:
                raise errors.HsmUnavailable(
                    f"cannot load PKCS#11 module {self._module_path}: {_describe(e)}"
                ) from None
        ts = mod.tokens.get(self._token_label)
        if ts is not None:
            # Already logged in by another backend of this process (login is per
            # application): accept only the same PIN, compared in constant time.
            if not hmac.compare_digest(ts.pin.encode(), self._pin.encode()):
                raise errors.HsmLoginFailed(
                    f"the PIN for token {self._token_label!r} was rejected"
                )
        else:
            token, session = self._login_sync(mod)
            ts = _TokenSession(token, session, self._pin)
            mod.tokens[self._token_label] = ts
        ts.users += 1
        return ts

    def _login_sync(self, mod: _Module) -> tuple[Any, Any]:
        label = self._token_label
        try:
            token = mod.lib.get_token(token_label=label)
        except p11e.NoSuchToken:
            raise errors.HsmUnavailable(
                f"no token labelled {label!r} in PKCS#11 module {self._module_path}"
            ) from None
        except p11e.MultipleTokensReturned:
            raise errors.HsmUnavailable(
                f"more than one token labelled {label!r} in {self._module_path}"
            ) from None
        except p11e.PKCS11Error as e:
            raise errors.HsmUnavailable(
                f"cannot list tokens of {self._module_path}: {_describe(e)}"
            ) from None
        try:
            session = token.open(rw=True, user_pin=self._pin)
        except _PIN_REFUSED:
            raise errors.HsmLoginFailed(f"the PIN for token {label!r} was rejected") from None
        except p11e.PinLocked:
            raise errors.HsmLoginFailed(
                f"the PIN for token {label!r} is locked; reset it with the SO PIN"
            ) from None
        except p11e.UserAlreadyLoggedIn:
            # Someone else in this process logged in on this token outside wkd. Refuse
            # rather than ride on a login whose PIN we cannot check.
            raise errors.HsmLoginFailed(
                f"token {label!r} is already logged in by another user of the module"
            ) from None
        except p11e.PKCS11Error as e:
            raise errors.HsmUnavailable(
                f"cannot open a session on token {label!r}: {_describe(e)}"
            ) from None
        return token, session

    def _close_session_sync(self, mod: _Module, ts: _TokenSession) -> None:
        ts.users -= 1
        if ts.users > 0:
            return
        if mod.tokens.get(self._token_label) is ts:
            del mod.tokens[self._token_label]
        try:
            ts.session.close()  # C_Logout + C_CloseSession
        except p11e.PKCS11Error as e:
            log.debug("closing PKCS#11 session: %s", _describe(e))

    def _reopen_sync(self) -> None:
        """A fresh session and login for the shared token session, after a loss."""
        mod, ts = self._live()
        with contextlib.suppress(p11e.PKCS11Error):  # already gone: that is why we are here
            ts.session.close()
        try:
            if not mod.lib.initialized:
                mod.lib.initialize()
            ts.token, ts.session = self._login_sync(mod)
        except errors.HsmLoginFailed:
            raise
        except (errors.WkdError, p11e.PKCS11Error) as e:
            raise errors.HsmUnavailable(
                f"lost the session to token {self._token_label!r} and could not reopen "
                f"it: {e.message if isinstance(e, errors.WkdError) else _describe(e)}"
            ) from None

    # --- running work on the module thread ----------------------------------------------
    @staticmethod
    async def _on_thread(mod: _Module, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(mod.executor, fn)

    def _live(self) -> tuple[_Module, _TokenSession]:
        if self._mod is None or self._ts is None:
            raise errors.HsmUnavailable("the HSM backend is not open")
        return self._mod, self._ts

    async def _call(self, fn: Callable[[Any], T]) -> T:
        """Run fn(session) on the module thread, surviving one session loss."""
        mod, _ = self._live()
        return await self._on_thread(mod, lambda: self._call_sync(fn))

    def _call_sync(self, fn: Callable[[Any], T]) -> T:
        _, ts = self._live()
        try:
            try:
                return fn(ts.session)
            except _SESSION_LOST as e:
                log.warning("PKCS#11 session to token %r lost (%s); reopening",
                            self._token_label, type(e).__name__)
                self._reopen_sync()
            try:
                return fn(ts.session)
            except _SESSION_LOST as e:
                raise errors.HsmUnavailable(
                    f"token {self._token_label!r} is unavailable: {_describe(e)}"
                ) from None
        except errors.WkdError:
            raise
        except p11e.PKCS11Error as e:
            # Anything else the module refused: a typed error with the return value's name,
            # never the raw exception (and never data: python-pkcs11 messages carry none).
            raise errors.HsmError(
                f"PKCS#11 call on token {self._token_label!r} failed: {_describe(e)}"
            ) from None

    async def run_in_session(self, fn: Callable[[Any], T]) -> T:
        """Run fn(pkcs11.Session) on the module thread. For tests and diagnostics only:
        the caller must not leak key material out of fn."""
        mod, ts = self._live()
        return await self._on_thread(mod, lambda: fn(ts.session))

    # --- HsmBackend -----------------------------------------------------------------------
    async def info(self) -> HsmInfo:
        def work(session: Any) -> HsmInfo:
            token = session.token
            manufacturer = str(token.manufacturer_id).strip()
            return HsmInfo(
                backend=Backend.PKCS11,
                module=self._module_path,
                token_label=str(token.label).strip(),
                manufacturer=manufacturer,
                model=str(token.model).strip(),
                software="softhsm" in manufacturer.lower(),
                embedded=self._embedded,
            )
        return await self._call(work)

    async def list_keks(self) -> list[KekInfo]:
        def work(session: Any) -> list[KekInfo]:
            keys = _find(session, {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.TOKEN: True,
                Attribute.WRAP: True,
                Attribute.UNWRAP: True,
            })
            return sorted((_kek_info(k) for k in keys), key=lambda k: (k.label, k.key_id))
        return await self._call(work)

    async def get_kek(self, label: str) -> KekInfo:
        validate_label(label)
        return await self._call(lambda s: _kek_info(self._kek(s, label, None)))

    async def create_kek(self, label: str) -> KekInfo:
        validate_label(label)

        def work(session: Any) -> KekInfo:
            if _find(session, {Attribute.CLASS: ObjectClass.SECRET_KEY,
                               Attribute.LABEL: label, Attribute.TOKEN: True}):
                raise errors.KekExists(f"a KEK labelled {label!r} already exists")
            key = session.generate_key(
                KeyType.AES, KEK_BITS,
                id=os.urandom(_KEK_ID_BYTES), label=label, store=True,
                capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
                template={
                    Attribute.PRIVATE: True,
                    # v2.40 base §4.9: SENSITIVE and not EXTRACTABLE, so the value never
                    # leaves the token, not even wrapped; both can only be tightened later.
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.ENCRYPT: False,
                    Attribute.DECRYPT: False,
                    Attribute.SIGN: False,
                    Attribute.VERIFY: False,
                    Attribute.DERIVE: False,
                    # Nobody (with the PIN) can later turn on ENCRYPT/DECRYPT and use the
                    # KEK as a decryption oracle for wrapped blobs.
                    Attribute.MODIFIABLE: False,
                },
            )
            log.info("created KEK %r", label)
            return _kek_info(key)
        return await self._call(work)

    async def generate_wrapped_key(self, kek_label: str, key_bytes: int) -> WrappedKey:
        validate_label(kek_label)
        if key_bytes not in ALLOWED_KEY_BYTES:
            raise errors.InvalidArgument(
                f"volume key size {key_bytes} bytes not supported (use 32 or 64)"
            )

        def work(session: Any) -> WrappedKey:
            kek = self._kek(session, kek_label, None)
            # CKK_GENERIC_SECRET: SoftHSM2 (like most modules) refuses CKK_AES of 64 bytes,
            # and a generic secret of any length wraps the same way.
            vk = session.generate_key(
                KeyType.GENERIC_SECRET, key_bytes * 8, store=False, capabilities=0,
                template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True,
                          Attribute.PRIVATE: True, **_VK_NO_USE},
            )
            try:
                blob = kek.wrap_key(vk, mechanism=_WRAP_MECH)
            finally:
                _destroy(vk)
            return WrappedKey(kek_label=kek_label, kek_id=_hex_id(kek),
                              mechanism=WrapMechanism.AES_KEY_WRAP_PAD, blob=blob,
                              key_bytes=key_bytes)
        return await self._call(work)

    async def unwrap(self, wrapped: WrappedKey) -> SecretKey:
        self._check_wrapped(wrapped)

        def work(session: Any) -> SecretKey:
            kek = self._kek(session, wrapped.kek_label, wrapped.kek_id)
            # PKCS#11 offers no "decrypt a wrapped key to the caller": the only way to clear
            # bytes is an extractable, NON-sensitive session object whose CKA_VALUE we read.
            # It lives for the few calls below and is destroyed in the finally.
            obj = self._unwrap_obj(kek, wrapped, sensitive=False)
            try:
                value = obj[Attribute.VALUE]
            finally:
                _destroy(obj)
            try:
                if not isinstance(value, bytes) or len(value) != wrapped.key_bytes:
                    raise errors.UnwrapFailed(
                        f"the key unwrapped with KEK {wrapped.kek_label!r} has the wrong "
                        f"length (expected {wrapped.key_bytes} bytes)"
                    )
                return SecretKey.from_bytes(value)  # copies, then scrubs `value`
            finally:
                if isinstance(value, bytes):
                    scrub_bytes(value)
        return await self._call(work)

    async def rewrap(self, wrapped: WrappedKey, new_kek_label: str) -> WrappedKey:
        self._check_wrapped(wrapped)
        validate_label(new_kek_label)

        def work(session: Any) -> WrappedKey:
            old = self._kek(session, wrapped.kek_label, wrapped.kek_id)
            new = self._kek(session, new_kek_label, None)
            # Intermediate is sensitive (CKA_VALUE unreadable) but extractable (so it can be
            # wrapped again): the clear key never leaves the token.
            obj = self._unwrap_obj(old, wrapped, sensitive=True)
            try:
                blob = new.wrap_key(obj, mechanism=_WRAP_MECH)
            finally:
                _destroy(obj)
            return WrappedKey(kek_label=new_kek_label, kek_id=_hex_id(new),
                              mechanism=WrapMechanism.AES_KEY_WRAP_PAD, blob=blob,
                              key_bytes=wrapped.key_bytes)
        return await self._call(work)

    # --- helpers (module thread only) -----------------------------------------------------
    @staticmethod
    def _check_wrapped(wrapped: WrappedKey) -> None:
        validate_label(wrapped.kek_label)
        if wrapped.mechanism is not WrapMechanism.AES_KEY_WRAP_PAD:
            raise errors.InvalidArgument(f"unsupported wrap mechanism {wrapped.mechanism!s}")
        if wrapped.key_bytes not in ALLOWED_KEY_BYTES:
            raise errors.InvalidArgument(
                f"volume key size {wrapped.key_bytes} bytes not supported (use 32 or 64)"
            )

    def _kek(self, session: Any, label: str, kek_id: str | None) -> Any:
        keys = _find(session, {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.LABEL: label,
            Attribute.TOKEN: True,
        })
        if not keys:
            raise errors.KekNotFound(
                f"no KEK labelled {label!r} on token {self._token_label!r}"
            )
        if kek_id:
            matching = [k for k in keys if hmac.compare_digest(_hex_id(k), kek_id.lower())]
            if not matching:
                raise errors.KekNotFound(
                    f"the KEK labelled {label!r} on token {self._token_label!r} is not the "
                    f"one this key was wrapped with (id {kek_id}): the label now names a "
                    "different key"
                )
            keys = matching
        if len(keys) > 1:
            raise errors.HsmError(
                f"{len(keys)} KEKs are labelled {label!r} on token {self._token_label!r}"
            )
        return keys[0]

    @staticmethod
    def _unwrap_obj(kek: Any, wrapped: WrappedKey, *, sensitive: bool) -> Any:
        try:
            return kek.unwrap_key(
                ObjectClass.SECRET_KEY, KeyType.GENERIC_SECRET, wrapped.blob,
                mechanism=_WRAP_MECH, store=False, capabilities=0,
                template={Attribute.SENSITIVE: sensitive, Attribute.EXTRACTABLE: True,
                          Attribute.PRIVATE: True, **_VK_NO_USE},
            )
        except _UNWRAP_REFUSED as e:
            raise errors.UnwrapFailed(
                f"KEK {wrapped.kek_label!r} could not unwrap the key: wrong KEK or damaged "
                f"wrapped key ({_describe(e)})"
            ) from None


def _find(session: Any, template: dict[Attribute, Any]) -> list[Any]:
    # Consume the search fully here: a half-read SearchIter would run C_FindObjectsFinal from
    # its __del__, possibly on another thread.
    return list(session.get_objects(template))


def _hex_id(key: Any) -> str:
    raw = key[Attribute.ID]
    return bytes(raw).hex() if raw else ""


def _kek_info(key: Any) -> KekInfo:
    return KekInfo(label=str(key[Attribute.LABEL]), key_id=_hex_id(key),
                   key_bits=int(key[Attribute.VALUE_LEN]) * 8)


def _destroy(obj: Any) -> None:
    try:
        obj.destroy()
    except _SESSION_LOST:
        pass  # a session object dies with its session (v2.40 base §4.4)
    except p11e.PKCS11Error as e:
        log.warning("could not destroy a transient key object: %s", _describe(e))


def _finalize_sync(mod: _Module) -> None:
    for ts in list(mod.tokens.values()):
        with contextlib.suppress(p11e.PKCS11Error):
            ts.session.close()
    mod.tokens.clear()
    if mod.lib is not None and mod.lib.initialized:
        try:
            # C_Finalize, so that the next open() re-runs C_Initialize (and SoftHSM2
            # re-reads SOFTHSM2_CONF). python-pkcs11 keeps the lib object cached.
            mod.lib.finalize()
        except p11e.PKCS11Error as e:
            log.debug("C_Finalize: %s", _describe(e))
    mod.lib = None


def _describe(e: BaseException) -> str:
    """Name of the PKCS#11 return value, plus python-pkcs11's own text (which never holds
    PINs or key data: it is a fixed per-code string or a dlopen error)."""
    text = str(e).strip()
    name = type(e).__name__
    return f"{name}: {text}" if text else name


def module_in_use(path: str) -> bool:
    """True while some backend of this process has `path` loaded. Until the last one closes,
    a new SOFTHSM2_CONF does not take effect (tests check this before switching tokens)."""
    with _modules_lock:
        return path in _modules
