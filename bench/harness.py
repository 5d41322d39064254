"""I/O side of the benchmarks: a private bus, the wkd daemon, D-Bus calls, image files, timing.

The daemon runs exactly as in production (`python -m wkd`, embedded SoftHSM2 token in its state
directory) on a private system-like bus (devtools.privatebus). Start-up is timed from just before
exec to the READY=1 datagram on a $NOTIFY_SOCKET this harness listens on (sd_notify(3)).
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from devtools import busclient
from devtools.busclient import CallError
from devtools.privatebus import PrivateBus, start_private_bus
from devtools.process import stop_process
from wkd.bus.api import BUS_NAME as SERVICE
from wkd.bus.api import JOB, MANAGER
from wkd.bus.api import PROPERTIES as PROPS
from wkd.bus.api import ROOT_PATH as ROOT

REPO = Path(__file__).resolve().parents[1]
IMAGE_BYTES = 32 * 1024 * 1024  # the smallest size Format accepts (LUKS2 needs 16 MiB + data)
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


class BenchError(Exception):
    pass


def scratch_root() -> Path:
    """tmpfs when there is one: header I/O then measures the software, not a disk."""
    for cand in ("/dev/shm", "/run", "/tmp"):
        if os.path.isdir(cand) and os.access(cand, os.W_OK):
            return Path(cand)
    return Path("/tmp")


def make_image(path: Path, size: int = IMAGE_BYTES) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: costs nothing on tmpfs until written
    return path


def copy_image_with_new_uuid(src: Path, dst: Path) -> str:
    """A copy of a formatted image with a fresh LUKS UUID (the copies share the wrapped key:
    fine for a benchmark, never for real volumes)."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    new = str(uuidlib.uuid4())
    subprocess.run(["cryptsetup", "luksUUID", "--batch-mode", "--uuid", new, str(dst)],
                   check=True, stdin=subprocess.DEVNULL)
    return new


def timed_run(argv: list[str], *, input_bytes: bytes | None = None,
              env: dict[str, str] | None = None) -> float:
    """Seconds of one command (fork + exec + wait); fails loudly on a non-zero exit."""
    t0 = time.perf_counter()
    res = subprocess.run(argv, input=input_bytes, capture_output=True, env=env, check=False)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise BenchError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} exited "
                         f"{res.returncode}: {res.stderr.decode(errors='replace')[-500:]}")
    return dt


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 120) -> float:
        """Block until READY=1; returns time.perf_counter() at its arrival."""
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise BenchError("the daemon sent no READY=1 in time")
            if proc.poll() is not None:
                raise BenchError(f"the daemon exited with status {proc.returncode}")
            r, _, _ = select.select([self.sock], [], [], min(left, 0.5))
            if r:
                data = self.sock.recv(4096)
                now = time.perf_counter()
                if b"READY=1" in data.split(b"\n"):
                    return now

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@dataclass
class Daemon:
    """One wkd daemon on a private bus; `start()` returns exec -> READY=1 seconds."""

    work: Path
    bus: PrivateBus
    state_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        config = self.work / "wkd.toml"
        config.write_text("[daemon]\nallow_image_files = true\n")
        listener = NotifyListener(self.work / "notify.sock")
        env = dict(os.environ, NOTIFY_SOCKET=str(listener.path), **self.extra_env)
        log = open(self.work / "wkd.log", "ab")  # noqa: SIM115 - lives as long as the daemon
        try:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wkd", "--bus-address", self.bus.address,
                 "--state-dir", str(self.state_dir), "--config", str(config), "--log-stderr",
                 "--log-level", "warning"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=str(REPO))
            t1 = listener.wait_ready(self.proc)
        finally:
            listener.close()
            log.close()
        return t1 - t0

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=30)
        self.proc = None

    def pin(self) -> str:
        return (self.state_dir / "pin").read_text().strip()

    def softhsm_conf(self) -> str:
        return str(self.state_dir / "softhsm2.conf")


