"""`pdrop-eval study`: drop once at each of several layers keeping several fractions, through lmms-eval;
score vs retained fraction, one curve per layer (the paper's Section 3.1, Figures 1a and 3)."""

from pdrop_eval.commands.sweep import add_eval_options, eval_options


def _numbers(kind, option: str):
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.replace(";", ",").split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"{option} must be {kind.__name__}s separated by commas, got {text!r}") from None

    return parse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "study",
        help="score vs retained fraction when dropping once at each of several layers (paper Figures 1a and 3)",
        description="For each checkpoint, drop image tokens once at each --layers layer keeping each --keep fraction "
        "(a one-stage PyramidDrop schedule), evaluate through lmms-eval, and plot score vs retained fraction with one "
        "curve per layer; two checkpoints are drawn side by side. Reruns into the same --out-dir skip finished points.",
    )
    parser.add_argument("--pretrained", required=True, nargs="+", metavar="CKPT", help="one or more checkpoints (folder or HF Hub id)")
    parser.add_argument("--tasks", required=True, help="lmms-eval task names, comma-separated")
    parser.add_argument("--out-dir", required=True, help="folder for the runs, study.md and study.png")
    parser.add_argument("--layers", default="2,8,16,24", help="layers to drop at, one run each (default: %(default)s)")
    parser.add_argument("--keep", default="0.1,0.25,0.5,0.75,0.9", help="fractions of image tokens kept (default: %(default)s)")
    parser.add_argument("--no-vanilla", action="store_true", help="skip the no-drop run that closes each curve at 1.0")
    add_eval_options(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    import sys

    from pdrop_eval.pipeline import PipelineError
    from pdrop_eval.study import collect_scores, run_study, study_points, write_outputs

    layers = _numbers(int, "--layers")(args.layers)
    keeps = _numbers(float, "--keep")(args.keep)
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    points = study_points(args.pretrained, layers, keeps, not args.no_vanilla)
    try:
        run_study(points, tasks, args.out_dir, eval_options(args), args.force)
    except PipelineError as error:
        print(f"pdrop-eval study: {error}", file=sys.stderr)
        return 1
    markdown, plot = write_outputs(collect_scores(points, args.out_dir), args.out_dir)
    print(markdown.read_text())
    print(f"Table: {markdown}\nPlot: {plot}")
    return 0
