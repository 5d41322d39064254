"""Where the daemon's time goes: py-spy samples of the running daemon, sorted into categories.

`py-spy record --format raw` writes one line per distinct stack: frames root-first separated by
";", each "function (file:line)", then a space and the sample count. Only threads that are
running are sampled (no --idle), so a thread blocked on a queue or in select() counts nothing,
while a thread inside a C call that burns CPU (libcryptsetup's PBKDF2, SoftHSM2's AES) counts
under the Python frame that made the call.

`categorize` is pure; `Sampler` runs py-spy.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Leaf-first matching: the first rule that matches any frame, scanning from the leaf towards
# the root, names the category. (substring of "function (file:line)", category)
RULES: tuple[tuple[str, str], ...] = (
    ("verify_volume_key", "LUKS2 digest check (PBKDF2-1000 in libcryptsetup)"),
    ("hsm/pkcs11.py", "HSM round trips (PKCS#11 / SoftHSM2)"),
    ("pkcs11/", "HSM round trips (PKCS#11 / SoftHSM2)"),
    ("format (wkd/disk/luks2.py", "LUKS2 format (libcryptsetup)"),
    ("wkd/disk/formatter.py", "LUKS2 format (libcryptsetup)"),
    ("wkd/disk/luks2.py", "LUKS2 header I/O (libcryptsetup load/token get/set)"),
    ("wkd/disk/headers.py", "LUKS2 header I/O (libcryptsetup load/token get/set)"),
    ("wkd/disk/state.py", "volume registry (volumes.json rewrite)"),
    ("wkd/disk/devices.py", "device inspection (/sys, /proc, blkid)"),
    ("dbus_fast", "D-Bus (dbus-fast marshal/dispatch/send)"),
    ("wkd/log.py", "logging"),
    ("logging/", "logging"),
    ("wkd/token.py", "token JSON parse/render"),
    ("wkd/", "other wkd Python"),
    ("asyncio/", "asyncio event loop"),
)
OTHER = "other (interpreter, threads, imports)"
IDLE = "idle (waiting)"
# py-spy's idle detection misses these waits (measured: the event loop's epoll_wait and the
# worker threads' queue get are sampled as running), so a leaf frame here means "waiting".
IDLE_LEAVES: tuple[str, ...] = (
    "EpollSelector.select (selectors.py",
    "_worker (concurrent/futures/thread.py",
    "wait (threading.py",
    "get (queue.py",
)
HANDOFF_LEAVES: tuple[str, ...] = (
    "_write_to_self (asyncio/selector_events.py",
    "ThreadPoolExecutor.submit (concurrent/futures/thread.py",
    "_read_from_self (asyncio/selector_events.py",
)
HANDOFF = "thread hand-off (worker waits for the GIL to wake the loop)"


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """py-spy raw lines -> [(frames root-first, count)]; blank or malformed lines skipped."""
    out: list[tuple[list[str], int]] = []
    for line in text.splitlines():
        line = line.strip()
        stack, sep, count = line.rpartition(" ")
        if not sep or not count.isdigit():
            continue
        out.append((stack.split(";"), int(count)))
    return out


def category(frames: list[str]) -> str:
    if frames and any(leaf in frames[-1] for leaf in IDLE_LEAVES):
        return IDLE
    if frames and any(leaf in frames[-1] for leaf in HANDOFF_LEAVES):
        return HANDOFF
    for frame in reversed(frames):
        for needle, name in RULES:
            if needle in frame:
                return name
    return OTHER


def categorize(stacks: Iterable[tuple[list[str], int]]) -> dict[str, int]:
    """Samples per category, biggest first."""
    totals: dict[str, int] = {}
    for frames, count in stacks:
        name = category(frames)
        totals[name] = totals.get(name, 0) + count
    return dict(sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])))


def shares(totals: dict[str, int]) -> dict[str, float]:
    """Each category's share of the busy samples (idle ones left out)."""
    busy = {k: v for k, v in totals.items() if k != IDLE}
    n = sum(busy.values())
    return {k: (v / n if n else 0.0) for k, v in busy.items()}


def top_leaves(stacks: Iterable[tuple[list[str], int]], k: int = 12) -> list[tuple[str, int]]:
    """The k busiest leaf frames (idle waits left out): where to look first."""
    totals: dict[str, int] = {}
    for frames, count in stacks:
        if frames and category(frames) != IDLE:
            totals[frames[-1]] = totals.get(frames[-1], 0) + count
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


@dataclass
class Sampler:
    """py-spy attached to a pid for the duration of a `with` block."""

    pid: int
    output: Path
    rate: int = 200
    proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        exe = Path(sys.executable).parent / "py-spy"
        if exe.exists():
            return str(exe)
        return shutil.which("py-spy")

    @property
    def command(self) -> list[str]:
        exe = self.available() or "py-spy"
        # --nonblocking: do not stop the daemon to read its stacks (no added latency).
        return [exe, "record", "--pid", str(self.pid), "--rate", str(self.rate),
                "--format", "raw", "--output", str(self.output), "--nonblocking"]

    def __enter__(self) -> Sampler:
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy needs a moment to attach before the workload starts
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stacks(self) -> list[tuple[list[str], int]]:
        if not self.output.exists():
            return []
        return parse_raw(self.output.read_text())

    def result(self) -> dict[str, Any]:
        stacks = self.stacks()
        totals = categorize(stacks)
        return {"command": " ".join(self.command), "samples": totals,
                "shares": shares(totals), "top_leaves": top_leaves(stacks)}
