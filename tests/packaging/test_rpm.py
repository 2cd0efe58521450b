"""The RPM built from this tree: file layout, scriptlets, dependencies, rpmlint, and what the
installed files do in a scratch root (users, directories, unit verification, the generator
on the default fragments)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SPEC = REPO / "packaging" / "zincati-py.spec"
TOOLS = ("rpm", "rpmbuild", "rpmlint", "systemd-analyze", "systemd-sysusers", "systemd-tmpfiles")
# The full tier (tests/conftest.py): rpmbuild/rpmlint and systemd's tools on the result.
pytestmark = [pytest.mark.rpm, pytest.mark.systemd]


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on failure raise with its output so the test report shows why."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr}"
        )
    return proc


@dataclass(frozen=True)
class Built:
    rpm: Path
    srpm: Path
    log: str


@dataclass(frozen=True)
class Installed:
    root: Path
    sitelib: Path


def python_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, f"packaging tests need {missing} (apt-get install rpm rpmlint systemd)"
    # The wheel is built without network against this interpreter's setuptools, as Fedora
    # builds against python3-setuptools; pyproject's `license = "Apache-2.0"` (PEP 639) needs
    # setuptools >= 77.
    setuptools = importlib.metadata.version("setuptools")
    assert int(setuptools.split(".")[0]) >= 77, (
        f"{sys.executable} has setuptools {setuptools}; building the wheel from pyproject.toml "
        "needs setuptools>=77 (pip install 'setuptools>=77')"
    )
    out = tmp_path_factory.mktemp("rpms")
    proc = run(
        [
            "bash",
            str(REPO / "packaging" / "build-rpm.sh"),
            "-o",
            str(out),
            "--nodeps",
            "--load",
            str(HERE / "fedora.macros"),
            "--define",
            f"python3 {sys.executable}",
            "--define",
            f"_fedora_macros_helper {HERE / 'rpm_macros_helper.py'}",
        ],
        cwd=REPO,
    )
    rpms = sorted(out.glob("zincati-py-*.noarch.rpm"))
    srpms = sorted(out.glob("zincati-py-*.src.rpm"))
    assert len(rpms) == 1 and len(srpms) == 1, (rpms, srpms, proc.stdout[-2000:])
    return Built(rpm=rpms[0], srpm=srpms[0], log=proc.stdout + proc.stderr)


@pytest.fixture(scope="session")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The RPM unpacked into a scratch root by rpm itself (scriptlets are replayed by tests).

    ``--noscripts``: the scriptlets call useradd/systemd-tmpfiles/systemctl inside the root,
    which has none of them; test_rpm runs systemd-sysusers/-tmpfiles with ``--root`` instead.
    """
    root = tmp_path_factory.mktemp("root")
    run(["rpm", "-i", "--root", str(root), "--nodeps", "--noscripts", str(built.rpm)])
    sitelib = root / "usr" / "lib" / f"python{python_version()}" / "site-packages"
    assert sitelib.is_dir(), f"no {sitelib} in the installed root"
    return Installed(root=root, sitelib=sitelib)


UNITDIR = "/usr/lib/systemd/system"
CONFIG_DIR = "/usr/lib/zincati/config.d"
UNITS = ("zincati-py.service", "zincati-py-fleetlock.service", "zincati-py-finalize.service")


def sitelib() -> str:
    return f"/usr/lib/python{python_version()}/site-packages"


def query(built: Built, *args: str) -> str:
    return run(["rpm", "-qp", *args, str(built.rpm)]).stdout


def test_spec_version_matches_the_python_package() -> None:
    spec_version = re.search(r"^Version:\s*(\S+)$", SPEC.read_text(), re.M)
    assert spec_version is not None
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert spec_version.group(1) == project["version"]


