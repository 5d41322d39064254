"""Fixtures of the bus tests: a private system-like dbus-daemon, the real wkd daemon on it
(real Engine, embedded SoftHSM2 token, image files allowed), clients, a fake polkit peer.

The dbus-daemon policy mirrors a system bus: connections from any uid (auth EXTERNAL), method
calls denied by default, and the project's own dbus/org.wkd1.conf included unchanged, so the
tests also check that policy (only root owns org.wkd1, anyone may call it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from devtools.privatebus import PrivateBus, start_private_bus
from devtools.process import stop_process
from tests.bus.fake_polkit import FakePolkit
from wkd.bus.api import BUS_NAME as SERVICE
from wkd.bus.api import MANAGER
from wkd.bus.api import ROOT_PATH as ROOT

REPO = Path(__file__).resolve().parents[2]


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="module")
def private_bus() -> Iterator[PrivateBus]:
    _need("dbus-daemon")
    d = tempfile.mkdtemp(prefix="wkd-bus-")
    bus = start_private_bus(d)  # the same system-like bus the demo uses
    try:
        yield bus
    finally:
        bus.stop()
        shutil.rmtree(d, ignore_errors=True)


def busctl(address: str, *args: str, check: bool = True,
           user: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = ["busctl", f"--address={address}", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _name_has_owner(address: str, name: str) -> bool:
    r = busctl(address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
               "org.freedesktop.DBus", "NameHasOwner", "s", name, check=False)
    return r.returncode == 0 and r.stdout.strip() == "b true"


@dataclass
class Daemon:
    address: str
    state_dir: str
    config: str
    workdir: str
    proc: subprocess.Popen[bytes]
    log: str

    def log_text(self) -> str:
        return Path(self.log).read_text(errors="replace")


def start_daemon(address: str, workdir: str) -> Daemon:
    state = os.path.join(workdir, "state")
    config = os.path.join(workdir, "wkd.toml")
    # A cheap recovery keyslot keeps the bus tests fast; the strong default (argon2id) is
    # checked by tests/host/test_engine.py.
    Path(config).write_text("[daemon]\nallow_image_files = true\n"
                            "[volumes]\nrecovery_pbkdf = \"pbkdf2\"\nrecovery_pbkdf_ms = 10\n")
    log = os.path.join(workdir, "wkd.log")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wkd", "--bus-address", address, "--state-dir", state,
             "--config", config, "--log-stderr", "--log-level", "debug"],
            cwd=str(REPO), env=env, stdout=logf, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not _name_has_owner(address, SERVICE):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("wkd did not come up on the private bus:\n"
                        + Path(log).read_text(errors="replace")[-4000:])
        time.sleep(0.1)
    return Daemon(address, state, config, workdir, proc, log)


def stop_daemon(d: Daemon) -> int | None:
    return stop_process(d.proc, timeout=30)


@pytest.fixture(scope="module")
def wkd_daemon(private_bus: PrivateBus) -> Iterator[Daemon]:
    _need("busctl")
    if not os.path.exists("/usr/lib/softhsm/libsofthsm2.so"):
        pytest.skip("SoftHSM2 is not installed")
    workdir = tempfile.mkdtemp(prefix="wkd-daemon-")
    d = start_daemon(private_bus.address, workdir)
    try:
        yield d
    finally:
        stop_daemon(d)
        # The daemon must never have put a Python traceback in a reply; in its log it may.
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def bus(wkd_daemon: Daemon) -> AsyncIterator[MessageBus]:
    b = await MessageBus(bus_address=wkd_daemon.address, negotiate_unix_fd=True).connect()
    try:
        yield b
    finally:
        b.disconnect()
        with contextlib.suppress(Exception):
            await b.wait_for_disconnect()


@pytest.fixture
async def polkit(private_bus: PrivateBus) -> AsyncIterator[FakePolkit]:
    fake = await FakePolkit(private_bus.address).start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def image(tmp_path: Path) -> str:
    """A 32 MiB sparse image file the daemon may format (allow_image_files = true)."""
    p = tmp_path / "disk.img"
    with open(p, "wb") as f:
        f.truncate(32 << 20)
    return str(p)


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[str]:
    """A loop device on a fresh 32 MiB image; detached afterwards (ours only)."""
    img = tmp_path / "loop.img"
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    r = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"no free loop device: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


# --- calling helpers ----------------------------------------------------------------------

class CallError(Exception):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


async def call(bus: MessageBus, member: str, signature: str = "", body: list[Any] | None = None,
               *, path: str = ROOT, interface: str = MANAGER, flags: int = 0) -> list[Any]:
    """Call org.wkd1 and return the reply body; raise CallError with the error name."""
    from dbus_fast import MessageFlag

    msg = Message(destination=SERVICE, path=path, interface=interface, member=member,
                  signature=signature, body=body or [], flags=MessageFlag(flags))
    reply = await bus.call(msg)
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        raise CallError(reply.error_name or "", str(reply.body[0]) if reply.body else "")
    return list(reply.body)


async def get_prop(bus: MessageBus, path: str, interface: str, name: str) -> Any:
    (v,) = await call(bus, "Get", "ss", [interface, name], path=path,
                      interface="org.freedesktop.DBus.Properties")
    assert isinstance(v, Variant)
    return v.value


async def get_all(bus: MessageBus, path: str, interface: str) -> dict[str, Any]:
    (d,) = await call(bus, "GetAll", "s", [interface], path=path,
                      interface="org.freedesktop.DBus.Properties")
    return {k: v.value for k, v in d.items()}


async def format_image(bus: MessageBus, device: str, kek: str = "",
                       options: dict[str, Variant] | None = None) -> str:
    (path,) = await call(bus, "Format", "ssa{sv}", [device, kek, options or {}])
    return str(path)


_ = asyncio
