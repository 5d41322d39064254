"""The composition root: `wkd` (the daemon) and its boot-time subcommands.

    wkd [--bus-address ADDR] [--state-dir DIR] [--config FILE]   run the daemon
    wkd attach NAME [--wkdtab PATH]   unlock a wkdtab entry without D-Bus (boot units)
    wkd detach NAME                   lock it again

The daemon's life cycle, in this order (docs/design.md, "Life cycle"):
  1. stop signals are taken in hand (the first statement of `main`): from here a SIGTERM
     or SIGINT is a request to stop, never a kill;
  2. configuration: an invalid one ends the process with EX_CONFIG (78), which the unit does
     not restart on (RestartPreventExitStatus=78), with a message naming file and key; callers
     a bus activation queued get that message as their error (wkd/bus/failed_start.py);
  3. the engine opens the HSM and finds the volumes; the bus service is prepared (connected,
     every object exported); hot-plug monitoring starts;
  4. the bus name org.wkd1 is taken -- last, so no caller reaches a half-built daemon --
     and systemd is told READY=1.
A stop request at any point of 3-4 cancels start-up where it is; then, as after READY:
hot-plug stops and its work in flight is drained, the name is given up, calls in flight
finish, jobs stop, the engine closes, and the exit status is 0. Losing the bus is a failure
(status 1), so that Restart=on-failure brings the daemon back.

No traceback for what an administrator can cause: configuration errors, a full or
read-only state directory, an unreachable bus or HSM end the process with one log line.
"""

from __future__ import annotations

# Imports of the heavy parts (asyncio, the engine, python-pkcs11, dbus-fast) sit in the
# functions that need them: `wkd detach` runs at shutdown and `wkd attach` at boot, where
# every 100 ms of imports is felt (docs/performance.md), and detach needs none of them.
import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from wkd import __version__, errors
from wkd.config import Config, load_config
from wkd.log import MessageId, StderrHandler, log_event, setup_logging
from wkd.secret import make_process_undumpable
from wkd.system.stop import StopSignals

if TYPE_CHECKING:
    from wkd.bus.service import ServiceHandle
    from wkd.engine import Engine
    from wkd.engine.ports import DiskPort
    from wkd.system.hotplug import Hotplug

log = logging.getLogger("wkd.daemon")

# sysexits.h: EX_CONFIG, "something was found in an unconfigured or misconfigured state".
EX_CONFIG: Final = 78
# How long a stop waits for hot-plug work in flight (an auto-unlock is a second or two).
HOTPLUG_DRAIN_SECONDS: Final = 15.0


def make_engine(config: Config, disk: DiskPort | None = None) -> Engine:
    """The engine on the configured HSM, or on the embedded SoftHSM2 token by default, and
    on this machine's disks (tests pass a `disk` scoped to the devices they made)."""
    from wkd.disk.port import LocalDisk  # noqa: PLC0415 - see the note on imports above
    from wkd.engine import Engine  # noqa: PLC0415
    from wkd.hsm.pin import read_pin  # noqa: PLC0415
    from wkd.hsm.pkcs11 import Pkcs11Backend  # noqa: PLC0415

    if config.embedded:
        from wkd.hsm.softhsm import ensure_embedded_token  # noqa: PLC0415 - embedded only

        token = ensure_embedded_token(config.daemon.state_dir)
        backend = Pkcs11Backend(token.module, token.token_label,
                                read_pin(token.pin_file, credential=None), embedded=True)
    else:
        backend = Pkcs11Backend(config.hsm.module, config.hsm.token_label,
                                read_pin(config.hsm.pin_file or None))
    if disk is None:
        disk = LocalDisk(config.daemon.state_dir, allow_files=config.daemon.allow_image_files)
    return Engine(backend, disk, config)


def _load(args: argparse.Namespace) -> Config:
    overrides: dict[str, object] = {}
    if getattr(args, "state_dir", None):
        overrides["daemon.state_dir"] = os.path.abspath(args.state_dir)
    return load_config(args.config, overrides=overrides)


