"""`pdrop-eval train`: fine-tune a checkpoint of a supported family (LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL, ...) on a local dataset,
optionally with a drop config."""

from dataclasses import fields, replace


def add_parser(subparsers) -> None:
    from pdrop_eval.options import boolean
    from pdrop_eval.train_settings import TrainSettings

    parser = subparsers.add_parser(
        "train",
        help="fine-tune a vision-language checkpoint on a local VQA dataset (transformers' Trainer), optionally with PyramidDrop / FastV",
        description="Columns of --data (.parquet/.json/.jsonl): image (bytes or a path relative to the file), question, "
        "answer (strings, or equal-length lists for multi-turn conversations). Only the answers are supervised.",
    )
    parser.add_argument("--pretrained", required=True, help="checkpoint folder or Hub id of a supported family (LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL, ...)")
    parser.add_argument("--data", required=True, help="training rows (.parquet, .json or .jsonl)")
    parser.add_argument("--output-dir", required=True, help="where the trained model, processor and train_summary.json go")
    parser.add_argument(
        "--drop", default="",
        help="drop config to train with, as the --model_args drop keys, e.g. 'layer_list=8;16;24,lambda=0.5', 'fastv_k=2,fastv_r=0.5' "
        "or 'budget=25%%' (solved for the checkpoint)",
    )
    helps = {
        "epochs": "passes over the data (ignored when --max-steps is set)",
        "max_steps": "optimizer steps (-1: use --epochs)",
        "batch_size": "rows per device and step",
        "grad_accum": "gradient accumulation steps",
        "warmup": "linear warm-up: a fraction of the steps (< 1) or a number of steps",
        "scheduler": "learning-rate schedule (transformers' names: cosine, linear, constant, ...)",
        "save_steps": "write a Trainer checkpoint every N steps (0: only the final model)",
        "max_length": "refuse rows longer than this many tokens, image tokens included (default: no limit)",
        "precision": "float32, or bfloat16 / float16 mixed precision",
        "save_dtype": "dtype of the saved weights: float32, float16 or bfloat16",
        "workers": "data-loader worker processes",
        "sequential": "take the rows in file order (a curriculum, e.g. pdrop_synth's train split) instead of shuffled",
        "attn_implementation": "eager, sdpa or flash_attention_2 (default: transformers' choice); on a CPU, eager is the "
        "faster one for models with many small heads",
    }
    defaults = {f.name: f.default for f in fields(TrainSettings)}
    for field in fields(TrainSettings):
        if field.name in ("pretrained", "data", "output_dir", "drop", "freeze", "pad_to_square"):
            continue
        flag = "--" + field.name.replace("_", "-")
        default = defaults[field.name]
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=helps.get(field.name))
        else:
            kind = {"max_length": int, "attn_implementation": str}.get(field.name, type(default))
            parser.add_argument(flag, type=kind, default=default, help=helps.get(field.name))
    parser.add_argument(
        "--freeze", type=lambda text: tuple(part.strip() for part in text.split(",") if part.strip()), default=(),
        help="comma-separated parts to keep as loaded: vision_tower, projector (LLaVA's fine-tuning freezes the vision tower; Qwen2.5-VL's projector is its merger, inside its vision tower)",
    )
    parser.add_argument(
        "--pad-to-square", type=lambda text: boolean("--pad-to-square", text), default=None,
        help="true/false: pad images to a square with the mean colour (default: as evaluation, i.e. true for LLaVA-1.5 only)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from pdrop_eval.options import positive_int, resolve_drop_option
    from pdrop_eval.train import train
    from pdrop_eval.train_settings import TrainSettings

    settings = TrainSettings(**{f.name: getattr(args, f.name) for f in fields(TrainSettings)})  # checks every count
    if settings.drop:  # the --model_args drop keys; budget=... solved for the checkpoint, then trained as that schedule
        settings = replace(settings, drop=resolve_drop_option(settings.drop, settings.pretrained, owner="--drop").to_args())
    if args.threads is not None:
        torch.set_num_threads(positive_int("--threads", args.threads))
    summary = train(settings)
    print(
        f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s ({summary['seconds_per_step']:.2f} s/step), "
        f"final mean loss {summary['train_loss']:.4f}; model and processor saved to {settings.output_dir}"
    )
    return 0
