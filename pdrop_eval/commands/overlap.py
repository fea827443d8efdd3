"""`pdrop-eval overlap`: how often the kept image tokens cover the answer cell, on a pdrop_synth run."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "overlap",
        help="share of pdrop_synth local questions whose answer cell's token survives each drop stage, against chance",
        description="Reads a pdrop_synth lmms-eval or VLMEvalKit run evaluated with the model arg save_kept=true.",
    )
    parser.add_argument("--run", required=True, help="the run's output folder (its pdrop-eval statistics file is found below it)")
    parser.add_argument("--data", help="the test split it evaluated (default: tasks/pdrop_synth/data/test.parquet)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pdrop_eval.answer_overlap import measure_run
    from pdrop_eval.synth import DEFAULT_FOLDER

    drop, overlaps = measure_run(args.run, args.data or DEFAULT_FOLDER / "test.parquet")
    print(f"{drop}: {overlaps[0].questions} local questions")
    print("| stage | answer cell kept | chance (kept share) |")
    print("|---|---|---|")
    for overlap in overlaps:
        print(f"| {overlap.stage} | {100 * overlap.answer_kept:.1f}% | {100 * overlap.chance:.1f}% |")
    return 0
