"""The daemon's bus connection: the one place every incoming message passes.

dbus-fast's reader hands each message to `_process_message`; this subclass wraps it so that,
before dbus-fast looks at a message:
  * descriptors: every descriptor that arrived with the message is closed once the message
    is handled -- whatever its type (a unicast signal can carry some too), interface, path,
    signature or outcome. A method call may carry descriptors only if org.wkd1.xml says its
    method takes them (org.wkd1.UnixFds, Format: 1); any other call carrying some is refused
    at once with InvalidArgument and its descriptors closed, never dispatched. The
    descriptors of an admitted call are closed when the call's task ends.
  * calls must name their interface (the spec allows leaving it out; then a path's methods
    would be matched by name alone and the bus policy by interface could not apply);
  * a call to an org.wkd1 method is admitted against the limits of wkd/bus/limits.py (its
    size, calls in flight per connection and over all) or refused with LimitExceeded;
  * an admitted call gets its CallContext (wkd/bus/call.py) set for the task dbus-fast is
    about to create for it.
Refusals are logged through a rate limiter. Calls to the standard interfaces (Properties,
Introspectable, Peer, ObjectManager) are answered by dbus-fast synchronously, within
`_process_message`; they are public reads.

This relies on two internals of dbus-fast 5 (pinned in pyproject.toml): the reader calls
`self._process_message` (a cpdef method, so this override is honoured), and an async method
handler registers its future in `self._pending_futures` synchronously. tests/bus pin both.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from dbus_fast import Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from wkd.bus import call as callctx
from wkd.bus.api import API, ROOT_PATH
from wkd.bus.call import CallContext, Gate, close_all
from wkd.bus.limits import MAX_CALL_BYTES, Admission, LogLimiter, payload_bytes
from wkd.errors import Failed, InvalidArgument, LimitExceeded, WkdError

log = logging.getLogger("wkd.bus")

UNKNOWN_METHOD: Final = "org.freedesktop.DBus.Error.UnknownMethod"


class WkdBus(MessageBus):
    def __init__(self, *, bus_address: str | None, gate: Gate, admission: Admission,
                 log_limiter: LogLimiter) -> None:
        if bus_address:
            super().__init__(bus_address=bus_address, negotiate_unix_fd=True)
        else:
            from dbus_fast import BusType  # noqa: PLC0415

            super().__init__(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
        self._gate = gate
        self._admission = admission
        self._log_limiter = log_limiter
        self._in_flight: set[asyncio.Future[Any]] = set()
        # Set when the daemon stops: org.wkd1 calls are refused from then on.
        self.stopping = False

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the calls in flight, then cancel the rest."""
        if self._in_flight:
            _done, late = await asyncio.wait(set(self._in_flight), timeout=timeout)
            for fut in late:
                fut.cancel()

    # --- the one entry point --------------------------------------------------------------
    def _process_message(self, msg: Message) -> None:
        fds = tuple(fd for fd in msg.unix_fds if isinstance(fd, int))
        if msg.message_type is not MessageType.METHOD_CALL:
            try:
                super()._process_message(msg)
            finally:
                close_all(fds)
            return
        spec = API.interfaces.get(msg.interface or "")
        member = spec.methods.get(msg.member or "") if spec is not None else None
        if member is not None and member.in_signature != msg.signature:
            member = None  # dbus-fast answers UnknownMethod; the descriptors go below
        try:
            if msg.interface is None:
                raise _Refusal(UNKNOWN_METHOD, "calls to this service must name their "
                                               "interface")
            allowed_fds = member.unix_fds if member is not None else 0
            if len(fds) > allowed_fds:
                what = f"{msg.interface}.{msg.member}"
                raise InvalidArgument(f"{what} takes no file descriptors" if not allowed_fds
                                      else f"{what} takes at most {allowed_fds}")
            if member is None:
                super()._process_message(msg)  # a standard interface, or an unknown method
                return
            if self.stopping:
                raise Failed("wkd is stopping; call again once it is back")
            if payload_bytes(msg.body, MAX_CALL_BYTES) > MAX_CALL_BYTES:
                raise LimitExceeded(f"the call's arguments exceed {MAX_CALL_BYTES} bytes")
            self._admission.admit(msg.sender or "", fds=len(fds))
        except (WkdError, _Refusal) as e:
            close_all(fds)
            self._refuse(msg, e)
            return
        self._dispatch(msg, fds)

    def _dispatch(self, msg: Message, fds: tuple[int, ...]) -> None:
        sender = msg.sender or ""
        ctx = CallContext(
            sender=sender, serial=msg.serial, gate=self._gate, fds=fds,
            allow_interactive=bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION),
            no_reply=bool(msg.flags & MessageFlag.NO_REPLY_EXPECTED))

        released = False

        def release(fut: Any = None) -> None:
            nonlocal released
            if released:
                return
            released = True
            ctx.close_fds()
            self._admission.release(sender, fds=len(fds))
            self._in_flight.discard(fut)

        pending: set[Any] = self._pending_futures
        before = set(pending)
        token = callctx.enter(ctx)
        try:
            super()._process_message(msg)
        except BaseException:
            release()
            raise
        finally:
            callctx.leave(token)
        started = pending - before
        if not started:
            release()  # not dispatched (unknown path, bad descriptor index): nothing runs
            return
        # One call, one task: its end releases the call, whatever its outcome.
        fut = started.pop()
        self._in_flight.add(fut)
        fut.add_done_callback(release)

    def _refuse(self, msg: Message, e: WkdError | _Refusal) -> None:
        name, text = (e.dbus_name, e.message) if isinstance(e, WkdError) else (e.name, e.text)
        # One bucket for all senders: the uid is not known yet, and a user can open many
        # connections (a key per connection would multiply the burst).
        held = self._log_limiter.take("refused")
        if held is not None:
            more = f" ({held} similar lines held back)" if held else ""
            log.info("refused %s.%s from %s: %s%s", msg.interface, msg.member, msg.sender,
                     text, more)
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            self.send(Message.new_error(msg, name, text))

    # --- sending ---------------------------------------------------------------------------
    def send(self, msg: Message) -> asyncio.Future[None]:  # type: ignore[override]
        """dbus-fast's send, minus the noise of a vanished bus: a reply or signal for a
        connection that is gone is dropped (the daemon is exiting anyway: run_daemon sees
        the disconnect), and a failed write is consumed here instead of surfacing as
        "Future exception was never retrieved" with a traceback in the journal."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.connected:
            done.set_result(None)
            return done
        try:
            fut: asyncio.Future[None] = super().send(msg)
        except OSError as e:
            log.debug("dropped a message on a closed connection: %s", e)
            done.set_result(None)
            return done
        fut.add_done_callback(_consume)
        return fut

    # --- ObjectManager signals: ours come from /org/wkd1 (wkd/bus/tree.py) ------------------
    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        # dbus-fast emits InterfacesAdded/Removed from the exported object's own path on every
        # export; the D-Bus spec wants them from the ObjectManager's path, which the tree
        # does. Dropping dbus-fast's copy spares clients seeing two.
        if not path.startswith(ROOT_PATH + "/"):
            super()._emit_interface_added(path, interface)

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if not path.startswith(ROOT_PATH + "/"):
            super()._emit_interface_removed(path, removed_interfaces)


def _consume(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("a message was not sent: %s", fut.exception())


class _Refusal(Exception):
    """A refusal under a standard D-Bus error name."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name, self.text = name, text

