"""The generator's output stays byte-identical for the corpus (tests/generator/corpus.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.generator.corpus import CASES, generate, golden


@pytest.mark.parametrize("case", list(CASES))
def test_output_matches_the_golden_copy(case: str, tmp_path: Path) -> None:
    expected = golden(case)
    got = generate(case, tmp_path)
    assert sorted(got) == sorted(expected)
    for name, data in expected.items():
        assert got[name].decode() == data.decode(), name
