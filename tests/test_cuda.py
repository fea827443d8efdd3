"""The engine's invariants on a CUDA GPU, where the attention kernels and rounding differ from the CPU's.
Skipped without one (CI has none); `experiments/run_gpu.sh` runs it on a GPU machine."""

import pytest
import torch
from test_engine import QUESTIONS, _batch, _generate, _image, _load, _prompt

from pdrop_eval import DropConfig, apply_drop

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _on_cuda(tiny_llava_next, attn="sdpa", dtype=torch.float32, questions=(0, 1), sizes=((128, 64), (64, 64))):
    """The tiny LLaVA-NeXT on the GPU and a padded batch of different anyres sizes (different N per sample)."""
    model, processor = _load(tiny_llava_next, attn=attn, dtype=dtype)
    inputs = _batch(processor, [_prompt(QUESTIONS[q]) for q in questions], [_image(q, size) for q, size in zip(questions, sizes)])
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return model.cuda(), processor, inputs.to("cuda")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_lossless_pyramid_generates_like_stock_on_cuda(tiny_llava_next, attn, dtype):
    model, _, inputs = _on_cuda(tiny_llava_next, attn, dtype)
    stock = _generate(model, inputs)
    with apply_drop(model, DropConfig.pyramid(ratio=1.0)):
        assert torch.equal(_generate(model, inputs), stock)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_cuda_keeps_the_tokens_the_cpu_keeps(tiny_llava_next, attn):
    model, _, inputs = _on_cuda(tiny_llava_next, attn)
    kept = {}
    for device in ("cuda", "cpu"):
        with apply_drop(model.to(device), DropConfig.pyramid(ratio=0.5)) as handle:
            _generate(model, inputs.to(device), max_new_tokens=1, min_new_tokens=1)
            kept[device] = [stats.kept for stats in handle.last_stats]
    assert kept["cuda"] == kept["cpu"]


def test_sample_output_does_not_depend_on_batch_on_cuda(tiny_llava_next):
    questions, sizes = (0, 1, 2), ((64, 128), (128, 128), (64, 64))
    model, processor, batched = _on_cuda(tiny_llava_next, questions=questions, sizes=sizes)
    with apply_drop(model, DropConfig.pyramid(ratio=0.5)) as handle:
        together = _generate(model, batched)
        together_kept = [stats.kept for stats in handle.last_stats]
        for b, (question, size) in enumerate(zip(questions, sizes)):
            alone = _generate(model, _batch(processor, [_prompt(QUESTIONS[question])], [_image(question, size)]).to("cuda"))
            assert torch.equal(alone[0], together[b])
            assert handle.last_stats[0].kept == together_kept[b]


@pytest.mark.parametrize("method", ["pyramid", "fastv"])
def test_cached_decoding_matches_uncached_pruned_forward_on_cuda(tiny_llava_next, method):
    model, _, inputs = _on_cuda(tiny_llava_next, questions=(1, 3))
    config = DropConfig.pyramid(ratio=0.5) if method == "pyramid" else DropConfig.fastv(k=2, r=0.5)
    prompt_len, steps = inputs["input_ids"].shape[1], 5
    with apply_drop(model, config) as handle, torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True)
        mask = torch.cat([inputs["attention_mask"], torch.ones(2, steps - 1, dtype=torch.long, device="cuda")], dim=1)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        with handle.query_positions(torch.full((2,), prompt_len - 1)):
            uncached = model(
                input_ids=out.sequences[:, :-1], attention_mask=mask, position_ids=positions,
                pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"], use_cache=False,
            ).logits[:, prompt_len - 1 :]
    torch.testing.assert_close(torch.stack(out.logits, dim=1), uncached, rtol=1e-4, atol=1e-4)
