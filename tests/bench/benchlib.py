"""Shared pieces of the benchmark sections: environment, timing, tables."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Env:
    binary: str
    corpora: Path
    work: Path
    quick: bool

    @classmethod
    def from_environment(cls, quick: bool) -> Env:
        work = Path(os.environ.get("LOADERD_BENCH_DIR", REPO / "tests" / "bench" / "out"))
        work.mkdir(parents=True, exist_ok=True)
        return cls(
            binary=os.environ.get("LOADERD_BIN", str(REPO / "bin" / "loaderd")),
            corpora=Path(os.environ.get("LOADERD_CORPORA", REPO.parent / "shared" / "corpora")),
            work=work,
            quick=quick,
        )


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def print_table(t: Table) -> None:
    print(f"## {t.title}\n")
    cells = [[_fmt(c) for c in r] for r in t.rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(t.columns)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(t.columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    for n in t.notes:
        print(f"\n{n}")
    print()


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if v >= 100:
            return f"{v:,.0f}"
        if v >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(v)


def best_of(n: int, fn: Callable[[], int]) -> tuple[float, int]:
    """Run fn n times; return the best wall time and fn's last result."""
    times, out = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def median_of(n: int, fn: Callable[[], int]) -> tuple[float, int]:
    times, out = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
