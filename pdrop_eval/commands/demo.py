"""`pdrop-eval demo`: vanilla, PyramidDrop at four λ, FastV and the random control through the real
lmms-eval, then the report with FLOPs and the score-vs-TFLOPs plot.

Offline on CPU by default: the two small LLaVA-NeXT models trained on `pdrop_synth` that ship with the
project (`checkpoints/`) on the `pdrop_synth` test split: every setting on the vanilla-trained one,
and the paper's training comparison (vanilla, PyramidDrop λ=0.5, FastV, random) on the one trained with
PyramidDrop. With --pretrained and --tasks, every setting on any one checkpoint and benchmarks."""

from pdrop_eval.commands.sweep import add_eval_options, eval_options

DEMO_TASKS = ("pdrop_synth",)
DEMO_LAMBDAS = (0.3, 0.4, 0.5, 0.6)
PDROP_TRAINED_SETTINGS = ("vanilla", "pdrop-lambda0.5", "fastv", "random")  # run on the PyramidDrop-trained model


def demo_settings():
    """The demo's settings, in the order they run: each PyramidDrop λ at 8/16/24, FastV K=2 R=0.5, and
    random drop with PyramidDrop λ=0.5's counts."""
    from pdrop_eval.engine.config import DropConfig
    from pdrop_eval.pipeline import Setting

    return [
        Setting("vanilla", DropConfig.none()),
        *(Setting(f"pdrop-lambda{ratio:g}", DropConfig.pyramid(ratio=ratio)) for ratio in DEMO_LAMBDAS),
        Setting("fastv", DropConfig.fastv()),
        Setting("random", DropConfig.random(DropConfig.pyramid())),
    ]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="vanilla, PyramidDrop, FastV and random drop through lmms-eval, ending in the report with FLOPs"
    )
    parser.add_argument("--pretrained", help="HF checkpoint (default: the two shipped pdrop_synth-trained LLaVA-NeXT models)")
    parser.add_argument("--tasks", help=f"lmms-eval tasks, comma-separated (default: {','.join(DEMO_TASKS)}; needed with --pretrained)")
    parser.add_argument("--only", help="run only these settings, comma-separated names (default: all of "
                        "vanilla, pdrop-lambda0.3 ... pdrop-lambda0.6, fastv, random)")
    parser.add_argument("--force-simple", action="store_true", help="lmms-eval --force_simple (loglikelihood tasks)")
    parser.add_argument("--out-dir", help="output folder (default: a new folder under the system's temp dir)")
    add_eval_options(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    import sys
    import tempfile
    from pathlib import Path

    from pdrop_eval.checkpoints import shipped_checkpoint
    from pdrop_eval.pipeline import PipelineError, evaluate_and_report

    if args.pretrained and not args.tasks:
        raise ValueError("--pretrained needs --tasks (real benchmarks, e.g. --tasks mme,pope)")
    settings = demo_settings()
    if args.only:
        names = [name.strip() for name in args.only.split(",")]
        unknown = sorted(set(names) - {setting.name for setting in settings})
        if unknown:
            raise ValueError(f"--only: unknown setting(s) {unknown}; choose from {[s.name for s in settings]}")
        settings = [setting for setting in settings if setting.name in names]
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="pdrop-demo-"))
    if args.pretrained:
        plan = [(args.pretrained, settings)]
    else:
        trained_with_pdrop = [setting for setting in settings if setting.name in PDROP_TRAINED_SETTINGS]
        plan = [(str(shipped_checkpoint("vanilla")), settings), (str(shipped_checkpoint("pdrop")), trained_with_pdrop)]
        plan = [(pretrained, chosen) for pretrained, chosen in plan if chosen]
    tasks = args.tasks.split(",") if args.tasks else list(DEMO_TASKS)
    options = eval_options(args) | ({"force_simple": True} if args.force_simple else {})
    runs = sum(len(chosen) for _, chosen in plan)
    print(f"pdrop-eval demo: {runs} lmms-eval runs of {' and '.join(pretrained for pretrained, _ in plan)} on "
          f"{','.join(tasks)}, results in {out_dir}", flush=True)
    try:
        print(evaluate_and_report(plan, tasks, out_dir, options, "report", args.force))
    except PipelineError as error:
        print(f"pdrop-eval demo: {error}", file=sys.stderr)
        return 1
    return 0
