"""Generator wall time against a bare interpreter (the generator runs on every boot and reload).

Each round runs, back to back (so load on the machine hits the pair alike), the floor
``python -I -c pass`` (the same interpreter as the generator's: start-up, site, the venv's .pth
files) and then the generator on:

- the default config (no fragments: only the check timer);
- a realistic config: ``check_cron``, a periodic day window and a cron window, five
  ``[[schedule]]`` jobs (croniter is needed when the inputs changed);
- the realistic config with its inputs changed before every run (a boot after a configuration
  change: the units are computed; the cron translations of earlier runs are reused);
- the realistic config without any memo (first boot: everything computed, croniter imported).

Roots and output directories live on tmpfs (``/dev/shm``) when there is one, as systemd's
generator directories and ``/run`` do on a booted system. Every run is a boot: ``ROOT/run`` is
emptied first, and the memo the previous boot left in ``ROOT/var/cache`` is read (a warm-up
run fills it). The first two cases are what a boot with unchanged fragments costs: the
generator replays its last run (``zincati_py.generator_cache``).
Prints, per case, the wall time (median ms) and the paired ratio generator / floor
(min / median / max over the rounds), with the issue 17 targets.

    .venv-3.11/bin/python bench/generator_walltime.py [--runs 30]
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

# case -> target ratio (None: no target, shown for information)
TARGETS = {
    "default config": 1.3,
    "realistic config": 1.5,
    "realistic config, inputs changed": None,
    "realistic config, first boot": None,
}


def _root(base: Path, name: str, text: str) -> Path:
    root = base / name
    config = root / "etc" / "zincati" / "config.d"
    config.mkdir(parents=True)
    (root / "run").mkdir()  # as on a booted system: where the generator keeps its memo
    (root / "var" / "cache").mkdir(parents=True)
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
    # On tmpfs when there is one, as on a booted system: systemd's generator output
    # directories and /run (the generator's memo) are tmpfs.
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    base = Path(tempfile.mkdtemp(prefix="zpy-genbench-", dir=shm))
    try:
        realistic = REALISTIC + "".join(JOB.format(n=n) for n in range(1, 6))
        floor_cmd = [sys.executable, "-I", "-c", "pass"]
        cases: dict[str, tuple[list[str], dict[str, str], Path]] = {}
        for name, text in (
            ("default config", ""),
            ("realistic config", realistic),
            ("realistic config, inputs changed", realistic),
            ("realistic config, first boot", realistic),
        ):
            root = _root(base, name.replace(" ", "-").replace(",", ""), text)
            out = base / f"out-{root.name}"
            out.mkdir()
            env = {**os.environ, "ZINCATI_PY_ROOT": str(root)}
            env.pop("SYSTEMD_SCOPE", None)
            cases[name] = ([str(GENERATOR), str(out), str(out), str(out)], env, root)
        for cmd, env, _ in cases.values():  # warm the page cache and the generator's memo
            _once(cmd, env)
        _once(floor_cmd, dict(os.environ))
        floor: list[float] = []
        times: dict[str, list[float]] = {name: [] for name in cases}
        ratios: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(max(1, args.runs)):
            f = _once(floor_cmd, dict(os.environ))
            floor.append(f)
            for name, (cmd, env, root) in cases.items():
                if "changed" in name:  # a new input: the memo does not match
                    fragment = root / "etc" / "zincati" / "config.d" / "50-bench.toml"
                    fragment.write_text(fragment.read_text() + "#\n")
                # A boot: /run is empty (the memo of the last boot is in /var/cache).
                shutil.rmtree(root / "run" / "zincati-py-generator", ignore_errors=True)
                if "first boot" in name:
                    (root / "var/cache/zincati-py-generator/cache").unlink(missing_ok=True)
                t = _once(cmd, env)
                times[name].append(t)
                ratios[name].append(t / f)
        print(f"{args.runs} paired rounds, Python {sys.version.split()[0]} ({sys.executable})")
        print(f"floor `python -I -c pass`: median {statistics.median(floor) * 1e3:.1f} ms\n")
        print("| generator on | median ms | ratio min | ratio median | ratio max | target |")
        print("| --- | ---: | ---: | ---: | ---: | --- |")
        for name, samples in times.items():
            r = ratios[name]
            target = TARGETS[name]
            verdict = (
                "-"
                if target is None
                else f"<= {target}x: {'met' if statistics.median(r) <= target else 'NOT met'}"
            )
            print(
                f"| {name} | {statistics.median(samples) * 1e3:.1f} | {min(r):.2f} | "
                f"{statistics.median(r):.2f} | {max(r):.2f} | {verdict} |"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
