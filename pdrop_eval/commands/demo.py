"""`pdrop-eval demo`: vanilla, PyramidDrop at four λ, FastV and the random control through the real
lmms-eval, then the report with FLOPs and the score-vs-TFLOPs plot.

Offline on CPU by default: the two small LLaVA-NeXT models trained on `pdrop_synth` that ship with the
project (`checkpoints/`) on the `pdrop_synth` test split: every setting on the vanilla-trained one,
and the paper's training comparison (vanilla, PyramidDrop λ=0.5, FastV, random) on the one trained with
PyramidDrop. With --pretrained and --tasks, every setting on any one checkpoint and benchmarks.

`--methods all` (or a comma-separated list of method names) instead runs every registered method that
takes a token budget (`MethodSpec.budget_family`), each at 50% and 25% of the image tokens
(`pdrop_eval.budget`) beside the random control with that setting's counts, and vanilla, on the
vanilla-trained checkpoint: the leaderboard of the comparison methods at equal FLOPs."""

from pdrop_eval.commands.sweep import add_eval_options, eval_options

DEMO_TASKS = ("pdrop_synth",)
DEMO_LAMBDAS = (0.3, 0.4, 0.5, 0.6)
PDROP_TRAINED_SETTINGS = ("vanilla", "pdrop-lambda0.5", "fastv", "random")  # run on the PyramidDrop-trained model
METHOD_BUDGETS = ("50%", "25%")  # `--methods`: shares of the no-drop image tokens per layer


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


def budget_methods() -> list[str]:
    """The registered methods a budget is solved for, in registration order (the random control copies
    their counts and is not one of them)."""
    from pdrop_eval.budget import SOLVABLE_METHODS

    return list(SOLVABLE_METHODS)


def method_settings(pretrained: str, methods: list[str]) -> list:
    """Vanilla, then for each of `methods` at each share of `METHOD_BUDGETS` its solved config and the
    random control with the same counts. A method the checkpoint's model cannot run (its family, its
    vision tower) is left out with the reason printed. A method that keeps a fixed count of image
    tokens solves a share of N on a checkpoint whose N varies per image at the largest N
    (`pdrop_eval.budget.solve_for_checkpoint`'s budget_image_tokens); a share it cannot reach is left out,
    printed, and so is a run that fails (a count more than a small image's patches)."""
    from pdrop_eval import budget
    from pdrop_eval.engine.config import DropConfig
    from pdrop_eval.engine.methods import method_spec
    from pdrop_eval.flops import image_tokens_from_config
    from pdrop_eval.options import load_config
    from pdrop_eval.pipeline import Setting

    unknown = sorted(set(methods) - set(budget_methods()))
    if unknown:
        raise ValueError(f"--methods: {unknown} take no token budget; choose from {budget_methods()} or 'all'")
    config_dict = load_config(pretrained).to_dict()
    largest, varies = image_tokens_from_config(config_dict)
    settings = [Setting("vanilla", DropConfig.none())]
    for method in methods:
        spec = method_spec(method)
        reason = unfit_reason(pretrained, DropConfig(method=method))
        if reason:
            print(f"pdrop-eval demo: {spec.title} left out: {reason}", flush=True)
            continue
        counted = spec.budget_family == "count" and varies
        if counted:
            print(f"pdrop-eval demo: {spec.title} keeps a fixed number of image tokens per image, whatever its N: its "
                  f"shares are of the largest N, {largest}", flush=True)
        for share in METHOD_BUDGETS:
            name = f"{method}-{share.replace('%', 'pct')}"
            try:
                solved = budget.solve_for_checkpoint(share, config_dict, method, image_tokens=largest if counted else None)
            except ValueError as error:
                print(f"pdrop-eval demo: {name} left out: {error}", flush=True)
                continue
            settings.append(Setting(name, solved.schedule.config))
            try:
                settings.append(Setting(f"random-{name}", DropConfig.random(solved.schedule.config)))
            except ValueError as error:  # a method the control cannot copy yet
                print(f"pdrop-eval demo: no random control beside {name}: {error}", flush=True)
    return settings


def unfit_reason(pretrained: str, drop) -> str | None:
    """Why `drop` cannot be applied to the checkpoint's model (None if it can): the method's parts are
    attached to the model built on the meta device (no weights read)."""
    import torch

    from pdrop_eval.engine.apply import apply_drop
    from pdrop_eval.models import family_of_config
    from pdrop_eval.options import load_config

    config = load_config(pretrained)
    with torch.device("meta"):
        model = family_of_config(config.to_dict()).model_class()(config)
    try:
        apply_drop(model, drop).remove()
    except (ValueError, TypeError) as error:
        return str(error)
    return None


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="vanilla, PyramidDrop, FastV and random drop through lmms-eval, ending in the report with FLOPs"
    )
    parser.add_argument("--pretrained", help="HF checkpoint (default: the two shipped pdrop_synth-trained LLaVA-NeXT models)")
    parser.add_argument("--tasks", help=f"lmms-eval tasks, comma-separated (default: {','.join(DEMO_TASKS)}; needed with --pretrained)")
    parser.add_argument("--only", help="run only these settings, comma-separated names (default: all of "
                        "vanilla, pdrop-lambda0.3 ... pdrop-lambda0.6, fastv, random)")
    parser.add_argument("--methods", help="'all' or comma-separated method names: each method that takes a token budget "
                        f"at {' and '.join(share.replace('%', '%%') for share in METHOD_BUDGETS)} of the image tokens, beside the random control with its counts "
                        "(default checkpoint: the shipped vanilla-trained one)")
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
    if args.methods:
        methods = budget_methods() if args.methods.strip() == "all" else [name.strip() for name in args.methods.split(",")]
        settings = method_settings(args.pretrained or str(shipped_checkpoint("vanilla")), methods)
    else:
        settings = demo_settings()
    if args.only:
        names = [name.strip() for name in args.only.split(",")]
        unknown = sorted(set(names) - {setting.name for setting in settings})
        if unknown:
            raise ValueError(f"--only: unknown setting(s) {unknown}; choose from {[s.name for s in settings]}")
        settings = [setting for setting in settings if setting.name in names]
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="pdrop-demo-"))
    if args.pretrained or args.methods:
        plan = [(args.pretrained or str(shipped_checkpoint("vanilla")), settings)]
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
        print(evaluate_and_report(plan, tasks, out_dir, options, "report", args.force, leave_out_failed=bool(args.methods)))
    except PipelineError as error:
        print(f"pdrop-eval demo: {error}", file=sys.stderr)
        return 1
    return 0
