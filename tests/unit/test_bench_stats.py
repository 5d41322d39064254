"""The benchmark's pure parts: statistics, ratios, growth fits, table text, profile buckets."""

from __future__ import annotations

import math

import pytest

from bench.profile import HANDOFF, IDLE, OTHER, categorize, category, parse_raw, shares, top_leaves
from bench.stats import (
    Row,
    format_ratio,
    format_table,
    format_value,
    growth_exponent,
    linear_fit,
    percentile,
    row_to_json,
    speedup,
    summarize,
)


def test_percentile_interpolates_between_ranks() -> None:
    xs = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 25) == pytest.approx(1.75)
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("p", [-1, 101])
def test_percentile_rejects_out_of_range(p: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], p)


def test_empty_samples_are_an_error() -> None:
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_of_odd_count() -> None:
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.n, s.median, s.minimum, s.maximum) == (5, 3.0, 1.0, 5.0)
    assert (s.q1, s.q3) == (2.0, 4.0)
    assert s.iqr == 2.0


def test_speedup_for_times_is_peer_over_wkd() -> None:
    # wkd twice as fast in every pair
    assert speedup([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == 2.0
    # wkd slower: below one
    assert speedup([4.0], [1.0]) == 0.25


def test_speedup_for_rates_is_wkd_over_peer() -> None:
    assert speedup([300.0], [100.0], higher_is_better=True) == 3.0


def test_paired_speedup_uses_per_pair_ratios() -> None:
    # A noisy stretch slows pair 2 on both sides: the per-pair ratio stays 2, while the
    # ratio of medians would be pulled elsewhere.
    wkd = [1.0, 10.0, 1.1]
    peer = [2.0, 20.0, 2.2]
    assert speedup(wkd, peer) == pytest.approx(2.0)


def test_unpaired_speedup_uses_medians() -> None:
    assert speedup([1.0, 2.0, 3.0], [4.0]) == 2.0


def test_speedup_against_zero_is_infinite_not_a_crash() -> None:
    assert math.isinf(speedup([0.0], [1.0]))


def test_linear_fit_recovers_a_line() -> None:
    fit = linear_fit([1, 2, 3, 4], [3, 5, 7, 9])
    assert fit.slope == pytest.approx(2.0)
    assert fit.intercept == pytest.approx(1.0)
    with pytest.raises(ValueError):
        linear_fit([1, 1], [2, 3])


def test_growth_exponent_tells_linear_from_quadratic() -> None:
    ns = [10, 100, 1000]
    assert growth_exponent(ns, [0.1 * n for n in ns]) == pytest.approx(1.0)
    assert growth_exponent(ns, [0.001 * n * n for n in ns]) == pytest.approx(2.0)
    # a fixed start-up cost plus linear work bends the exponent below one
    assert growth_exponent(ns, [5 + 0.01 * n for n in ns]) < 0.9
    with pytest.raises(ValueError):
        growth_exponent([0, 10], [1, 2])


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0.0123, "s", "12.3 ms"),
        (2.5, "s", "2.50 s"),
        (153.2, "vol/s", "153 vol/s"),
        (7086.4, "calls/s", "7086 calls/s"),
        (0.0, "MiB", "0 MiB"),
        (math.inf, "s", "inf"),
    ],
)
def test_format_value(value: float, unit: str, text: str) -> None:
    assert format_value(value, unit) == text


def test_format_ratio() -> None:
    assert format_ratio(245.3) == "245x"
    assert format_ratio(2.71) == "2.7x"
    assert format_ratio(0.5) == "0.5x"
    assert format_ratio(0.012) == "0.012x"


def _rows() -> list[Row]:
    peer = Row("unlock", "cryptsetup", "s", (2.0, 2.1, 1.9, 2.0, 2.2))
    wkd = Row("unlock", "wkd", "s", (0.004, 0.005, 0.004, 0.004, 0.006),
              ratios={"cryptsetup": 500.0}, note="verify-only")
    return [wkd, peer]


def test_text_table_has_every_row_aligned() -> None:
    text = format_table(_rows())
    lines = text.splitlines()
    assert len(lines) == 2 + 2  # header, rule, two rows
    assert "500x vs cryptsetup" in lines[2]
    assert "4.00 ms" in lines[2]  # the median, in ms
    assert "2.00 s" in lines[3]
    # columns line up: the subject column starts at the same offset on every row
    starts = {line.index(word) for line, word in zip(lines[2:], ["wkd", "cryptsetup"],
                                                        strict=True)}
    assert len(starts) == 1


