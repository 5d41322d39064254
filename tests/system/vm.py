"""QEMU guest control for the system-test tier: launch, QMP hot-plug, 9p requests.

The guest is a bookworm image booted with -kernel/-initrd under TCG (the host's /dev/kvm
cannot run a stock kernel, see docs/system-tests.md).  The host and the guest talk through
one 9p share: the guest runner writes results there, and a scenario that needs the host
(hot-plug) drops a request file that :meth:`Vm.serve_requests` answers over QMP.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SERIAL_PREFIX = "wkd-"  # guest path: /dev/disk/by-id/virtio-wkd-<name>


@dataclass(frozen=True)
class Disk:
    name: str  # <= 16 chars: virtio-blk serials hold 20 bytes
    path: Path
    plugged_at_boot: bool = True


class QmpError(RuntimeError):
    pass


class Qmp:
    """Minimal QMP client (QEMU Machine Protocol, docs/interop/qmp-spec): JSON lines over
    a unix socket; replies carry "return" or "error", asynchronous events carry "event"."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(str(path))
                break
            except OSError:
                self._sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._file = self._sock.makefile("rwb")
        self.events: list[dict] = []
        self._read_message()  # greeting
        self.command("qmp_capabilities")

    def _read_message(self) -> dict:
        line = self._file.readline()
        if not line:
            raise QmpError("QMP connection closed")
        return json.loads(line)

    def command(self, execute: str, **arguments: object) -> object:
        msg: dict[str, object] = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self._file.write(json.dumps(msg).encode() + b"\n")
        self._file.flush()
        while True:
            reply = self._read_message()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise QmpError(f"{execute}: {reply['error'].get('desc')}")
            return reply.get("return")

    def wait_event(self, name: str, timeout: float, **data: object) -> dict:
        """Wait for event `name` whose data contains `data` (already-seen events count)."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev["event"] == name and all(ev.get("data", {}).get(k) == v
                                               for k, v in data.items()):
                    self.events.remove(ev)
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError(f"no {name} event within {timeout:.0f}s")
            self._sock.settimeout(left)
            try:
                self.events.append(self._read_message())
            except TimeoutError:
                continue
            finally:
                self._sock.settimeout(None)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()


@dataclass
class Vm:
    kernel: Path
    initrd: Path
    root: Path  # qcow2 overlay over the cached base image; persists across a run's boots
    share: Path
    disks: list[Disk]
    rundir: Path
    memory_mb: int = 1536
    cpus: int = 2
    proc: subprocess.Popen[bytes] | None = None
    qmp: Qmp | None = None
    plugged: set[str] = field(default_factory=set)

    def command_line(self, boot: int) -> list[str]:
        qmp_sock = self.rundir / "qmp.sock"
        cmd = [
            "qemu-system-x86_64",
            "-machine", "pc",  # i440fx: ACPI PCI hot-plug on the root bus, no root ports needed
            "-accel", "tcg,thread=multi", "-cpu", "max",
            "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot",
            "-serial", f"file:{self.rundir / f'console-boot{boot}.log'}",
            "-kernel", str(self.kernel), "-initrd", str(self.initrd),
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1 quiet loglevel=4",
            # Root first and as an explicit -device: -drive if=virtio devices are created
            # after all -device ones, and the root must be the first virtio disk (vda).
            "-blockdev", f"driver=file,filename={self.root},node-name=f-root,cache.no-flush=on",
            "-blockdev", "driver=qcow2,file=f-root,node-name=root",
            "-device", "virtio-blk-pci,drive=root,id=dev-root,serial=wkd-root",
            "-device", "virtio-rng-pci",
            "-virtfs", f"local,path={self.share},mount_tag=wkdshare,security_model=none,"
                       "id=wkdshare",
            "-qmp", f"unix:{qmp_sock},server=on,wait=off",
        ]
        for disk in self.disks:
            cmd += ["-blockdev", f"driver=file,filename={disk.path},node-name=f-{disk.name}",
                    "-blockdev", f"driver=raw,file=f-{disk.name},node-name={disk.name}"]
            if disk.plugged_at_boot:
                cmd += ["-device", self._device_spec(disk.name)]
        return cmd

    @staticmethod
    def _device_spec(name: str) -> str:
        return f"virtio-blk-pci,drive={name},id=dev-{name},serial={SERIAL_PREFIX}{name}"

    def start(self, boot: int) -> None:
        qmp_sock = self.rundir / "qmp.sock"
        with contextlib.suppress(FileNotFoundError):
            qmp_sock.unlink()
        log = open(self.rundir / f"qemu-boot{boot}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.command_line(boot), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.qmp = Qmp(qmp_sock)
        self.plugged = {d.name for d in self.disks if d.plugged_at_boot}

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        if self.qmp:
            self.qmp.close()
            self.qmp = None

    # -- hot-plug -------------------------------------------------------------------
    def plug(self, name: str) -> None:
        assert self.qmp
        if name in self.plugged:
            raise QmpError(f"disk {name} is already plugged")
        self.qmp.command("device_add", driver="virtio-blk-pci", drive=name,
                         id=f"dev-{name}", serial=f"{SERIAL_PREFIX}{name}")
        self.plugged.add(name)

    def unplug(self, name: str, timeout: float = 60.0) -> None:
        """device_del asks the guest to eject (ACPI); the device is gone only when QEMU
        emits DEVICE_DELETED, which needs the guest's cooperation."""
        assert self.qmp
        self.qmp.command("device_del", id=f"dev-{name}")
        self.qmp.wait_event("DEVICE_DELETED", timeout, device=f"dev-{name}")
        self.plugged.discard(name)

    # -- requests from the guest ------------------------------------------------------
    def serve_requests(self) -> None:
        """Answer every pending share/requests/*.json (written by guest/wkdtest.py)."""
        reqdir = self.share / "requests"
        for req in sorted(reqdir.glob("*.json")):
            if req.name.endswith(".reply.json"):
                continue
            reply_path = req.with_name(req.stem + ".reply.json")
            if reply_path.exists():
                continue
            try:
                request = json.loads(req.read_text())
            except (OSError, ValueError):
                continue  # half-written: the guest renames into place, so rare; retry
            reply: dict[str, object] = {"ok": True}
            started = time.monotonic()
            try:
                action = request["action"]
                if action == "plug":
                    self.plug(request["disk"])
                elif action == "unplug":
                    self.unplug(request["disk"])
                else:
                    raise QmpError(f"unknown request {action!r}")
            except (QmpError, KeyError, OSError) as exc:
                reply = {"ok": False, "error": str(exc)}
            reply["seconds"] = round(time.monotonic() - started, 3)
            tmp = reply_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(reply))
            os.replace(tmp, reply_path)
