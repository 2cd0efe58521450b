"""Layer 1, discovery: which fragment files survive override and masking, in what order.

Zincati's rules (liboverdrop ``scan`` as Zincati calls it: extension ``toml``, dotfiles
ignored): ``/usr/lib`` < ``/run`` < ``/etc``; the same file name in a later directory replaces
the earlier one; a symlink to ``/dev/null`` hides the name from earlier directories; only
regular ``*.toml`` files count; missing directories are fine. Our additions: warnings for
files that are ignored (a ``.yaml`` "disable updates" file must not be silently ignored).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ONE = '[identity]\ngroup = "{}"\n'

# (id, setup steps, expected fragments in merge order, expected problems)
# A step is (op, dir, name[, arg]): op "w" writes a fragment whose group names where it lives,
# "null" symlinks the name to /dev/null, "mkdir" makes a directory of that name.
CASES = [
    ("no-dirs-at-all", [], [], []),
    (
        "one-file-each-dir",
        [("w", "usr", "10-u.toml"), ("w", "run", "20-r.toml"), ("w", "etc", "30-e.toml")],
        [
            "usr/lib/zincati/config.d/10-u.toml",
            "run/zincati/config.d/20-r.toml",
            "etc/zincati/config.d/30-e.toml",
        ],
        [],
    ),
    (
        "etc-replaces-usr",
        [("w", "usr", "50-x.toml"), ("w", "etc", "50-x.toml")],
        ["etc/zincati/config.d/50-x.toml"],
        [],
    ),
    (
        "run-replaces-usr",
        [("w", "usr", "50-x.toml"), ("w", "run", "50-x.toml")],
        ["run/zincati/config.d/50-x.toml"],
        [],
    ),
    (
        "etc-replaces-run",
        [("w", "run", "50-x.toml"), ("w", "etc", "50-x.toml")],
        ["etc/zincati/config.d/50-x.toml"],
        [],
    ),
    (
        "etc-replaces-run-and-usr",
        [("w", "usr", "50-x.toml"), ("w", "run", "50-x.toml"), ("w", "etc", "50-x.toml")],
        ["etc/zincati/config.d/50-x.toml"],
        [],
    ),
    (
        "etc-devnull-masks-usr",
        [("w", "usr", "50-x.toml"), ("null", "etc", "50-x.toml")],
        [],
        [],
    ),
    (
        "etc-devnull-masks-run-and-usr",
        [("w", "usr", "50-x.toml"), ("w", "run", "50-x.toml"), ("null", "etc", "50-x.toml")],
        [],
        [],
    ),
    (
        "run-devnull-then-etc-file-wins",
        [("w", "usr", "50-x.toml"), ("null", "run", "50-x.toml"), ("w", "etc", "50-x.toml")],
        ["etc/zincati/config.d/50-x.toml"],
        [],
    ),
    (
        "usr-devnull-does-not-mask-later-dirs",
        [("null", "usr", "50-x.toml"), ("w", "etc", "50-x.toml")],
        ["etc/zincati/config.d/50-x.toml"],
        [],
    ),
    (
        "mask-hides-only-that-name",
        [("w", "usr", "50-x.toml"), ("w", "usr", "60-y.toml"), ("null", "etc", "50-x.toml")],
        ["usr/lib/zincati/config.d/60-y.toml"],
        [],
    ),
    (
        "dotfiles-skipped-silently",
        [("w", "etc", ".hidden.toml"), ("w", "etc", ".swp"), ("w", "etc", "10-a.toml")],
        ["etc/zincati/config.d/10-a.toml"],
        [],
    ),
    (
        "yaml-disable-updates-is-warned",
        [("w", "etc", "99-disable-updates.yaml"), ("w", "etc", "10-a.toml")],
        ["etc/zincati/config.d/10-a.toml"],
        [("warning", "etc/zincati/config.d/99-disable-updates.yaml", "")],
    ),
    (
        "no-extension-and-toml-suffix-variants-are-warned",
        [("w", "usr", "README"), ("w", "run", "a.toml.bak"), ("w", "etc", "b.TOML")],
        [],
        [
            ("warning", "usr/lib/zincati/config.d/README", ""),
            ("warning", "run/zincati/config.d/a.toml.bak", ""),
            ("warning", "etc/zincati/config.d/b.TOML", ""),
        ],
    ),
    (
        "directory-named-toml-is-warned",
        [("mkdir", "etc", "d.toml"), ("w", "etc", "e.toml")],
        ["etc/zincati/config.d/e.toml"],
        [("warning", "etc/zincati/config.d/d.toml", "")],
    ),
    (
        "directory-named-toml-does-not-replace-earlier-file",
        [("w", "usr", "d.toml"), ("mkdir", "etc", "d.toml")],
        ["usr/lib/zincati/config.d/d.toml"],
        [("warning", "etc/zincati/config.d/d.toml", "")],
    ),
]


def _setup(tree, steps):  # type: ignore[no-untyped-def]
    for step in steps:
        op, where, name = step[:3]
        if op == "w":
            tree.write(where, name, ONE.format(f"{where}-{name}".replace(".", "-")))
        elif op == "null":
            tree.mask(where, name)
        elif op == "mkdir":
            (tree.dir(where) / name).mkdir(parents=True)
        else:  # pragma: no cover - a typo in the table
            raise AssertionError(op)


@pytest.mark.parametrize(
    ("steps", "fragments", "problems"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_discovery(tree, steps, fragments, problems):  # type: ignore[no-untyped-def]
    _setup(tree, steps)
    result = tree.load()
    assert tree.fragments(result) == fragments
    assert tree.problems(result) == problems
    assert result.ok


def test_replacing_file_is_the_one_whose_keys_count(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("usr", "50-x.toml", '[identity]\ngroup = "vendor"\nrollout_wariness = 0.5\n')
    tree.write("etc", "50-x.toml", '[identity]\ngroup = "admin"\n')
    config = tree.load().config
    assert config.identity.group == "admin"
    # The replaced file is not merged at all: its other keys do not leak through.
    assert config.identity.rollout_wariness is None


def test_masked_file_keys_do_not_apply(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("usr", "50-x.toml", "[updates]\nenabled = false\n")
    tree.mask("etc", "50-x.toml")
    assert tree.load().config.updates.enabled is True


def test_non_toml_warning_names_the_file_and_says_why(tree) -> None:  # type: ignore[no-untyped-def]
    path = tree.write("etc", "90-disable.yaml", "updates:\n  enabled: false\n")
    result = tree.load()
    (problem,) = result.problems
    assert problem.severity == "warning"
    assert problem.file == path
    assert "*.toml" in problem.message
    # The file really is ignored: updates stay enabled (the Zincati behaviour we warn about).
    assert result.config.updates.enabled is True


def test_symlink_to_devnull_by_relative_path_is_not_a_mask(tree) -> None:  # type: ignore[no-untyped-def]
    # liboverdrop compares the link text with "/dev/null"; any other symlink is not a mask.
    tree.write("usr", "50-x.toml", '[identity]\ngroup = "vendor"\n')
    tree.mask("etc", "50-x.toml", target="../../../../../../../../../../dev/null")
    result = tree.load()
    assert tree.fragments(result) == ["usr/lib/zincati/config.d/50-x.toml"]
    assert result.config.identity.group == "vendor"


def test_symlink_to_regular_file_is_ignored_like_zincati(tree) -> None:  # type: ignore[no-untyped-def]
    # liboverdrop uses DirEntry::metadata() (lstat): a symlink is not a regular file, so it
    # neither counts nor replaces the earlier file of that name. We warn about it.
    target = tree.root / "elsewhere.toml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text('[identity]\ngroup = "linked"\n')
    tree.write("usr", "50-x.toml", '[identity]\ngroup = "vendor"\n')
    link = tree.mask("etc", "50-x.toml", target=str(target))
    result = tree.load()
    assert tree.fragments(result) == ["usr/lib/zincati/config.d/50-x.toml"]
    assert result.config.identity.group == "vendor"
    assert tree.problems(result) == [("warning", tree.rel_or_abs(link), "")]


def test_dangling_symlink_is_warned_not_fatal(tree) -> None:  # type: ignore[no-untyped-def]
    link = tree.mask("etc", "50-x.toml", target="/nonexistent/zincati-py-test.toml")
    result = tree.load()
    assert result.fragments == ()
    assert tree.problems(result) == [("warning", tree.rel_or_abs(link), "")]
    assert result.ok


def test_fifo_is_not_opened(tree) -> None:  # type: ignore[no-untyped-def]
    # Opening a FIFO would block forever; it must be skipped by type, not by reading it.
    path = tree.dir("etc") / "50-x.toml"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    result = tree.load()
    assert result.fragments == ()
    assert tree.problems(result) == [("warning", "etc/zincati/config.d/50-x.toml", "")]


def test_config_dir_that_is_a_file_is_warned(tree) -> None:  # type: ignore[no-untyped-def]
    bogus = tree.root / "run/zincati/config.d"
    bogus.parent.mkdir(parents=True)
    bogus.write_text("not a directory")
    tree.write("etc", "10-a.toml", '[identity]\ngroup = "g"\n')
    result = tree.load()
    assert tree.fragments(result) == ["etc/zincati/config.d/10-a.toml"]
    assert tree.problems(result) == [("warning", "run/zincati/config.d", "")]


def test_merge_order_is_file_name_byte_order_across_dirs(tree) -> None:  # type: ignore[no-untyped-def]
    # Byte order, not locale collation and not directory order: digits < uppercase <
    # lowercase, '-' (0x2d) < '.' (0x2e), and UTF-8 names after ASCII ones.
    names = {
        "etc": ["a.toml", "10-x.toml", "é.toml"],
        "usr": ["B.toml", "9-y.toml", "a-b.toml"],
        "run": ["z.toml", "099.toml"],
    }
    for where, files in names.items():
        for name in files:
            tree.write(where, name, "")
    result = tree.load()
    got = [Path(p).name for p in tree.fragments(result)]
    assert got == [
        "099.toml",
        "10-x.toml",
        "9-y.toml",
        "B.toml",
        "a-b.toml",
        "a.toml",
        "z.toml",
        "é.toml",
    ]
    assert got == sorted(got, key=os.fsencode)


def test_root_from_environment(tree, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from zincati_py.config import load

    tree.write("etc", "10-a.toml", '[identity]\ngroup = "from-env"\n')
    monkeypatch.setenv("ZINCATI_PY_ROOT", str(tree.root))
    result = load()
    assert result.config.identity.group == "from-env"
    assert result.paths.root == tree.root
    # An explicit root wins over the environment.
    other = tree.root.parent / "other"
    assert load(other).config.identity.group == "default"
