"""Daemon life cycle on the bus: a stop request is honoured from the first instant of the
daemon's code and always ends with status 0; losing the bus is a failure exit (so systemd's
Restart=on-failure brings it back); a configuration error is EX_CONFIG (78).

The SIGTERMs are sent at random instants from the exec of the daemon to 0.5 s after READY=1.
The daemon is started with SIGTERM blocked (as a signal mask survives exec): a SIGTERM sent
before the daemon's own code runs stays pending and is delivered the moment its first
statement takes stop signals in hand, so the window tested is exactly "from the first line
of the daemon's own code". Some runs send it at the instant the bus name appears, together
with a call, as a client waiting for the service would.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from devtools.privatebus import start_private_bus
from devtools.process import stop_process
from tests.bus.conftest import REPO, start_daemon
from wkd.bus.api import BUS_NAME, MANAGER, ROOT_PATH

RUNS = 30
AT_NAME_RUNS = 6  # of RUNS, SIGTERM at the instant the name appears
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


def _block_sigterm() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


class _Notify:
    """A datagram socket standing in for systemd's notify socket (sd_notify(3))."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def ready_within(self, proc: subprocess.Popen[bytes], timeout: float) -> float | None:
        """Seconds until READY=1, or None when the process exited before."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                return None
            r, _, _ = select.select([self.sock], [], [], 0.2)
            if r and b"READY=1" in self.sock.recv(4096).split(b"\n"):
                return time.monotonic() - start
        raise AssertionError("no READY=1 within the timeout")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def _spawn(address: str, work: Path, notify: Path | None) -> subprocess.Popen[bytes]:
    config = work / "wkd.toml"
    config.write_text("[daemon]\nallow_image_files = true\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify)
    with open(work / "wkd.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "wkd", "--bus-address", address, "--state-dir",
             str(work / "state"), "--config", str(config), "--log-stderr", "--log-level",
             "debug"], cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_block_sigterm)


async def _sigterm_when_name_appears(address: str, proc: subprocess.Popen[bytes]) -> None:
    """Watch NameOwnerChanged; when org.wkd1 gets an owner, SIGTERM and call it at once."""
    client = await MessageBus(bus_address=address).connect()
    try:
        import asyncio

        appeared = asyncio.Event()

        def on_signal(msg: Message) -> bool:
            if (msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                    and msg.body[0] == BUS_NAME and msg.body[2]):
                proc.send_signal(signal.SIGTERM)
                appeared.set()
            return False

        client.add_message_handler(on_signal)
        reply = await client.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="AddMatch", signature="s",
            body=[f"type='signal',member='NameOwnerChanged',arg0='{BUS_NAME}'"]))
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
        while not appeared.is_set():
            if proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({proc.returncode}) before its name "
                                     "appeared")
            try:
                await asyncio.wait_for(appeared.wait(), 0.5)
            except TimeoutError:
                continue
        # A client that was waiting for the service calls it right away.
        await client.call(Message(destination=BUS_NAME, path=ROOT_PATH, interface=MANAGER,
                                  member="ListVolumes", signature="a{sv}", body=[{}]))
    finally:
        client.disconnect()


def test_sigterm_at_random_instants_is_always_a_clean_stop(tmp_path) -> None:
    if not os.path.exists(SOFTHSM):
        pytest.skip("SoftHSM2 is not installed")
    import asyncio

    seed = int(os.environ.get("WKD_LIFECYCLE_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    bus = start_private_bus(tmp_path / "bus")
    notify = _Notify(tmp_path / "notify.sock")
    try:
        # Calibrate: how long this machine takes from exec to READY=1 (the token is
        # created on this first start; later starts reuse it).
        proc = _spawn(bus.address, tmp_path, notify.path)
        ready = notify.ready_within(proc, 120)
        assert ready is not None, (tmp_path / "wkd.log").read_text()[-3000:]
        assert stop_process(proc) == 0
        outcomes: list[tuple[str, int | None]] = []
        for run in range(RUNS):
            at_name = run < AT_NAME_RUNS
            proc = _spawn(bus.address, tmp_path, None)
            if at_name:
                asyncio.run(asyncio.wait_for(_sigterm_when_name_appears(bus.address, proc),
                                             120))
                when = "at the name"
            else:
                delay = rng.uniform(0.0, ready + 0.5)
                time.sleep(delay)
                proc.send_signal(signal.SIGTERM)
                when = f"{delay:.3f} s"
            try:
                status: int | None = proc.wait(60)
            except subprocess.TimeoutExpired:
                status = None
                stop_process(proc, timeout=5)
            outcomes.append((when, status))
        log = (tmp_path / "wkd.log").read_text(errors="replace")
        bad = [o for o in outcomes if o[1] != 0]
        assert not bad, (f"seed {seed}, READY after {ready:.2f} s; not clean: {bad}\n"
                         + log[-4000:])
        assert "Traceback" not in log, log[-4000:]
        print(f"\nlifecycle: seed {seed}, READY after {ready:.2f} s, {RUNS} SIGTERMs "
              f"({AT_NAME_RUNS} at the name), all exit 0")
    finally:
        notify.close()
        bus.stop()


async def test_losing_the_bus_is_a_failure_exit() -> None:
    """The bus goes away while calls are in flight (nobody's waiting on polkit, root's Format
    running): status 1 and one line, no traceback (replies for a vanished bus are dropped)."""
    import asyncio

    from tests.bus.fake_polkit import FakePolkit
    from tests.bus.nobody import run_as_nobody
    from tests.bus.test_descriptors import many_kek_calls

    with tempfile.TemporaryDirectory(prefix="wkd-life-") as d:
        os.chmod(d, 0o755)
        bus = start_private_bus(f"{d}/bus")
        daemon = start_daemon(bus.address, d)
        polkit = await FakePolkit(bus.address).start()
        client = await MessageBus(bus_address=bus.address).connect()
        try:
            polkit.hold()
            nobody = asyncio.ensure_future(run_as_nobody(many_kek_calls, bus.address, 8))
            image = Path(d) / "disk.img"
            with open(image, "wb") as f:
                f.truncate(32 << 20)
            fmt = asyncio.ensure_future(client.call(Message(
                destination=BUS_NAME, path=ROOT_PATH, interface=MANAGER, member="Format",
                signature="ssa{sv}", body=[str(image), "", {}])))
            await polkit.wait_for_calls(8, timeout=60)
            bus.stop()
            rc = await asyncio.to_thread(daemon.proc.wait, 30)
            for fut in (nobody, fmt):
                with contextlib.suppress(Exception):
                    await fut
        finally:
            client.disconnect()
            with contextlib.suppress(Exception):
                await polkit.stop()
            bus.stop()
        assert rc == 1, daemon.log_text()[-2000:]
        assert "connection was lost" in daemon.log_text()
        assert "Traceback" not in daemon.log_text(), daemon.log_text()[-3000:]


def test_configuration_error_is_ex_config(tmp_path) -> None:
    config = tmp_path / "wkd.toml"
    config.write_text("[daemon]\nallow_image_file = true\n")  # a misspelt key
    r = subprocess.run(
        [sys.executable, "-m", "wkd", "--bus-address", "unix:path=/nonexistent",
         "--state-dir", str(tmp_path / "state"), "--config", str(config), "--log-stderr"],
        cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
        text=True, timeout=60)
    assert r.returncode == 78, r
    assert f"{config}: [daemon] unknown key 'allow_image_file'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "state").exists()  # nothing was started


async def test_configuration_error_reaches_a_waiting_caller(tmp_path) -> None:
    """A caller waiting for the service (as a bus activation queues it) gets the error and
    its message at once, not a timeout; the daemon still exits with 78."""
    import asyncio

    bus = start_private_bus(tmp_path / "bus")
    client = await MessageBus(bus_address=bus.address).connect()
    try:
        appeared = asyncio.Event()

        def on_signal(msg: Message) -> bool:
            if (msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                    and msg.body[0] == BUS_NAME and msg.body[2]):
                appeared.set()
            return False

        client.add_message_handler(on_signal)
        await client.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="AddMatch", signature="s",
            body=[f"type='signal',member='NameOwnerChanged',arg0='{BUS_NAME}'"]))
        config = tmp_path / "wkd.toml"
        config.write_text("[daemon]\nallow_image_file = true\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "wkd", "--bus-address", bus.address, "--state-dir",
             str(tmp_path / "state"), "--config", str(config), "--log-stderr"],
            cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        await asyncio.wait_for(appeared.wait(), 60)
        reply = await client.call(Message(destination=BUS_NAME, path=ROOT_PATH,
                                          interface=MANAGER, member="ListVolumes",
                                          signature="a{sv}", body=[{}]))
        assert reply is not None and reply.error_name == "org.wkd1.Error.InvalidConfig"
        assert f"{config}: [daemon] unknown key 'allow_image_file'" in reply.body[0]
        out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 78, out
        assert b"Traceback" not in out
    finally:
        client.disconnect()
        bus.stop()


def test_unwritable_state_directory_is_one_line(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run(
        [sys.executable, "-m", "wkd", "--bus-address", "unix:path=/nonexistent",
         "--state-dir", str(blocker / "state"), "--config", "/dev/null", "--log-stderr"],
        cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
        text=True, timeout=60)
    assert r.returncode == 1, r
    assert "Not a directory" in r.stderr and "Traceback" not in r.stderr, r.stderr
