"""`pdrop-eval schedule`: token or FLOPs budgets as drop schedules with exact counts (PyramidDrop and
FastV by default, `--methods all` for every method a budget is solved for).

Plain arithmetic (`pdrop_eval.budget`); no torch is imported.
"""

import argparse

from pdrop_eval.commands.sweep import parse_layer_list

DEFAULT_METHODS = ("pyramid", "fastv")


def _methods(text: str) -> tuple[str, ...]:
    from pdrop_eval.budget import SOLVABLE_METHODS

    methods = SOLVABLE_METHODS if text.strip() == "all" else tuple(_items(text))
    unknown = [method for method in methods if method not in SOLVABLE_METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"a budget is solved for {', '.join(SOLVABLE_METHODS)} (or all), got {text!r}")
    return methods


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _image_tokens(text: str) -> list[int]:
    try:
        counts = [int(part) for part in _items(text)]
    except ValueError:
        raise ValueError(f"--image-tokens must be integers separated by commas, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--image-tokens must be positive integers, got {text!r}")
    return counts


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "schedule",
        help="PyramidDrop and FastV schedules that meet token or TFLOPs budgets, with their exact average tokens and TFLOPs",
    )
    parser.add_argument("--model", default="llava-1.5-7b", help="FLOPs preset or checkpoint folder / config.json (default: %(default)s)")
    parser.add_argument(
        "--image-tokens", type=_image_tokens, default=None, metavar="N[,N...]",
        help="N to solve at (default: the model's; LLaVA-NeXT: its largest); more values add a per-N table "
        "of the same schedules, as samples of other sizes get them",
    )
    parser.add_argument("--tokens", type=_items, default=[], metavar="LIST", help="token budgets, e.g. 192,128,64 or 33%%,22%%,11%% of N")
    parser.add_argument(
        "--convention", choices=("avg_layer", "after_drop"), default="avg_layer",
        help="what --tokens counts: the average over all decoder layers (default, FLOPs-consistent) or the tokens kept after the drop layer",
    )
    parser.add_argument("--tflops", type=_items, default=[], metavar="LIST", help="TFLOPs budgets (paper convention), e.g. 2.0,1.5 or 50%% of no drop")
    parser.add_argument(
        "--same-flops-as", action="append", default=[], metavar="ARGS",
        help="budget = the TFLOPs of this drop config, e.g. 'layer_list=8;16;24,lambda=0.5'; repeatable",
    )
    parser.add_argument("--layer-list", default=None, help="PyramidDrop boundaries to solve λ for (default: 2,8,16)")
    parser.add_argument("--search-layers", action="store_true", help="search PyramidDrop layer lists too (as many boundaries as --layer-list)")
    parser.add_argument("--fastv-k", type=int, default=2, help="FastV layer K to solve R for (default: %(default)s)")
    parser.add_argument(
        "--methods", type=_methods, default=DEFAULT_METHODS, metavar="LIST",
        help="methods to solve for, comma-separated, or all (default: pyramid,fastv)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    import sys

    from tabulate import tabulate

    from pdrop_eval import budget as budgets
    from pdrop_eval.engine.config import METHODS, DropConfig

    budget_list = [budgets.Budget.parse(text, args.convention) for text in args.tokens]
    budget_list += [budgets.Budget.parse(text, "tflops") for text in args.tflops]
    references = [DropConfig.from_args(text) for text in args.same_flops_as]
    if not budget_list and not references:
        raise ValueError("give budgets: --tokens 192,128,64, --tflops 2.0,1.5 or --same-flops-as ARGS")
    image_tokens = args.image_tokens or [None]
    dims = budgets.model_dims(args.model, image_tokens[0])
    layer_list = parse_layer_list(args.layer_list) if args.layer_list else budgets.BUDGET_LAYER_LIST
    given_shapes = {
        "pyramid": {"layer_list": layer_list, "search_layers": args.search_layers, **_position_shape(args.model)},
        "fastv": {"fastv_k": args.fastv_k},
    }
    shapes = {method: given_shapes.get(method, {}) for method in args.methods}

    requests = [(budget.describe(), budget) for budget in budget_list]
    requests += [(f"same FLOPs as {config.to_args() or 'no drop'}", config) for config in references]
    rows, schedules, failures = [], [], []
    for label, budget in requests:
        if isinstance(budget, DropConfig):
            schedules.append(budgets.Schedule.of(budget, dims))
            rows.append(_row(label, "reference", schedules[-1]))
        for method, shape in shapes.items():
            try:
                solution = budgets.solve(budget, dims, method, **shape)
            except ValueError as error:
                failures.append(f"{METHODS[method].series}, {label}: {error}")
                rows.append([label, METHODS[method].series, "unreachable (see below)", "", "", "", "", ""])
                continue
            schedules.append(solution.schedule)
            rows.append(_row(label, METHODS[method].series, solution.schedule, solution.target))

    vanilla = budgets.Schedule.of(DropConfig.none(), dims)
    print(f"{args.model}: d={dims.hidden_size} m={dims.intermediate_size} L={dims.num_layers} N={dims.image_tokens}; "
          f"no drop: {dims.image_tokens} image tokens per layer, {vanilla.tflops:.4g} TFLOPs")
    headers = ["budget", "method", "--model_args", "kept per stage", "avg image tokens", "after drop", "TFLOPs", "target"]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    print(CONVENTION_NOTE)
    if len(image_tokens) > 1:
        print("\nThe same schedules for samples of other sizes (one λ or R for every sample, as a run applies it):")
        per_n = [
            [schedule.config.to_args(), n, f"{other.avg_image_tokens:g}", f"{other.avg_image_tokens / n:.1%}", other.kept_after_drop, f"{other.tflops:.4g}"]
            for schedule in schedules
            for n in image_tokens
            for other in [budgets.Schedule.of(schedule.config, budgets.model_dims(dims, n))]
        ]
        print(tabulate(per_n, headers=["--model_args", "N", "avg image tokens", "of N", "after drop", "TFLOPs"], tablefmt="github", disable_numparse=True))
    for failure in failures:
        print(f"- {failure}", file=sys.stderr)
    return 1 if failures else 0


CONVENTION_NOTE = (
    "avg image tokens: (1/L)·Σ_l n_l, the image tokens each decoder layer sees averaged over all L layers "
    "(FLOPs-consistent); after drop: image tokens kept after the (first) drop layer; TFLOPs: the paper's "
    "convention, Σ_l 4·n_l·d² + 2·n_l²·d + 3·n_l·d·m over image tokens only. Counts are exact: PyramidDrop "
    "keeps int(N·λ^s) after boundary s, FastV N − int(N·R), the other methods the count they are given."
)


def _position_shape(model: str) -> dict:
    """position_mode=original for a checkpoint of a family with 3-D positions (Qwen2.5-VL's M-RoPE), which
    refuses PyramidDrop's default compact renumbering; nothing for the others."""
    from pathlib import Path

    from pdrop_eval.models import ROPE_1D, family_of_config, read_config_json

    config = read_config_json(model) if Path(model).exists() else {}
    three_d = "vision_config" in config and family_of_config(config, source=model).position_scheme != ROPE_1D
    return {"position_mode": "original"} if three_d else {}


def _row(budget: str, method: str, schedule, target: float | None = None) -> list:
    kept = "/".join(map(str, schedule.kept_per_stage)) or "-"
    target_text = "" if target is None else f"{target:.4g}"
    return [budget, method, schedule.config.to_args(), kept, f"{schedule.avg_image_tokens:g}", schedule.kept_after_drop,
            f"{schedule.tflops:.4g}", target_text]
