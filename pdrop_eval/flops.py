"""Inference FLOPs of the language model, in the paper's convention (SPEC section 3).

Per decoder layer with n tokens: 4·n·d² + 2·n²·d + 3·n·d·m (attention projections, attention
scores and values, the three FFN matrices). The paper counts image tokens only and excludes the
ranking overhead; the "actual" figure uses the real per-layer token counts, text included.

Grouped-query attention (Qwen2.5-VL, LLaVA-OneVision, Mistral-based LLaVA-NeXT) shrinks the key and
value projections to kv = num_key_value_heads·head_dim columns: the projections then cost
2·n·d² + 2·n·d·kv, which is the paper's 4·n·d² when kv = d (LLaVA-1.5's and Vicuna's full attention).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pdrop_eval.engine.config import DropConfig
from pdrop_eval.models import family_of_config, read_config_json


@dataclass(frozen=True)
class ModelDims:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    image_tokens: int  # N of the paper's FLOPs column (LLaVA-NeXT: its maximum, 2880)
    kv_size: int | None = None  # key (= value) projection width under grouped-query attention; None: hidden_size

    def tflops(self, tokens_per_layer) -> float:
        """TFLOPs of the decoder with `tokens_per_layer` (one int for all layers or one per layer)."""
        return tflops(self.hidden_size, self.intermediate_size, self.num_layers, tokens_per_layer, self.kv_size)


PRESETS = {
    "llava-1.5-7b": ModelDims(4096, 11008, 32, 576),
    "llava-1.5-13b": ModelDims(5120, 13824, 40, 576),
    "llava-next-7b": ModelDims(4096, 11008, 32, 2880),
    "llava-next-13b": ModelDims(5120, 13824, 40, 2880),
}


def layer_flops(n: int, hidden_size: int, intermediate_size: int, kv_size: int | None = None) -> float:
    d, m = hidden_size, intermediate_size
    kv = d if kv_size is None else kv_size
    return 2 * n * d * d + 2 * n * d * kv + 2 * n * n * d + 3 * n * d * m


def tflops(hidden_size: int, intermediate_size: int, num_layers: int, tokens_per_layer, kv_size: int | None = None) -> float:
    """TFLOPs of `num_layers` layers; `tokens_per_layer` is one int for all or one per layer; `kv_size`:
    the key/value projection width under grouped-query attention (None: full attention)."""
    counts = [tokens_per_layer] * num_layers if isinstance(tokens_per_layer, int) else list(tokens_per_layer)
    if len(counts) != num_layers:
        raise ValueError(f"tokens_per_layer has {len(counts)} entries for {num_layers} layers")
    return sum(layer_flops(n, hidden_size, intermediate_size, kv_size) for n in counts) / 1e12


def tokens_per_layer(num_image_tokens: int, config: DropConfig, num_layers: int, num_text_tokens: int = 0) -> list[int]:
    """Tokens each layer sees under `config`: the image tokens left plus `num_text_tokens`."""
    return [n + num_text_tokens for n in config.image_tokens_per_layer(num_image_tokens, num_layers)]


def paper_tflops(dims: ModelDims, config: DropConfig) -> float:
    """The paper's "Infer FLOPs (T)" column: image tokens only."""
    return dims.tflops(tokens_per_layer(dims.image_tokens, config, dims.num_layers))


def dims_from_config(path: str | Path, image_tokens: int | None = None) -> ModelDims:
    """Read the language-model dimensions from a HF config.json (LLaVA or a bare decoder)."""
    config = read_config_json(path)
    try:
        return dims_from_config_dict(config, image_tokens)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def dims_from_config_dict(config: dict, image_tokens: int | None = None) -> ModelDims:
    """Dimensions from a HF config as a dict (config.json, or `PretrainedConfig.to_dict()`); N is the
    checkpoint's own (`image_tokens_from_config`) unless given, 576 for a bare decoder."""
    text = config.get("text_config", config)
    try:
        dims = (text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"])
    except KeyError as error:
        raise ValueError(f"the config lacks the language-model field {error.args[0]!r}") from None
    if image_tokens is None:
        image_tokens = image_tokens_from_config(config)[0] if "vision_config" in config else 576
    return ModelDims(*dims, image_tokens, kv_size_of(text))


def kv_size_of(text_config) -> int | None:
    """num_key_value_heads·head_dim of a decoder config (dict or HF config object) using grouped-query
    attention, None where keys and values are as wide as the hidden states."""
    read = text_config.get if isinstance(text_config, dict) else lambda key, default=None: getattr(text_config, key, default)
    heads, kv_heads = read("num_attention_heads"), read("num_key_value_heads")
    if heads is None or kv_heads is None or kv_heads == heads:
        return None
    head_dim = read("head_dim") or read("hidden_size") // heads
    return kv_heads * head_dim


def image_tokens_from_config(config: dict) -> tuple[int, bool]:
    """(N, varies) of a vision-language config dict: the most image tokens one image becomes in the
    checkpoint's model family, and whether N varies per image (`ModelFamily.max_image_tokens`)."""
    return family_of_config(config).max_image_tokens(config)


def resolve_dims(model: str, image_tokens: int | None = None) -> ModelDims:
    """A preset name (see PRESETS) or a path to a config.json / checkpoint folder."""
    if image_tokens is not None and (isinstance(image_tokens, bool) or not isinstance(image_tokens, int) or image_tokens < 1):
        raise ValueError(f"--image-tokens (N) must be a positive integer, got {image_tokens!r}")
    if model in PRESETS:
        dims = PRESETS[model]
        return dims if image_tokens is None else replace(dims, image_tokens=image_tokens)
    if Path(model).exists():
        return dims_from_config(model, image_tokens)
    raise ValueError(f"unknown model {model!r}: give a preset ({', '.join(PRESETS)}) or a path to config.json")
