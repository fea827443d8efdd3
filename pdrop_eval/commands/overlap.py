"""`pdrop-eval overlap`: how often the kept image tokens cover the answer cell, on a pdrop_synth run;
or, before any drop, at which layers the ranking finds the answer cell."""

FRACTIONS = (0.5, 0.25, 0.125)  # PyramidDrop λ=0.5's kept shares after its three boundaries


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "overlap",
        help="share of pdrop_synth local questions whose answer cell's token survives each drop stage (--run), "
        "or ranks among the best image tokens at each layer of an unmodified model (--pretrained)",
        description="--run reads a pdrop_synth lmms-eval or VLMEvalKit run evaluated with the model arg save_kept=true. "
        "--pretrained runs the unmodified checkpoint on the local questions and ranks the image tokens at every "
        "decoder layer as a PyramidDrop boundary there would (last prompt token, heads averaged).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="the run's output folder (its pdrop-eval statistics file is found below it)")
    source.add_argument("--pretrained", help="a LLaVA-NeXT checkpoint to rank layer by layer, without dropping")
    parser.add_argument("--data", help="the test split (default: pdrop_eval/tasks/pdrop_synth/data/test.parquet)")
    parser.add_argument("--limit", type=int, help="with --pretrained: the first N local questions only")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pdrop_eval.synth import DEFAULT_FOLDER

    data = args.data or DEFAULT_FOLDER / "test.parquet"
    if args.limit is not None and (args.run or args.limit < 1):
        raise ValueError("--limit takes a positive number of questions and goes with --pretrained")
    if args.pretrained:
        return _print_layers(args.pretrained, data, args.limit)
    from pdrop_eval.answer_overlap import measure_run

    drop, overlaps = measure_run(args.run, data)
    print(f"{drop}: {overlaps[0].questions} local questions")
    print("| stage | answer cell kept | chance (kept share) |")
    print("|---|---|---|")
    for overlap in overlaps:
        print(f"| {overlap.stage} | {100 * overlap.answer_kept:.1f}% | {100 * overlap.chance:.1f}% |")
    return 0


def _print_layers(pretrained: str, data, limit: int | None) -> int:
    from pdrop_eval.answer_overlap import rank_layers

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            print(f"ranked {done}/{total} questions", flush=True)

    rankings = rank_layers(pretrained, data, FRACTIONS, limit, progress)
    print(f"{pretrained}: {rankings[0].questions} local questions; answer cell's token among the best image tokens "
          "(last prompt token's attention, heads averaged; chance = the share)")
    print("| layer | " + " | ".join(f"best {100 * f:g}%" for f in FRACTIONS) + " |")
    print("|---|" + "---|" * len(FRACTIONS))
    for ranking in rankings:
        print(f"| {ranking.layer} | " + " | ".join(f"{100 * ranking.in_top[f]:.1f}%" for f in FRACTIONS) + " |")
    return 0
