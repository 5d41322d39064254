"""Per-call plumbing of the D-Bus adapter: who sent the call being handled, and error mapping.

dbus-fast does not hand the message (so neither the sender nor the header flags) to a
ServiceInterface method. A low-level message handler sees every message first, synchronously,
in `BaseMessageBus._process_message`, before the method dispatch that creates the handler's
asyncio task; `asyncio` copies the current `contextvars` context into a task when it is
created. So: the handler records the call in a ContextVar, and the method's task reads it.
This relies on dbus-fast's dispatch order, which tests/bus/test_sender_pinning.py pins.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from dbus_fast import DBusError, Message, MessageFlag, MessageType

from wkd.errors import ERROR_PREFIX, InvalidArgument, NotAuthorized, WkdError

log = logging.getLogger(__name__)

FAILED_NAME: Final = ERROR_PREFIX + "Failed"
FAILED_MESSAGE: Final = "internal error; see the wkd journal"
# A bound on every string argument, checked before anything else reads it: PATH_MAX for
# device paths is the largest legitimate value (linux/limits.h).
MAX_STRING: Final = 4096

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CallInfo:
    sender: str
    allow_interactive: bool  # the ALLOW_INTERACTIVE_AUTHORIZATION header flag (D-Bus spec)
    serial: int
    # Descriptors that came with the call. dbus-fast hands them over and never closes them,
    # so `guarded` closes them when the call ends: a client could otherwise leak fds into
    # the daemon with every call.
    unix_fds: tuple[int, ...] = ()


_current: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "wkd_current_call", default=None
)


def make_recorder(interfaces: frozenset[str]) -> Callable[[Message], bool]:
    """A `bus.add_message_handler` callback that records method calls to `interfaces`.

    It returns False so dbus-fast goes on dispatching the message as usual.
    """

    def record(msg: Message) -> bool:
        if msg.message_type is MessageType.METHOD_CALL:
            if msg.interface in interfaces and msg.sender:
                _current.set(CallInfo(
                    sender=msg.sender,
                    allow_interactive=bool(
                        msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION),
                    serial=msg.serial,
                    unix_fds=tuple(fd for fd in msg.unix_fds if isinstance(fd, int)),
                ))
            else:
                # Never let a stale record reach another method's task.
                _current.set(None)
        return False

    return record


def current_call() -> CallInfo:
    info = _current.get()
    if info is None:
        # Without a recorded sender there is nobody to authorize: refuse.
        raise NotAuthorized("could not identify the caller on the bus")
    return info


def check_string(value: object, what: str) -> str:
    """Refuse non-strings, NULs and over-long strings before they reach the engine."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string")
    if len(value) > MAX_STRING:
        raise InvalidArgument(f"{what} is too long ({len(value)} > {MAX_STRING} characters)")
    if "\0" in value:
        raise InvalidArgument(f"{what} must not contain NUL characters")
    return value


async def guarded(what: str, body: Callable[[], Awaitable[T]]) -> T:
    """Run one method body; map every failure to a DBusError with no internals.

    WkdError -> its own D-Bus name and message. Anything else is a bug: the traceback goes
    to the log, the caller gets org.wkd1.Error.Failed and a fixed message.
    """
    try:
        return await body()
    except WkdError as e:
        raise DBusError(e.dbus_name, e.message) from None
    except DBusError as e:
        # Raised by our own code only on purpose (never carries internals); keep it.
        raise DBusError(e.type, e.text) from None
    except Exception:
        log.exception("internal error in %s", what)
        raise DBusError(FAILED_NAME, FAILED_MESSAGE) from None
    finally:
        info = _current.get()
        for fd in info.unix_fds if info is not None else ():
            with contextlib.suppress(OSError):
                os.close(fd)


def read_secret_fd(fd: object, limit: int) -> bytes:
    """Read a secret (a recovery passphrase) a client passed as a file descriptor.

    Secrets cross the bus as descriptors, not as values in the message (stratisd's rule):
    a bus capture or monitor then shows only that an fd was passed. The client writes the
    secret and closes its end before calling, so everything is already there: the read is
    non-blocking and never stalls the event loop. The descriptor is closed by `guarded`.
    """
    if not isinstance(fd, int) or fd < 0:
        raise InvalidArgument("the descriptor was not received (connect with unix fd support)")
    chunks: list[bytes] = []
    total = 0
    try:
        os.set_blocking(fd, False)
        while total <= limit:
            try:
                chunk = os.read(fd, limit + 1 - total)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise InvalidArgument(f"cannot read the passed descriptor: {e.strerror}") from None
    data = b"".join(chunks)
    if total > limit:
        raise InvalidArgument(f"the passphrase is longer than {limit} bytes")
    return data
