"""wkdctl: the command-line client of wkd. It talks only D-Bus (org.wkd1).

    wkdctl [--address ADDR] [--json] COMMAND ...

Errors print as "wkdctl: <message>" and exit with the code of the matching wkd.errors class
(looked up by D-Bus error name), never with a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from wkd.bus.api import BUS_NAME as SERVICE
from wkd.bus.api import JOB, JOB_PREFIX, MANAGER, VOLUME
from wkd.bus.api import PROPERTIES as PROPS
from wkd.bus.api import ROOT_PATH as ROOT
from wkd.errors import all_errors

EXIT_CODES = {cls.dbus_name: cls.exit_code for cls in all_errors()}
# Errors of a failed bus activation (dbus-daemon's own, or systemd's when the unit fails).
ACTIVATION_ERRORS = ("org.freedesktop.DBus.Error.Spawn.", "org.freedesktop.systemd1.")
SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_UNIT = "/org/freedesktop/systemd1/unit/wkd_2eservice"  # sd_bus_path_encode


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Client:
    def __init__(self, bus: MessageBus, interactive: bool) -> None:
        self.bus = bus
        self.interactive = interactive

    async def call(self, member: str, signature: str = "", body: list[Any] | None = None, *,
                   path: str = ROOT, interface: str = MANAGER,
                   destination: str = SERVICE, unix_fds: list[int] | None = None) -> list[Any]:
        flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if self.interactive \
            else MessageFlag.NONE
        reply = await self.bus.call(Message(destination=destination, path=path,
                                            interface=interface, member=member,
                                            signature=signature, body=body or [],
                                            flags=flags, unix_fds=unix_fds or []))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            name = reply.error_name or ""
            text = str(reply.body[0]) if reply.body else name
            if name == "org.freedesktop.DBus.Error.ServiceUnknown":
                raise CliError("wkd is not running (no org.wkd1 on the bus)", 1)
            if name.startswith(ACTIVATION_ERRORS):
                raise CliError(await self._start_failure(text), 1)
            raise CliError(text, EXIT_CODES.get(name, 1))
        return list(reply.body)

    async def _start_failure(self, text: str) -> str:
        """The bus could not start wkd (bus activation): say why, from the status text the
        daemon left with systemd before it exited (a configuration error names file, section
        and key). Unit properties are readable by anyone on the system bus."""
        why = ""
        with contextlib.suppress(Exception):
            reply = await self.bus.call(Message(
                destination=SYSTEMD, path=SYSTEMD_UNIT, interface=PROPS, member="Get",
                signature="ss", body=["org.freedesktop.systemd1.Service", "StatusText"]))
            if reply is not None and reply.message_type == MessageType.METHOD_RETURN:
                why = str(reply.body[0].value)
        return (f"wkd could not be started: {why or text} "
                "(systemctl status wkd; journalctl -u wkd)")

    async def props(self, path: str, interface: str) -> dict[str, Any]:
        (d,) = await self.call("GetAll", "s", [interface], path=path, interface=PROPS)
        return {k: v.value for k, v in d.items()}


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)


async def _volumes(c: Client) -> list[dict[str, Any]]:
    (paths,) = await c.call("ListVolumes", "a{sv}", [{}])
    return [dict(await c.props(p, VOLUME), Object=p) for p in sorted(paths)]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


async def cmd_status(c: Client, a: argparse.Namespace) -> None:
    mgr = await c.props(ROOT, MANAGER)
    vols = await _volumes(c)
    if a.json:
        _out(a, {"daemon": mgr, "volumes": vols}, "")
        return
    kind = "SOFTWARE token" if mgr["HsmSoftware"] else "hardware token"
    if mgr["HsmEmbedded"]:
        kind += " (embedded SoftHSM2, not hardware protection)"
    print(f"wkd {mgr['Version']}  HSM: {mgr['HsmToken']} [{mgr['HsmState']}] - {kind}")
    if not vols:
        print("no volumes")
        return
    rows = [["UUID", "DEVICE", "KEK", "STATE", "MAPPING", "CONDITION"]]
    for v in vols:
        rows.append([v["Uuid"], v["Device"], v["Kek"], "unlocked" if v["Active"] else "locked",
                     v["MappedDevice"] or "-", v.get("Condition", "ok")])
    print(_table(rows))
    for v in vols:
        if v.get("Condition", "ok") != "ok":
            print(f"{v['Uuid']}: {v['Condition']}: {v.get('ConditionDetail') or 'no detail'}")


async def cmd_format(c: Client, a: argparse.Namespace) -> None:
    opts: dict[str, Variant] = {}
    if a.force:
        opts["force"] = Variant("b", True)
    if a.auto_unlock:
        opts["auto-unlock"] = Variant("b", True)
    if a.label:
        opts["label"] = Variant("s", a.label)
    fds: list[int] = []
    secret_fd = _recovery_fd(a)
    try:
        if secret_fd is not None:
            # The passphrase travels as a descriptor: the message carries only its index.
            fds.append(secret_fd)
            opts["recovery-passphrase-fd"] = Variant("h", 0)
        (path,) = await c.call("Format", "ssa{sv}", [a.device, a.kek or "", opts],
                               unix_fds=fds)
    finally:
        if secret_fd is not None:
            os.close(secret_fd)
    p = await c.props(path, VOLUME)
    _out(a, dict(p, Object=path), f"formatted {a.device}: volume {p['Uuid']} (KEK {p['Kek']})")


def _recovery_fd(a: argparse.Namespace) -> int | None:
    """A readable descriptor holding the recovery passphrase, or None when none was asked."""
    if a.recovery_passphrase_file:
        if a.recovery_passphrase_file == "-":  # noqa: S105 - "-" means stdin, not a secret
            return os.dup(sys.stdin.fileno())
        try:
            return os.open(a.recovery_passphrase_file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise CliError(f"cannot open {a.recovery_passphrase_file}: {e.strerror}", 2) from None
    if not a.ask_recovery_passphrase:
        return None
    import getpass  # noqa: PLC0415 - only for this prompt

    first = getpass.getpass("Recovery passphrase: ")
    if not first or first != getpass.getpass("Repeat it: "):
        raise CliError("the passphrases are empty or differ", 2)
    r, w = os.pipe()
    os.write(w, first.encode())
    os.close(w)
    return r


async def cmd_unlock(c: Client, a: argparse.Namespace) -> None:
    opts: dict[str, Variant] = {}
    if a.name:
        opts["name"] = Variant("s", a.name)
    if a.read_only:
        opts["read-only"] = Variant("b", True)
    if a.verify_only:
        opts["verify-only"] = Variant("b", True)
    (path,) = await c.call("Unlock", "sa{sv}", [a.volume, opts])
    p = await c.props(path, VOLUME)
    if a.verify_only:
        text = f"verified: the HSM can open volume {p['Uuid']} (nothing activated)"
    else:
        text = f"unlocked {p['Uuid']} at {p['MappedDevice']}"
    _out(a, dict(p, Object=path), text)


async def cmd_lock(c: Client, a: argparse.Namespace) -> None:
    await c.call("Lock", "sa{sv}", [a.volume, {}])
    _out(a, {"locked": a.volume}, f"locked {a.volume}")


async def cmd_rewrap(c: Client, a: argparse.Namespace) -> None:
    await c.call("Rewrap", "ssa{sv}", [a.volume, a.new_kek, {}])
    _out(a, {"rewrapped": a.volume, "kek": a.new_kek}, f"rewrapped {a.volume} under {a.new_kek}")


def _bar(done: int, total: int) -> str:
    width = 30
    frac = done / total if total else 0.0
    fill = int(frac * width)
    return f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total}"


async def cmd_rewrap_all(c: Client, a: argparse.Namespace) -> None:
    finished = asyncio.Event()
    tty = sys.stderr.isatty() or os.environ.get("WKDCTL_PROGRESS") == "1"
    job_path: list[str] = []

    def handler(msg: Message) -> bool:
        if msg.message_type != MessageType.SIGNAL or not job_path or msg.path != job_path[0]:
            return False
        if msg.member == "Completed":
            finished.set()
        elif msg.member == "PropertiesChanged" and tty:
            ch = msg.body[1]
            if "Done" in ch or "Total" in ch:
                done = ch["Done"].value if "Done" in ch else 0
                total = ch["Total"].value if "Total" in ch else done
                sys.stderr.write(_bar(done, total))
                sys.stderr.flush()
        return False

    # Subscribe before starting the job, so no signal slips by (STYLE principle 6).
    rule = f"type='signal',sender='{SERVICE}',path_namespace='{JOB_PREFIX.rstrip('/')}'"
    await c.call("AddMatch", "s", [rule], path="/org/freedesktop/DBus",
                 interface="org.freedesktop.DBus", destination="org.freedesktop.DBus")
    c.bus.add_message_handler(handler)
    (path,) = await c.call("RewrapAll", "ssa{sv}", [a.from_kek, a.to_kek, {}])
    job_path.append(path)
    props = await c.props(path, JOB)
    if props["State"] == "running":
        await finished.wait()
        props = await c.props(path, JOB)
    if tty:
        sys.stderr.write(_bar(props["Done"], props["Total"]) + "\n")
    total, rewrapped, skipped, failures = props["Result"]
    data = {"job": path, "state": props["State"], "total": total, "rewrapped": rewrapped,
            "skipped": skipped, "failed": [{"uuid": u, "error": e} for u, e in failures],
            "error": props["ErrorName"]}
    text = (f"rewrap-all {a.from_kek} -> {a.to_kek}: {props['State']}; {rewrapped} rewrapped, "
            f"{skipped} skipped, {len(failures)} failed")
    for u, e in failures:
        text += f"\n  {u}: {e}"
    _out(a, data, text)
    if props["State"] != "completed":
        raise CliError(f"rewrap-all did not complete ({props['ErrorName'] or 'failures'})",
                       EXIT_CODES.get(props["ErrorName"], 1))


async def cmd_kek_create(c: Client, a: argparse.Namespace) -> None:
    (kid,) = await c.call("CreateKek", "sa{sv}", [a.label, {}])
    _out(a, {"label": a.label, "id": kid}, f"created KEK {a.label} (id {kid})")


async def cmd_kek_list(c: Client, a: argparse.Namespace) -> None:
    (keks,) = await c.call("ListKeks", "a{sv}", [{}])
    data = [{"label": k[0], "id": k[1], "bits": k[2]} for k in keks]
    rows = [["LABEL", "ID", "BITS"]] + [[k[0], k[1], str(k[2])] for k in keks]
    _out(a, data, _table(rows))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wkdctl", description="Control the wrapped-key daemon.")
    p.add_argument("--address", help="D-Bus address (default: the system bus)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-ask-password", action="store_true",
                   help="do not allow interactive polkit authentication")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", aliases=["list"], help="daemon, HSM and volumes")
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("format", help="format a device as a wkd volume (destroys data)")
    s.add_argument("device")
    s.add_argument("--kek", help="KEK label (default: the default KEK)")
    s.add_argument("--force", action="store_true", help="format over an existing signature")
    s.add_argument("--auto-unlock", action="store_true")
    s.add_argument("--label")
    rp = s.add_mutually_exclusive_group()
    rp.add_argument("--recovery-passphrase-file", metavar="FILE",
                    help="also add a passphrase keyslot (plain cryptsetup can then open the "
                         "volume without the HSM), reading the passphrase from FILE ('-': "
                         "stdin); it is passed to the daemon as a file descriptor")
    rp.add_argument("--ask-recovery-passphrase", action="store_true",
                    help="like --recovery-passphrase-file, but prompt for it")
    s.set_defaults(fn=cmd_format)
    s = sub.add_parser("unlock", help="unlock a volume (device, UUID or object path)")
    s.add_argument("volume")
    s.add_argument("--name")
    s.add_argument("--read-only", action="store_true")
    s.add_argument("--verify-only", action="store_true",
                   help="check that the HSM can open it; activate nothing")
    s.set_defaults(fn=cmd_unlock)
    s = sub.add_parser("lock", help="lock a volume")
    s.add_argument("volume")
    s.set_defaults(fn=cmd_lock)
    s = sub.add_parser("rewrap", help="re-wrap a volume key under another KEK")
    s.add_argument("volume")
    s.add_argument("new_kek")
    s.set_defaults(fn=cmd_rewrap)
    s = sub.add_parser("rewrap-all", help="re-wrap every volume from one KEK to another")
    s.add_argument("from_kek")
    s.add_argument("to_kek")
    s.set_defaults(fn=cmd_rewrap_all)
    kek = sub.add_parser("kek", help="key-encryption keys").add_subparsers(dest="kek_cmd",
                                                                         required=True)
    s = kek.add_parser("create")
    s.add_argument("label")
    s.set_defaults(fn=cmd_kek_create)
    s = kek.add_parser("list")
    s.set_defaults(fn=cmd_kek_list)
    return p


async def run(a: argparse.Namespace) -> None:
    try:
        if a.address:
            bus = await MessageBus(bus_address=a.address, negotiate_unix_fd=True).connect()
        else:
            bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
    except Exception as e:
        raise CliError(f"cannot connect to the bus: {e}", 1) from None
    try:
        await a.fn(Client(bus, interactive=not a.no_ask_password), a)
    finally:
        bus.disconnect()


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        asyncio.run(run(a))
    except CliError as e:
        print(f"wkdctl: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
