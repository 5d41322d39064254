"""One call on the bus: who sent it, what it carried, and the order it is handled in.

dbus-fast does not hand the message (so neither the sender, nor the header flags, nor the
descriptors) to a ServiceInterface method. The connection (wkd/bus/connection.py) sees every
message first and, for a call to an org.wkd1 method, sets a `CallContext` in a ContextVar
just before dbus-fast creates the method's asyncio task; asyncio copies the current context
into a task when it creates it, so the method reads its own call. tests/bus pin that order.

`run_call` is the one path every org.wkd1 method runs through, in this order:
  1. authorization (wkd/bus/authz.py), from the sender and, for polkit's interaction flag,
     the header flag or the `interactive` option -- nothing else of the call is read yet;
  2. the method body: decoding of the arguments into typed values, then the backend;
  3. error mapping, once: a WkdError reaches the caller under its own org.wkd1.Error.* name
     and message; an OSError the administrator can cause (a full or read-only file system)
     as Failed with its reason and one log line; anything else is a bug, logged with its
     traceback, and reaches the caller as Failed with a fixed message and no internals.
The descriptors a call carried are closed by the connection when the call's task ends,
whatever happened in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import logging
import os
import select
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from dbus_fast import DBusError, Variant

from wkd.bus.api import MethodSpec
from wkd.errors import ERROR_PREFIX, InvalidArgument, NotAuthorized, WkdError
from wkd.model import Caller
from wkd.secret import SecretKey

log = logging.getLogger("wkd.bus")

FAILED_NAME: Final = ERROR_PREFIX + "Failed"
FAILED_MESSAGE: Final = "internal error; see the wkd journal"

T = TypeVar("T")


class Gate(Protocol):
    """What authorizes a call (wkd.bus.authz.Authorizer)."""

    async def check(self, sender: str, action: str, *, interactive: bool) -> Caller: ...


@dataclass(slots=True)
class CallContext:
    sender: str
    serial: int
    allow_interactive: bool  # the ALLOW_INTERACTIVE_AUTHORIZATION header flag (D-Bus spec)
    gate: Gate
    no_reply: bool = False  # the NO_REPLY_EXPECTED header flag: errors are not sent back
    # Descriptors that came with the call; owned by the connection, closed when the call's
    # task ends. Nothing reads them before authorization.
    fds: tuple[int, ...] = ()
    caller: Caller | None = None
    _closed: bool = field(default=False, repr=False)

    def close_fds(self) -> None:
        if self._closed:
            return
        self._closed = True
        close_all(self.fds)


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "wkd_current_call", default=None)


def enter(ctx: CallContext | None) -> contextvars.Token[CallContext | None]:
    return _current.set(ctx)


def leave(token: contextvars.Token[CallContext | None]) -> None:
    _current.reset(token)


def current_call() -> CallContext:
    ctx = _current.get()
    if ctx is None:
        # Without a recorded sender there is nobody to authorize: refuse.
        raise NotAuthorized("could not identify the caller on the bus")
    return ctx


def current_caller() -> Caller:
    caller = current_call().caller
    if caller is None:  # a public method has no authorized caller to act for
        raise NotAuthorized("this method acts for no caller")
    return caller


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def wants_interaction(spec: MethodSpec, args: Sequence[Any]) -> bool:
    """The one option read before authorization: `interactive` (b) selects polkit's
    AllowUserInteraction flag. Anything else in it, even a malformed value, waits."""
    options = args[spec.options_index] if len(args) > spec.options_index else None
    value = options.get("interactive") if isinstance(options, dict) else None
    return isinstance(value, Variant) and value.signature == "b" and value.value is True


async def run_call(spec: MethodSpec, args: Sequence[Any],
                   body: Callable[[], Awaitable[T]]) -> T | None:
    try:
        return await _authorized(spec, args, body)
    except DBusError:
        # dbus-fast logs the failure of a call that expects no reply with a traceback
        # ("unexpected exception in future"); there is nobody to tell, so say nothing.
        if _current.get() is not None and current_call().no_reply:
            return None
        raise


async def _authorized(spec: MethodSpec, args: Sequence[Any],
                      body: Callable[[], Awaitable[T]]) -> T:
    try:
        call = current_call()
        if not spec.public:
            interactive = call.allow_interactive or wants_interaction(spec, args)
            call.caller = await call.gate.check(call.sender, spec.authorization,
                                                interactive=interactive)
        return await body()
    except asyncio.CancelledError:
        # The daemon is stopping and gave up waiting for this call (wkd/bus/service.py).
        # A cancelled handler task would reach dbus-fast as an unexpected exception.
        raise DBusError(FAILED_NAME, "wkd stopped before this call finished") from None
    except WkdError as e:
        raise DBusError(e.dbus_name, e.message) from None
    except DBusError as e:
        # Raised by our own code only on purpose (never carries internals); keep it.
        raise DBusError(e.type, e.text) from None
    except OSError as e:
        # ENOSPC, EROFS, EIO...: conditions of the machine, not bugs. Said once, plainly.
        log.error("%s.%s failed: %s", spec.interface, spec.name, _oserror_text(e))
        raise DBusError(FAILED_NAME, f"the system refused: {_oserror_text(e)}") from None
    except Exception:
        log.exception("internal error in %s.%s", spec.interface, spec.name)
        raise DBusError(FAILED_NAME, FAILED_MESSAGE) from None


def _oserror_text(e: OSError) -> str:
    return e.strerror or type(e).__name__


def read_secret_fd(fd: object, limit: int) -> SecretKey:
    """Read a secret (a recovery passphrase) a client passed as a file descriptor, straight
    into locked memory.

    Secrets cross the bus as descriptors, not as values in the message (stratisd's rule): a
    bus capture or monitor then shows only that an fd was passed. The client writes the
    secret and closes its end before calling, so everything is already there: each read is
    preceded by a zero-timeout poll, and the loop ends at end of file or when nothing more is
    ready. The descriptor's flags are left alone (O_NONBLOCK would be the client's too: an
    open file description is shared). It is closed by the connection, not here. The bytes go
    from the kernel into a locked, wiped buffer (readv into it); no Python `bytes` holds them.
    """
    if not isinstance(fd, int) or fd < 0:
        raise InvalidArgument("the descriptor was not received (connect with unix fd support)")
    with SecretKey(limit + 1) as buf:
        view = memoryview((ctypes.c_char * (limit + 1)).from_address(buf.address)).cast("B")
        size = 0
        poller = select.poll()
        try:
            poller.register(fd, select.POLLIN)
            while size <= limit and poller.poll(0):
                n = os.readv(fd, [view[size:]])
                if n == 0:
                    break
                size += n
        except OSError as e:
            raise InvalidArgument(f"cannot read the passed descriptor: {e.strerror}") from None
        finally:
            view.release()
        if size > limit:
            raise InvalidArgument(f"the passphrase is longer than {limit} bytes")
        if size == 0:
            raise InvalidArgument("recovery-passphrase-fd gave no data")
        secret = SecretKey(size)
        ctypes.memmove(secret.address, buf.address, size)
        return secret
