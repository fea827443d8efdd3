"""`pdrop-eval demo`: vanilla, PyramidDrop and FastV through the real lmms-eval, then the report.

Offline on CPU by default: a tiny random LLaVA checkpoint and the bundled local tasks. With
--pretrained and --tasks, the same pipeline on a real checkpoint and real benchmarks."""

from pdrop_eval.commands.sweep import add_eval_options, eval_options

# The bundled offline tasks (tasks/pdrop_local): the generation group and a loglikelihood
# multiple-choice task, which needs lmms-eval's simple request path (--force_simple).
DEMO_TASKS = ("pdrop_local", "pdrop_local_mcq_ll")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="vanilla, PyramidDrop and FastV through lmms-eval, ending in the report with FLOPs")
    parser.add_argument("--pretrained", help="HF checkpoint (default: build a tiny random LLaVA in the output folder)")
    parser.add_argument("--tasks", help=f"lmms-eval tasks, comma-separated (default: {','.join(DEMO_TASKS)}; needed with --pretrained)")
    parser.add_argument("--out-dir", help="output folder (default: a new folder under the system's temp dir)")
    add_eval_options(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    import sys
    import tempfile
    from pathlib import Path

    from pdrop_eval.engine.config import DropConfig
    from pdrop_eval.pipeline import PipelineError, Setting, evaluate_and_report

    if args.pretrained and not args.tasks:
        raise ValueError("--pretrained needs --tasks (real benchmarks, e.g. --tasks mme,pope)")
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="pdrop-demo-"))
    pretrained = args.pretrained or build_tiny_model(out_dir / "tiny-llava", args.force)
    tasks = args.tasks.split(",") if args.tasks else list(DEMO_TASKS)
    options = eval_options(args) | ({} if args.tasks else {"force_simple": True})
    settings = [
        Setting("vanilla", DropConfig.none()),
        Setting("pdrop", DropConfig.pyramid()),
        Setting("fastv", DropConfig.fastv()),
    ]
    try:
        print(evaluate_and_report(str(pretrained), settings, tasks, out_dir, options, "report", args.force))
    except PipelineError as error:
        print(f"pdrop-eval demo: {error}", file=sys.stderr)
        return 1
    return 0


def build_tiny_model(path, force: bool):
    from pdrop_eval.report.files import OutputExistsError
    from pdrop_eval.tiny import make_tiny_model

    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to rebuild the tiny model")
    print(f"building a tiny random LLaVA checkpoint in {path}", flush=True)
    return make_tiny_model(path, arch="llava")
