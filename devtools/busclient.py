"""The smallest D-Bus client of org.wkd1, for wkd's own tools (the demo, the benchmarks):
call a method and get its reply body, or wait until the daemon owns its name."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from wkd.bus.api import BUS_NAME

SERVICE: Final = BUS_NAME


class CallError(Exception):
    """The daemon (or the bus) answered a call with an error."""

    def __init__(self, member: str, name: str, text: str) -> None:
        super().__init__(f"{member} failed: {name}: {text}")
        self.name = name


async def call(bus: MessageBus, path: str, iface: str, member: str, signature: str = "",
               *body: Any, destination: str = SERVICE) -> list[Any]:
    reply = await bus.call(Message(destination=destination, path=path, interface=iface,
                                   member=member, signature=signature, body=list(body)))
    assert reply is not None  # a method call always gets a reply or an error
    if reply.message_type is MessageType.ERROR:
        raise CallError(member, reply.error_name or "",
                        str(reply.body[0]) if reply.body else "")
    return list(reply.body)


async def wait_for_name(bus: MessageBus, name: str = SERVICE, *, timeout: float = 60.0,
                        alive: Callable[[], bool] | None = None) -> None:
    """Poll NameHasOwner until `name` is owned. `alive()` returning False (the daemon process
    exited) or the timeout raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise TimeoutError(f"the process meant to own {name} exited")
        (owned,) = await call(bus, "/org/freedesktop/DBus", "org.freedesktop.DBus",
                              "NameHasOwner", "s", name, destination="org.freedesktop.DBus")
        if owned:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{name} did not appear on the bus within {timeout:.0f} s")