class Env:
    """A scratch directory with a private bus; daemons and images live under it."""

    def __init__(self, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="wkd-bench-", dir=scratch_root()))
        self.bus = start_private_bus(self.root / "bus")
        self.keep = keep
        self.daemons: list[Daemon] = []

    def daemon(self, name: str, extra_env: dict[str, str] | None = None) -> Daemon:
        work = self.root / name
        work.mkdir(exist_ok=True)
        d = Daemon(work=work, bus=self.bus, state_dir=work / "state",
                   extra_env=extra_env or {})
        self.daemons.append(d)
        return d

    def close(self) -> None:
        for d in self.daemons:
            d.stop()
        self.bus.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


# --- D-Bus client helpers ---------------------------------------------------------------
async def connect(address: str) -> MessageBus:
    return await MessageBus(bus_address=address).connect()


async def call(bus: MessageBus, path: str, iface: str, member: str, signature: str = "",
               *body: Any) -> list[Any]:
    try:
        return await busclient.call(bus, path, iface, member, signature, *body)
    except CallError as e:
        raise BenchError(str(e)) from None


async def wait_for_name(bus: MessageBus, timeout: float = 60) -> None:
    try:
        await busclient.wait_for_name(bus, timeout=timeout)
    except TimeoutError as e:
        raise BenchError(str(e)) from None


VERIFY = {"verify-only": Variant("b", True)}


async def verify(bus: MessageBus, volume: str) -> None:
    await call(bus, ROOT, MANAGER, "Unlock", "sa{sv}", volume, VERIFY)


async def format_volume(bus: MessageBus, device: str, kek: str = "") -> str:
    (path,) = await call(bus, ROOT, MANAGER, "Format", "ssa{sv}", device, kek, {})
    return str(path)


async def list_keks(bus: MessageBus) -> dict[str, str]:
    """label -> CKA_ID hex."""
    (keks,) = await call(bus, ROOT, MANAGER, "ListKeks", "a{sv}", {})
    return {label: kid for label, kid, _bits in keks}


async def rewrap_all(bus: MessageBus, src: str, dst: str, timeout: float = 1800
                     ) -> tuple[float, list[Any]]:
    """Start RewrapAll and wait for the job's Completed signal; returns (seconds, result).

    Subscribes before calling, and reads State afterwards too, as docs/dbus-api.md says: a
    job may end before the signal subscription is seen."""
    done = asyncio.get_running_loop().create_future()
    job_path: list[str] = []

    def handler(msg: Message) -> None:
        if (msg.message_type is MessageType.SIGNAL and msg.member == "Completed"
                and msg.interface == JOB and job_path and msg.path == job_path[0]
                and not done.done()):
            done.set_result(list(msg.body))

    await call_bus_driver(bus, "AddMatch", "s",
                          f"type='signal',sender='{SERVICE}',interface='{JOB}',"
                          "member='Completed'")
    bus.add_message_handler(handler)
    try:
        t0 = time.perf_counter()
        (path,) = await call(bus, ROOT, MANAGER, "RewrapAll", "ssa{sv}", src, dst, {})
        job_path.append(str(path))
        while not done.done():
            try:
                await asyncio.wait_for(asyncio.shield(done), 1.0)
            except TimeoutError:
                (state,) = await call(bus, str(path), PROPS, "Get", "ss", JOB, "State")
                if state.value != "running":
                    break
            if time.perf_counter() - t0 > timeout:
                raise BenchError("RewrapAll did not finish in time")
        dt = time.perf_counter() - t0
        (result,) = await call(bus, str(path), PROPS, "Get", "ss", JOB, "Result")
        (state,) = await call(bus, str(path), PROPS, "Get", "ss", JOB, "State")
        if state.value != "completed":
            raise BenchError(f"RewrapAll ended {state.value}: {result.value}")
        return dt, list(result.value)
    finally:
        bus.remove_message_handler(handler)


async def call_bus_driver(bus: MessageBus, member: str, signature: str, *body: Any) -> None:
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member=member,
                           signature=signature, body=list(body)))
