"""``zincati-py config show|check``: the merged effective configuration."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from zincati_py.cli import add_root_argument, load_config, print_json


def register(sub: Any) -> None:
    parser = sub.add_parser("config", help="show or check the merged configuration")
    csub = parser.add_subparsers(dest="config_command", required=True, metavar="ACTION")

    show = csub.add_parser("show", help="print the merged effective config (defaults filled in)")
    show.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_root_argument(show)
    show.set_defaults(func=run_show)

    check = csub.add_parser("check", help="validate; exit 0 if valid, 65 if not")
    check.add_argument("--json", action="store_true", help="problems as a JSON object")
    add_root_argument(check)
    check.set_defaults(func=run_check)


def _drop_none(value: Any) -> Any:
    # TOML has no null: unset optional keys are shown as comments instead.
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _fragments(n: int) -> str:
    return f"{n} fragment" if n == 1 else f"{n} fragments"


# Printed after the problems when there are errors: what the agent does with this config.
INVALID = (
    "configuration invalid: the agent does not apply it; it keeps the last valid "
    "configuration in force (none since it started: it never reboots until one is valid)"
)


def run_show(args: argparse.Namespace) -> int:
    result = load_config(args.root)
    for problem in result.problems:
        print(f"zincati-py: {problem}", file=sys.stderr)
    if not result.ok:
        print(f"zincati-py: {INVALID}", file=sys.stderr)
    if args.json:
        doc = result.config.as_dict()
        doc["fragments"] = [str(p) for p in result.fragments]
        doc["valid"] = result.ok
        print_json(doc)
    else:
        import tomli_w

        print("# Merged from, in order:")
        for path in result.fragments:
            print(f"#   {path}")
        if not result.fragments:
            print("#   (no fragments: built-in defaults)")
        if not result.ok:
            print("# INVALID: invalid keys were replaced by their defaults (see stderr)")
        sys.stdout.write(tomli_w.dumps(_drop_none(result.config.as_dict())))
    return 0 if result.ok else os.EX_DATAERR


def run_check(args: argparse.Namespace) -> int:
    result = load_config(args.root)
    if args.json:
        json.dump(
            {
                "valid": result.ok,
                "fragments": [str(p) for p in result.fragments],
                "problems": [p.as_dict() for p in result.problems],
            },
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    for problem in result.problems:
        print(f"zincati-py: {problem}", file=sys.stderr)
    if result.ok and not args.json:
        print(f"configuration valid ({_fragments(len(result.fragments))})", file=sys.stderr)
    elif not result.ok:
        print(f"zincati-py: {INVALID}", file=sys.stderr)
    return 0 if result.ok else os.EX_DATAERR
