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
    "pdrop_eval.commands.compare",
    "pdrop_eval.commands.schedule",
    "pdrop_eval.commands.sweep",
    "pdrop_eval.commands.demo",
    "pdrop_eval.commands.show",
    "pdrop_eval.commands.overlap",
    "pdrop_eval.commands.study",
    "pdrop_eval.commands.train",
)


DESCRIPTION = (
    "Visual-token reduction (PyramidDrop, FastV, DART, SparseVLM, VisionZip, pooling and random controls) in "
    "LLaVA-1.5 / LLaVA-NeXT / LLaVA-OneVision / Qwen2.5-VL: evaluate it through "
    "lmms-eval (sweep, study, demo), report scores beside TFLOPs, solve token budgets, time it, train with it and "
    "draw what it keeps."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdrop-eval", description=DESCRIPTION, epilog="pdrop-eval COMMAND --help tells more.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = subparsers.add_parser

    def add_described_parser(name: str, **kwargs):
        # argparse prints a command's help line only in the list of commands; its own --help needs a description
        kwargs.setdefault("description", kwargs.get("help"))
        return add_parser(name, **kwargs)

    subparsers.add_parser = add_described_parser
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
