"""Pins on the dbus-fast internals the adapter relies on (wkd/bus/connection.py):

* the reader calls our `_process_message` override for every message (cpdef, overridable);
* the CallContext set there reaches the method's task (asyncio copies the context);
* an async handler's future appears in `_pending_futures` synchronously, so the descriptors
  of a call live exactly as long as the call.

The real Manager interface runs on a private bus with a fake backend and a recording gate, so
each pin is observed end to end. If a dbus-fast release changes any of this, these fail.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from wkd.bus.api import MANAGER, ROOT_PATH
from wkd.bus.calls import Calls, Settings
from wkd.bus.connection import WkdBus
from wkd.bus.interfaces import Manager
from wkd.bus.jobs import Jobs
from wkd.bus.limits import Admission, LogLimiter
from wkd.bus.tree import ObjectTree
from wkd.model import Caller, HsmState, KekInfo, Mapping, VolumeInfo


class RecordingGate:
    def __init__(self) -> None:
        self.checks: list[tuple[str, str, bool]] = []

    async def check(self, sender: str, action: str, *, interactive: bool) -> Caller:
        self.checks.append((sender, action, interactive))
        await asyncio.sleep(random.random() / 50)
        return Caller(uid=0, pid=None, bus_name=sender)


class FakeBackend:
    """Enough of the Backend protocol for CreateKek and Format."""

    hsm_state = HsmState.READY

    def __init__(self) -> None:
        self.kek_callers: list[str | None] = []
        self.fd_open_during_format: list[bool] = []
        self.formatted_passphrases: list[int] = []
        self.gate_open = asyncio.Event()

    def subscribe(self, callback: Callable[..., None]) -> Callable[[], None]:
        return lambda: None

    async def list_volumes(self) -> list[VolumeInfo]:
        return []

    async def create_kek(self, label: str, *, caller: Caller) -> KekInfo:
        await asyncio.sleep(random.random() / 50)
        self.kek_callers.append(caller.bus_name)
        return KekInfo(label=label, key_id="00", key_bits=256)

    async def format(self, device: str, kek_label: str | None, options: Any, *,
                     caller: Caller) -> VolumeInfo:
        passphrase = options.recovery_passphrase
        self.formatted_passphrases.append(passphrase.length if passphrase else 0)
        await self.gate_open.wait()
        return VolumeInfo(uuid="01234567-89ab-cdef-0123-456789abcdef", device=device,
                          kek_label="k", kek_id="00", cipher="aes-xts-plain64", key_bits=512,
                          auto_unlock=False, created="2026-01-01T00:00:00Z",
                          mapping=None if device else Mapping("x", "/dev/mapper/x", False))


@pytest.fixture
async def served(private_bus):
    gate = RecordingGate()
    backend = FakeBackend()
    server = WkdBus(bus_address=private_bus.address, gate=gate, admission=Admission(),
                    log_limiter=LogLimiter())
    await server.connect()
    calls = Calls(backend, Settings())  # type: ignore[arg-type]
    tree = ObjectTree(server, calls)
    calls.attach(tree, Jobs(tree.publish_job, tree.unpublish_job))
    server.export(ROOT_PATH, Manager(calls, None))
    try:
        yield server, gate, backend
    finally:
        server.disconnect()


async def _call(client: MessageBus, dest: str, member: str, sig: str, body: list[Any],
                fds: list[int] | None = None) -> Message:
    reply = await client.call(Message(destination=dest, path=ROOT_PATH, interface=MANAGER,
                                      member=member, signature=sig, body=body,
                                      unix_fds=fds or []))
    assert reply is not None
    return reply


async def test_each_task_sees_its_own_caller(private_bus, served):
    server, gate, backend = served
    clients = [await MessageBus(bus_address=private_bus.address).connect() for _ in range(8)]
    try:
        replies = await asyncio.gather(*(
            _call(c, server.unique_name, "CreateKek", "sa{sv}", [f"k{i}-{n}", {}])
            for i, c in enumerate(clients) for n in range(5)))
        assert all(r.message_type is MessageType.METHOD_RETURN for r in replies), \
            [r.body for r in replies]
        # The gate saw every call with its own sender, and the backend acted for it.
        senders = sorted(c.unique_name for c in clients for _ in range(5))
        assert sorted(s for s, _a, _i in gate.checks) == senders
        assert sorted(backend.kek_callers) == senders  # type: ignore[type-var]
        assert {a for _s, a, _i in gate.checks} == {"org.wkd1.manage-kek"}
    finally:
        for c in clients:
            c.disconnect()


async def test_descriptor_lives_exactly_as_long_as_its_call(private_bus, served):
    server, _gate, backend = served
    client = await MessageBus(bus_address=private_bus.address,
                              negotiate_unix_fd=True).connect()
    try:
        r, w = os.pipe()
        os.write(w, b"passphrase")
        os.close(w)
        before = set(os.listdir("/proc/self/fd"))
        call = asyncio.ensure_future(_call(
            client, server.unique_name, "Format", "ssa{sv}",
            ["/dev/fake", "", {"recovery-passphrase-fd": Variant("h", 0)}], fds=[r]))
        # While Format runs, the daemon side read the passphrase (10 bytes) through the
        # descriptor and then closed it (it closes a read descriptor at once): no new fd.
        for _ in range(500):
            if backend.formatted_passphrases:
                break
            await asyncio.sleep(0.01)
        assert backend.formatted_passphrases == [10]
        assert set(os.listdir("/proc/self/fd")) - before == set()
        backend.gate_open.set()
        reply = await call
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        os.close(r)
    finally:
        client.disconnect()


async def test_a_call_carrying_descriptors_is_refused_where_none_are_taken(private_bus,
                                                                           served):
    server, gate, _backend = served
    client = await MessageBus(bus_address=private_bus.address,
                              negotiate_unix_fd=True).connect()
    try:
        r, w = os.pipe()
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(50):
            reply = await _call(client, server.unique_name, "CreateKek", "sa{sv}",
                                ["x", {}], fds=[r, w])
            assert reply.error_name == "org.wkd1.Error.InvalidArgument"
            assert "takes no file descriptors" in reply.body[0]
        assert gate.checks == []  # refused before authorization, never dispatched
        assert len(os.listdir("/proc/self/fd")) == before
        os.close(r)
        os.close(w)
    finally:
        client.disconnect()

