"""The ``zincati-py`` command line.

Each subcommand lives in its own module with a ``register(subparsers)`` function; heavy imports
stay inside the command functions so ``zincati-py --help`` and the fast paths stay fast.
Exit codes follow sysexits: 0 ok, 64 usage, 65 invalid input/config, 69 service unreachable,
70 internal error, 75 temporary failure (busy, retry later).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

# Modules under zincati_py.cli, each providing register(subparsers).
COMMAND_MODULES: tuple[str, ...] = (
    "config_cmd",
    "schedule_cmd",
    "trigger_cmd",
    "fleetlock_cmd",
    "windows_cmd",
    "updates_cmd",
    "agent_cmd",
    "demo_cmd",
)


class CliError(Exception):
    """An error already explained to the user; ``code`` is the process exit status."""

    def __init__(self, message: str, code: int = os.EX_DATAERR) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; sysexits (and our contract) say 64."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="zincati-py",
        description="Update and reboot coordination for image-based hosts.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"zincati_py.cli.{name}").register(sub)
    return parser


def add_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        default=None,
        help="prefix for all paths (default: $ZINCATI_PY_ROOT or /)",
    )


def print_json(doc: object, *, sort_keys: bool = False) -> None:
    """A ``--json`` answer: one indented JSON document on stdout, newline-terminated."""
    import json

    json.dump(doc, sys.stdout, indent=2, sort_keys=sort_keys)
    sys.stdout.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from zincati_py import log

    log.setup(args.verbose)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"zincati-py: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
