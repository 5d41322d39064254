"""The composition root: `wkd` (the daemon) and its boot-time subcommands.

    wkd [--bus-address ADDR] [--state-dir DIR] [--config FILE]   run the daemon
    wkd attach NAME [--wkdtab PATH]   unlock a wkdtab entry without D-Bus (boot units)
    wkd detach NAME                   lock it again

This module only wires parts together; each part lives in its own module.
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
from typing import TYPE_CHECKING

from wkd import __version__, errors
from wkd.config import Config, load_config
from wkd.log import MessageId, log_event, setup_logging
from wkd.secret import make_process_undumpable

if TYPE_CHECKING:
    from wkd.engine import Engine
    from wkd.hotplug import Hotplug

log = logging.getLogger("wkd.daemon")


def make_engine(config: Config) -> Engine:
    """The engine on the configured HSM, or on the embedded SoftHSM2 token by default."""
    from wkd.engine import Engine  # noqa: PLC0415 - see the note on imports above
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
    return Engine(backend, config)


def _load(args: argparse.Namespace) -> Config:
    overrides: dict[str, object] = {}
    if getattr(args, "state_dir", None):
        overrides["daemon.state_dir"] = os.path.abspath(args.state_dir)
    return load_config(args.config, overrides=overrides)


async def run_daemon(config: Config, bus_address: str | None) -> int:
    import asyncio  # noqa: PLC0415 - see the note on imports above
    import signal  # noqa: PLC0415

    from wkd import systemd  # noqa: PLC0415
    from wkd.service import serve  # noqa: PLC0415 - D-Bus is only needed by the daemon proper

    os.makedirs(config.daemon.state_dir, mode=0o700, exist_ok=True)
    engine = make_engine(config)
    systemd.status("opening the HSM")
    await engine.start()
    info = await engine.hsm_info()
    kind = "SOFTWARE token (SoftHSM2)" if info.software else "hardware token"
    embedded = ", embedded in " + config.daemon.state_dir if info.embedded else ""
    handle = await serve(engine, bus_address)
    hotplug = _start_hotplug(engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log_event(log, MessageId.DAEMON_STARTED,
              f"wkd {__version__} ready: HSM {info.token_label!r} is a {kind}{embedded}",
              operation="start", result="ok")
    systemd.ready(f"serving; HSM token {info.token_label} ({kind})")
    watchdog = asyncio.create_task(systemd.watchdog_loop())
    closed = asyncio.create_task(handle.wait_closed())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    lost_bus = not stop.is_set()
    systemd.stopping()
    for task in (watchdog, closed, stopped):
        task.cancel()
    if hotplug is not None:
        hotplug.close()
    await handle.close()
    await engine.stop()
    if lost_bus:
        # Not asked to stop: the bus went away under us. Fail, so that Restart=on-failure
        # brings the daemon (and its hot-plug monitoring) back rather than waiting for the
        # next bus activation.
        log.error("the D-Bus connection was lost; exiting so systemd restarts wkd")
        return 1
    return 0


def _start_hotplug(engine: Engine) -> Hotplug | None:
    try:
        from wkd.hotplug import Hotplug  # noqa: PLC0415 - pyudev needs a udev-managed /dev

        return Hotplug(engine)
    except Exception as e:  # udev is optional: containers and CI hosts have no udevd
        log.info("hot-plug monitoring is off: %s", e)
        return None


async def _attach(config: Config, name: str, wkdtab: str) -> int:
    from wkd.model import UnlockOptions  # noqa: PLC0415
    from wkd.values import MappingName  # noqa: PLC0415
    from wkd.wkdtab import load_wkdtab_entry  # noqa: PLC0415

    # Lenient, like the generator: a typo on another line must not keep this volume locked.
    entry = load_wkdtab_entry(name, wkdtab)
    engine = make_engine(config)
    # No discovery: one boot unit unlocks one volume and reads one header, not every disk.
    await engine.start(discover=False)
    try:
        device = entry.resolve_device()
        await engine.unlock(device, UnlockOptions(name=MappingName(name), read_only=entry.read_only,
                                                  allow_discards=entry.discard))
    finally:
        await engine.stop()
    return 0


def _detach(name: str) -> int:
    from wkd import devices, luks2  # noqa: PLC0415

    if not any(dm.name == name for dm in devices.dm_devices()):
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, force_stderr=args.log_stderr)
    # Keys pass through this process: no core dumps, no ptrace by other uids.
    make_process_undumpable()
    try:
        if args.command == "detach":
            return _detach(args.name)  # needs no configuration, HSM or event loop
        config = _load(args)
        import asyncio  # noqa: PLC0415 - see the note on imports above

        if args.command == "attach":
            return asyncio.run(_attach(config, args.name, args.wkdtab))
        return asyncio.run(run_daemon(config, args.bus_address))
    except errors.WkdError as e:
        log.error("%s", e)
        print(f"wkd: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
