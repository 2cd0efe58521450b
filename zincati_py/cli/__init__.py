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
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from zincati_py.config import LoadResult

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
    """argparse exits 2 on a usage error; sysexits (and our contract) say 64.

    A usage error shows the usage of the (sub)command it is about: argparse would report
    unrecognized arguments from the top-level parser with the top-level usage.
    """

    top_level = False

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and not self.top_level:
            # Innermost first: a subcommand's parser returns before its parent's.
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _command_modules(argv: Sequence[str] | None) -> tuple[str, ...]:
    """The daemon (``zincati-py agent``) builds only its own command: every other command's
    module would stay resident for its whole life (0.4 MiB, bench/agent_idle.py)."""
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), None)  # no option takes a value
    return ("agent_cmd",) if command == "agent" else COMMAND_MODULES


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the command line ``argv``, only what it needs (see above)."""
    from zincati_py import __version__

    parser = _Parser(
        prog="zincati-py",
        description="Update and reboot coordination for image-based hosts.",
    )
    parser.top_level = True
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES if argv is None else _command_modules(argv):
        importlib.import_module(f"zincati_py.cli.{name}").register(sub)
    return parser


def add_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        default=None,
        help="prefix for all paths (default: $ZINCATI_PY_ROOT or /)",
    )


def load_config(root: str | None) -> LoadResult:
    """The configuration under ``--root``, which must exist (a typo must not look valid)."""
    from zincati_py.config import load
    from zincati_py.paths import resolve_root

    path = resolve_root(root)
    if not path.is_dir():
        reason = "does not exist" if not path.exists() else "is not a directory"
        raise CliError(f"{path}: root {reason}", os.EX_DATAERR)
    return load(path)


def print_json(doc: object, *, sort_keys: bool = False) -> None:
    """A ``--json`` answer: one indented JSON document on stdout, newline-terminated."""
    import json

    json.dump(doc, sys.stdout, indent=2, sort_keys=sort_keys)
    sys.stdout.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # some other pipe or socket: a real error
        return _stdout_closed()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    from zincati_py import log

    log.setup(args.verbose)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at exit
    except CliError as exc:
        print(f"zincati-py: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code


def _stdout_gone() -> bool:
    """stdout's reader has gone (a pipe or socket whose other end is closed polls POLLERR)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (OSError, ValueError):
        return False


def _stdout_closed() -> int:
    """The reader of stdout went away (``zincati-py ... | head``): stop quietly, as a command
    killed by SIGPIPE would (exit status 128 + SIGPIPE). Python would otherwise report the
    failed flush of the rest of the output at exit."""
    import signal

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
