"""A corpus of configurations (the tests' and the bench's) and the generator's output for each.

``tests/generator/golden/CASE/`` holds what the generator wrote for CASE before the generator's
performance work (issue 17), captured from commit aabc9fd: every unit file byte for byte, and
``timers.target.wants`` as ``wants.txt``. The root prefix and the ``zincati-py`` executable are
replaced by ``@ROOT@`` and ``@EXE@`` (they differ per run and per venv).
``test_generator_golden.py`` runs today's generator on each case and compares.

Regenerate only for an intended output change, and review the diff::

    .venv-3.11/bin/python -m tests.generator.corpus --update
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tests.generator.helpers import run_generator

GOLDEN = Path(__file__).parent / "golden"
SHIPPED = Path(__file__).resolve().parents[2] / "config.d"

PERIODIC = """
[identity]
rollout_wariness = 0.5
[updates]
strategy = "periodic"
[updates.periodic]
time_zone = "Europe/Berlin"
[[updates.periodic.window]]
days = ["Mon", "wednesday"]
start_time = "03:00"
length_minutes = 60
[[updates.periodic.window]]
cron = "30 4 * * 1-5"
length_minutes = 30
"""

JOBS = """
[[schedule]]
name = "backup"
cron = "H 2 * * *"
command = "tar -C /srv -cf /backup/srv.tar ."
time_zone = "UTC"
randomized_delay_secs = 30
timeout_secs = 600

[[schedule]]
name = "no-catch-up"
cron = "*/15 * * * *"
command = "true"
catch_up = false

