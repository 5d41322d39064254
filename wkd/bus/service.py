"""Serving org.wkd1: connect, build the object tree, take the name last; and stop in order.

`prepare` connects and exports everything; `ServiceHandle.announce` then takes the name, the
last step of the daemon's start-up, so no caller (a client waiting for the name, a bus
activation) reaches a half-built service. `prepare` may be cancelled at any await (a stop
request during start-up) and then leaves nothing behind. `ServiceHandle.close` stops in the
order that loses no caller's work:
refuse new calls and give up the name, let calls in flight finish (up to DRAIN_SECONDS),
stop the jobs (RewrapAll is resumable), then disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from dbus_fast import DBusError, NameFlag, RequestNameReply

from wkd.bus.api import BUS_NAME, ROOT_PATH
from wkd.bus.authz import Authorizer
from wkd.bus.calls import Calls, Settings
from wkd.bus.connection import WkdBus
from wkd.bus.interfaces import Manager
from wkd.bus.jobs import Jobs
from wkd.bus.limits import Admission, LogLimiter
from wkd.bus.ports import Backend
from wkd.bus.tree import ObjectTree
from wkd.errors import Failed, WkdError
from wkd.model import HsmInfo

log = logging.getLogger("wkd.bus")

# How long a stop waits for calls in flight (a Format writes a header in about a second; an
# unlock waits for the HSM). systemd's TimeoutStopSec= (90 s by default) is the outer bound.
DRAIN_SECONDS: Final = 20.0


@dataclass
class ServiceHandle:
    """What `serve` returns: the running service and how to stop it."""

    bus: WkdBus
    jobs: Jobs
    unsubscribe: Callable[[], None]

    async def announce(self) -> None:
        """Take the bus name org.wkd1: from now on callers reach the service."""
        try:
            reply = await self.bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        except DBusError as e:
            raise Failed(f"cannot own the bus name {BUS_NAME}: {e.text} "
                         "(the bus policy lets only root own it)") from None
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise Failed(f"the bus name {BUS_NAME} is owned by another process "
                         "(is another wkd running?)")

    async def close(self) -> None:
        self.unsubscribe()
        self.bus.stopping = True  # refuse new calls from now on
        if self.bus.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.bus.release_name(BUS_NAME), 5)
        await self.bus.drain(DRAIN_SECONDS)
        await self.jobs.close()
        if self.bus.connected:
            self.bus.disconnect()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        # Shielded: dbus-fast awaits its one disconnect future directly, so cancelling a
        # waiter (as the daemon does when it stops) would cancel that future and break the
        # bus's own shutdown.
        with contextlib.suppress(Exception):
            await asyncio.shield(self.bus.wait_for_disconnect())  # type: ignore[no-untyped-call]


async def _connect(bus_address: str | None, authorizer: Authorizer,
                   admission: Admission, log_limiter: LogLimiter) -> WkdBus:
    bus = WkdBus(bus_address=bus_address, gate=authorizer, admission=admission,
                 log_limiter=log_limiter)
    try:
        await bus.connect()
    except BaseException as e:
        bus.disconnect()
        if not isinstance(e, Exception):
            raise
        raise Failed(f"cannot connect to the bus {bus_address or '(system bus)'}: "
                     f"{type(e).__name__}: {e}") from None
    return bus


async def prepare(backend: Backend, bus_address: str | None, *,
                  settings: Settings | None = None,
                  authorizer: Authorizer | None = None) -> ServiceHandle:
    """Connect, export /org/wkd1 and every known volume; the name is not taken yet.

    The backend must be started already.
    """
    admission, log_limiter = Admission(), LogLimiter()
    authorizer = authorizer or Authorizer(admission=admission, log_limiter=log_limiter)
    bus = await _connect(bus_address, authorizer, admission, log_limiter)
    unsubscribe: Callable[[], None] = lambda: None  # noqa: E731
    try:
        authorizer.bind(bus)
        hsm_info: HsmInfo | None = None
        try:
            hsm_info = await backend.hsm_info()
        except WkdError as e:
            log.warning("HSM information unavailable: %s", e.message)
        calls = Calls(backend, settings or Settings())
        tree = ObjectTree(bus, calls)
        jobs = Jobs(tree.publish_job, tree.unpublish_job)
        calls.attach(tree, jobs)
        bus.export(ROOT_PATH, Manager(calls, hsm_info))
        # Subscribe before enumerating (STYLE principle 6): a volume that appears in between
        # is published by the event, and publishing twice is harmless.
        unsubscribe = backend.subscribe(tree.on_event)
        for info in await backend.list_volumes():
            tree.publish(info)
    except BaseException:
        unsubscribe()
        bus.disconnect()
        raise
    return ServiceHandle(bus=bus, jobs=jobs, unsubscribe=unsubscribe)


async def serve(backend: Backend, bus_address: str | None, *,
                settings: Settings | None = None,
                authorizer: Authorizer | None = None) -> ServiceHandle:
    """`prepare`, then `announce`: a service reachable by name."""
    handle = await prepare(backend, bus_address, settings=settings, authorizer=authorizer)
    try:
        await handle.announce()
    except BaseException:
        await handle.close()
        raise
    return handle
