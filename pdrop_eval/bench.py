"""Prefill (or training-step, or generate) timing of vanilla, PyramidDrop and FastV on a random LLaVA model of a chosen shape.

The model is built from a config (no checkpoint), and the prompt holds N image-token ids without
pixel values, so only the language model is timed: the part the methods change. After untimed warm-up
rounds the methods take turns, one timed run each per round (vanilla, PyramidDrop, FastV, vanilla, ...),
so that a machine that drifts slows all of them alike; each time and each time ratio (taken round by
round) is reported as its median and range. Ranking overhead is the time spent inside the scorer
(a timing `Scorer` around PyramidDrop's own, passed to `apply_drop`) during the PyramidDrop prefill (or
training step), as a fraction of it.

With `train=True` a timed run is one training step instead: forward with labels on the last
`answer_tokens` text tokens (the answer; everything before it is instruction) and backward, in
training mode, which is where the paper claims PyramidDrop's training speed-up. With
`generate_tokens=n` it is one greedy `generate` call of n new tokens: the prefill, then n - 1 cached
decoding steps over each method's pruned KV cache (end-to-end latency; throughput is batch / time).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace

import torch

from pdrop_eval.bench_settings import BenchSettings
from pdrop_eval.engine.apply import apply_drop
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.engine.scoring import Scorer
from pdrop_eval.flops import kv_size_of, tflops, tokens_per_layer


def build_model(settings: BenchSettings):
    """A randomly initialised LLaVA-1.5 model of the settings' decoder shape (a one-layer vision tower:
    only the language model is timed), built on the settings' device, in their dtype, eval mode."""
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


def prompt_ids(settings: BenchSettings, image_token_id: int) -> torch.Tensor:
    """(batch_size, text_tokens + image_tokens) ids: half the text, the image block, the other half."""
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


def _answer_labels(input_ids: torch.Tensor, settings: BenchSettings) -> torch.Tensor:
    """HF labels supervising the last `answer_tokens` tokens of each prompt; -100 elsewhere."""
    labels = torch.full_like(input_ids, -100)
    labels[:, -settings.answer_tokens :] = input_ids[:, -settings.answer_tokens :]
    return labels


