"""`zincati-py demo` is the product's only door to the test bed: without the test bed installed
(an admin's host, the RPM) it says so in one line and exits 69, never a traceback."""

from __future__ import annotations

import os
import sys

import pytest

from zincati_py.cli import main


def test_demo_without_the_test_bed_is_one_line_exit_69(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules: `import testbed...` raises ImportError, as when it is not installed.
    for name in [m for m in sys.modules if m == "testbed" or m.startswith("testbed.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "testbed", None)
    assert main(["demo", "--fast"]) == os.EX_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "the test bed is not installed" in lines[0]
    assert "testbed/demo.sh" in lines[0]
    assert "Traceback" not in err
