"""The generator's output stays byte-identical for the corpus (tests/generator/corpus.py),
computed or replayed from its memo (zincati_py.generator_cache)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.generator.corpus import CASES, build, generate, golden, output


def _assert_golden(case: str, got: dict[str, bytes]) -> None:
    expected = golden(case)
    assert sorted(got) == sorted(expected)
    for name, data in expected.items():
        assert got[name].decode() == data.decode(), name


@pytest.mark.parametrize("case", list(CASES))
def test_output_matches_the_golden_copy(case: str, tmp_path: Path) -> None:
    got = generate(case, tmp_path)
    del got["stderr.txt"]
    _assert_golden(case, got)


@pytest.mark.parametrize("case", list(CASES))
def test_a_replayed_run_is_the_same_run(case: str, tmp_path: Path) -> None:
    """With ROOT/run (a booted system), the second run replays the first: the same units and
    the same lines logged, without loading the configuration."""
    root = tmp_path / "root"
    build(case, root)
    (root / "run").mkdir(exist_ok=True)
    first = output(root, tmp_path / "out1", ("PYTHONPROFILEIMPORTTIME", "1"))
    assert (root / "run/zincati-py-generator/cache").is_file()
    second = output(root, tmp_path / "out2", ("PYTHONPROFILEIMPORTTIME", "1"))
    assert second == first
    logged = second.pop("stderr.txt")
    del first["stderr.txt"]
    _assert_golden(case, second)
    assert b"Traceback" not in logged
    # The replay imported none of what computing needs (PYTHONPROFILEIMPORTTIME lists them).
    proc_imports = _imports(root, tmp_path / "out3")
    assert "zincati_py.generator" in proc_imports
    for module in ("zincati_py.config", "tomllib", "croniter", "zoneinfo", "dataclasses"):
        assert module not in proc_imports, module


def _imports(root: Path, out: Path) -> set[str]:
    from tests.generator.helpers import run_generator

    proc = run_generator(root, out, ("PYTHONPROFILEIMPORTTIME", "1"))
    assert proc.returncode == 0
    return {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