def test_files_land_where_fedora_expects_them(built: Built) -> None:
    files = set(query(built, "-l").split())
    shipped_fragments = sorted(p.name for p in (REPO / "config.d").glob("*.toml"))
    assert shipped_fragments, "config.d/ ships no default fragments"
    expected = {
        "/usr/bin/zincati-py",
        "/usr/bin/zincati-py-generator",
        "/usr/lib/systemd/system-generators/zincati-py-generator",
        *(f"{UNITDIR}/{unit}" for unit in UNITS),
        *(f"{CONFIG_DIR}/{name}" for name in shipped_fragments),
        "/usr/lib/sysusers.d/zincati-py.conf",
        "/usr/lib/tmpfiles.d/zincati-py.conf",
        "/usr/share/polkit-1/rules.d/zincati-py.rules",
        "/usr/share/polkit-1/actions/io.github.zincatipy.policy",
        "/usr/share/dbus-1/system.d/io.github.zincatipy.Agent1.conf",
        "/etc/zincati-py/fleetlock.toml",
        f"{sitelib()}/zincati_py/__init__.py",
        f"{sitelib()}/zincati_py/cli/__init__.py",
        f"{sitelib()}/zincati_py-{_version()}.dist-info/METADATA",
    }
    assert expected <= files, f"missing: {sorted(expected - files)}"
    # Nothing outside the FHS places a Fedora package may use, and nothing from the build tree.
    allowed = ("/usr/bin/", "/usr/lib/", "/usr/share/", "/etc/zincati-py")
    assert [f for f in files if not f.startswith(allowed)] == []
    config = set(query(built, "--configfiles").split())
    assert config == {"/etc/zincati-py/fleetlock.toml"}
    assert not any("BUILDROOT" in f or "/tmp/" in f or ".venv" in f for f in files)
    # Every file of the package tree is shipped (pip installed nothing we do not list).
    modules = {
        f"{sitelib()}/{p.relative_to(REPO)}" for p in (REPO / "zincati_py").rglob("*.py")
    } & _tracked(REPO)
    assert modules <= files, f"python modules missing: {sorted(modules - files)[:5]}"


def _version() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return str(project["version"])


