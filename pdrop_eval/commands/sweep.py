"""`pdrop-eval sweep`: one method over several values of its swept option (`MethodSpec.sweep_key`: λ
for PyramidDrop and the random control, R for FastV), or token budgets, through lmms-eval, ending in
the table (TFLOPs and avg image tokens) and the score-vs-TFLOPs (or -tokens) plot."""

from pdrop_eval.engine.config import SWEPT_METHODS


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--values must be numbers separated by commas, got {text!r}") from None


def parse_layer_list(text: str) -> tuple[int, ...]:
    """Boundaries as the drop options write them: 8,16,24 or 8;16;24 or [8,16,24]."""
    from pdrop_eval.engine.config import DropConfig

    try:
        return DropConfig.from_args({"layer_list": text, "lambda": 0.5}).params.layer_list
    except ValueError as error:
        raise ValueError(f"--layer-list: {error}") from None


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="evaluate PyramidDrop λ, FastV R or random-drop λ values through lmms-eval; table and plot of score vs TFLOPs",
    )
    parser.add_argument("--pretrained", required=True, help="HF checkpoint (path or hub id)")
    parser.add_argument("--method", choices=tuple(SWEPT_METHODS), required=True,
                        help="random: the random-drop control with PyramidDrop λ's counts")
    values = parser.add_mutually_exclusive_group(required=True)
    values.add_argument("--values", type=_floats, help="λ values (pdrop, random) or R values (fastv), e.g. 0.3,0.4,0.5,0.6")
    values.add_argument(
        "--tokens", type=lambda text: [part.strip() for part in text.split(",") if part.strip()], metavar="LIST",
        help="token budgets instead, e.g. 192,128,64 or 33%%,22%% of N, each solved for the checkpoint (see pdrop-eval schedule)",
    )
    parser.add_argument("--tasks", required=True, help="lmms-eval task names, comma-separated")
    parser.add_argument("--out-dir", required=True, help="folder for the runs, the report (sweep.md) and the plot (sweep.png)")
    parser.add_argument(
        "--layer-list", default=None,
        help="PyramidDrop (and random) stage boundaries, e.g. 8,16,24 or 8;16;24 (default: 8,16,24 with --values, 2,8,16 with --tokens)",
    )
    parser.add_argument(
        "--convention", choices=("avg_layer", "after_drop"), default=None,
        help="what --tokens counts: the average over all decoder layers (default: avg_layer) or the tokens kept after the drop layer",
    )
    parser.add_argument("--image-tokens", type=int, default=None, metavar="N", help="the N absolute --tokens count with (needed for LLaVA-NeXT, whose N varies)")
    parser.add_argument("--fastv-k", type=int, default=None, help="FastV layer K (default: 2)")
    parser.add_argument("--no-vanilla", action="store_true", help="skip the no-drop reference run")
    parser.add_argument("--x", choices=("tflops", "tokens"), default="tflops", help="the plot's x axis: TFLOPs or avg image tokens per layer (default: %(default)s)")
    add_eval_options(parser)
    parser.set_defaults(func=run)


def add_eval_options(parser) -> None:
    """lmms-eval options shared by sweep and demo."""
    parser.add_argument("--limit", type=float, default=None, help="documents per task (lmms-eval --limit)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda, cuda:0 (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace earlier results in the output folder")


def eval_options(args) -> dict:
    options = {"batch_size": args.batch_size, "device": args.device}
    return options | ({"limit": args.limit} if args.limit is not None else {})


def run(args) -> int:
    import sys

    from pdrop_eval.pipeline import (
        PipelineError,
        budget_settings,
        evaluate_and_report,
        sweep_settings,
    )

    shape = {"layer_list": parse_layer_list(args.layer_list) if args.layer_list else None, "fastv_k": args.fastv_k}
    shape = {key: value for key, value in shape.items() if value is not None}  # given ones only: a stray one is an error
    if args.tokens:
        from pdrop_eval.options import checked_image_tokens, load_config

        checked_image_tokens(load_config(args.pretrained).to_dict(), args.image_tokens, "--image-tokens")
        convention = args.convention or "avg_layer"
        settings = budget_settings(args.pretrained, args.method, args.tokens, not args.no_vanilla, convention, shape, args.image_tokens)
    else:
        if args.image_tokens is not None or args.convention is not None:
            raise ValueError("--image-tokens and --convention go with --tokens (token budgets), not with --values")
        settings = sweep_settings(args.method, args.values, not args.no_vanilla, shape)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        print(evaluate_and_report([(args.pretrained, settings)], tasks, args.out_dir, eval_options(args), "sweep", args.force, args.x))
    except PipelineError as error:
        print(f"pdrop-eval sweep: {error}", file=sys.stderr)
        return 1
    return 0