[[schedule]]
name = "off"
cron = "0 0 * * *"
command = "true"
enabled = false
"""

QUOTING = (
    '[[schedule]]\nname = "quoting"\ncron = "@daily"\n'
    "command = '''echo \"100% $HOME\" 'a\\b' ; printf %s\\n x'''\n"
)

# bench/generator_walltime.py's realistic config.
BENCH = """
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
""" + "".join(
    f'\n[[schedule]]\nname = "job{n}"\ncron = "H {n} * * *"\ncommand = "logger job {n}"\n'
    f'time_zone = "UTC"\nrandomized_delay_secs = 60\n'
    for n in range(1, 6)
)

# Cron dialect coverage: every documented mapping as a job (the translation cache's keys).
CRONS = [
    "0 3 L * *",
    "0 0 * * L5",
    "0 0 * * 5#2",
    "0 9-17/2 * * *",
    "*/15 9-17 * * 1-5",
    "@weekly",
    "@hourly",
    "0 0 1,15 * 1",
    "0 0 15W * *",
    "0 0 30W * *",
    "0 0 31W * *",
    "0 0 * * * */20",
    "0 0 1 1 * 0 2027-2030",
    "H H * * *",
    "H/15 H(1-5) * * *",
    "0 12 * JAN-MAR MON",
]
CRON_JOBS = "".join(
    f'[[schedule]]\nname = "c{n:02d}"\ncron = "{expr}"\ncommand = "true"\n'
    + ('time_zone = "America/New_York"\n' if n % 3 == 0 else "")
    for n, expr in enumerate(CRONS)
)

# case name -> {path under the root: text}; a text of None is a symlink to /dev/null.
CASES: dict[str, dict[str, str | None]] = {
    "empty": {},
    "shipped": {f"usr/lib/zincati/config.d/{p.name}": p.read_text() for p in SHIPPED.iterdir()},
    "periodic-jobs": {
        "etc/zincati/config.d/50-periodic.toml": PERIODIC,
        "etc/zincati/config.d/60-jobs.toml": JOBS,
    },
    "check-cron": {
        "etc/zincati/config.d/50-check.toml": '[agent.timing]\ncheck_cron = "H/10 * * * *"\n',
        "etc/zincati/config.d/51-wary.toml": "[identity]\nrollout_wariness = 1.0\n",
    },
    "updates-off": {
        "etc/zincati/config.d/50-check.toml": '[agent.timing]\ncheck_cron = "H/10 * * * *"\n',
        "etc/zincati/config.d/50-periodic.toml": PERIODIC,
        "etc/zincati/config.d/52-off.toml": "[updates]\nenabled = false\n",
        "etc/zincati/config.d/60-jobs.toml": JOBS,
    },
    "broken": {
        "etc/zincati/config.d/55-broken.toml": "[updates\nstrategy = 'periodic'\n",
        "etc/zincati/config.d/60-jobs.toml": JOBS,
        "etc/zincati/config.d/70-bad-cron.toml": (
            '[[schedule]]\nname = "bad"\ncron = "61 * * * *"\ncommand = "true"\n'
        ),
    },
    "quoting": {
        "etc/zincati/config.d/50-periodic.toml": PERIODIC,
        "etc/zincati/config.d/60-jobs.toml": JOBS,
        "etc/zincati/config.d/61-quoting.toml": QUOTING,
    },
    "bench": {"etc/zincati/config.d/50-bench.toml": BENCH},
    "crons": {"etc/zincati/config.d/50-crons.toml": CRON_JOBS},
    "localtime": {
        "etc/localtime": "->../usr/share/zoneinfo/Europe/Berlin",
        "etc/zincati/config.d/50-local.toml": (
            '[updates]\nstrategy = "periodic"\n[updates.periodic]\ntime_zone = "localtime"\n'
            '[[updates.periodic.window]]\ndays = ["Sun"]\nstart_time = "4:05"\n'
            "length_minutes = 90\n"
            '[[updates.periodic.window]]\ncron = "@daily"\nlength_minutes = 60\n'
            '[[schedule]]\nname = "local"\ncron = "0 1 * * *"\ncommand = "true"\n'
            'time_zone = "localtime"\n'
        ),
    },
    "fleet-lock-steady": {
        "etc/zincati/config.d/50-fl.toml": (
            '[agent.timing]\nsteady_interval_secs = 7200\n[identity]\ngroup = "workers"\n'
            'rollout_wariness = 0.25\n[updates]\nstrategy = "fleet_lock"\n'
            '[updates.fleet_lock]\nbase_url = "http://fleetlock.example:8080/"\n'
        ),
    },
    "overrides": {
        "usr/lib/zincati/config.d/10-vendor.toml": (
            '[[schedule]]\nname = "vendor"\ncron = "0 4 * * *"\ncommand = "vendor-task --x"\n'
            '[[schedule]]\nname = "cleanup"\ncron = "0 5 * * 0"\ncommand = "cleanup"\n'
            '[updates]\nstrategy = "periodic"\n'
            '[[updates.periodic.window]]\ndays = ["Tue"]\nstart_time = "01:00"\n'
            "length_minutes = 30\n"
        ),
        "usr/lib/zincati/config.d/20-masked.toml": "[updates]\nenabled = false\n",
        "run/zincati/config.d/20-masked.toml": None,
        "etc/zincati/config.d/10-vendor.toml": (
            '[[schedule]]\nname = "vendor"\ncron = "30 4 * * *"\ncommand = "vendor-task --y"\n'
            "catch_up = false\ntimeout_secs = 30\n"
        ),
        "etc/zincati/config.d/90-admin.toml": (
            '[[schedule]]\nname = "vendor"\nrandomized_delay_secs = 5\n'
            '[updates.periodic]\ntime_zone = "Asia/Kolkata"\n'
        ),
    },
    "odd-names": {
        "etc/zincati/config.d/50 100% é.toml": (
            '[[schedule]]\nname = "pct"\ncron = "0 2 * * *"\n'
            "command = 'date +%F > /tmp/x; echo $((1+1)) \"q\"'\n"
        ),
    },
    "invalid-strategy": {
        "etc/zincati/config.d/50-bad.toml": (
            '[updates]\nstrategy = "periodc"\n[agent.timing]\nsteady_interval_secs = 0\n'
        ),
        "etc/zincati/config.d/60-jobs.toml": JOBS,
    },
    "periodic-no-window": {
        "etc/zincati/config.d/50-p.toml": '[updates]\nstrategy = ["periodic", "fleet_lock"]\n',
    },
}


def build(case: str, root: Path) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    for rel, text in CASES[case].items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            path.symlink_to("/dev/null")
        elif text.startswith("->"):
            path.symlink_to(text[2:])
        else:
            path.write_text(text)


def generate(case: str, work: Path) -> dict[str, bytes]:
    """Run the generator on ``case``: normalized file name -> bytes (``wants.txt`` included)."""
    root, out = work / "root", work / "out"
    build(case, root)
    return output(root, out)


def output(root: Path, out: Path, *env: tuple[str, str]) -> dict[str, bytes]:
    """Run the generator on ``root`` into ``out``: its normalized output (``wants.txt``, and
    ``stderr.txt`` for what it logged, import-time lines left out)."""
    proc = run_generator(root, out, *env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    files = normalized(root, out)
    logged = [line for line in proc.stderr.splitlines(True) if not line.startswith("import time")]
    files["stderr.txt"] = "".join(logged).replace(str(root), "@ROOT@").encode()
    return files


def normalized(root: Path, out: Path) -> dict[str, bytes]:
    exe = Path(sys.executable).parent / "zincati-py"
    files: dict[str, bytes] = {}
    for path in sorted(out.iterdir()):
        if path.is_file():
            text = path.read_text().replace(str(exe), "@EXE@").replace(str(root), "@ROOT@")
            files[path.name] = text.encode()
    wants = out / "timers.target.wants"
    links = sorted(f"{p.name} -> {p.readlink()}" for p in wants.iterdir()) if wants.exists() else []
    files["wants.txt"] = "".join(f"{line}\n" for line in links).encode()
    return files


def golden(case: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((GOLDEN / case).iterdir())}


def main() -> int:
    parser = argparse.ArgumentParser(description="(re)write tests/generator/golden")
    parser.add_argument("--update", action="store_true", required=True)
    parser.parse_args()
    shutil.rmtree(GOLDEN, ignore_errors=True)
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            files = generate(case, Path(tmp))
            del files["stderr.txt"]
        (GOLDEN / case).mkdir(parents=True)
        for name, data in files.items():
            (GOLDEN / case / name).write_bytes(data)
        print(f"{case}: {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
