"""`pdrop-eval bench`: prefill (or, with --train, training-step; with --generate-tokens, generate) time of
vanilla, PyramidDrop and FastV next to their FLOPs ratios."""

from dataclasses import fields


def add_parser(subparsers) -> None:
    from pdrop_eval.bench_settings import BenchSettings

    parser = subparsers.add_parser("bench", help="time prefill (or --train: forward + backward) of vanilla / PyramidDrop / FastV on a random model")
    defaults = BenchSettings()
    for field in fields(BenchSettings):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "layer_list":
            parser.add_argument(flag, type=int, nargs="+", default=None, help="PyramidDrop boundaries (default: quarters of the depth)")
        elif field.name == "train":
            parser.add_argument(flag, action="store_true", help="time training steps (forward with labels + backward) instead of prefill")
        elif field.name == "generate_tokens":
            parser.add_argument(flag, type=int, default=0, metavar="N", help="time greedy generate() of N new tokens instead of prefill")
        else:
            parser.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


def run(args) -> int:
    import json

    import torch
    from tabulate import tabulate

    from pdrop_eval.compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # before the engine imports transformers
    from pdrop_eval.bench import run_bench
    from pdrop_eval.bench_settings import BenchSettings

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    settings = BenchSettings(**{f.name: getattr(args, f.name) for f in fields(BenchSettings)})
    result = run_bench(settings)
    if args.json:
        print(json.dumps(result))
        return 0
    def spread(values: dict, scale: float = 1.0, digits: int = 3) -> str:
        return f"{values['median'] * scale:.{digits}f} ({values['min'] * scale:.{digits}f}-{values['max'] * scale:.{digits}f})"

    seconds, ratios = result["seconds"], result["time_ratio"]
    rows = [
        ["vanilla", spread(seconds["vanilla"], 1e3, 1), "1", "1.000"],
        ["PyramidDrop", spread(seconds["pdrop"], 1e3, 1), spread(ratios["pdrop"]), f"{result['theory_pdrop']:.3f}"],
        ["FastV", spread(seconds["fastv"], 1e3, 1), spread(ratios["fastv"]), f"{result['theory_fastv']:.3f}"],
    ]
    headers = [f"{settings.timed_name} ms", "time ratio to vanilla", "prefill FLOPs ratio" if settings.generate_tokens else "FLOPs ratio"]
    headers = ["method", *headers]
    peaks = result["peak_bytes"]
    if peaks["vanilla"] is not None:  # measured on CUDA
        headers.append("peak GiB")
        for row, method in zip(rows, ("vanilla", "pdrop", "fastv")):
            row.append(f"{peaks[method] / 2**30:.2f}")
    s = result["settings"]
    print(
        f"{settings.timed_call()}, d={s['hidden_size']} m={s['intermediate_size']} layers={s['num_layers']} "
        f"N={s['image_tokens']} text={s['text_tokens']} batch={s['batch_size']} {s['dtype']} on {s['device']} "
        f"({s['attn_implementation']}); median (min-max) of {s['repeats']} rounds in which the methods take turns, "
        f"after {s['warmup']} untimed warm-up round(s); a time ratio pairs the runs of one round"
    )
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    print(f"ranking overhead: {result['scoring_overhead'] * 100:.2f}% of PyramidDrop {settings.timed_name}")
    return 0
