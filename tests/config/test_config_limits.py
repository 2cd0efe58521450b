"""Issue 11 items 9 and 10: hostile or mistaken fragments cost one error, never the rest.

A deeply nested fragment used to raise RecursionError (``config check`` printed a traceback,
the generator wrote no unit at all); a huge fragment took seconds to parse at boot.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from tests.config.conftest import Tree
from tests.generator.helpers import run_generator
from tests.helpers import zpy
from zincati_py.config.fragments import MAX_FRAGMENT_BYTES

run = functools.partial(zpy, unset=("ZINCATI_PY_ROOT",))
JOB = '[[schedule]]\nname = "job"\ncron = "0 3 * * *"\ncommand = "true"\n'
NESTED = "a = " + "[" * 5000 + "]" * 5000 + "\n"


def test_nested_fragment_is_one_error(tree: Tree) -> None:
    nested = tree.write("etc", "50-nested.toml", NESTED)
    tree.write("etc", "60-job.toml", JOB)
    result = tree.load()
    assert [(p.severity, p.file, p.key) for p in result.errors] == [("error", nested, "")]
    assert "nested too deeply" in result.errors[0].message
    assert [j.name for j in result.config.schedules] == ["job"]

    proc = run("config", "check", "--root", str(tree.root))
    assert proc.returncode == os.EX_DATAERR
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"zincati-py: {nested}: invalid TOML, file ignored: nested too deeply")


def test_nested_inline_tables_too(tree: Tree) -> None:
    path = tree.write("etc", "50-nested.toml", "a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n")
    (error,) = tree.load().errors
    assert error.file == path and "nested too deeply" in error.message


def test_generator_keeps_the_update_timer_and_valid_jobs(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "root")
    tree.write("etc", "50-nested.toml", NESTED)
    tree.write("etc", "60-job.toml", JOB)
    out = tmp_path / "out"
    proc = run_generator(tree.root, out)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert "50-nested.toml: invalid TOML, file ignored: nested too deeply" in proc.stderr
    assert sorted(p.name for p in out.glob("*.timer")) == [
        "zincati-py-check.timer",
        "zincati-py-schedule-job.timer",
    ]


def test_oversized_fragment_is_refused_quickly(tree: Tree) -> None:
    # Valid TOML, so only its size can be the reason.
    big = tree.write("etc", "50-big.toml", "# padding\n" * (MAX_FRAGMENT_BYTES // 10 + 1))
    tree.write("etc", "60-job.toml", JOB)
    start = time.monotonic()
    result = tree.load()
    assert time.monotonic() - start < 5
    (error,) = result.errors
    assert (error.file, error.key) == (big, "")
    assert error.message == f"larger than {MAX_FRAGMENT_BYTES // 1024} KiB, file ignored"
    assert [j.name for j in result.config.schedules] == ["job"]
    # Exactly at the limit is read.
    big.write_text("#" * (MAX_FRAGMENT_BYTES - 1) + "\n")
    assert tree.load().errors == ()
