"""Settings of `pdrop-eval train` (`pdrop_eval.train`), plain data without torch, so that the command
line can build its parser from them and stay light."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    """What `pdrop-eval train` takes; the optimisation fields map one to one onto TrainingArguments."""

    pretrained: str
    data: str
    output_dir: str
    drop: str = ""  # DropConfig.from_args fragment; empty: no drop
    freeze: tuple[str, ...] = ()  # parts kept as loaded: "vision_tower", "projector"
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: float = 0.05  # a fraction of the steps (< 1) or a number of steps
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 0  # 0: no intermediate checkpoints
    seed: int = 0
    max_length: int | None = None
    pad_to_square: bool | None = None  # None: as evaluation does by default (LLaVA-1.5 pads, LLaVA-NeXT does not)
    gradient_checkpointing: bool = False
    precision: str = "float32"  # float32, or bfloat16 / float16 mixed precision
    save_dtype: str = "float32"
    workers: int = 0
    sequential: bool = False  # rows in file order (a curriculum), instead of shuffled
    attn_implementation: str | None = None  # None: transformers' default (sdpa)

    def __post_init__(self):
        """Refuse counts Trainer would read otherwise than written (max_steps 0 trains one step, any
        negative one means "use epochs", 0 epochs saves an untrained copy), naming the flag."""
        _check(self.max_steps == -1 or _is_int(self.max_steps, 1), "max_steps", self.max_steps, "-1 (train for --epochs) or a positive integer")
        _check(_is_number(self.epochs) and self.epochs > 0, "epochs", self.epochs, "a positive number")
        for name in ("batch_size", "grad_accum", "logging_steps"):
            _check(_is_int(getattr(self, name), 1), name, getattr(self, name), "a positive integer")
        _check(self.max_length is None or _is_int(self.max_length, 1), "max_length", self.max_length, "a positive integer")
        _check(_is_int(self.save_steps, 0), "save_steps", self.save_steps, "0 (only the final model) or a positive integer")
        _check(_is_int(self.workers, 0), "workers", self.workers, "an integer >= 0")
        _check(_is_number(self.lr) and self.lr > 0, "lr", self.lr, "a positive number")
        _check(_is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(_is_number(self.max_grad_norm) and self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "a number >= 0 (0: no clipping)")
        # transformers reads a warm-up below 1 as a fraction of the steps and one of 1 or more as steps
        whole_steps = _is_number(self.warmup) and self.warmup >= 1 and float(self.warmup).is_integer()
        _check(whole_steps or (_is_number(self.warmup) and 0 <= self.warmup < 1), "warmup", self.warmup,
               "a fraction of the steps in [0, 1) or a whole number of steps")

    def training_arguments(self):
        from transformers import TrainingArguments

        if self.precision not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"--precision must be float32, bfloat16 or float16, got {self.precision!r}")
        return TrainingArguments(
            output_dir=self.output_dir,
            num_train_epochs=self.epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.batch_size,
            gradient_accumulation_steps=self.grad_accum,
            learning_rate=self.lr,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup,
            lr_scheduler_type=self.scheduler,
            max_grad_norm=self.max_grad_norm,
            logging_steps=self.logging_steps,
            save_strategy="steps" if self.save_steps else "no",
            save_steps=self.save_steps or 500,
            seed=self.seed,
            activation_checkpointing=self.gradient_checkpointing,
            bf16=self.precision == "bfloat16",
            fp16=self.precision == "float16",
            dataloader_num_workers=self.workers,
            train_sampling_strategy="sequential" if self.sequential else "random",
            remove_unused_columns=False,  # the collator's keys are the model's inputs
            report_to="none",
        )


def _is_int(value, lowest: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lowest


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(holds: bool, name: str, value, what: str) -> None:
    if not holds:
        raise ValueError(f"--{name.replace('_', '-')} must be {what}, got {value!r}")
