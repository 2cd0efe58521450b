"""Benchmark cron -> OnCalendar translation and the import cost of zincati_py.schedule.

    .venv-3.11/bin/python bench/schedule_translate.py [--seconds 0.5] [--imports 15]

Translations/s includes croniter's parse (already imported). The import time is the median
of ``-X importtime`` over fresh interpreters with bytecode cached in a private
PYCACHEPREFIX, as an installed package would have it (the dev env sets
PYTHONDONTWRITEBYTECODE, which would otherwise charge compilation to every import).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from zincati_py.schedule import translate

EXPRESSIONS = [
    "*/15 9-17 * * 1-5",
    "0 3 * * *",
    "@weekly",
    "0 0 1,15 * 1",
    "0 3 L * *",
    "0 0 * * L5",
    "0 0 * * 5#2",
    "0 0 15W * *",
    "0 0 30W * *",
    "H H * * *",
    "0 0 * * * */15",
]


def translations_per_second(expr: str, seconds: float) -> float:
    count = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        translate(expr, tz="Europe/Berlin", hash_id="0123456789abcdef")
        count += 1
    return count / (time.perf_counter() - start)


def import_ms(module: str, runs: int, cache: str) -> float:
    env = {**os.environ, "PYTHONPYCACHEPREFIX": cache}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cmd = [sys.executable, "-X", "importtime", "-c", f"import {module}"]
    subprocess.run(cmd, env=env, capture_output=True, check=True)  # warm the bytecode cache
    samples = []
    for _ in range(runs):
        err = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
        # "import time: self | cumulative | name": the module's own line carries the total
        line = next(x for x in err.splitlines() if re.search(rf"\|\s+{re.escape(module)}$", x))
        samples.append(int(line.split("|")[1]) / 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per expression")
    parser.add_argument("--imports", type=int, default=15, help="interpreters per import")
    args = parser.parse_args()

    print(f"{'expression':<22} {'lines':>5} {'translations/s':>15}")
    for expr in EXPRESSIONS:
        lines = translate(expr, tz="Europe/Berlin", hash_id="0123456789abcdef")
        rate = translations_per_second(expr, args.seconds)
        print(f"{expr:<22} {len(lines):>5} {rate:>15,.0f}")

    with tempfile.TemporaryDirectory(prefix="schedule-bench-") as cache:
        print()
        print(f"{'import (median of ' + str(args.imports) + ')':<28} {'ms':>8}")
        for module in ("zincati_py.schedule", "croniter"):
            print(f"{module:<28} {import_ms(module, args.imports, cache):>8.2f}")


if __name__ == "__main__":
    main()