class _Daemon:
    """The running parts, started in order and stopped in reverse."""

    def __init__(self, config: Config, bus_address: str | None) -> None:
        self.config = config
        self.bus_address = bus_address
        self.engine: Engine | None = None
        self.service: ServiceHandle | None = None
        self.hotplug: Hotplug | None = None

    async def start(self) -> str:
        import asyncio  # noqa: PLC0415 - see the note on imports above

        from wkd.bus.calls import Settings  # noqa: PLC0415 - the daemon proper only
        from wkd.bus.service import prepare  # noqa: PLC0415
        from wkd.system import systemd  # noqa: PLC0415

        await asyncio.to_thread(os.makedirs, self.config.daemon.state_dir, mode=0o700,
                                exist_ok=True)
        systemd.status("opening the HSM")
        # The embedded token may be created here (a child process): off the loop, so a
        # stop request is seen at once.
        self.engine = await asyncio.to_thread(make_engine, self.config)
        await self.engine.start()
        info = await self.engine.hsm_info()
        systemd.status("connecting to the bus")
        settings = Settings(
            allow_passphrase_in_message=self.config.daemon.allow_passphrase_in_message)
        self.service = await prepare(self.engine, self.bus_address, settings=settings)
        self.hotplug = _start_hotplug(self.engine)
        await self.service.announce()
        kind = "SOFTWARE token (SoftHSM2)" if info.software else "hardware token"
        embedded = ", embedded in " + self.config.daemon.state_dir if info.embedded else ""
        log_event(log, MessageId.DAEMON_STARTED,
                  f"wkd {__version__} ready: HSM {info.token_label!r} is a {kind}{embedded}",
                  operation="start", result="ok")
        return f"serving; HSM token {info.token_label} ({kind})"

    async def stop(self) -> None:
        import asyncio  # noqa: PLC0415

        if self.hotplug is not None:
            self.hotplug.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hotplug.drain(), HOTPLUG_DRAIN_SECONDS)
        if self.service is not None:
            await self.service.close()
        if self.engine is not None:
            await self.engine.stop()


async def run_daemon(config: Config, bus_address: str | None, stop: StopSignals) -> int:
    """Run until a stop request (status 0) or the loss of the bus (status 1)."""
    import asyncio  # noqa: PLC0415 - see the note on imports above

    from wkd.system import systemd  # noqa: PLC0415

    task = asyncio.current_task()
    assert task is not None
    daemon = _Daemon(config, bus_address)
    lost_bus = False
    with stop.cancelling(task):
        try:
            status = await daemon.start()
            systemd.ready(status)
            watchdog = asyncio.create_task(systemd.watchdog_loop())
            try:
                assert daemon.service is not None
                await daemon.service.wait_closed()
                lost_bus = True
            finally:
                watchdog.cancel()
        except asyncio.CancelledError:
            if not stop.requested:
                raise
            task.uncancel()
        finally:
            systemd.stopping()
            # A second stop request must not cancel the clean-up (StopSignals acts once).
            await daemon.stop()
    if lost_bus and not stop.requested:
        # Not asked to stop: the bus went away under us. Fail, so that Restart=on-failure
        # brings the daemon (and its hot-plug monitoring) back rather than waiting for the
        # next bus activation.
        log.error("the D-Bus connection was lost; exiting so systemd restarts wkd")
        return 1
    return 0


def _start_hotplug(engine: Engine) -> Hotplug | None:
    try:
        from wkd.system.hotplug import Hotplug  # noqa: PLC0415 - pyudev needs a udev-managed /dev

        return Hotplug(engine)
    except Exception as e:  # udev is optional: containers and CI hosts have no udevd
        log.info("hot-plug monitoring is off: %s", e)
        return None


