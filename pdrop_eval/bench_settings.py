"""Settings of `pdrop-eval bench` (`pdrop_eval.bench`), plain data checked without loading torch, so
that the command line can build its parser from them and stay light."""

from __future__ import annotations

from dataclasses import dataclass

BENCH_DTYPES = ("float32", "float16", "bfloat16")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")


def check_attn_implementation(value: str) -> None:
    """The --attn-implementation check shared by `pdrop-eval bench` and `pdrop-eval train`."""
    if value not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"--attn-implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got {value!r}")


@dataclass(frozen=True)
class BenchSettings:
    # The paper's depth (32 layers, so boundaries 8/16/24 and FastV K=2 as published) and LLaMA's
    # FFN ratio, narrowed so that a CPU run takes seconds; image tokens dominate as in LLaVA-1.5.
    hidden_size: int = 768
    intermediate_size: int = 2048
    num_layers: int = 32
    num_heads: int = 12
    num_kv_heads: int = 12
    image_tokens: int = 576
    text_tokens: int = 32
    answer_tokens: int = 8  # supervised text tokens at the end of the prompt (train mode)
    train: bool = False  # time forward + backward in training mode instead of prefill
    generate_tokens: int = 0  # > 0: time greedy generate() of this many new tokens (prefill + cached decoding) instead
    batch_size: int = 1
    layer_list: tuple[int, ...] | None = None  # default: the paper's quarters of the depth
    ratio: float = 0.5
    fastv_k: int = 2
    fastv_r: float = 0.5
    dtype: str = "float32"
    device: str = "cpu"
    attn_implementation: str = "sdpa"
    warmup: int = 1
    repeats: int = 5
    seed: int = 0

    def __post_init__(self):
        """Every setting checked before a model is built; the message names the command-line flag."""
        positive = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "image_tokens", "batch_size", "repeats")
        for name in (*positive, "text_tokens", "warmup", "generate_tokens"):
            value = getattr(self, name)
            minimum = 1 if name in positive else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}")
        if self.train and self.generate_tokens:
            raise ValueError("--train and --generate-tokens time different things; give one of them")
        if self.train and not 0 < self.answer_tokens < self.text_tokens:
            raise ValueError(f"--answer-tokens must be between 1 and --text-tokens - 1 ({self.text_tokens - 1}), got {self.answer_tokens}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"--num-heads ({self.num_heads}) must divide --hidden-size ({self.hidden_size})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"--num-kv-heads ({self.num_kv_heads}) must divide --num-heads ({self.num_heads})")
        if self.dtype not in BENCH_DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(BENCH_DTYPES)}, got {self.dtype!r}")
        check_attn_implementation(self.attn_implementation)
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--device {self.device}: CUDA is not available on this machine (torch {torch.__version__})")

    @property
    def timed_name(self) -> str:
        """What one timed run is: "training step", "generate" or "prefill"."""
        return "training step" if self.train else "generate" if self.generate_tokens else "prefill"

    def timed_call(self) -> str:
        """What one timed run is, in words, with its details."""
        if self.train:
            return f"{self.timed_name} (forward + backward, {self.answer_tokens} answer tokens)"
        if self.generate_tokens:
            return f"{self.timed_name} ({self.generate_tokens} new tokens, greedy)"
        return self.timed_name

    def pyramid_layers(self) -> tuple[int, ...]:
        if self.layer_list is not None:
            return tuple(self.layer_list)
        return tuple(self.num_layers * q // 4 for q in (1, 2, 3))
