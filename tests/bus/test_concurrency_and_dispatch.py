"""Concurrency on the real service, and the pin on dbus-fast's dispatch order that the
caller identity relies on (wkd/service_call.py)."""

from __future__ import annotations

import asyncio
import random
from typing import Annotated

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method

from tests.bus.conftest import call, format_image, get_prop
from wkd.service_call import current_call, make_recorder


async def test_fifty_concurrent_clients(wkd_daemon, bus, image):
    path = await format_image(bus, image)
    uuid = await get_prop(bus, path, "org.wkd1.Volume", "Uuid")
    clients = [await MessageBus(bus_address=wkd_daemon.address).connect() for _ in range(50)]
    try:
        async def one(i: int, c: MessageBus) -> None:
            kind = i % 5
            if kind == 0:
                (vols,) = await call(c, "ListVolumes", "a{sv}", [{}])
                assert path in vols
            elif kind == 1:
                (obj,) = await call(c, "Unlock", "sa{sv}", [uuid, {"verify-only": Variant("b", True)}])  # noqa: E501
                assert obj == path
            elif kind == 2:
                (keks,) = await call(c, "ListKeks", "a{sv}", [{}])
                assert "wkd-default" in {k[0] for k in keks}
            elif kind == 3:
                assert await get_prop(c, path, "org.wkd1.Volume", "Uuid") == uuid
            else:
                (kid,) = await call(c, "CreateKek", "sa{sv}", [f"conc-{i}-{random.randrange(1 << 30)}", {}])  # noqa: E501
                assert kid

        await asyncio.wait_for(asyncio.gather(*(one(i, c) for i, c in enumerate(clients))), 120)
    finally:
        for c in clients:
            c.disconnect()


async def test_two_concurrent_verify_unlocks(bus, image):
    path = await format_image(bus, image)
    opts = {"verify-only": Variant("b", True)}
    a, b = await asyncio.gather(call(bus, "Unlock", "sa{sv}", [path, opts]),
                                call(bus, "Unlock", "sa{sv}", [image, opts]))
    assert a == b == [path]
    assert await get_prop(bus, path, "org.wkd1.Volume", "Active") is False


class _Echo(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("test.Echo")

    @dbus_method(name="WhoAsync")
    async def who_async(self) -> Annotated[str, DBusSignature("s")]:
        await asyncio.sleep(random.random() / 100)
        return current_call().sender

    @dbus_method(name="WhoInteractive")
    async def who_interactive(self) -> Annotated[bool, DBusSignature("b")]:
        return current_call().allow_interactive


async def test_sender_recorded_before_dispatch(private_bus):
    """If dbus-fast ever runs user message handlers after method dispatch, or stops copying
    the context into the handler's task, this fails, and so would caller identification."""
    server = await MessageBus(bus_address=private_bus.address).connect()
    server.add_message_handler(make_recorder(frozenset({"test.Echo"})))
    server.export("/t", _Echo())
    clients = [await MessageBus(bus_address=private_bus.address).connect() for _ in range(8)]
    try:
        async def ask(c: MessageBus, member: str, flags: int = 0):
            from dbus_fast import MessageFlag

            r = await c.call(Message(destination=server.unique_name, path="/t",
                                     interface="test.Echo", member=member,
                                     flags=MessageFlag(flags)))
            assert r.message_type == MessageType.METHOD_RETURN, r.body
            return r.body[0]

        results = await asyncio.gather(*(ask(c, "WhoAsync") for c in clients for _ in range(5)))
        expected = [c.unique_name for c in clients for _ in range(5)]
        assert results == expected
        assert await ask(clients[0], "WhoInteractive", 4) is True
        assert await ask(clients[0], "WhoInteractive", 0) is False
    finally:
        for c in [*clients, server]:
            c.disconnect()
