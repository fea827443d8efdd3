"""The random-drop control (`DropConfig.random`) in the engine, on the tiny LLaVA-NeXT checkpoint: the
schedule's counts, nested stages in original order, a draw that is reproducible, batch invariant and
fixed by the context (not a scored continuation), and uniform over the image tokens."""

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from pdrop_eval import DropConfig, apply_drop
from pdrop_eval.engine.scoring import PromptView, StageView, select_top_images

pytestmark = pytest.mark.newest_transformers  # also run on the newest transformers release (.ci/run)

SCHEDULE = DropConfig.pyramid()  # 8/16/24, λ=0.5
CONTROL = DropConfig.random(SCHEDULE, seed=0)
PROMPT = "USER: <image>\nWhat color is the square in the image? ASSISTANT:"
OTHER_PROMPT = "USER: <image>\nIs there a red circle? ASSISTANT:"


def _image(seed: int, size) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8).numpy())


SQUARE, WIDE = _image(0, (64, 64)), _image(1, (128, 64))


@pytest.fixture(scope="module")
def llava_next(tiny_llava_next):
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_next, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(tiny_llava_next)


def _prefill_stats(llava_next, config, prompts, images, query_positions=None) -> list[dict]:
    model, processor = llava_next
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    with apply_drop(model, config) as handle, torch.no_grad():
        if query_positions is None:
            model(**inputs)
        else:
            with handle.query_positions(query_positions):
                model(**inputs)
        return handle.last_stats


def test_control_keeps_the_schedules_counts_nested_in_original_order(llava_next):
    stats = _prefill_stats(llava_next, CONTROL, [PROMPT, OTHER_PROMPT], [WIDE, SQUARE])
    assert stats[0].num_image_tokens != stats[1].num_image_tokens  # a ragged anyres batch
    for sample in stats:
        n = sample.num_image_tokens
        assert list(sample.image_tokens_per_layer) == SCHEDULE.image_tokens_per_layer(n, 32)
        assert [len(kept) for kept in sample.kept] == SCHEDULE.kept_counts(n)
        for kept, later in zip(sample.kept, sample.kept[1:]):
            assert list(kept) == sorted(kept) and set(later) <= set(kept)


def test_draw_is_reproducible_and_the_same_alone_or_in_a_padded_batch(llava_next):
    alone = _prefill_stats(llava_next, CONTROL, [PROMPT], [SQUARE])[0].kept
    assert _prefill_stats(llava_next, CONTROL, [PROMPT], [SQUARE])[0].kept == alone
    # beside a longer sample (more image tokens, other text) the square one is left-padded
    assert _prefill_stats(llava_next, CONTROL, [OTHER_PROMPT, PROMPT], [WIDE, SQUARE])[1].kept == alone
    assert _prefill_stats(llava_next, CONTROL, [PROMPT, OTHER_PROMPT], [SQUARE, WIDE])[0].kept == alone


def test_draw_differs_from_attention_ranking_and_with_the_seed(llava_next):
    control = _prefill_stats(llava_next, CONTROL, [PROMPT], [SQUARE])[0].kept
    ranked = _prefill_stats(llava_next, SCHEDULE, [PROMPT], [SQUARE])[0].kept
    reseeded = _prefill_stats(llava_next, DropConfig.random(SCHEDULE, seed=1), [PROMPT], [SQUARE])[0].kept
    assert [len(kept) for kept in control] == [len(kept) for kept in ranked]
    assert control[0] != ranked[0]
    assert control[0] != reseeded[0]


def test_a_scored_continuation_does_not_change_the_draw(llava_next):
    """Log-likelihood ranks with the last context token; the draw must depend on the context only."""
    _model, processor = llava_next
    context_length = processor(images=[SQUARE], text=[PROMPT], return_tensors="pt").input_ids.shape[1]
    kept = [
        _prefill_stats(llava_next, CONTROL, [PROMPT + continuation], [SQUARE], query_positions=[context_length - 1])[0].kept
        for continuation in (" red", " a blue one")
    ]
    assert kept[0] == kept[1]


def test_each_image_token_is_kept_equally_often():
    """Over many samples (distinct token ids), every position of the image block is kept with the
    same frequency: keep/N = 1/2 here, within 5 standard deviations of 2000 draws."""
    num_image, keep, draws = 20, 10, 2000
    is_image = torch.tensor([[False] * 3 + [True] * num_image + [False]])
    kept = torch.zeros(num_image)
    for draw in range(draws):
        token_ids = torch.tensor([[1, 2, draw] + [32000] * num_image + [draw + 7]])
        scorer = CONTROL.parts()[0].for_prompt(PromptView(token_ids=token_ids, context=torch.ones_like(is_image), is_image=is_image))
        view = StageView(
            boundary=0, language_model=None, layer=None, hidden=None, drop_hidden=None, positions=None, position_embeddings=None, apply_rotary=None, key_mask=None,
            query_slots=None, query_valid=None, is_image=is_image, image_rank=is_image.long().cumsum(1) - 1,
        )
        scores = scorer.scores(view)
        kept += select_top_images(scores, is_image, torch.tensor([keep]))[0, is_image[0]].float()
    frequency = kept / draws
    assert (frequency - 0.5).abs().max() < 5 * (0.25 / draws) ** 0.5


@pytest.mark.parametrize(
    "schedule", ["dart_tokens=16", "sparsevlm_counts=20;10;4", "dominant=12,contextual=4"], ids=["dart", "sparsevlm", "visionzip"]
)
def test_control_takes_a_comparison_methods_counts_and_boundaries(tiny_llava, schedule):
    """Random control over DART's schedule (a drop before layer 2), SparseVLM's (three drops, counts with
    its recycled tokens) and VisionZip's (before the language model): the schedule's per-layer counts on the tiny LLaVA (N=64), a random subset kept in order, the
    same draw as PyramidDrop's control at the same seed would rank first (one order per sample)."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava)
    control = DropConfig.from_args(f"{schedule},seed=3", method="random")
    inputs = processor(images=[SQUARE], text=[PROMPT], return_tensors="pt")
    with apply_drop(model, control) as handle, torch.no_grad():
        model(**inputs)
    (stats,) = handle.last_stats
    assert stats.num_image_tokens == 64
    assert list(stats.image_tokens_per_layer) == control.image_tokens_per_layer(64, 32)
    assert [len(stage) for stage in stats.kept] == control.kept_counts(64)
    kept = stats.kept[0]
    assert list(kept) == sorted(kept)
    with apply_drop(model, DropConfig.random(DropConfig.fastv(k=2, r=1 - len(kept) / 64), seed=3)) as handle, torch.no_grad():
        model(**inputs)
    assert handle.last_stats[0].kept[0] == kept  # the sample's one random order, whatever the schedule
