"""`pdrop-eval make-synth`: write the pdrop_synth benchmark (train and test splits, VLMEvalKit TSV)."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "make-synth", help="write the pdrop_synth fine-grained benchmark: train/test parquet and the test split as a VLMEvalKit TSV"
    )
    parser.add_argument("--out-dir", default=None, help="folder (default: pdrop_eval/tasks/pdrop_synth/data, where the lmms-eval task reads)")
    parser.add_argument("--train-images", type=int, default=6000, help="train rows, one image each")
    parser.add_argument("--turns", type=int, default=3, help="questions per train image (a multi-turn conversation)")
    parser.add_argument("--test-questions", type=int, default=400, help="test rows, one question and image each")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args) -> int:
    from pdrop_eval.synth import DEFAULT_FOLDER, write_synth

    written = write_synth(args.out_dir or DEFAULT_FOLDER, args.train_images, args.test_questions, args.turns, args.seed)
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    return 0
