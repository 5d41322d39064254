"""Concurrency on the real service (the pins on dbus-fast's dispatch are in
test_dispatch_pins.py)."""

from __future__ import annotations

import asyncio
import random

from dbus_fast import Variant
from dbus_fast.aio import MessageBus

from tests.bus.conftest import call, format_image, get_prop


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
