"""Helpers for scenario scripts running inside the guest (standard library only).

A scenario is a plain Python script; it records checks through :class:`Scenario` and the
result file is rewritten after every check, so a scenario killed by its timeout still
reports how far it got.  ``with Scenario() as t:`` turns an unexpected exception into a
failed check instead of a bare traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHARE = Path(os.environ.get("WKDTEST_SHARE", "/mnt/share"))
BUS = ("org.wkd1", "/org/wkd1", "org.wkd1.Manager")


def disk(name: str) -> str:
    """Device path of a spare disk the host attached with serial wkd-<name>."""
    return f"/dev/disk/by-id/virtio-wkd-{name}"


class CommandFailed(Exception):
    pass


class Scenario:
    def __init__(self) -> None:
        self.name = os.environ.get("WKDTEST_NAME", "manual")
        self.result_path = Path(os.environ.get("WKDTEST_RESULT", f"/tmp/{self.name}.json"))
        self.checks: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self._save()

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None:
            self.check(f"no unexpected error ({exc_type.__name__})", False, str(exc)[-1500:])
        self._save()
        return True

    def _save(self) -> None:
        data = {"name": self.name, "checks": self.checks,
                "ok": bool(self.checks) and all(c["ok"] for c in self.checks)}
        tmp = self.result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.result_path)

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.started:7.2f}] {msg}", flush=True)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail[-2000:],
                            "at": round(time.monotonic() - self.started, 2)})
        self.log(f"{'PASS' if ok else 'FAIL'}: {name}{' -- ' + detail if detail else ''}")
        self._save()
        return bool(ok)

    def require(self, name: str, ok: bool, detail: str = "") -> None:
        """A check whose failure makes the rest of the scenario meaningless."""
        if not self.check(name, ok, detail):
            raise CommandFailed(f"required check failed: {name}")

    # -- commands ------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, timeout: float = 120,
            input: bytes | None = None, user: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        self.log("$ " + shlex.join(cmd))
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, input=input,
                              check=False)
        out = proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
        if out.strip():
            self.log("  " + out.strip()[-800:].replace("\n", "\n  "))
        if err.strip():
            self.log("  stderr: " + err.strip()[-800:].replace("\n", "\n  "))
        result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        if check and proc.returncode != 0:
            raise CommandFailed(f"{shlex.join(cmd)} -> {proc.returncode}: {err.strip()[-600:]}")
        return result

    def busctl(self, method: str, signature: str, *args: str, check: bool = True,
               user: str | None = None, timeout: float = 120,
               obj: str | None = None, iface: str | None = None,
               ) -> subprocess.CompletedProcess[str]:
        service, path, interface = BUS
        return self.run("busctl", "--system", "--timeout", f"{int(timeout)}", "call",
                        service, obj or path, iface or interface, method, signature, *args,
                        check=check, user=user, timeout=timeout + 10)

    def busctl_json(self, method: str, signature: str, *args: str,
                    **kw: Any) -> list[Any]:
        """Call and return the reply's data list (busctl --json=short)."""
        service, path, interface = BUS
        service = kw.pop("service", None) or service
        proc = self.run("busctl", "--system", "--json=short", "call", service,
                        kw.pop("obj", None) or path, kw.pop("iface", None) or interface,
                        method, signature, *args, **kw)
        return list(json.loads(proc.stdout)["data"])

    def get_property(self, obj: str, iface: str, prop: str) -> Any:
        proc = self.run("busctl", "--system", "--json=short", "get-property", "org.wkd1",
                        obj, iface, prop)
        return json.loads(proc.stdout)["data"]

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float,
                 interval: float = 0.2) -> float | None:
        """Seconds until predicate() held, or None after timeout."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(interval)
        self.log(f"timed out after {timeout}s waiting for {what}")
        return None

    # -- host requests over the 9p share ----------------------------------------------------
    def host(self, action: str, timeout: float = 90, **args: Any) -> dict[str, Any]:
        reqdir = SHARE / "requests"
        reqdir.mkdir(exist_ok=True)
        rid = f"{time.time():.3f}-{uuid.uuid4().hex[:8]}"
        tmp = reqdir / f"{rid}.tmp"
        tmp.write_text(json.dumps({"action": action, **args}))
        os.replace(tmp, reqdir / f"{rid}.json")
        reply_path = reqdir / f"{rid}.reply.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if reply_path.exists():
                reply: dict[str, Any] = json.loads(reply_path.read_text())
                self.log(f"host {action} {args}: {reply}")
                return reply
            time.sleep(0.2)
        return {"ok": False, "error": f"host did not answer {action} within {timeout}s"}


def object_path_uuid(path: str) -> str:
    """/org/wkd1/volume/<uuid with _> -> uuid (the convention of docs/dbus-api.md)."""
    tail = path.rsplit("/", 1)[-1]
    return tail.replace("_", "-")


def luks_uuid(device: str) -> str:
    out = subprocess.run(["cryptsetup", "luksUUID", device], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def dm_table_with_keys(mapping: str) -> str:
    out = subprocess.run(["dmsetup", "table", "--showkeys", mapping], capture_output=True,
                         text=True, check=False)
    return out.stdout.strip()


KEYRING_REF = re.compile(r":\d+:logon:\S+")


def kernel_name(device: str) -> str:
    """/dev/disk/by-id/virtio-wkd-x -> vdb."""
    return os.path.basename(os.path.realpath(device))


def dm_holders(device: str) -> list[str]:
    """Names of device-mapper devices stacked on `device` (sysfs holders/, dm/name)."""
    holders = Path("/sys/class/block") / kernel_name(device) / "holders"
    names = []
    for dm in sorted(holders.glob("dm-*")) if holders.exists() else []:
        with contextlib.suppress(OSError):
            names.append((dm / "dm" / "name").read_text().strip())
    return names


def dm_exists(name: str) -> bool:
    return subprocess.run(["dmsetup", "info", name], capture_output=True,
                          check=False).returncode == 0


def unit_log(unit: str = "wkd.service", lines: int = 20) -> str:
    """The unit's last journal lines, for a failed check's detail."""
    return subprocess.run(["journalctl", "-b", "-u", unit, "-n", str(lines), "--no-pager",
                           "-o", "short-precise"], capture_output=True, text=True,
                          check=False).stdout


def journal_entries(**match: str) -> list[dict[str, Any]]:
    """This boot's journal entries with the given FIELD=value matches."""
    args = [f"{k}={v}" for k, v in match.items()]
    out = subprocess.run(["journalctl", "-b", "-o", "json", "--no-pager", *args],
                         capture_output=True, text=True, check=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def sha256_of(path: str, length: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(length) if length else f.read())
    return digest.hexdigest()


def ay(data: bytes) -> list[str]:
    """busctl arguments for an `ay` value inside a variant: 'ay' N b1 ... bN."""
    return ["ay", str(len(data)), *(str(b) for b in data)]
