"""Work behind the Fedora macros of ``fedora.macros`` that Debian's rpm lacks.

Called from rpmbuild scriptlets (never imported by tests): each subcommand does the part of
a Fedora macro that is more than one shell line, with Fedora's semantics reduced to what
``packaging/zincati-py.spec`` uses.

- ``fix-install``: after ``pip install --root``, what Fedora's ``%pyproject_install`` does
  too: shebangs of the console scripts point at ``/usr/bin/python3 -sP`` (not at the build
  interpreter), ``INSTALLER`` says ``rpm``, and ``RECORD``/``direct_url.json`` are dropped.
- ``save-files``: ``%pyproject_save_files NAME...``: list the given top-level packages and
  the dist-info directory for ``%files -f %{pyproject_files}``.
- ``check-import``: ``%pyproject_check_import [-e GLOB] [-t]``: import every module of the
  installed packages from the buildroot.
- ``sysusers-pre``: ``%sysusers_create_compat FILE``: the ``%pre`` shell lines that create
  the ``u`` users of a sysusers.d file with groupadd/useradd.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import pkgutil
import shlex
import sys
from pathlib import Path

SHEBANG = "#!/usr/bin/python3 -sP\n"


def _under(buildroot: str, path: str) -> Path:
    return Path(buildroot) / path.lstrip("/")


def _dist_infos(sitelib: Path) -> list[Path]:
    found = sorted(sitelib.glob("*.dist-info"))
    if not found:
        raise SystemExit(f"rpm_macros_helper: no *.dist-info in {sitelib}")
    return found


def fix_install(args: argparse.Namespace) -> None:
    sitelib = _under(args.buildroot, args.sitelib)
    if not sitelib.is_dir():
        raise SystemExit(f"rpm_macros_helper: pip did not install into {sitelib}")
    for script in sorted(_under(args.buildroot, args.bindir).iterdir()):
        lines = script.read_text().splitlines(keepends=True)
        if lines and lines[0].startswith("#!") and "python" in lines[0]:
            script.write_text(SHEBANG + "".join(lines[1:]))
    for info in _dist_infos(sitelib):
        (info / "INSTALLER").write_text("rpm\n")
        for name in ("RECORD", "direct_url.json"):
            (info / name).unlink(missing_ok=True)


def save_files(args: argparse.Namespace) -> None:
    sitelib = _under(args.buildroot, args.sitelib)
    lines = []
    for name in args.names:
        if not (sitelib / name).is_dir():
            raise SystemExit(f"rpm_macros_helper: {name}: no such package in {sitelib}")
        lines.append(f"{args.sitelib}/{name}/")
    for info in _dist_infos(sitelib):
        if args.require_license and not list(info.glob("licenses/*")):
            raise SystemExit(f"rpm_macros_helper: {info.name}: no license files (-l)")
        lines.append(f"{args.sitelib}/{info.name}/")
    Path(args.output).write_text("".join(f"{line}\n" for line in lines))


def check_import(args: argparse.Namespace) -> None:
    sitelib = _under(args.buildroot, args.sitelib)
    sys.path.insert(0, str(sitelib))
    tops = [p.name for p in sorted(sitelib.iterdir()) if (p / "__init__.py").is_file()]
    modules: list[str] = []
    for top in tops:
        modules.append(top)
        if not args.top_level:
            pkg_path = [str(sitelib / top)]
            modules += [m.name for m in pkgutil.walk_packages(pkg_path, prefix=f"{top}.")]
    for name in modules:
        if any(fnmatch.fnmatchcase(name, glob) for glob in args.exclude):
            continue
        module = importlib.import_module(name)
        origin = Path(module.__file__ or "")
        if sitelib not in origin.parents:
            raise SystemExit(f"rpm_macros_helper: {name} imported from {origin}, not {sitelib}")
        print(f"Check import: {name}")


def sysusers_pre(args: argparse.Namespace) -> None:
    nologin = "/sbin/nologin" if Path("/sbin/nologin").exists() else "/usr/sbin/nologin"
    for raw in Path(args.file).read_text().splitlines():
        fields = shlex.split(raw, comments=True)
        if not fields:
            continue
        if fields[0] != "u":
            raise SystemExit(f"rpm_macros_helper: {args.file}: only 'u' lines are handled: {raw}")
        name = fields[1]
        gecos = fields[3] if len(fields) > 3 and fields[3] != "-" else ""
        home = fields[4] if len(fields) > 4 and fields[4] != "-" else "/"
        q = shlex.quote
        print(f"getent group {q(name)} >/dev/null || groupadd -r {q(name)} || :")
        print(
            f"getent passwd {q(name)} >/dev/null || useradd -r -g {q(name)} -d {q(home)} "
            f"-s {nologin} -c {q(gecos)} {q(name)} || :"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="rpm_macros_helper")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fix-install")
    p.add_argument("--buildroot", required=True)
    p.add_argument("--sitelib", required=True)
    p.add_argument("--bindir", required=True)
    p.set_defaults(func=fix_install)
    p = sub.add_parser("save-files")
    p.add_argument("--buildroot", required=True)
    p.add_argument("--sitelib", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--require-license", action="store_true")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=save_files)
    p = sub.add_parser("check-import")
    p.add_argument("--buildroot", required=True)
    p.add_argument("--sitelib", required=True)
    p.add_argument("--exclude", action="append", default=[])
    p.add_argument("--top-level", action="store_true")
    p.set_defaults(func=check_import)
    p = sub.add_parser("sysusers-pre")
    p.add_argument("file")
    p.set_defaults(func=sysusers_pre)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
