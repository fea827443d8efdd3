"""`pdrop-eval` command line. Each subcommand lives in its own module, which defines
`add_parser(subparsers)` and sets `func` on its parser; heavy imports stay inside `func`."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "pdrop_eval.commands.bench",
    "pdrop_eval.commands.flops",
    "pdrop_eval.commands.make_tiny_model",
    "pdrop_eval.commands.make_synth",
    "pdrop_eval.commands.report",
    "pdrop_eval.commands.schedule",
    "pdrop_eval.commands.sweep",
    "pdrop_eval.commands.demo",
    "pdrop_eval.commands.show",
    "pdrop_eval.commands.overlap",
    "pdrop_eval.commands.study",
    "pdrop_eval.commands.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdrop-eval", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"pdrop-eval {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
