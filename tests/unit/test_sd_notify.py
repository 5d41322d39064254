"""wkd.system.systemd: sd_notify over a real AF_UNIX datagram socket, watchdog interval and loop."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import pytest

from wkd.system import systemd as sd


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


def test_ready_status_stopping(notify_socket):
    assert sd.ready("HSM logged in")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=HSM logged in"
    assert sd.status("3 volumes")
    assert notify_socket.recv(4096) == b"STATUS=3 volumes"
    assert sd.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"
    assert sd.extend_timeout(2.5)
    assert notify_socket.recv(4096) == b"EXTEND_TIMEOUT_USEC=2500000"


def test_abstract_socket(monkeypatch):
    name = f"wkd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_no_socket_is_not_an_error(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sd.notify("READY=1") is False


def test_malformed_state_is_refused(notify_socket):
    with pytest.raises(ValueError):
        sd.notify("READY=1\nMAINPID=1")
    with pytest.raises(ValueError):
        sd.notify("READY")


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    (None, None, None),
    ("30000000", None, 30.0),
    ("30000000", "self", 30.0),
    ("30000000", "1", None),  # meant for another process (leaked env)
    ("0", None, None),
    ("garbage", None, None),
    ("30000000", "x", None),
])
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert sd.watchdog_interval() == expected


async def test_watchdog_loop_sends_at_half_interval(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s -> ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notify_socket.setblocking(False)
    task = asyncio.create_task(sd.watchdog_loop())
    await asyncio.sleep(0.35)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pings = []
    while True:
        try:
            pings.append(notify_socket.recv(4096))
        except BlockingIOError:
            break
    assert set(pings) == {b"WATCHDOG=1"}
    assert 3 <= len(pings) <= 5


async def test_watchdog_stops_when_loop_blocks(notify_socket):
    """The point of pinging from the loop: a blocked loop sends nothing."""
    import time
    notify_socket.setblocking(False)
    task = asyncio.create_task(sd.watchdog_loop(interval=0.1))
    await asyncio.sleep(0)  # first ping
    time.sleep(0.3)  # a hung event loop
    count_during_hang = 0
    while True:
        try:
            notify_socket.recv(4096)
            count_during_hang += 1
        except BlockingIOError:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert count_during_hang == 1


async def test_watchdog_loop_returns_without_watchdog(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    await asyncio.wait_for(sd.watchdog_loop(), timeout=1)