def _call(model, input_ids, settings: BenchSettings):
    """One run of what `settings` time, as a function without arguments (its inputs made once): a
    training step (forward with labels, backward), a greedy generate of `generate_tokens`, or a prefill."""
    if settings.train:
        labels = _answer_labels(input_ids, settings)

        def step():
            model.zero_grad(set_to_none=True)
            model(input_ids=input_ids, labels=labels, use_cache=False).loss.backward()

        return step
    if settings.generate_tokens:
        n = settings.generate_tokens
        kwargs = {"attention_mask": torch.ones_like(input_ids), "max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "pad_token_id": 0}
        return lambda: model.generate(input_ids=input_ids, **kwargs)
    return lambda: model(input_ids=input_ids, use_cache=True)


@contextmanager
def _run_mode(model, settings: BenchSettings):
    """Training mode for training steps (gradients cleared afterwards), inference mode otherwise."""
    if not settings.train:
        with torch.inference_mode():
            yield
        return
    model.train()
    try:
        yield
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def _seconds(model, input_ids, settings: BenchSettings) -> list[float]:
    """`warmup` untimed runs of the model as it is, then the seconds of each of `repeats`."""
    call = _call(model, input_ids, settings)
    with _run_mode(model, settings):
        for _ in range(settings.warmup):
            call()
        return [_timed(settings.device, call)[1] for _ in range(settings.repeats)]


def variants(settings: BenchSettings) -> dict[str, DropConfig]:
    """What is timed, in the order of each round: vanilla, PyramidDrop, FastV."""
    return {
        "vanilla": DropConfig.none(),
        "pdrop": DropConfig.pyramid(layer_list=settings.pyramid_layers(), ratio=settings.ratio),
        "fastv": DropConfig.fastv(k=settings.fastv_k, r=settings.fastv_r),
    }


def _interleaved_seconds(model, input_ids, settings: BenchSettings, configs: dict[str, DropConfig]):
    """({variant: seconds of its `repeats` timed runs}, {variant: peak CUDA bytes, None off CUDA}).

    The variants take turns (A B C A B C ...), so that what drifts while a benchmark runs (clocks,
    other load on the machine) falls on all of them alike; `warmup` untimed rounds come first."""
    on_cuda = settings.device.startswith("cuda")
    seconds = {name: [] for name in configs}
    peaks = dict.fromkeys(configs)
    with _run_mode(model, settings):
        for round_number in range(settings.warmup + settings.repeats):
            for name, config in configs.items():
                with apply_drop(model, config) if config.method != "none" else nullcontext():
                    call = _call(model, input_ids, settings)
                    if round_number < settings.warmup:
                        call()
                        continue
                    if on_cuda:
                        torch.cuda.reset_peak_memory_stats(settings.device)
                    seconds[name].append(_timed(settings.device, call)[1])
                    if on_cuda:
                        peaks[name] = max(peaks[name] or 0, torch.cuda.max_memory_allocated(settings.device))
    return seconds, peaks


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


class _TimedScorer(Scorer):
    """Another scorer, each of its `scores` calls timed (device-synchronised) into `spent`."""

    def __init__(self, scorer: Scorer, device: str, spent: list):
        self.scorer, self.device, self.spent = scorer, device, spent

    def attach(self, model) -> list:
        return self.scorer.attach(model)

    def for_prompt(self, prompt) -> Scorer:
        return _TimedScorer(self.scorer.for_prompt(prompt), self.device, self.spent)

    def scores(self, view):
        result, seconds = _timed(self.device, self.scorer.scores, view)
        self.spent.append(seconds)
        return result


def run_bench(settings: BenchSettings) -> dict:
    model = build_model(settings)
    input_ids = prompt_ids(settings, model.config.image_token_id)
    configs = variants(settings)
    pyramid, fastv = configs["pdrop"], configs["fastv"]
    seconds, peaks = _interleaved_seconds(model, input_ids, settings, configs)
    measure = _seconds  # the ranking-overhead pass below times PyramidDrop's runs alone
    # A separate, already warm pass with the ranking timed, so its timers do not touch the timed rounds.
    spent = []
    with apply_drop(model, pyramid, scorer=_TimedScorer(pyramid.parts()[0], settings.device, spent)):
        instrumented = measure(model, input_ids, replace(settings, warmup=0))
    scoring_overhead = sum(spent) / sum(instrumented)

    def actual_tflops(config: DropConfig) -> float:
        counts = tokens_per_layer(settings.image_tokens, config, settings.num_layers, settings.text_tokens)
        return tflops(settings.hidden_size, settings.intermediate_size, settings.num_layers, counts, kv_size_of(model.config.get_text_config()))

    vanilla_tflops = actual_tflops(DropConfig.none())
    settings_dict = asdict(settings)
    settings_dict["layer_list"] = list(settings.pyramid_layers())
    return {
        # seconds of each timed run, and their median and range; time ratios pair the runs of one round
        "seconds": {name: _spread(runs) for name, runs in seconds.items()},
        "time_ratio": {
            name: _spread([run / vanilla for run, vanilla in zip(seconds[name], seconds["vanilla"])]) for name in ("pdrop", "fastv")
        },
        # Forward FLOPs of every token each layer sees; a backward pass costs the same tokens again (twice).
        "theory_pdrop": actual_tflops(pyramid) / vanilla_tflops,
        "theory_fastv": actual_tflops(fastv) / vanilla_tflops,
        "scoring_overhead": scoring_overhead,  # share of the PyramidDrop prefill (or training step, or generate) spent ranking
        # Peak CUDA memory of each method's runs (weights included), bytes; None off CUDA.
        "peak_bytes": peaks,
        "settings": settings_dict,
    }