async def _attach(config: Config, name: str, wkdtab: str) -> int:
    from wkd.model import UnlockOptions  # noqa: PLC0415
    from wkd.values import DevicePath, MappingName  # noqa: PLC0415
    from wkd.wkdtab import load_wkdtab_entry  # noqa: PLC0415

    # Lenient, like the generator: a typo on another line must not keep this volume locked.
    entry = load_wkdtab_entry(name, wkdtab)
    engine = make_engine(config)
    # No discovery: one boot unit unlocks one volume and reads one header, not every disk.
    await engine.start(discover=False)
    try:
        device = DevicePath(entry.resolve_device())
        await engine.unlock(device, UnlockOptions(name=MappingName(name), read_only=entry.read_only,
                                                  allow_discards=entry.discard))
    finally:
        await engine.stop()
    return 0


def _detach(name: str) -> int:
    from wkd.disk import devices, luks2  # noqa: PLC0415

    if not any(dm.name == name for dm in devices.dm_mappings()):
        return 0  # already detached: stopping a unit twice is not an error
    luks2.deactivate(name)
    log_event(log, MessageId.VOLUME_LOCKED, f"detached {name}", operation="lock", result="ok",
              mapping=name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wkd", description=(
        "wrapped-key daemon: unlocks LUKS2 volumes whose keys are wrapped by an HSM-held KEK"))
    p.add_argument("--version", action="version", version=f"wkd {__version__}")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="configuration file (default /etc/wkd/wkd.toml if it exists)")
    p.add_argument("--state-dir", metavar="DIR", default=None,
                   help="state directory; holds the embedded SoftHSM2 token (default "
                        "/var/lib/wkd)")
    p.add_argument("--bus-address", metavar="ADDRESS", default=None,
                   help="D-Bus address to serve on (default: the system bus)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-stderr", action="store_true",
                   help="log to stderr even when journald is present")
    sub = p.add_subparsers(dest="command")
    a = sub.add_parser("attach", help="unlock a wkdtab entry directly (boot units use this)")
    a.add_argument("name")
    a.add_argument("--wkdtab", default="/etc/wkdtab")
    d = sub.add_parser("detach", help="lock a mapping made by attach")
    d.add_argument("name")
    return p


def _fail(message: str, status: int) -> int:
    """One log line, no traceback: for what an administrator can fix. Under systemd it is in
    `systemctl status wkd` (the log and the unit's status text, which wkdctl shows when a bus
    activation fails); run by hand on a terminal, it is shown there too."""
    from wkd.system import systemd  # noqa: PLC0415 - socket code only

    log.error("%s", message)
    systemd.status(" ".join(message.split()))
    to_journal = not any(isinstance(h, StderrHandler) for h in logging.getLogger().handlers)
    if to_journal and sys.stderr.isatty():
        print(f"wkd: {message}", file=sys.stderr)
    return status


def _answer_waiting_callers(bus_address: str | None, message: str) -> None:
    """Callers queued by a bus activation get the reason now, not a timeout in 25 s."""
    import asyncio  # noqa: PLC0415 - see the note on imports above

    from wkd.bus.failed_start import answer_waiting_callers  # noqa: PLC0415

    asyncio.run(answer_waiting_callers(bus_address, errors.InvalidConfig(message)))


def main(argv: Sequence[str] | None = None) -> int:
    stop = StopSignals().install()  # first: from here on a stop signal is a request
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, force_stderr=args.log_stderr)
    # Keys pass through this process: no core dumps, no ptrace by other uids.
    make_process_undumpable()
    try:
        if args.command == "detach":
            return _detach(args.name)  # needs no configuration, HSM or event loop
        config = _load(args)
        if stop.requested:
            return 0
        import asyncio  # noqa: PLC0415 - see the note on imports above

        if args.command == "attach":
            return asyncio.run(_attach(config, args.name, args.wkdtab))
        return asyncio.run(run_daemon(config, args.bus_address, stop))
    except errors.InvalidConfig as e:
        status = _fail(f"configuration error: {e}", EX_CONFIG)
        if args.command is None and not stop.requested:
            _answer_waiting_callers(args.bus_address, f"configuration error: {e}")
        return status
    except errors.WkdError as e:
        return _fail(str(e), e.exit_code)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        return _fail(f"{e.strerror or type(e).__name__}{where}", 1)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