def _tracked(repo: Path) -> set[str]:
    """The python files build-rpm.sh packs (git-known, not ignored), in installed form."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "zincati_py"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {f"{sitelib()}/{f}" for f in out if f.endswith(".py") and (repo / f).is_file()}


def test_main_package_ships_no_test_double(built: Built, installed: Installed) -> None:
    """The test bed (doubles, harnesses, the demo fleet) is its own distribution: the main
    package lists none of it, under any name: no testbed/sandbox path, no python package but
    zincati_py, no file with a test bed module's content, no double's class or dbusmock."""
    files = query(built, "-l").split()
    assert files
    assert [f for f in files if re.search(r"testbed|sandbox|/tests?/|conftest", f)] == []
    top = {f.removeprefix(sitelib() + "/").split("/")[0] for f in files if f.startswith(sitelib())}
    assert top == {"zincati_py", f"zincati_py-{_version()}.dist-info"}
    testbed = {p.read_bytes() for p in (REPO / "testbed").rglob("*.py") if p.stat().st_size}
    assert testbed, "no test bed modules found to compare with"
    shipped = [installed.root / f.lstrip("/") for f in files if f.endswith(".py")]
    assert shipped
    copies = [str(p) for p in shipped if p.is_file() and p.read_bytes() in testbed]
    assert copies == [], "test bed modules in the main package"
    doubles = re.compile(rb"^\s*class \w*(Double|Harness)\b|^\s*(import|from) dbusmock\b", re.M)
    found = [str(p) for p in shipped if p.is_file() and doubles.search(p.read_bytes())]
    assert found == [], "test doubles in the main package"


def test_installed_fleetlock_config_is_valid_and_uses_the_state_directory(
    installed: Installed,
) -> None:
    unit = (installed.root / UNITDIR.lstrip("/") / "zincati-py-fleetlock.service").read_text()
    assert "--config /etc/zincati-py/fleetlock.toml" in unit
    assert "StateDirectory=zincati-py-fleetlock" in unit
    proc = run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from zincati_py.fleetlock.config import load; "
            "print(load(Path(sys.argv[1])).backend)",
            str(installed.root / "etc/zincati-py/fleetlock.toml"),
        ],
        cwd=installed.root,
    )
    # The only place the unit's sandbox lets the server write.
    assert proc.stdout.strip() == "sqlite:/var/lib/zincati-py-fleetlock/locks.db"


def test_generator_link_points_at_the_console_script(built: Built) -> None:
    dump = query(built, "--dump")
    line = next(e for e in dump.splitlines() if e.startswith("/usr/lib/systemd/system-generators/"))
    # --dump: path size mtime digest mode owner group isconfig isdoc rdev symlink
    assert line.split()[-1] == "../../../bin/zincati-py-generator"
    assert os.path.normpath("/usr/lib/systemd/system-generators/../../../bin") == "/usr/bin"


def test_console_scripts_use_the_system_python(installed: Installed) -> None:
    for name in ("zincati-py", "zincati-py-generator"):
        first = (installed.root / "usr/bin" / name).read_text().splitlines()[0]
        assert first == "#!/usr/bin/python3 -sP", (name, first)


def test_scriptlets_are_the_systemd_macro_expansions(built: Built) -> None:
    scripts = query(built, "--scripts")
    sections = dict(
        re.findall(
            r"^(\w+) scriptlet \(using /bin/sh\):\n(.*?)(?=^\w+ scriptlet|\Z)", scripts, re.M | re.S
        )
    )
    assert set(sections) == {"preinstall", "postinstall", "preuninstall", "postuninstall"}
    units = "zincati-py.service zincati-py-fleetlock.service"
    helper = "/usr/lib/systemd/systemd-update-helper"
    assert f"{helper} install-system-units {units}" in sections["postinstall"]
    assert "if [ $1 -eq 1 ]" in sections["postinstall"]
    assert f"{helper} remove-system-units {units}" in sections["preuninstall"]
    assert "if [ $1 -eq 0 ]" in sections["preuninstall"]
    assert f"{helper} mark-restart-system-units {units}" in sections["postuninstall"]
    assert "if [ $1 -ge 1 ]" in sections["postuninstall"]
    assert "systemd-tmpfiles --create zincati-py.conf" in sections["postinstall"]
    for user in ("zincati-py", "zincati-py-fleetlock"):
        assert f"groupadd -r {user}" in sections["preinstall"]
        assert re.search(
            rf"useradd -r -g {user} -d /var/lib/{user} .* {user} ", sections["preinstall"]
        )
    # Every scriptlet is valid shell.
    for body in sections.values():
        run(["sh", "-n", "-c", body])


def test_dependencies(built: Built) -> None:
    requires = query(built, "--requires")
    pyver = python_version()
    # Generated from the wheel metadata, as Fedora's dependency generator does.
    for dist in ("dbus-fast", "pystemd", "croniter", "tomli-w", "pyinotify", "aiohttp", "httpx"):
        assert f"python{pyver}dist({dist})" in requires, dist
    assert f"python{pyver}dist(prometheus-client)" in requires
    for pkg in ("rpm-ostree", "ostree", "polkit", "dbus-common"):
        assert re.search(rf"^{re.escape(pkg)}$", requires, re.M), pkg
    assert query(built, "--conflicts").split() == ["zincati"]
    assert query(built, "--qf", "%{ARCH}").strip() == "noarch"


def test_rpmlint_reports_no_errors(built: Built) -> None:
    proc = subprocess.run(
        [
            "rpmlint",
            "-r",
            str(REPO / "packaging" / "zincati-py.rpmlintrc"),
            str(SPEC),
            str(built.srpm),
            str(built.rpm),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = re.search(r"(\d+) errors, (\d+) warnings", proc.stdout)
    assert summary is not None, proc.stdout + proc.stderr
    assert summary.group(1) == "0", proc.stdout
    # The warnings left are the ones the spec explains.
    warnings = set(re.findall(r": W: (\S+)", proc.stdout))
    assert warnings <= {"no-manual-page-for-binary", "no-documentation"}, proc.stdout
    assert "Warnings that remain" in SPEC.read_text()


def test_sysusers_and_tmpfiles_create_users_and_directories(installed: Installed) -> None:
    root = installed.root
    (root / "etc").mkdir(exist_ok=True)
    run(["systemd-sysusers", f"--root={root}"])
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    for user in ("zincati-py", "zincati-py-fleetlock"):
        assert user in passwd, (root / "etc/passwd").read_text()
        uid = int(passwd[user][2])
        assert 0 < uid < 1000, f"{user} is not a system user: {uid}"
        assert passwd[user][5] == f"/var/lib/{user}"
    run(["systemd-tmpfiles", "--create", f"--root={root}", "zincati-py.conf"])
    uid_of = {"root": 0} | {name: int(fields[2]) for name, fields in passwd.items()}
    expect = {
        "run/zincati-py": ("zincati-py", 0o755),
        "run/zincati-py/public": ("zincati-py", 0o755),
        "var/lib/zincati-py": ("zincati-py", 0o750),
        "etc/zincati/config.d": ("root", 0o755),
        "run/zincati/config.d": ("root", 0o755),
        "etc/zincati-py": ("root", 0o755),
        "var/lib/zincati-py-fleetlock": ("zincati-py-fleetlock", 0o750),
    }
    for rel, (owner, mode) in expect.items():
        st = (root / rel).stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (uid_of[owner], mode), rel
    # pam_motd's directory: the agent (group zincati-py) writes its dead-end/rollback MOTDs.
    st = (root / "run/motd.d").stat()
    agent_gid = int(passwd["zincati-py"][3])
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, agent_gid, 0o775)


def test_installed_units_pass_systemd_analyze_verify(installed: Installed) -> None:
    root = _verify_root(installed)
    proc = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *UNITS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys and only warns: any output is a finding.
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def _verify_root(installed: Installed) -> Path:
    """The installed root, plus what the host's systemd package provides on a real system.

    ``systemd-analyze verify --root`` loads every unit from the root, so the targets the units
    order against (boot-complete.target, sysinit.target, ...) come from the host's systemd.
    /usr/bin/ostree belongs to the ostree package (a Requires: of ours), absent on Debian: a
    stand-in executable makes verify check our ExecStart= line, not the host's packages.
    """
    root = installed.root
    unitdir = root / UNITDIR.lstrip("/")
    for host_dir in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if host_dir.is_dir():
            for unit in host_dir.iterdir():
                target = unitdir / unit.name
                if not target.exists() and not target.is_symlink():
                    if unit.is_dir():
                        shutil.copytree(unit, target, symlinks=True)
                    else:
                        shutil.copy2(unit, target, follow_symlinks=False)
            break
    ostree = root / "usr/bin/ostree"
    if not ostree.exists():
        ostree.write_text("#!/bin/sh\nexit 0\n")
        ostree.chmod(0o755)
    return root


def _run_generator(installed: Installed, out: Path) -> subprocess.CompletedProcess[str]:
    normal, early, late = (out / d for d in ("normal", "early", "late"))
    for d in (normal, early, late):
        d.mkdir(parents=True)
    env = dict(os.environ)
    env["ZINCATI_PY_ROOT"] = str(installed.root)
    env["PYTHONPATH"] = str(installed.sitelib)
    generator = installed.root / "usr/lib/systemd/system-generators/zincati-py-generator"
    # The installed script's shebang is Fedora's /usr/bin/python3; run it with this
    # interpreter, which has the runtime dependencies, and the installed package first on
    # sys.path (cwd elsewhere than the work tree, which `-c` would put first).
    where = subprocess.run(
        [sys.executable, "-c", "import zincati_py.generator as g; print(g.__file__)"],
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.sitelib), where.stdout
    return subprocess.run(
        [sys.executable, str(generator), str(normal), str(early), str(late)],
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _timespan_usec(value: str) -> int:
    out = run(["systemd-analyze", "timespan", value]).stdout
    match = re.search(r"μs:\s*(\d+)", out)
    assert match is not None, out
    return int(match.group(1))


def test_installed_generator_on_the_default_fragments(installed: Installed, tmp_path: Path) -> None:
    shutil.rmtree(installed.root / "etc/zincati", ignore_errors=True)
    proc = _run_generator(installed, tmp_path)
    assert proc.returncode == 0, proc.stderr
    late = tmp_path / "late"
    assert (late / "zincati-py-check.service").is_file(), sorted(os.listdir(late))
    timer = (late / "zincati-py-check.timer").read_text()
    wants = late / "timers.target.wants" / "zincati-py-check.timer"
    assert wants.is_symlink() and wants.resolve() == (late / "zincati-py-check.timer").resolve()
    # 10-zincati-py-agent.toml: steady_interval_secs = 300.
    active = re.findall(r"^OnUnitActiveSec=(.+)$", timer, re.M)
    assert [_timespan_usec(v) for v in active] == [300 * 10**6], timer
    # immediate strategy, no [[schedule]]: nothing else is generated.
    generated = {p.name for p in late.iterdir() if p.is_file()}
    assert generated == {"zincati-py-check.service", "zincati-py-check.timer"}
    service = (late / "zincati-py-check.service").read_text()
    assert "ExecStart=/usr/bin/zincati-py check --from-timer" in service
    # The generated units verify against the installed root, like the shipped ones.
    root = _verify_root(installed)
    dest = root / "etc/systemd/system"
    dest.mkdir(parents=True, exist_ok=True)
    for name in generated:
        shutil.copy2(late / name, dest / name)
    verify = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *sorted(generated)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")
    for name in generated:
        (dest / name).unlink()


def test_installed_generator_adds_window_and_schedule_timers(
    installed: Installed, tmp_path: Path
) -> None:
    etc = installed.root / "etc/zincati/config.d"
    shutil.rmtree(etc, ignore_errors=True)
    etc.mkdir(parents=True)
    (etc / "55-updates-strategy.toml").write_text(
        '[updates]\nstrategy = "periodic"\n\n'
        "[[updates.periodic.window]]\n"
        'days = ["Sat", "Sun"]\nstart_time = "22:30"\nlength_minutes = 60\n'
    )
    (etc / "70-schedule-cleanup.toml").write_text(
        '[[schedule]]\nname = "cleanup"\ncron = "15 3 * * *"\ncommand = "/usr/bin/true"\n'
    )
    try:
        proc = _run_generator(installed, tmp_path)
    finally:
        shutil.rmtree(installed.root / "etc/zincati")
    assert proc.returncode == 0, proc.stderr
    late = tmp_path / "late"
    names = {p.name for p in late.iterdir() if p.is_file()}
    assert {"zincati-py-check.timer", "zincati-py-schedule-cleanup.timer"} <= names, names
    assert {"zincati-py-schedule-cleanup.service"} <= names, names
    windows = {n for n in names if re.fullmatch(r"zincati-py-window-\d+\.timer", n)}
    assert windows, names
    wants = {p.name for p in (late / "timers.target.wants").iterdir()}
    assert {"zincati-py-check.timer", "zincati-py-schedule-cleanup.timer", *windows} <= wants
