"""`pdrop-eval flops`: TFLOPs of a model under a drop config, in the paper's convention."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("flops", help="print inference TFLOPs (paper convention) of a model under a drop config")
    parser.add_argument("--model", default="llava-1.5-7b", help="preset name or path to a config.json / checkpoint")
    parser.add_argument("--image-tokens", type=int, default=None, help="N (default: 576 for LLaVA-1.5, 2880 for LLaVA-NeXT)")
    parser.add_argument(
        "--drop",
        action="append",
        default=None,
        metavar="ARGS",
        help="drop config as the --model_args drop keys, e.g. 'method=pyramid,layer_list=8;16;24,lambda=0.5', "
        "'method=fastv,fastv_k=2,fastv_r=0.5', 'drop_preset=pdrop-128' or 'budget=128' (solved at this N; method=fastv "
        "for FastV's); repeatable (default: vanilla, PDrop 0.5, FastV 2/0.5)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from tabulate import tabulate

    from pdrop_eval.engine.config import DropConfig
    from pdrop_eval.flops import paper_tflops, resolve_dims
    from pdrop_eval.options import resolve_drop_option

    dims = resolve_dims(args.model, args.image_tokens)
    configs = [resolve_drop_option(text, dims, owner="--drop") for text in args.drop] if args.drop else [
        DropConfig.none(),
        DropConfig.pyramid(),
        DropConfig.fastv(),
    ]
    vanilla = paper_tflops(dims, DropConfig.none())
    rows = []
    for config in configs:
        value = paper_tflops(dims, config)
        rows.append([config.describe(), f"{value:.2f}", f"{value / vanilla:.3f}"])
    print(f"{args.model}: d={dims.hidden_size} m={dims.intermediate_size} layers={dims.num_layers} N={dims.image_tokens}")
    print(tabulate(rows, headers=["config", "TFLOPs", "ratio to vanilla"], tablefmt="github"))
    return 0
