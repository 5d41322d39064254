"""The bounds of wkd/bus/limits.py (pure bookkeeping)."""

from __future__ import annotations

import pytest
from dbus_fast import Variant

from wkd.bus.limits import Admission, LogLimiter, payload_bytes
from wkd.errors import LimitExceeded


def test_payload_bytes_counts_nested_values_and_stops_early():
    small = ["/dev/sdb", "", {"label": Variant("s", "x"), "force": Variant("b", True)}]
    assert payload_bytes(small, 16384) < 200
    nested = ["x", {"k": Variant("aay", [b"y" * 5000] * 4)}]
    assert payload_bytes(nested, 16384) > 16384
    # A huge body is judged by its outer size, before its million items are visited.
    calls = []

    class Probe(str):
        def __len__(self) -> int:
            calls.append(1)
            return 100

    huge = [[Probe("z")] * 1_000_000]
    assert payload_bytes(huge, 16384) > 16384
    assert calls == []


def test_per_sender_bound_and_release():
    adm = Admission(per_sender=2, total=10)
    adm.admit(":1.1", fds=0)
    adm.admit(":1.1", fds=0)
    with pytest.raises(LimitExceeded, match="this connection"):
        adm.admit(":1.1", fds=0)
    adm.admit(":1.2", fds=0)  # another connection is not held up
    adm.release(":1.1", fds=0)
    adm.admit(":1.1", fds=0)
    assert adm.in_flight == 3


def test_total_and_descriptor_bounds():
    adm = Admission(per_sender=10, total=3, with_fds=1)
    adm.admit(":1.1", fds=1)
    with pytest.raises(LimitExceeded, match="descriptors"):
        adm.admit(":1.2", fds=1)
    adm.admit(":1.2", fds=0)
    adm.admit(":1.3", fds=0)
    with pytest.raises(LimitExceeded, match="calls in flight"):
        adm.admit(":1.4", fds=0)
    adm.release(":1.1", fds=1)
    adm.admit(":1.4", fds=1)
    assert adm.in_flight == 3


def test_per_uid_bound():
    adm = Admission(per_uid=2)
    adm.enter_uid(1000)
    adm.enter_uid(1000)
    with pytest.raises(LimitExceeded, match="uid 1000"):
        adm.enter_uid(1000)
    adm.enter_uid(1001)
    adm.leave_uid(1000)
    adm.enter_uid(1000)


def test_log_limiter_burst_refill_and_count_held_back():
    now = [0.0]
    lim = LogLimiter(burst=3, per_second=1.0, clock=lambda: now[0])
    assert [lim.take("a") for _ in range(5)] == [0, 0, 0, None, None]
    assert lim.take("b") == 0  # per key
    now[0] += 1.0
    assert lim.take("a") == 2  # one token back; says two lines were held back
    assert lim.take("a") is None


def test_log_limiter_keys_are_bounded():
    lim = LogLimiter(burst=1, per_second=0.0, max_keys=4)
    for k in range(100):
        assert lim.take(k) == 0
    assert len(lim._buckets) == 4  # the oldest keys are forgotten, memory stays bounded
