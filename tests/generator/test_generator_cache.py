"""The generator's memo (zincati_py.generator_cache): replayed only when no input changed,
and only from a file nobody else can write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.generator.corpus import JOBS, PERIODIC, output
from tests.generator.helpers import write_fragment
from zincati_py import generator_cache, paths

CACHE = "run/zincati-py-generator/cache"


def _imports_config(root: Path, out: Path) -> tuple[dict[str, bytes], bool]:
    """The run's output, and whether it computed (loaded the configuration)."""
    from tests.generator.helpers import run_generator

    proc = run_generator(root, out, ("PYTHONPROFILEIMPORTTIME", "1"))
    assert proc.returncode == 0, proc.stderr
    computed = any(
        line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == "zincati_py.config"
        for line in proc.stderr.splitlines()
    )
    from tests.generator.corpus import normalized

    return normalized(root, out), computed


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    write_fragment(root, "50-periodic.toml", PERIODIC)
    write_fragment(root, "60-jobs.toml", JOBS)
    return root


class Runs:
    def __init__(self, root: Path, tmp_path: Path) -> None:
        self.root = root
        self.tmp = tmp_path
        self.n = 0

    def run(self) -> tuple[dict[str, bytes], bool]:
        self.n += 1
        return _imports_config(self.root, self.tmp / f"out{self.n}")

    def fresh(self) -> dict[str, bytes]:
        """What a run without any memo writes (the reference)."""
        self.n += 1
        caches = [self.root / CACHE, self.root / "var/cache/zincati-py-generator/cache"]
        saved = {c: c.read_bytes() for c in caches if c.exists()}
        for cache in caches:
            cache.unlink(missing_ok=True)
        try:
            files, computed = _imports_config(self.root, self.tmp / f"out{self.n}")
        finally:
            for cache, data in saved.items():
                cache.write_bytes(data)
                cache.chmod(0o600)
        assert computed
        return files


@pytest.fixture
def runs(root: Path, tmp_path: Path) -> Runs:
    runs = Runs(root, tmp_path)
    _, computed = runs.run()
    assert computed
    _, computed = runs.run()
    assert not computed  # replayed
    return runs


def test_the_constants_match_what_they_mirror() -> None:
    from zincati_py.config import fragments

    assert generator_cache.CONFIG_DIRS == paths.CONFIG_DIRS
    assert generator_cache.MAX_FRAGMENT_BYTES == fragments.MAX_FRAGMENT_BYTES


def test_root_comes_from_envhooks_as_paths_resolves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # ZINCATI_PY_ROOT is read in zincati_py.envhooks only (review finding 18).
    import inspect

    assert "environ" not in inspect.getsource(generator_cache.resolve_root)
    for value in ("/srv/image", ""):
        monkeypatch.setenv("ZINCATI_PY_ROOT", value)
        assert generator_cache.resolve_root() == str(paths.resolve_root()) == (value or "/")


@pytest.mark.parametrize(
    "change",
    [
        # Same size, same second: only the contents differ.
        lambda r: (r / "etc/zincati/config.d/60-jobs.toml").write_text(
            JOBS.replace('"H 2 * * *"', '"H 3 * * *"')
        ),
        lambda r: write_fragment(r, "70-more.toml", "[identity]\nrollout_wariness = 0.1\n"),
        lambda r: write_fragment(r, "70-more.toml", "", "usr"),  # even an empty one
        lambda r: (r / "etc/zincati/config.d/60-jobs.toml").unlink(),
        lambda r: os.symlink(os.devnull, r / "etc/zincati/config.d/61-x.toml"),
        lambda r: (r / "etc/machine-id").write_text("fedcba9876543210fedcba9876543210\n"),
        lambda r: os.symlink("../usr/share/zoneinfo/Asia/Tokyo", r / "etc/localtime"),
    ],
    ids=["contents", "new-file", "new-empty-file", "removed", "mask", "machine-id", "localtime"],
)
def test_any_changed_input_computes_again(runs: Runs, change) -> None:  # type: ignore[no-untyped-def]
    change(runs.root)
    after, computed = runs.run()
    assert computed
    assert after == runs.fresh()
    # ... and the next run replays the new output.
    again, computed = runs.run()
    assert not computed and again == after


def test_machine_id_change_changes_the_output(runs: Runs) -> None:
    before, _ = runs.run()
    (runs.root / "etc/machine-id").write_text("fedcba9876543210fedcba9876543210\n")
    after, computed = runs.run()
    assert computed and after != before  # H is hashed with the node id


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: c.write_bytes(b"garbage"),
        lambda c: c.write_bytes(c.read_bytes()[:100]),
        lambda c: c.chmod(0o644),  # readable by others: written by someone careless
        lambda c: os.chown(c, 65534, 65534),  # not ours
        lambda c: (c.unlink(), c.symlink_to(c.parent / "elsewhere"))[-1],
        lambda c: c.parent.chmod(0o777),
    ],
    ids=["garbage", "truncated", "mode", "owner", "symlink", "dir-mode"],
)
def test_a_cache_that_is_not_ours_or_not_sound_is_ignored(runs: Runs, damage) -> None:  # type: ignore[no-untyped-def]
    cache = runs.root / CACHE
    if "chown" in str(damage.__code__.co_names) and os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    reference, _ = runs.run()
    damage(cache)
    got, computed = runs.run()
    assert computed and got == reference


