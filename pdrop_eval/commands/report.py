"""`pdrop-eval report`: tables (scores beside TFLOPs; markdown, LaTeX, CSV or JSON) from lmms-eval /
VLMEvalKit outputs."""

from pdrop_eval.report.build import DEFAULT_DELTA, LAYOUTS
from pdrop_eval.report.export import FORMATS
from pdrop_eval.report.table import KIND_ORDER


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="tables of benchmark scores beside TFLOPs from lmms-eval / VLMEvalKit outputs",
        description="Read lmms-eval output folders (<date>_results.json) and VLMEvalKit work dirs "
        "(score CSVs, status.json) with the pdrop-eval statistics files beside them, and write a "
        "table (markdown, LaTeX booktabs, or CSV / JSON records): one row per checkpoint and drop setting. "
        "Without RUN_DIR, re-render the paper's own table for a paper-table layout.",
    )
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run folders (searched recursively) or results files")
    parser.add_argument("--layout", choices=LAYOUTS, default="leaderboard", help="benchmark columns: every benchmark found, or a paper table's")
    parser.add_argument("--compare-paper", action="store_true", help="add the paper's numbers under each row it has numbers for")
    parser.add_argument("--paper-model", choices=("LLaVA-1.5-7B", "LLaVA-NeXT-7B"), help="paper model to compare every row with (default: by checkpoint name)")
    parser.add_argument("--delta", default=DEFAULT_DELTA, metavar="A:B", help=f"Δ row per model: A minus B, each a method kind ({'/'.join(KIND_ORDER)}) or an exact method label (default: %(default)s)")
    parser.add_argument("--format", choices=FORMATS, help="markdown (default), latex (booktabs), csv or json (one record per row and benchmark); default: from --out's suffix (.md .tex .csv .json)")
    parser.add_argument("--out", metavar="FILE", help="also write the table here (.md, .tex, .csv, .json)")
    parser.add_argument("--plot", metavar="FILE.png", help="also write score-vs-TFLOPs panels (one per benchmark) here")
    parser.add_argument("--x", choices=("tflops", "tokens"), default="tflops", help="the plot's x axis: TFLOPs or avg image tokens per layer (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite --out / --plot files")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from pdrop_eval.report import build_report
    from pdrop_eval.report.export import output_format, render
    from pdrop_eval.report.files import check_writable, write_text
    from pdrop_eval.report.plot import write_plot

    for path in filter(None, [args.out, args.plot]):
        check_writable(Path(path), args.force)  # before any work, so a refusal costs nothing
    fmt = output_format(args.format, args.out)  # after: a folder is refused as one, not for its missing suffix
    report = build_report(args.run_dirs, args.layout, args.compare_paper, args.delta, args.paper_model)
    text = render(report, fmt)
    print(text)
    if args.out:
        write_text(Path(args.out), text, args.force)
    if args.plot:
        write_plot(report.runs, Path(args.plot), args.force, args.x)
    return 0