def test_markdown_table() -> None:
    md = format_table(_rows(), markdown=True).splitlines()
    assert md[0].startswith("| bench | subject | median")
    assert md[1].startswith("|---|")
    assert md[2].count("|") == md[0].count("|")


def test_small_samples_show_min_max_instead_of_iqr() -> None:
    text = format_table([Row("format", "argon", "s", (10.0, 20.0))])
    assert "10.0 s .. 20.0 s" in text


def test_row_json_carries_samples_and_summary() -> None:
    j = row_to_json(_rows()[0])
    assert j["samples"] == [0.004, 0.005, 0.004, 0.004, 0.006]
    assert j["median"] == 0.004
    assert j["speedup_vs"] == {"cryptsetup": 500.0}
    assert j["n"] == 5


T = "Thread._bootstrap (threading.py:1002);"
RAW = "\n".join([
    "<module> (wkd/__main__.py:7);run (asyncio/runners.py:118);"
    "EpollSelector.select (selectors.py:468) 100",
    T + "_worker (concurrent/futures/thread.py:81) 40",
    T + "_activate_sync (wkd/engine.py:366);"
    "Luks2Device.verify_volume_key (wkd/disk/luks2.py:372) 9",
    T + "_read_header (wkd/engine.py:68);Luks2Device.open (wkd/disk/luks2.py:238) 20",
    T + "work (wkd/hsm/pkcs11.py:420);_unwrap_obj (wkd/hsm/pkcs11.py:498) 10",
    "<module> (x.py:1);BaseSelectorEventLoop._write_to_self (asyncio/selector_events.py:139) 5",
    "<module> (x.py:1);Message._marshall (dbus_fast/message.py:200) 6",
    "",
    "garbage line without count",
])


def test_parse_raw_skips_malformed_lines() -> None:
    stacks = parse_raw(RAW)
    assert len(stacks) == 7
    assert stacks[0][1] == 100
    assert stacks[2][0][-1].startswith("Luks2Device.verify_volume_key")


def test_categories_from_the_leaf_up() -> None:
    stacks = parse_raw(RAW)
    assert category(stacks[0][0]) == IDLE
    assert category(stacks[1][0]) == IDLE
    assert category(stacks[2][0]).startswith("LUKS2 digest check")
    assert category(stacks[3][0]).startswith("LUKS2 header I/O")
    assert category(stacks[4][0]).startswith("HSM")
    assert category(stacks[5][0]) == HANDOFF
    assert category(stacks[6][0]).startswith("D-Bus")
    assert category(["main (x.py:1)"]) == OTHER


def test_shares_leave_idle_out() -> None:
    totals = categorize(parse_raw(RAW))
    assert totals[IDLE] == 140
    s = shares(totals)
    assert IDLE not in s
    assert sum(s.values()) == pytest.approx(1.0)
    assert s[next(k for k in s if k.startswith("LUKS2 header"))] == pytest.approx(20 / 50)
    assert next(iter(totals)) == IDLE  # biggest first


def test_top_leaves_are_busy_frames_only() -> None:
    top = top_leaves(parse_raw(RAW), k=2)
    assert top == [("Luks2Device.open (wkd/disk/luks2.py:238)", 20),
                   ("_unwrap_obj (wkd/hsm/pkcs11.py:498)", 10)]


def test_vm_rows_ratios_against_systemd_cryptsetup() -> None:
    from bench.vm_bench import vm_rows

    data = {"bench": {"kernel": "6.1.0", "samples_s": {
        "peer_attach": [0.8, 0.8, 0.8],
        "wkd_unlock_busctl": [0.4, 0.4, 0.4],
        "wkd_detach": [0.1, 0.1, 0.1],
    }}}
    rows = {r.subject: r for r in vm_rows(data)}
    wkd = next(r for s, r in rows.items() if "busctl" in s)
    (ratio,) = wkd.ratios.values()
    assert ratio == 2.0  # twice as fast as the peer
    peer = next(r for s, r in rows.items() if "systemd-cryptsetup attach" in s)
    assert "6.1.0" in peer.note and not peer.ratios
    assert any("detach" in s for s in rows)
