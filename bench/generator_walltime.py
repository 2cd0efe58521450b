"""Generator wall time against a bare interpreter (the generator runs on every boot and reload).

Runs, N times each and alternating so drift hits both alike:
- ``python -c pass`` (the floor: interpreter start-up, site, the venv's .pth files);
- ``zincati-py-generator`` on the default config (no fragments: only the check timer);
- ``zincati-py-generator`` on a realistic config (periodic windows with a cron window,
  ``check_cron``, five ``[[schedule]]`` jobs: croniter is imported).

    .venv-3.11/bin/python bench/generator_walltime.py [--runs 30]

Prints a markdown table of median / p90 wall times and the generator's cost over the floor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed.proc import venv_script

GENERATOR = venv_script("zincati-py-generator")

REALISTIC = """
[agent.timing]
check_cron = "H/5 * * * *"
[identity]
rollout_wariness = 0.3
[updates]
strategy = "periodic"
[updates.periodic]
time_zone = "Europe/Berlin"
[[updates.periodic.window]]
days = ["Sat", "Sun"]
start_time = "22:30"
length_minutes = 120
[[updates.periodic.window]]
cron = "0 3 * * 1-5"
length_minutes = 30
"""

JOB = """
[[schedule]]
name = "job{n}"
cron = "H {n} * * *"
command = "logger job {n}"
time_zone = "UTC"
randomized_delay_secs = 60
"""


def _root(base: Path, name: str, text: str) -> Path:
    root = base / name
    config = root / "etc" / "zincati" / "config.d"
    config.mkdir(parents=True)
    (root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    if text:
        (config / "50-bench.toml").write_text(text)
    return root


def _once(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="zpy-genbench-"))
    try:
        realistic = REALISTIC + "".join(JOB.format(n=n) for n in range(1, 6))
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], dict(os.environ)),
        }
        for name, text in (("default config", ""), ("realistic config", realistic)):
            root = _root(base, name.replace(" ", "-"), text)
            out = base / f"out-{root.name}"
            out.mkdir()
            env = {**os.environ, "ZINCATI_PY_ROOT": str(root)}
            cases[f"generator, {name}"] = ([str(GENERATOR), str(out), str(out), str(out)], env)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for cmd, env in cases.values():  # warm the page cache once
            _once(cmd, env)
        for _ in range(max(1, args.runs)):
            for name, (cmd, env) in cases.items():
                times[name].append(_once(cmd, env))
        floor = statistics.median(times["python -c pass"])
        print(f"{args.runs} runs each, {sys.version.split()[0]} ({sys.executable})\n")
        print("| what | median ms | p90 ms | over bare python ms |")
        print("| --- | ---: | ---: | ---: |")
        for name, samples in times.items():
            med = statistics.median(samples)
            p90 = statistics.quantiles(samples, n=10)[-1] if len(samples) > 1 else med
            print(f"| {name} | {med * 1e3:.1f} | {p90 * 1e3:.1f} | {(med - floor) * 1e3:+.1f} |")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
