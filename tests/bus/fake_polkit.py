"""A small real polkit peer for the bus tests.

It owns org.freedesktop.PolicyKit1 on the private bus and answers
org.freedesktop.PolicyKit1.Authority.CheckAuthorization from a rule table the test sets
(action id -> "allow" | "deny" | "challenge"), recording every call it receives. It is a real
D-Bus service on its own connection, so the daemon's authorization code path is exercised
unchanged (no patched function).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any

from dbus_fast import Message, MessageType, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method

Subject = Annotated[list[Any], DBusSignature("(sa{sv})")]
Details = Annotated[dict[str, str], DBusSignature("a{ss}")]
Result = Annotated[list[Any], DBusSignature("(bba{ss})")]
Str = Annotated[str, DBusSignature("s")]
UInt = Annotated[int, DBusSignature("u")]


@dataclass
class Check:
    subject_kind: str
    subject: dict[str, Any]
    action: str
    flags: int
    subject_uid: int | None  # what the bus says about the subject's connection


@dataclass
class Rules:
    default: str = "deny"
    actions: dict[str, str] = field(default_factory=dict)

    def answer(self, action: str) -> str:
        return self.actions.get(action, self.default)


class _Authority(ServiceInterface):
    def __init__(self, rules: Rules, calls: list[Check], owner: FakePolkit) -> None:
        super().__init__("org.freedesktop.PolicyKit1.Authority")
        self.rules = rules
        self.calls = calls
        self.owner = owner

    @dbus_method(name="CheckAuthorization")
    async def check_authorization(self, subject: Subject, action_id: Str, details: Details,
                                  flags: UInt, cancellation_id: Str) -> Result:
        kind, props = subject
        values = {k: v.value for k, v in props.items()}
        uid = await self.owner.uid_of(values.get("name", ""))
        self.calls.append(Check(kind, values, action_id, flags, uid))
        await self.owner.released.wait()
        answer = self.rules.answer(action_id)
        return [answer == "allow", answer == "challenge", {}]


class FakePolkit:
    def __init__(self, address: str) -> None:
        self.address = address
        self.rules = Rules()
        self.calls: list[Check] = []
        self.bus: MessageBus | None = None
        self.released = asyncio.Event()  # cleared by hold(): answers wait for release()
        self.released.set()

    async def start(self) -> FakePolkit:
        self.bus = await MessageBus(bus_address=self.address).connect()
        self.bus.export("/org/freedesktop/PolicyKit1/Authority",
                        _Authority(self.rules, self.calls, self))
        reply = await self.bus.request_name("org.freedesktop.PolicyKit1",
                                            NameFlag.DO_NOT_QUEUE)
        assert reply == RequestNameReply.PRIMARY_OWNER
        return self

    async def uid_of(self, name: str) -> int | None:
        assert self.bus is not None
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionUnixUser",
            signature="s", body=[name]))
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            return None
        return int(reply.body[0])

    def allow(self, *actions: str) -> None:
        for a in actions:
            self.rules.actions[a] = "allow"

    def set_default(self, answer: str) -> None:
        self.rules.default = answer

    def hold(self) -> None:
        """Answer nothing until release(): checks pile up as with a slow polkit."""
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    async def wait_for_calls(self, n: int, timeout: float) -> None:
        async def enough() -> None:
            while len(self.calls) < n:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(enough(), timeout)

    async def stop(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()
            await self.bus.wait_for_disconnect()
            self.bus = None


_ = Variant
