"""The main job on the embedded default, end to end through the D-Bus API.

    python3 -m devtools.demo [--keep]   (./dev demo)

Starts a private system-like bus and the wkd daemon on it with its embedded SoftHSM2 token (in a
temporary state directory), then walks a loop-backed image through Format -> Unlock -> Rewrap ->
Lock with D-Bus calls only, printing each step and the equivalent busctl command. Where the kernel
has no device-mapper it says so and unlocks in verify-only mode (unwrap in the HSM + LUKS2 digest
check, nothing activated). Needs root (loop devices, LUKS2 headers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dbus_fast import Variant
from dbus_fast.aio import MessageBus

from devtools.busclient import CallError, call, wait_for_name
from devtools.privatebus import PrivateBus, start_private_bus
from devtools.process import stop_process
from wkd.bus.api import MANAGER, PROPERTIES, ROOT_PATH, VOLUME
from wkd.disk import luks2

ROOT = ROOT_PATH
IMAGE_BYTES = 64 * 1024 * 1024


class DemoError(Exception):
    pass


def say(text: str = "") -> None:
    print(text, flush=True)


async def props(bus: MessageBus, path: str, iface: str) -> dict[str, Any]:
    (values,) = await call(bus, path, PROPERTIES, "GetAll", "s", iface)
    return {k: v.value for k, v in values.items()}


def attach_loop(image: Path) -> str | None:
    res = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                         text=True, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def token_lines(device: str) -> str:
    dump = subprocess.run(["cryptsetup", "luksDump", device], capture_output=True, text=True,
                          check=False).stdout
    keep, on = [], False
    for line in dump.splitlines():
        if line.startswith(("Version:", "UUID:", "Label:")):
            keep.append(line)
        if line.startswith(("Keyslots:", "Tokens:", "Digests:")):
            on = line.startswith(("Keyslots:", "Tokens:"))
        if on:
            keep.append(line)
    for tid in re.findall(r"^\s+(\d+): wkd$", dump, re.MULTILINE):
        exported = subprocess.run(["cryptsetup", "token", "export", "--token-id", tid, device],
                                  capture_output=True, text=True, check=False).stdout.strip()
        if not exported:
            continue
        # The token's fields minus the wrapped blob: the blob is not secret on disk, but wkd
        # never prints it (nothing that leaves the header should carry it).
        fields = json.loads(exported)
        fields["wrapped_key"] = f"<{len(fields.get('wrapped_key', ''))} base64 chars>"
        keep.append(f"  token {tid}: " + json.dumps(fields, sort_keys=True))
    return "\n".join("      " + line for line in keep)


async def walk(address: str, device: str,  # noqa: PLR0915 - one linear story
               daemon: subprocess.Popen[bytes]) -> None:
    bus = await MessageBus(bus_address=address).connect()
    try:
        try:
            await wait_for_name(bus, timeout=60, alive=lambda: daemon.poll() is None)
        except TimeoutError as e:
            raise DemoError(f"the daemon did not start: {e}") from None
        m = await props(bus, ROOT, MANAGER)
        kind = "SOFTWARE token (SoftHSM2)" if m["HsmSoftware"] else "hardware token"
        say(f"[setup] wkd {m['Version']} on the private bus; HSM {m['HsmState']}: token "
            f"{m['HsmToken']!r}, a {kind}"
            + (", embedded in the state directory" if m["HsmEmbedded"] else ""))

        say("\n[1/5] CreateKek: a second KEK to rotate to")
        say("      busctl call org.wkd1 /org/wkd1 org.wkd1.Manager CreateKek 'sa{sv}' "
            "demo-rotation 0")
        (kek_id,) = await call(bus, ROOT, MANAGER, "CreateKek", "sa{sv}", "demo-rotation", {})
        keks = (await call(bus, ROOT, MANAGER, "ListKeks", "a{sv}", {}))[0]
        say(f"      -> KEK id {kek_id}; KEKs in the HSM: "
            + ", ".join(f"{label} ({bits} bits)" for label, _id, bits in keks))

        say(f"\n[2/5] Format {device} under the default KEK (the volume key is generated in "
            "the HSM and leaves it only wrapped)")
        say(f"      busctl call org.wkd1 /org/wkd1 org.wkd1.Manager Format 'ssa{{sv}}' {device} "
            "'' 1 label s demo")
        (vol,) = await call(bus, ROOT, MANAGER, "Format", "ssa{sv}", device, "",
                            {"label": Variant("s", "demo")})
        v = await props(bus, vol, VOLUME)
        say(f"      -> {vol}\n      UUID {v['Uuid']}, {v['Cipher']} {v['KeyBits']}-bit, "
            f"KEK {v['Kek']}")
        say("      cryptsetup luksDump (no keyslot holds the key; the wkd token carries it "
            "wrapped):")
        say(token_lines(device))

        say("\n[3/5] Unlock")
        mapped = False
        if luks2.device_mapper_available():
            say(f"      busctl call org.wkd1 /org/wkd1 org.wkd1.Manager Unlock 'sa{{sv}}' "
                f"{device} 1 name s wkd-demo")
            await call(bus, ROOT, MANAGER, "Unlock", "sa{sv}", device,
                       {"name": Variant("s", "wkd-demo")})
            v = await props(bus, vol, VOLUME)
            say(f"      -> active: {v['Active']}, mapped at {v['MappedDevice']}")
            table = subprocess.run(["dmsetup", "table", "--showkeys", v["MappedName"]],
                                   capture_output=True, text=True, check=False).stdout.strip()
            if table:
                say(f"      dmsetup table --showkeys: {_keyref(table)}")
            mapped = True
        else:
            say("      This kernel has NO device-mapper (/proc/misc lists none), so nothing can "
                "be activated here.\n      Unlocking in verify-only mode instead: the HSM "
                "unwraps the key into the daemon's locked memory\n      and the LUKS2 digest "
                "must accept it; no mapping is created.")
            say(f"      busctl call org.wkd1 /org/wkd1 org.wkd1.Manager Unlock 'sa{{sv}}' "
                f"{device} 1 verify-only b true")
            await call(bus, ROOT, MANAGER, "Unlock", "sa{sv}", device,
                       {"verify-only": Variant("b", True)})
            say("      -> verified: the HSM opens this volume")

        say("\n[4/5] Rewrap to the new KEK (unwrap + wrap inside the HSM; staged, verified, "
            "activated)")
        say(f"      busctl call org.wkd1 /org/wkd1 org.wkd1.Manager Rewrap 'ssa{{sv}}' {device} "
            "demo-rotation 0")
        await call(bus, ROOT, MANAGER, "Rewrap", "ssa{sv}", device, "demo-rotation", {})
        v = await props(bus, vol, VOLUME)
        say(f"      -> KEK now {v['Kek']} (id {v['KekId']})")
        say(token_lines(device))
        await call(bus, ROOT, MANAGER, "Unlock", "sa{sv}", device,
                   {"verify-only": Variant("b", True)})
        say("      -> verified again under the new KEK: same volume key, new wrapping")

        say("\n[5/5] Lock")
        if mapped:
            say(f"      busctl call org.wkd1 /org/wkd1 org.wkd1.Manager Lock 'sa{{sv}}' "
                f"{device} 0")
            await call(bus, ROOT, MANAGER, "Lock", "sa{sv}", device, {})
            v = await props(bus, vol, VOLUME)
            say(f"      -> active: {v['Active']}")
        else:
            say("      Nothing is mapped (no device-mapper), so Lock has nothing to close; the "
                "daemon says so:")
            try:
                await call(bus, ROOT, MANAGER, "Lock", "sa{sv}", device, {})
            except CallError as e:
                say(f"      -> {e}")
    finally:
        bus.disconnect()


def _keyref(table: str) -> str:
    # dm-crypt table: start len crypt cipher key iv_offset device offset ...; with the kernel
    # keyring the key field is ":<size>:logon:<description>", a reference, not key bytes.
    fields = table.split()
    return f"key field {fields[4]!r}" if len(fields) > 4 else "(unexpected table)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m devtools.demo",
                                description=__doc__.split("\n")[0])
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("wkd demo: run as root (loop devices and LUKS2 headers need it)", file=sys.stderr)
        return 1
    for tool in ("dbus-daemon", "cryptsetup", "losetup", "softhsm2-util"):
        if shutil.which(tool) is None:
            print(f"wkd demo: {tool} is missing; run ./dev deps", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="wkd-demo-"))
    bus: PrivateBus | None = None
    daemon: subprocess.Popen[bytes] | None = None
    loop_dev: str | None = None
    say("== wkd demo: Format -> Unlock -> Rewrap -> Lock through the D-Bus API, on the "
        "embedded SoftHSM2 token")
    try:
        image = work / "disk.img"
        with open(image, "wb") as f:
            f.truncate(IMAGE_BYTES)
        loop_dev = attach_loop(image)
        device = loop_dev or str(image)
        config = work / "wkd.toml"
        config.write_text("[daemon]\nallow_image_files = %s\n"
                          % ("false" if loop_dev else "true"))
        say(f"[setup] disk: {device}" + (f" (loop device over {image})" if loop_dev else
                                         " (no free loop device: an image file)"))
        bus = start_private_bus(work / "bus")
        say(f"[setup] private system-like D-Bus at {bus.address}")
        log = open(work / "wkd.log", "wb")  # noqa: SIM115 - lives as long as the daemon
        daemon = subprocess.Popen(
            [sys.executable, "-m", "wkd", "--bus-address", bus.address,
             "--state-dir", str(work / "state"), "--config", str(config), "--log-stderr"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        say(f"[setup] wkd daemon started (pid {daemon.pid}), state directory {work / 'state'}")
        asyncio.run(walk(bus.address, device, daemon))
        say("\n== done: Format, Unlock, Rewrap and Lock all went through D-Bus; the clear key "
            "never left the daemon.")
        return 0
    except (DemoError, CallError) as e:
        print(f"\nwkd demo FAILED: {e}", file=sys.stderr)
        log_path = work / "wkd.log"
        if log_path.exists():
            print("--- daemon log ---\n" + log_path.read_text()[-4000:], file=sys.stderr)
        return 1
    finally:
        if daemon is not None:
            stop_process(daemon, timeout=15)
        if bus is not None:
            bus.stop()
        if loop_dev:
            subprocess.run(["losetup", "-d", loop_dev], check=False)
        if args.keep:
            say(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
