"""Pure statistics and table formatting for the benchmarks (no I/O, no clock).

The machines these run on are shared and noisy, so every figure is a median with its spread
(interquartile range and min-max) over several runs, and every comparison is a ratio to a peer
measured in the same run, interleaved with it. When the samples of wkd and of a peer were taken
in pairs (run i of each back to back), the ratio is the median of the per-pair ratios: a noisy
stretch of time then hits both sides of a pair alike instead of one side only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    median: float
    q1: float
    q3: float
    minimum: float
    maximum: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation between closest ranks
    (the "R-7" / numpy default definition)."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    xs = sorted(samples)
    pos = (len(xs) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    if pos == lo:
        return xs[lo]  # exact rank: no interpolation (also keeps inf from turning into nan)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> Summary:
    if not samples:
        raise ValueError("summary of no samples")
    return Summary(n=len(samples), median=percentile(samples, 50), q1=percentile(samples, 25),
                   q3=percentile(samples, 75), minimum=min(samples), maximum=max(samples))


def speedup(wkd: Sequence[float], peer: Sequence[float], *, higher_is_better: bool = False
            ) -> float:
    """How many times better wkd is than the peer (> 1: wkd ahead, < 1: wkd behind).

    Times (lower is better): peer / wkd. Rates (higher is better): wkd / peer. Paired samples
    (same length) give the median of per-pair ratios, others the ratio of medians.
    """
    if not wkd or not peer:
        raise ValueError("speedup needs samples on both sides")

    def one(w: float, p: float) -> float:
        num, den = (w, p) if higher_is_better else (p, w)
        if den == 0:
            return math.inf
        return num / den

    if len(wkd) == len(peer):
        return percentile([one(w, p) for w, p in zip(wkd, peer, strict=True)], 50)
    return one(percentile(wkd, 50), percentile(peer, 50))


@dataclass(frozen=True, slots=True)
class LinearFit:
    """y = intercept + slope * x, least squares."""

    slope: float
    intercept: float


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> LinearFit:
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("a fit needs at least two (x, y) points")
    mx = sum(xs) / len(xs)
    my = sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a fit needs at least two distinct x")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return LinearFit(slope=slope, intercept=my - slope * mx)


def growth_exponent(ns: Sequence[float], times: Sequence[float]) -> float:
    """k in time ~ N^k, from a least-squares fit in log-log space: 1.0 is linear growth,
    2.0 quadratic. A rewrap of N volumes should be ~1."""
    if any(n <= 0 for n in ns) or any(t <= 0 for t in times):
        raise ValueError("growth needs positive sizes and times")
    return linear_fit([math.log(n) for n in ns], [math.log(t) for t in times]).slope


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the results table: a subject's samples and its ratios to peers."""

    bench: str
    subject: str
    unit: str  # "s", "ms", "calls/s", "vol/s", "MiB" ...
    samples: tuple[float, ...]
    higher_is_better: bool = False
    ratios: dict[str, float] = field(default_factory=dict)  # peer subject -> speedup
    note: str = ""

    @property
    def summary(self) -> Summary:
        return summarize(self.samples)


def format_value(value: float, unit: str) -> str:
    """A number with 3 significant digits and its unit; seconds below 1 shown as ms."""
    if math.isinf(value):
        return "inf"
    if unit == "s" and abs(value) < 1:
        value, unit = value * 1000, "ms"
    if value == 0:
        text = "0"
    else:
        digits = max(0, 2 - math.floor(math.log10(abs(value))))
        text = f"{value:.{digits}f}"
    return f"{text} {unit}"


def format_ratio(r: float) -> str:
    """1 decimal place for ratios near 1, fewer digits for big ones: "0.05x", "3.2x", "140x"."""
    if math.isinf(r):
        return "infx"
    if r >= 100:
        return f"{r:.0f}x"
    if r >= 0.1:
        return f"{r:.2g}x" if r < 1 else f"{r:.1f}x"
    return f"{r:.2g}x"


def row_cells(row: Row) -> list[str]:
    s = row.summary
    spread = (f"{format_value(s.q1, row.unit)} .. {format_value(s.q3, row.unit)}"
              if s.n >= 4 else
              f"{format_value(s.minimum, row.unit)} .. {format_value(s.maximum, row.unit)}")
    ratios = "; ".join(f"{format_ratio(r)} vs {peer}" for peer, r in row.ratios.items())
    return [row.bench, row.subject, format_value(s.median, row.unit), spread, str(s.n),
            ratios, row.note]


HEADERS = ("bench", "subject", "median", "spread (IQR; min..max if n<4)", "n",
           "wkd speedup (>1: wkd ahead)", "note")


def format_table(rows: Sequence[Row], *, markdown: bool = False) -> str:
    """The results as an aligned text table, or a GitHub-flavoured markdown table."""
    body = [row_cells(r) for r in rows]
    if markdown:
        out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
                for cells in body]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h)
              for i, h in enumerate(HEADERS)]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))
    out = [line.rstrip(), "-" * len(line.rstrip())]
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
            for cells in body]
    return "\n".join(out)


def row_to_json(row: Row) -> dict[str, object]:
    s = row.summary
    return {
        "bench": row.bench, "subject": row.subject, "unit": row.unit,
        "higher_is_better": row.higher_is_better, "samples": list(row.samples),
        "median": s.median, "q1": s.q1, "q3": s.q3, "min": s.minimum, "max": s.maximum,
        "n": s.n, "speedup_vs": dict(row.ratios), "note": row.note,
    }
