"""Descriptors a client sends never stay in the daemon, an unauthorized caller's are never
read, and one client's flood of calls is bounded (issues 9 items 1 and "resources", 10 item 5).

The clients run as uid 65534 (nobody), dropping privileges in a forked child
(tests/bus/nobody.py). The flood: 10,000 messages carrying descriptors to every standard
interface, to unknown paths and members, with wrong signatures, without an interface, as
unicast signals and with NO_REPLY_EXPECTED. Afterwards the daemon's descriptor count is back
to its baseline, it still answers, and its log holds no traceback and no line per refused
message (the refusal log is rate-limited).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from tests.bus.conftest import call, format_image
from tests.bus.nobody import NOBODY, run_as_nobody
from wkd.bus.api import BUS_NAME, MANAGER, ROOT_PATH, VOLUME_PREFIX
from wkd.bus.limits import MAX_PENDING_PER_SENDER

MESSAGES = 10_000
PROPS = "org.freedesktop.DBus.Properties"
_CALLS: list[tuple[str, str | None, str, str, list[Any]]] = [
    (ROOT_PATH, "org.freedesktop.DBus.Peer", "Ping", "", []),
    (ROOT_PATH, "org.freedesktop.DBus.Peer", "GetMachineId", "", []),
    (ROOT_PATH, "org.freedesktop.DBus.Introspectable", "Introspect", "", []),
    ("/nope", "org.freedesktop.DBus.Introspectable", "Introspect", "", []),
    (ROOT_PATH, PROPS, "Get", "ss", [MANAGER, "Version"]),
    (ROOT_PATH, PROPS, "GetAll", "s", [MANAGER]),
    (ROOT_PATH, PROPS, "Set", "ssv", [MANAGER, "Version", Variant("s", "x")]),
    ("/nope", PROPS, "Get", "ss", [MANAGER, "Version"]),
    (ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", "", []),
    (ROOT_PATH, MANAGER, "Format", "s", ["/dev/null"]),
    (ROOT_PATH, MANAGER, "Format", "sh", ["/dev/null", 0]),
    (ROOT_PATH, MANAGER, "NoSuchMethod", "", []),
    ("/org/wkd1/nope", MANAGER, "ListVolumes", "a{sv}", [{}]),
    (VOLUME_PREFIX + "0" * 8, "org.wkd1.Volume", "Unlock", "a{sv}", [{}]),
    (ROOT_PATH, MANAGER, "ListVolumes", "a{sv}", [{"x": Variant("h", 1)}]),
    (ROOT_PATH, None, "Ping", "", []),
]


async def _flood(address: str, total: int) -> int:
    assert os.getuid() == NOBODY and os.geteuid() == NOBODY
    bus = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
    owner = await bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="GetNameOwner", signature="s",
        body=[BUS_NAME]))
    assert owner is not None
    unique = owner.body[0]
    r, w = os.pipe()
    os.write(w, b"never read")

    async def one(i: int) -> None:
        path, iface, member, sig, body = _CALLS[i % len(_CALLS)]
        fds = [r, w, r][: 1 + i % 3]
        if i % 11 == 0:  # a unicast signal to the daemon's connection
            bus.send(Message(message_type=MessageType.SIGNAL, destination=unique, path=path,
                             interface="org.example.Flood", member="Hello", signature="h",
                             body=[0], unix_fds=fds))
            return
        no_reply = i % 7 == 0
        msg = Message(destination=BUS_NAME, path=path, interface=iface, member=member,
                      signature=sig, body=body, unix_fds=fds,
                      flags=MessageFlag.NO_REPLY_EXPECTED if no_reply else MessageFlag.NONE)
        if no_reply:
            bus.send(msg)
        else:
            await bus.call(msg)

    sent = 0
    while sent < total:
        batch = range(sent, min(total, sent + 64))
        await asyncio.gather(*(one(i) for i in batch))
        sent += len(batch)
    # One last round trip: everything before it has been delivered and handled.
    await bus.call(Message(destination=BUS_NAME, path=ROOT_PATH,
                           interface="org.freedesktop.DBus.Peer", member="Ping"))
    bus.disconnect()
    return sent


def flood(address: str, total: int) -> int:
    return asyncio.run(_flood(address, total))


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _back_to(pid: int, baseline: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    count = _fds(pid)
    while count > baseline and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        count = _fds(pid)
    return count


async def test_ten_thousand_messages_with_descriptors_leave_none(wkd_daemon, bus):
    pid = wkd_daemon.proc.pid
    await call(bus, "ListVolumes", "a{sv}", [{}])  # warm: lazily opened resources
    baseline = _fds(pid)
    log_before = len(wkd_daemon.log_text())
    started = time.monotonic()
    sent = await run_as_nobody(flood, wkd_daemon.address, MESSAGES)
    took = time.monotonic() - started
    assert sent == MESSAGES
    after = await _back_to(pid, baseline)
    assert after <= baseline, f"{after - baseline} descriptors stayed in the daemon"
    (vols,) = await call(bus, "ListVolumes", "a{sv}", [{}])  # it still serves
    assert isinstance(vols, list)
    log = wkd_daemon.log_text()[log_before:]
    assert "Traceback" not in log
    refused = log.count(" refused ")
    assert 0 < refused <= 60, f"{refused} log lines about refused messages"
    print(f"\ndescriptors: {MESSAGES} messages from uid {NOBODY} in {took:.1f} s; daemon fds "
          f"{baseline} before, {after} after; {refused} refusal log lines")


async def _format_with_fd(address: str, image: str, fd: int) -> str:
    bus = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
    reply = await bus.call(Message(
        destination=BUS_NAME, path=ROOT_PATH, interface=MANAGER, member="Format",
        signature="ssa{sv}", body=[image, "", {"recovery-passphrase-fd": Variant("h", 0)}],
        unix_fds=[fd]))
    bus.disconnect()
    assert reply is not None
    return reply.error_name or "ok"


def format_with_fd(address: str, image: str, fd: int) -> str:
    return asyncio.run(_format_with_fd(address, image, fd))


async def test_unauthorized_descriptor_is_never_read(wkd_daemon, bus, image, polkit):
    """Authorization first: nobody's Format with a passphrase descriptor is refused and the
    data is still in the pipe afterwards (the daemon never read it)."""
    polkit.set_default("deny")
    r, w = os.pipe()
    os.write(w, b"secret passphrase")
    os.close(w)
    try:
        name = await run_as_nobody(format_with_fd, wkd_daemon.address, image, r)
        assert name == "org.wkd1.Error.NotAuthorized"
        assert polkit.calls and polkit.calls[-1].action == "org.wkd1.format"
        assert os.read(r, 100) == b"secret passphrase"  # every byte is still there
    finally:
        os.close(r)
    # Nothing was written either: root can format the image as it is.
    assert (await format_image(bus, image)).startswith(ROOT_PATH)


async def _many_kek_calls(address: str, n: int) -> list[str]:
    bus = await MessageBus(bus_address=address).connect()
    replies = await asyncio.gather(*(bus.call(Message(
        destination=BUS_NAME, path=ROOT_PATH, interface=MANAGER, member="CreateKek",
        signature="sa{sv}", body=[f"flood-{i}", {}])) for i in range(n)))
    bus.disconnect()
    return [r.error_name or "ok" for r in replies if r is not None]


def many_kek_calls(address: str, n: int) -> list[str]:
    return asyncio.run(_many_kek_calls(address, n))


async def test_a_flood_of_pending_calls_is_bounded(wkd_daemon, bus, polkit):
    """More calls in flight from one connection than MAX_PENDING_PER_SENDER are refused with
    LimitExceeded while the others wait (on a polkit that holds its answers), and root is
    served meanwhile."""
    polkit.hold()
    n = MAX_PENDING_PER_SENDER + 8
    child = asyncio.ensure_future(run_as_nobody(many_kek_calls, wkd_daemon.address, n))
    try:
        await polkit.wait_for_calls(MAX_PENDING_PER_SENDER, timeout=60)
        (vols,) = await call(bus, "ListVolumes", "a{sv}", [{}])
        assert isinstance(vols, list)
        await call(bus, "CreateKek", "sa{sv}", [f"root-during-flood-{os.getpid()}", {}])
    finally:
        polkit.release()
    names = await child
    assert names.count("org.wkd1.Error.LimitExceeded") == n - MAX_PENDING_PER_SENDER, names
    assert names.count("org.wkd1.Error.NotAuthorized") == MAX_PENDING_PER_SENDER, names
