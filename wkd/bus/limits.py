"""The bounds that keep one client from degrading the service for others (DESIGN promise 5).

Every resource a caller can make the daemon hold is counted here and refused past its bound
with org.wkd1.Error.LimitExceeded; docs/dbus-api.md ("Limits") lists each with its reason.
Pure bookkeeping, no I/O: the connection (wkd/bus/connection.py) asks before it dispatches a
call, the authorizer once it knows the caller's uid, the job registry before it starts a job.

What a call costs while it waits: its arguments (bounded by MAX_CALL_BYTES), a coroutine,
and for Format at most MAX_CALL_FDS descriptors. What bounds the number of waiting calls:
MAX_PENDING_PER_SENDER per connection, MAX_PENDING_PER_UID per non-root user once the bus
has told us who the caller is, MAX_PENDING_TOTAL over all. Root's calls are never counted
against the per-uid bound, so a flood from an unprivileged user cannot lock root out.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from wkd.errors import LimitExceeded

# --- the limits -------------------------------------------------------------------------
# A call's arguments as they sit in memory. The largest legitimate call is a Format with a
# PATH_MAX device path (4096), a label, a 64-character KEK label and a handful of options:
# under 6 KiB. The bus itself would accept 32 MiB (system bus max_message_size).
MAX_CALL_BYTES: Final = 16 * 1024
# Calls of one connection in flight. wkdctl has one at a time, Cockpit a few.
MAX_PENDING_PER_SENDER: Final = 16
# Calls of one non-root user in flight, over all its connections (the system bus lets a
# user open up to 256; dbus-daemon's max_connections_per_user).
MAX_PENDING_PER_UID: Final = 32
# Calls in flight over all: a hard ceiling on the memory waiting calls hold
# (1024 x 16 KiB = 16 MiB at worst).
MAX_PENDING_TOTAL: Final = 1024
# Descriptors one call may carry is the XML's org.wkd1.UnixFds (Format: 1); calls holding
# descriptors while they wait, over all: the daemon's descriptor budget for clients (see
# units/wkd.service, LimitNOFILE=).
MAX_CALLS_WITH_FDS: Final = 64
# polkit checks in flight at once: below dbus-daemon's max_replies_per_connection (128 on
# the system bus), so the daemon's own calls to the bus driver still get through.
MAX_POLKIT_CHECKS: Final = 64
# RewrapAll jobs running at once. One rotation at a time is the norm; two leave room to
# resume one while another finishes.
MAX_RUNNING_JOBS: Final = 2
# Finished job objects kept for their callers to read (each lingers JOB_LINGER_SECONDS at
# most); past this the oldest finished one goes first.
MAX_FINISHED_JOBS: Final = 16
JOB_LINGER_SECONDS: Final = 300.0
# Log lines about refused calls: refusals before authorization share one bucket (the uid is
# not known yet), denials by polkit have one per uid: a burst of LOG_BURST, then
# LOG_PER_SECOND on average; what is held back is counted and said with the next line let
# through. journald's own rate limit (RateLimitBurst=) would otherwise
# drop the daemon's important entries along with a flood's.
LOG_BURST: Final = 10
LOG_PER_SECOND: Final = 0.5
LOG_MAX_KEYS: Final = 1024


# --- argument size ------------------------------------------------------------------------
def payload_bytes(body: Any, limit: int) -> int:
    """An upper estimate of the memory `body` (a D-Bus message body) holds, stopping as soon
    as it passes `limit` (so a huge body costs no more than `limit` to judge)."""
    total = 0
    stack: list[Any] = [body]
    while stack:
        item = stack.pop()
        children: Any = ()
        if isinstance(item, str | bytes | bytearray):
            total += len(item) + 8
        elif isinstance(item, list | tuple):
            total += 8 * len(item) + 8
            children = item
        elif isinstance(item, Mapping):
            total += 16 * len(item) + 8
            children = [*item.keys(), *item.values()] if total <= limit else ()
        elif hasattr(item, "signature") and hasattr(item, "value"):  # a Variant
            total += len(item.signature) + 8
            children = (item.value,)
        else:
            total += 8
        if total > limit:
            return total  # before visiting the children: a huge container costs O(1)
        stack.extend(children)
    return total


# --- calls in flight ----------------------------------------------------------------------
class Admission:
    """Counts of calls in flight; `admit` and `release` are paired by the connection."""

    def __init__(self, *, per_sender: int = MAX_PENDING_PER_SENDER,
                 per_uid: int = MAX_PENDING_PER_UID, total: int = MAX_PENDING_TOTAL,
                 with_fds: int = MAX_CALLS_WITH_FDS) -> None:
        self._max_sender, self._max_uid = per_sender, per_uid
        self._max_total, self._max_fds = total, with_fds
        self._senders: Counter[str] = Counter()
        self._uids: Counter[int] = Counter()
        self._total = 0
        self._with_fds = 0

    @property
    def in_flight(self) -> int:
        return self._total

    def admit(self, sender: str, *, fds: int) -> None:
        """Count one call of `sender` carrying `fds` descriptors, or raise LimitExceeded."""
        if self._senders[sender] >= self._max_sender:
            raise LimitExceeded(f"too many calls in flight from this connection "
                                f"(at most {self._max_sender})")
        if self._total >= self._max_total:
            raise LimitExceeded(f"the daemon has {self._max_total} calls in flight; "
                                "try again shortly")
        if fds and self._with_fds >= self._max_fds:
            raise LimitExceeded(f"{self._max_fds} calls holding descriptors are in flight; "
                                "try again shortly")
        self._senders[sender] += 1
        self._total += 1
        self._with_fds += 1 if fds else 0

    def release(self, sender: str, *, fds: int) -> None:
        self._senders[sender] -= 1
        if self._senders[sender] <= 0:
            del self._senders[sender]
        self._total -= 1
        self._with_fds -= 1 if fds else 0

    def enter_uid(self, uid: int) -> None:
        """Count a call of non-root `uid` (once the bus has identified it)."""
        if self._uids[uid] >= self._max_uid:
            raise LimitExceeded(f"too many calls in flight from uid {uid} "
                                f"(at most {self._max_uid})")
        self._uids[uid] += 1

    def leave_uid(self, uid: int) -> None:
        self._uids[uid] -= 1
        if self._uids[uid] <= 0:
            del self._uids[uid]


# --- log volume ---------------------------------------------------------------------------
@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    held_back: int = 0


class LogLimiter:
    """A token bucket per key for log lines about refused calls."""

    def __init__(self, *, burst: int = LOG_BURST, per_second: float = LOG_PER_SECOND,
                 max_keys: int = LOG_MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._burst, self._rate, self._max_keys = burst, per_second, max_keys
        self._clock = clock
        self._buckets: OrderedDict[object, _Bucket] = OrderedDict()

    def take(self, key: object) -> int | None:
        """None: hold this line back. Otherwise the number of lines held back since the
        last one let through for `key` (to say so in this one)."""
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(tokens=float(self._burst), stamp=now)
        bucket.tokens = min(float(self._burst),
                            bucket.tokens + (now - bucket.stamp) * self._rate)
        bucket.stamp = now
        self._buckets[key] = bucket  # most recently used last
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1.0:
            bucket.held_back += 1
            return None
        bucket.tokens -= 1.0
        held, bucket.held_back = bucket.held_back, 0
        return held
