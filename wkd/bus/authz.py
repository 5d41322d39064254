"""Authorization of bus callers: who is calling (from the bus daemon) and may they (polkit).

One place decides (STYLE "deny by default; authorize in one place"), and it decides before
anything else the call carries is looked at (wkd/bus/call.py runs it first):
- the caller's identity comes from the bus daemon, org.freedesktop.DBus.GetConnectionCredentials
  on the sender's unique name, never from method arguments;
- uid 0 is always allowed (root can open the HSM and the disk anyway);
- a method marked "deny" in org.wkd1.xml (the default) is root's only;
- everyone else needs polkit's yes, from org.freedesktop.PolicyKit1.Authority.CheckAuthorization
  with the subject ("system-bus-name", {"name": <unique name>}) -- the subject kind polkit
  recommends for bus services because it cannot be raced the way a (pid, start-time) can;
- if polkit cannot be reached or answers with an error, the answer is no.

The actions are declared in packaging/polkit/org.wkd1.policy (a test holds it against the
XML's org.wkd1.Authorization values).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from wkd.bus.api import DENY
from wkd.bus.limits import MAX_POLKIT_CHECKS, Admission, LogLimiter
from wkd.errors import NotAuthorized
from wkd.model import Caller

log = logging.getLogger("wkd.bus.authz")

POLKIT_NAME: Final = "org.freedesktop.PolicyKit1"
POLKIT_PATH: Final = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE: Final = "org.freedesktop.PolicyKit1.Authority"
# CheckAuthorizationFlags (polkit docs, "org.freedesktop.PolicyKit1.Authority"):
# 1 = AllowUserInteraction.
POLKIT_ALLOW_USER_INTERACTION: Final = 1
# A non-interactive check answers at once; an interactive one waits for a human at an
# authentication agent, so give it the time a person needs (polkit's own agents time out
# after a few minutes).
CHECK_TIMEOUT: Final = 25.0
INTERACTIVE_CHECK_TIMEOUT: Final = 300.0
CREDENTIALS_TIMEOUT: Final = 10.0
# What a D-Bus round trip can raise when the bus or the peer goes away mid-call.
_TRANSPORT_ERRORS: Final = (TimeoutError, OSError, EOFError, asyncio.InvalidStateError)


class Authorizer:
    """Answers "may this caller do that?"; bound to the connection the service answers on."""

    def __init__(self, *, polkit_name: str = POLKIT_NAME, admission: Admission | None = None,
                 log_limiter: LogLimiter | None = None) -> None:
        self._bus: MessageBus | None = None
        self._polkit_name = polkit_name
        self._admission = admission or Admission()
        self._log_limiter = log_limiter or LogLimiter()
        self._polkit_slots = asyncio.Semaphore(MAX_POLKIT_CHECKS)

    def bind(self, bus: MessageBus) -> None:
        """Use `bus` (the connection the service answers on) for credentials and polkit."""
        self._bus = bus

    async def _call(self, msg: Message, timeout: float) -> Message:
        if self._bus is None:
            raise RuntimeError("Authorizer used before bind()")
        reply = await asyncio.wait_for(self._bus.call(msg), timeout)
        assert reply is not None  # a method call always gets a reply or an error
        return reply

    async def identify(self, sender: str) -> Caller:
        """The caller's uid and pid as the bus daemon knows them."""
        msg = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                      interface="org.freedesktop.DBus", member="GetConnectionCredentials",
                      signature="s", body=[sender])
        try:
            reply = await self._call(msg, CREDENTIALS_TIMEOUT)
        except _TRANSPORT_ERRORS as e:
            raise NotAuthorized("could not identify the caller on the bus") from e
        if reply.message_type != MessageType.METHOD_RETURN or reply.signature != "a{sv}":
            # The caller disconnected, or the bus refused: nobody to authorize.
            raise NotAuthorized("could not identify the caller on the bus")
        creds: dict[str, Variant] = reply.body[0]
        uid_v = creds.get("UnixUserID")
        if uid_v is None:
            raise NotAuthorized("the bus did not report the caller's user id")
        pid_v = creds.get("ProcessID")
        return Caller(uid=int(uid_v.value), pid=int(pid_v.value) if pid_v is not None else None,
                      bus_name=sender)

    async def check(self, sender: str, action: str, *, interactive: bool) -> Caller:
        """Return the caller if allowed, else raise NotAuthorized.

        A non-root caller is counted against its uid's bound of calls in flight for as long
        as it waits here (the caller releases it with `release`)."""
        caller = await self.identify(sender)
        if caller.uid == 0:
            return caller
        if action == DENY:
            self._note_denied(caller, action)
            raise NotAuthorized("only root may call this method")
        self._admission.enter_uid(caller.uid)
        try:
            async with self._polkit_slots:
                allowed, challenge = await self._polkit(sender, action, interactive=interactive)
        finally:
            self._admission.leave_uid(caller.uid)
        if allowed:
            return caller
        self._note_denied(caller, action)
        if challenge:
            raise NotAuthorized(
                f"{action} needs authentication; retry allowing interactive "
                "authorization (wkdctl does by default on a terminal; busctl: "
                "--allow-interactive-authorization=yes, or the option interactive=true)"
            )
        raise NotAuthorized(f"not authorized for {action}")

    def _note_denied(self, caller: Caller, action: str) -> None:
        held = self._log_limiter.take(("denied", caller.uid))
        if held is not None:
            more = f" ({held} similar lines held back)" if held else ""
            log.info("denied %s to uid %d (%s)%s", action, caller.uid, caller.bus_name, more)

    async def _polkit(self, sender: str, action: str, *, interactive: bool) -> tuple[bool, bool]:
        subject: list[Any] = ["system-bus-name", {"name": Variant("s", sender)}]
        msg = Message(destination=self._polkit_name, path=POLKIT_PATH,
                      interface=POLKIT_INTERFACE, member="CheckAuthorization",
                      signature="(sa{sv})sa{ss}us",
                      body=[subject, action, {},
                            POLKIT_ALLOW_USER_INTERACTION if interactive else 0, ""])
        timeout = INTERACTIVE_CHECK_TIMEOUT if interactive else CHECK_TIMEOUT
        try:
            reply = await self._call(msg, timeout)
        except _TRANSPORT_ERRORS as e:
            self._note_polkit_down(action, type(e).__name__)
            raise NotAuthorized(f"not authorized for {action}: polkit could not be reached"
                                ) from e
        if reply.message_type != MessageType.METHOD_RETURN or reply.signature != "(bba{ss})":
            self._note_polkit_down(action, reply.error_name or reply.signature)
            raise NotAuthorized(f"not authorized for {action}: polkit could not be reached "
                                f"({reply.error_name or 'unexpected reply'})")
        is_authorized, is_challenge, _details = reply.body[0]
        return bool(is_authorized), bool(is_challenge)

    def _note_polkit_down(self, action: str, why: str) -> None:
        held = self._log_limiter.take("polkit")
        if held is not None:
            more = f" ({held} similar lines held back)" if held else ""
            log.warning("polkit did not answer for %s: %s%s", action, why, more)