def test_no_run_dir_no_memo_same_output(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_fragment(root, "60-jobs.toml", JOBS)
    first = output(root, tmp_path / "out1")
    second = output(root, tmp_path / "out2")
    assert first == second
    assert not (root / "run").exists()  # nothing created in a tree without /run


def _imported(root: Path, out: Path, *env: tuple[str, str]) -> set[str]:
    from tests.generator.helpers import run_generator

    proc = run_generator(root, out, ("PYTHONPROFILEIMPORTTIME", "1"), *env)
    assert proc.returncode == 0, proc.stderr
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }


def test_translations_outlive_a_changed_configuration(runs: Runs) -> None:
    """Inputs changed, cron expressions seen before: computed without croniter."""
    jobs = runs.root / "etc/zincati/config.d/60-jobs.toml"
    jobs.write_text(jobs.read_text() + "# an edit that changes no expression\n")
    imported = _imported(runs.root, runs.tmp / "a")
    assert "zincati_py.config" in imported and "croniter" not in imported
    assert normalized_out(runs, "a") == runs.fresh()
    # A new expression needs croniter, once.
    jobs.write_text(jobs.read_text().replace('"*/15 * * * *"', '"*/20 * * * *"'))
    assert "croniter" in _imported(runs.root, runs.tmp / "b")
    jobs.write_text(jobs.read_text() + "#\n")
    assert "croniter" not in _imported(runs.root, runs.tmp / "c")
    # Another time zone database: every translation is made again.
    jobs.write_text(jobs.read_text() + "#\n")
    imported = _imported(runs.root, runs.tmp / "d", ("PYTHONTZPATH", "/usr/share/zoneinfo"))
    assert "croniter" in imported


def normalized_out(runs: Runs, name: str) -> dict[str, bytes]:
    from tests.generator.corpus import normalized

    return normalized(runs.root, runs.tmp / name)


def test_each_manager_scope_has_its_own_memo(runs: Runs) -> None:
    from tests.generator.helpers import run_generator

    system, _ = runs.run()
    user_out = runs.tmp / "user"
    assert run_generator(runs.root, user_out, ("SYSTEMD_SCOPE", "user")).returncode == 0
    assert (runs.root / "run/zincati-py-generator/cache-user").is_file()
    again, computed = runs.run()
    assert not computed and again == system  # the user run did not replace the system's memo
    service = (user_out / "zincati-py-schedule-backup.service").read_text()
    assert " --user\n" in service


def test_a_leftover_temp_file_does_not_stop_the_memo(tmp_path: Path) -> None:
    """A run killed while writing leaves ``.cache.PID``; early-boot PIDs repeat."""
    (tmp_path / "run").mkdir()
    directory = generator_cache.open_dir(str(tmp_path / "run/zincati-py-generator"), user=False)
    assert directory is not None
    try:
        stale = tmp_path / "run/zincati-py-generator" / f".cache.{os.getpid()}"
        stale.write_bytes(b"half a file")
        generator_cache.save(
            directory,
            fingerprint=("inputs",),
            environment=("env",),
            translations={},
            tzpath=[],
            units={"a.timer": "x"},
            timers=["a.timer"],
            log=[],
            modules={},
        )
        assert not stale.exists()
        replay = generator_cache.load(directory)
        assert replay is not None and replay.units == {"a.timer": "x"}
    finally:
        directory.close()


def test_other_code_computes_again(runs: Runs) -> None:
    """A module the computing run loaded changed (an update, an edit): nothing is replayed."""
    import marshal

    cache = runs.root / CACHE
    doc = marshal.loads(cache.read_bytes())
    modules = doc["modules"]
    assert any(path.endswith("zincati_py/generator.py") for path in modules)
    assert any("/croniter/" in path for path in modules)  # the jobs needed croniter
    assert not any(path.endswith("/os.py") for path in modules)  # the stdlib is sys.version's
    path = next(p for p in modules if p.endswith("zincati_py/config/validate.py"))
    modules[path] = "another file"
    cache.write_bytes(marshal.dumps(doc))
    _, computed = runs.run()
    assert computed
    _, computed = runs.run()
    assert not computed


def test_a_reboot_replays_from_var_cache(root: Path, tmp_path: Path) -> None:
    """/run is emptied at every boot; /var/cache keeps the memo (read-only at boot is enough)."""
    import shutil

    (root / "var/cache").mkdir(parents=True)
    runs = Runs(root, tmp_path)
    reference, computed = runs.run()
    assert computed
    assert (root / "var/cache/zincati-py-generator/cache").is_file()
    shutil.rmtree(root / "run/zincati-py-generator")  # a reboot
    got, computed = runs.run()
    assert not computed and got == reference
    # A changed input is computed, and both places hold the new memo.
    (root / "etc/machine-id").write_text("fedcba9876543210fedcba9876543210\n")
    changed, computed = runs.run()
    assert computed and changed != reference
    shutil.rmtree(root / "run/zincati-py-generator")
    again, computed = runs.run()
    assert not computed and again == changed
