"""`pdrop-eval show`: run a prompt under a drop config and draw which image regions each stage keeps."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "show",
        help="answer a question about pictures under a drop config and draw the regions each stage keeps",
        description="Runs the checkpoint on the pictures and the question, prints the answer, and writes one PNG per "
        "picture: the original and one panel per drop stage with the dropped regions dimmed (LLaVA-NeXT: anyres grid "
        "with its newline tokens at the right, and the base tile).",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="picture files, in prompt order")
    parser.add_argument("--question", required=True, help="the question; <image> marks where each picture goes (default: pictures first)")
    parser.add_argument("--pretrained", required=True, help="LLaVA-1.5 / LLaVA-NeXT checkpoint (folder or HF Hub id)")
    parser.add_argument(
        "--drop",
        default="layer_list=8;16;24,lambda=0.5",
        metavar="ARGS",
        help="drop config as key=value pairs, e.g. 'fastv_k=2,fastv_r=0.5' (default: PyramidDrop %(default)s)",
    )
    parser.add_argument("--out", default=".", metavar="DIR", help="folder for the PNGs (default: current folder)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--pad-to-square", metavar="true|false", help="LLaVA-1.5: pad pictures to a square first (default: true for LLaVA-1.5, as the paper evaluated it)"
    )
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16 (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite existing PNGs")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from pdrop_eval.engine.config import DropConfig
    from pdrop_eval.options import boolean
    from pdrop_eval.report.files import check_writable
    from pdrop_eval.show import caption, drop_stages, write_pictures
    from pdrop_eval.token_map import image_token_regions
    from pdrop_eval.wrapper import LlavaRunner, Query

    paths = [Path(image) for image in args.images]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
    outputs = [Path(args.out) / f"image{number}_{path.stem}.png" for number, path in enumerate(paths, 1)]
    for output in outputs:
        check_writable(output, args.force)  # before the model loads, so a refusal costs nothing
    drop = DropConfig.from_args(args.drop)
    query = Query.from_text(args.question, paths)
    pad_to_square = None if args.pad_to_square is None else boolean("--pad-to-square", args.pad_to_square)
    runner = LlavaRunner.load(args.pretrained, drop=drop, dtype=args.dtype, device=args.device, pad_to_square=pad_to_square)
    answer = runner.generate([query], max_new_tokens=args.max_new_tokens)[0]
    print(f"answer: {answer.text.strip()}")
    stages = drop_stages(drop, runner.model_dims["num_layers"], answer.stats.kept)
    for stage in stages:
        print(f"{stage.label}: {len(stage.kept)} of {answer.stats.num_image_tokens} image tokens kept")
    regions = image_token_regions(runner.processor, [image.size for image in query.images], runner.pad_to_square)
    if len(regions) != answer.stats.num_image_tokens:
        raise ValueError(f"the token map names {len(regions)} image tokens but the model saw {answer.stats.num_image_tokens}")
    text = caption(args.question, answer.text.strip(), drop, args.pretrained)
    for path in write_pictures(query.images, regions, stages, text, outputs, args.force):
        print(f"wrote {path}")
    return 0
