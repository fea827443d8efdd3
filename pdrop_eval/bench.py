"""Prefill (or training-step, or generate) timing of vanilla, PyramidDrop and FastV on a random LLaVA model of a chosen shape.

The model is built from a config (no checkpoint), and the prompt holds N image-token ids without
pixel values, so only the language model is timed: the part the methods change. Each method gets
warm-up runs, then the median of timed runs. Ranking overhead is the time spent inside the
scoring function during the PyramidDrop prefill (or training step), as a fraction of it.

With `train=True` a timed run is one training step instead: forward with labels on the last
`answer_tokens` text tokens (the answer; everything before it is instruction) and backward, in
training mode, which is where the paper claims PyramidDrop's training speed-up. With
`generate_tokens=n` it is one greedy `generate` call of n new tokens: the prefill, then n - 1 cached
decoding steps over each method's pruned KV cache (end-to-end latency; throughput is batch / time).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, replace

import torch

import pdrop_eval.engine.scoring as scoring
from pdrop_eval.bench_settings import BenchSettings
from pdrop_eval.engine.apply import apply_drop
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.flops import tflops, tokens_per_layer


def _build_model(settings: BenchSettings):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(settings.seed)
    text_config = LlamaConfig(
        vocab_size=1024,
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        max_position_embeddings=max(4096, settings.image_tokens + settings.text_tokens),
    )
    vision_config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = LlavaConfig(vision_config=vision_config, text_config=text_config, image_token_id=3)
    config.text_config._attn_implementation = settings.attn_implementation
    config._attn_implementation = settings.attn_implementation
    with torch.device(settings.device):  # initialised where it runs: a 7B-shaped init takes minutes on CPU
        model = LlavaForConditionalGeneration(config)
    return model.to(dtype=getattr(torch, settings.dtype)).eval()


def _prompt_ids(settings: BenchSettings, image_token_id: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(settings.seed)
    half = settings.text_tokens // 2
    text = torch.randint(10, 1000, (settings.batch_size, settings.text_tokens), generator=generator)
    image = torch.full((settings.batch_size, settings.image_tokens), image_token_id)
    # system/question text around the image block, the query token last, as in LLaVA prompts
    return torch.cat([text[:, :half], image, text[:, half:]], dim=1).to(settings.device)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device: str, function, *args, **kwargs):
    """(result, seconds) of one call, the device's queued work included."""
    _synchronize(device)
    start = time.perf_counter()
    result = function(*args, **kwargs)
    _synchronize(device)
    return result, time.perf_counter() - start


def _prefill_seconds(model, input_ids, settings: BenchSettings) -> list[float]:
    """`warmup` untimed prefills, then the seconds of each of `repeats` prefills."""
    with torch.inference_mode():
        for _ in range(settings.warmup):
            model(input_ids=input_ids, use_cache=True)
        return [_timed(settings.device, model, input_ids=input_ids, use_cache=True)[1] for _ in range(settings.repeats)]


def _generate_seconds(model, input_ids, settings: BenchSettings) -> list[float]:
    """`warmup` untimed greedy generations of `generate_tokens` new tokens, then the seconds of each of `repeats`."""
    n = settings.generate_tokens
    kwargs = {"attention_mask": torch.ones_like(input_ids), "max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        for _ in range(settings.warmup):
            model.generate(input_ids=input_ids, **kwargs)
        return [_timed(settings.device, model.generate, input_ids=input_ids, **kwargs)[1] for _ in range(settings.repeats)]


def _answer_labels(input_ids: torch.Tensor, settings: BenchSettings) -> torch.Tensor:
    """HF labels supervising the last `answer_tokens` tokens of each prompt; -100 elsewhere."""
    labels = torch.full_like(input_ids, -100)
    labels[:, -settings.answer_tokens :] = input_ids[:, -settings.answer_tokens :]
    return labels


def _train_step_seconds(model, input_ids, settings: BenchSettings) -> list[float]:
    """`warmup` untimed training steps (forward with labels, backward), then the seconds of each of `repeats`."""
    labels = _answer_labels(input_ids, settings)

    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids=input_ids, labels=labels, use_cache=False).loss.backward()

    model.train()
    try:
        for _ in range(settings.warmup):
            step()
        return [_timed(settings.device, step)[1] for _ in range(settings.repeats)]
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def _measure(settings: BenchSettings):
    """The function that times what `settings` asks for: training steps, generate calls or prefills."""
    if settings.train:
        return _train_step_seconds
    if settings.generate_tokens:
        return _generate_seconds
    return _prefill_seconds


@contextmanager
def _timed_scoring(settings: BenchSettings):
    """Accumulate the wall time of every ranking call made by the staged prefill."""
    spent = []
    original = scoring.query_attention

    def timed(*args, **kwargs):
        result, seconds = _timed(settings.device, original, *args, **kwargs)
        spent.append(seconds)
        return result

    scoring.query_attention = timed
    try:
        yield spent
    finally:
        scoring.query_attention = original


def _median_and_peak(measure, model, input_ids, settings: BenchSettings) -> tuple[float, int | None]:
    """Median seconds of `measure`'s timed runs, and the peak CUDA memory they took in bytes (None off CUDA)."""
    on_cuda = settings.device.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(settings.device)
    seconds = statistics.median(measure(model, input_ids, settings))
    return seconds, torch.cuda.max_memory_allocated(settings.device) if on_cuda else None


def run_bench(settings: BenchSettings) -> dict:
    model = _build_model(settings)
    input_ids = _prompt_ids(settings, model.config.image_token_id)
    pyramid = DropConfig.pyramid(layer_list=settings.pyramid_layers(), ratio=settings.ratio)
    fastv = DropConfig.fastv(k=settings.fastv_k, r=settings.fastv_r)
    measure = _measure(settings)

    vanilla_s, vanilla_peak = _median_and_peak(measure, model, input_ids, settings)
    with apply_drop(model, pyramid):
        pdrop_s, pdrop_peak = _median_and_peak(measure, model, input_ids, settings)
        # A separate, already warm pass with the ranking timed, so its timers do not touch pdrop_s.
        with _timed_scoring(settings) as spent:
            instrumented = measure(model, input_ids, replace(settings, warmup=0))
        scoring_overhead = sum(spent) / sum(instrumented)
    with apply_drop(model, fastv):
        fastv_s, fastv_peak = _median_and_peak(measure, model, input_ids, settings)

    def actual_tflops(config: DropConfig) -> float:
        counts = tokens_per_layer(settings.image_tokens, config, settings.num_layers, settings.text_tokens)
        return tflops(settings.hidden_size, settings.intermediate_size, settings.num_layers, counts)

    vanilla_tflops = actual_tflops(DropConfig.none())
    settings_dict = asdict(settings)
    settings_dict["layer_list"] = list(settings.pyramid_layers())
    return {
        "vanilla_s": vanilla_s,
        "pdrop_s": pdrop_s,
        "fastv_s": fastv_s,
        # Forward FLOPs of every token each layer sees; a backward pass costs the same tokens again (twice).
        "theory_pdrop": actual_tflops(pyramid) / vanilla_tflops,
        "theory_fastv": actual_tflops(fastv) / vanilla_tflops,
        "scoring_overhead": scoring_overhead,  # share of the PyramidDrop prefill (or training step, or generate) spent ranking
        # Peak CUDA memory of each method's runs (weights included), bytes; None off CUDA.
        "peak_bytes": {"vanilla": vanilla_peak, "pdrop": pdrop_peak, "fastv": fastv_peak},
        "settings": settings_dict,
    }
