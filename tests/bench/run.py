"""`make bench`: every benchmark section, side by side with its peer, as tables.

Each ``bench_*.py`` module here defines ``run(env) -> list[Table]``. Run all of
them, or name some: ``python tests/bench/run.py parquet``. Figures depend on
the machine: compare only numbers printed by one run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Env, print_table


def main() -> int:
    here = Path(__file__).resolve().parent
    names = sorted(p.stem.removeprefix("bench_") for p in here.glob("bench_*.py"))
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("sections", nargs="*", help=f"some of {names} (default: all)")
    ap.add_argument("--quick", action="store_true", help="smaller datasets, for a smoke run")
    args = ap.parse_args()
    chosen = args.sections or names
    unknown = set(chosen) - set(names)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; have {names}")
    env = Env.from_environment(quick=args.quick)
    print(f"# loaderd bench — {platform.node()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"# binary {env.binary}; work dir {env.work}; {'quick' if args.quick else 'full'} sizes\n")
    for name in chosen:
        mod = importlib.import_module(f"bench_{name}")
        t0 = time.perf_counter()
        for table in mod.run(env):
            print_table(table)
        print(f"_({name}: {time.perf_counter() - t0:.0f}s)_\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
