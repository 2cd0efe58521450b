"""The real-host tier lays files out with the RPM spec's own %install and %files (fast tier:
pure text processing, no container)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.realhost.install import SpecError, spec_file_attrs, spec_install_commands

SPEC = (Path(__file__).resolve().parents[2] / "packaging/zincati-py.spec").read_text()


def test_install_section_expands_to_fedora_paths() -> None:
    cmds = spec_install_commands(SPEC, Path("/B"), {"SOURCE1": "/src/zincati-py.sysusers"})
    text = "\n".join(cmds)
    assert "%" not in text.replace("%%", "")
    for path in (
        "/B/usr/lib/systemd/system/",
        "/B/usr/lib/systemd/system-generators/zincati-py-generator",
        "/B/usr/lib/sysusers.d/zincati-py.conf",
        "/B/usr/lib/tmpfiles.d/zincati-py.conf",
        "/B/usr/share/polkit-1/rules.d/zincati-py.rules",
        "/B/usr/share/dbus-1/system.d/io.github.zincatipy.Agent1.conf",
        "/B/etc/zincati-py/fleetlock.toml",
    ):
        assert path in text, path
    # pip stands for the Python macros; nothing else is dropped.
    assert not any("pyproject" in c for c in cmds)


def test_unknown_macro_is_an_error_not_a_guess() -> None:
    spec = "%install\ninstall -m 0644 x %{buildroot}%{_libexecdir}/x\n%files\n"
    with pytest.raises(SpecError, match="_libexecdir"):
        spec_install_commands(spec, Path("/B"), {})


def test_files_attrs_are_read() -> None:
    attrs = spec_file_attrs(SPEC)
    assert ("0640", "root", "zincati-py-fleetlock", "/etc/zincati-py/fleetlock.toml") in attrs
    spec = "%files -f x\n%attr(0750,root,adm) %dir %{_sysconfdir}/d\n%changelog\n"
    assert spec_file_attrs(spec) == [("0750", "root", "adm", "/etc/d")]
