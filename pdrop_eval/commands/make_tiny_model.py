"""`pdrop-eval make-tiny-model DIR`: a tiny checkpoint of a supported model family with fresh weights, for offline tests,
demos, and (preset ``synth``) training on the pdrop_synth benchmark."""

from pdrop_eval.tiny import ARCHS, PRESETS, TEXT_ARCHS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("make-tiny-model", help="write a tiny random checkpoint of a supported model family (--arch)")
    parser.add_argument("out_dir", metavar="DIR")
    parser.add_argument("--arch", choices=ARCHS, default=None, help="default: llava, or llava_next for --preset synth")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="tiny",
        help="tiny: random, peaked attention (tests); synth: the untrained model `pdrop-eval train` fits to pdrop_synth",
    )
    parser.add_argument("--text-arch", choices=TEXT_ARCHS, default=None, help="decoder family (default: llama; qwen2 for llava_onevision)")
    parser.add_argument("--num-layers", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="write into DIR even if it is not empty")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from pdrop_eval.report.files import OutputExistsError
    from pdrop_eval.tiny import default_text_arch, make_tiny_model

    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"DIR {out_dir} is a file; give a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not args.force:
        raise OutputExistsError(f"{out_dir} is not empty; pass --force to write the checkpoint into it anyway")

    arch = args.arch or ("llava_next" if args.preset == "synth" else "llava")
    text_arch = args.text_arch or default_text_arch(arch)
    path = make_tiny_model(args.out_dir, arch=arch, text_arch=text_arch, num_layers=args.num_layers, seed=args.seed, spec=PRESETS[args.preset])
    print(f"wrote {args.preset} {arch} ({text_arch}, {args.num_layers} layers) checkpoint to {path}")
    return 0
