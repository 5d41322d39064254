"""Authorization of bus callers: who is calling (from the bus daemon) and may they (polkit).

One place decides (STYLE "deny by default; authorize in one place"):
- the caller's identity comes from the bus daemon, org.freedesktop.DBus.GetConnectionCredentials
  on the sender's unique name, never from method arguments;
- uid 0 is always allowed (root can open the HSM and the disk anyway);
- everyone else needs polkit's yes, from org.freedesktop.PolicyKit1.Authority.CheckAuthorization
  with the subject ("system-bus-name", {"name": <unique name>}) -- the subject kind polkit
  recommends for bus services because it cannot be raced the way a (pid, start-time) can;
- if polkit cannot be reached or answers with an error, the answer is no.

The actions are declared in packaging/polkit/org.wkd1.policy.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any, Final

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from wkd.errors import NotAuthorized
from wkd.model import Caller

log = logging.getLogger(__name__)

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


class Action(enum.StrEnum):
    """One polkit action per operation; every mutating method names one."""

    FORMAT = "org.wkd1.format"
    UNLOCK = "org.wkd1.unlock"
    LOCK = "org.wkd1.lock"
    REWRAP = "org.wkd1.rewrap"
    MANAGE_KEK = "org.wkd1.manage-kek"


class Authorizer:
    """Answers "may `sender` do `action`?" for the service; bound to the service's own bus."""

    def __init__(self, *, polkit_name: str = POLKIT_NAME) -> None:
        self._bus: MessageBus | None = None
        self._polkit_name = polkit_name

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
        msg = Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="GetConnectionCredentials",
            signature="s",
            body=[sender],
        )
        try:
            reply = await self._call(msg, CREDENTIALS_TIMEOUT)
        except (TimeoutError, OSError, EOFError) as e:
            raise NotAuthorized("could not identify the caller on the bus") from e
        if reply.message_type != MessageType.METHOD_RETURN:
            # The caller disconnected, or the bus refused: nobody to authorize.
            raise NotAuthorized("could not identify the caller on the bus")
        creds: dict[str, Variant] = reply.body[0]
        uid_v = creds.get("UnixUserID")
        if uid_v is None:
            raise NotAuthorized("the bus did not report the caller's user id")
        pid_v = creds.get("ProcessID")
        return Caller(
            uid=int(uid_v.value),
            pid=int(pid_v.value) if pid_v is not None else None,
            bus_name=sender,
        )

    async def check(self, sender: str, action: Action, *, interactive: bool) -> Caller:
        """Return the caller if allowed, else raise NotAuthorized."""
        caller = await self.identify(sender)
        if caller.uid == 0:
            return caller
        allowed, challenge = await self._polkit(sender, action, interactive=interactive)
        if allowed:
            return caller
        log.info("denied %s to uid %d (%s)", action.value, caller.uid, sender)
        if challenge:
            raise NotAuthorized(
                f"{action.value} needs authentication; retry allowing interactive "
                "authorization (wkdctl does by default on a terminal; busctl: "
                "--allow-interactive-authorization=yes, or the option interactive=true)"
            )
        raise NotAuthorized(f"not authorized for {action.value}")

    async def _polkit(self, sender: str, action: Action, *,
                      interactive: bool) -> tuple[bool, bool]:
        subject: list[Any] = ["system-bus-name", {"name": Variant("s", sender)}]
        msg = Message(
            destination=self._polkit_name,
            path=POLKIT_PATH,
            interface=POLKIT_INTERFACE,
            member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[subject, action.value, {},
                  POLKIT_ALLOW_USER_INTERACTION if interactive else 0, ""],
        )
        timeout = INTERACTIVE_CHECK_TIMEOUT if interactive else CHECK_TIMEOUT
        try:
            reply = await self._call(msg, timeout)
        except (TimeoutError, OSError, EOFError) as e:
            log.warning("polkit did not answer for %s: %s", action.value, type(e).__name__)
            raise NotAuthorized(
                f"not authorized for {action.value}: polkit could not be reached"
            ) from e
        if reply.message_type != MessageType.METHOD_RETURN or reply.signature != "(bba{ss})":
            log.warning("polkit refused the check for %s: %s", action.value,
                        reply.error_name or reply.signature)
            raise NotAuthorized(
                f"not authorized for {action.value}: polkit could not be reached "
                f"({reply.error_name or 'unexpected reply'})"
            )
        is_authorized, is_challenge, _details = reply.body[0]
        return bool(is_authorized), bool(is_challenge)
