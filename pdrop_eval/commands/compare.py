"""`pdrop-eval compare RUN_A RUN_B`: two runs' scores document by document (paired bootstrap, McNemar)."""

from pdrop_eval.report.documents import CONFIDENCE, RESAMPLES, SEED


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="is a difference between two runs real? paired bootstrap interval and McNemar's exact test per benchmark",
        description="Match two lmms-eval runs' documents by (task, doc_id) from their --log_samples files and print, "
        "per task both ran, A's and B's score, the difference A − B with its paired-bootstrap interval "
        f"(scipy.stats.bootstrap, percentile, {RESAMPLES} resamples, seed {SEED} unless told) and, where every document "
        "scores 0 or 1, McNemar's exact p-value. Runs that did not answer the same documents are refused; so is a "
        "metric lmms-eval does not aggregate as a per-document mean.",
    )
    parser.add_argument("run_a", metavar="RUN_A", help="an lmms-eval results file, or a folder holding one run")
    parser.add_argument("run_b", metavar="RUN_B", help="the run to subtract")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the resampling (default: %(default)s)")
    parser.add_argument("--confidence", type=float, default=CONFIDENCE, help="interval confidence (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pdrop_eval.report.compare import compare_runs

    print(compare_runs(args.run_a, args.run_b, args.resamples, args.seed, args.confidence))
    return 0
