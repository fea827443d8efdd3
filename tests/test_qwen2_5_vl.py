"""Qwen2.5-VL in the drop engine (issue 28): the family against the model's and processor's own code,
keep-everything against the stock model, padded batches against samples alone, and the kept sets and
3-D (t, h, w) positions against a plain re-implementation, on the tiny Qwen2.5-VL."""

import inspect
import json
import sys

import numpy as np
import pytest
import torch
from drop_reference import language_model_embeddings
from PIL import Image
from transformers import AutoProcessor

from pdrop_eval import DropConfig, apply_drop
from pdrop_eval.cli import main as cli_main
from pdrop_eval.models import MROPE_3D, family_named, family_of_checkpoint, family_of_model, family_of_processor
from pdrop_eval.token_map import image_token_regions

pytestmark = pytest.mark.newest_transformers  # also run on the newest transformers release (.ci/run)

FAMILY = family_named("qwen2_5_vl")
KEEP_ALL = DropConfig.pyramid(ratio=1.0, position_mode="original")
PYRAMID = DropConfig.pyramid(ratio=0.5, position_mode="original")
# 8x8-pixel tokens at the tiny processor's resize: N = 15, 18 and 28
IMAGES = [Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)) for seed, (width, height) in enumerate([(40, 24), (24, 48), (56, 32)])]
SAMPLES = [
    ("What color is the circle?", IMAGES[:1]),
    ("Which shape is red? left or right", IMAGES[1:]),  # two images in one prompt
    ("yes or no?", []),
    ("What is left of the red circle?", IMAGES[2:]),
]


@pytest.fixture(scope="module")
def processor(tiny_qwen2_5_vl):
    return AutoProcessor.from_pretrained(tiny_qwen2_5_vl)


@pytest.fixture(scope="module")
def models(tiny_qwen2_5_vl):
    model_class = FAMILY.model_class()
    return {attn: model_class.from_pretrained(tiny_qwen2_5_vl, attn_implementation=attn).eval() for attn in ("eager", "sdpa")}


def encode(processor, samples):
    """A left-padded batch of (question, images) chat prompts."""
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": question}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for question, images in samples
    ]
    images = [image for _, sample_images in samples for image in sample_images]
    return processor(text=texts, images=images or None, return_tensors="pt", padding=True)


def generate(model, inputs):
    return model.generate(**inputs, max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True)


# ----- the family ---------------------------------------------------------------------------------------
def test_family_parts_and_image_tokens_are_the_models(tiny_qwen2_5_vl, processor, models):
    model = models["sdpa"]
    assert family_of_checkpoint(tiny_qwen2_5_vl) is family_of_model(model) is family_of_processor(processor) is FAMILY
    assert FAMILY.position_scheme == MROPE_3D
    assert FAMILY.language_model(model) is model.model.language_model
    assert FAMILY.vision_tower(model) is model.model.visual
    assert FAMILY.input_ids_module(model) is model.model
    assert FAMILY.freezable_part(model, "projector") is model.model.visual.merger
    assert FAMILY.image_token_ids(model.config) == (processor.image_token_id, processor.video_token_id)
    config = json.loads((tiny_qwen2_5_vl / "config.json").read_text())
    for size in [(40, 24), (24, 48), (100, 9), (300, 57), (13, 13)]:
        encoded = processor(images=[Image.new("RGB", size)], text=[processor.image_token], return_tensors="pt")
        count = int((encoded.input_ids == processor.image_token_id).sum())
        assert FAMILY.image_tokens_per_image(config, size) == count, size
        _, grid_height, grid_width = encoded.image_grid_thw[0].tolist()  # patches; tokens merge 2x2
        regions = image_token_regions(processor, [size])
        assert len(regions) == count == grid_height * grid_width // 4
        # row by row over the whole picture: the first token at its top left, a row's end at its right edge
        assert regions[0].box[:2] == (0.0, 0.0) and regions[grid_width // 2 - 1].box[2] == size[0] and regions[-1].box[2:] == size
    assert FAMILY.max_image_tokens(config) == (config["max_pixels"] // 64, True)


def test_rotary_is_the_attentions_own_at_scattered_3d_positions(models):
    language_model = FAMILY.language_model(models["sdpa"])
    attention = language_model.layers[0].self_attn
    own_rotary = vars(sys.modules[type(attention).__module__])["apply_rotary_pos_emb"]  # what the attention calls
    torch.manual_seed(0)
    query, key = torch.randn(2, 4, 5, attention.head_dim), torch.randn(2, 2, 5, attention.head_dim)
    positions = torch.tensor([[[0, 1, 2, 3, 4], [0, 3, 4, 9, 17]], [[0, 1, 1, 3, 4], [0, 5, 5, 9, 17]], [[0, 1, 2, 2, 4], [0, 4, 6, 9, 17]]])
    cos, sin = language_model.rotary_emb(query, positions)  # (t, h, w) rows composed by mrope_section
    expected_query, expected_key = own_rotary(q=query, k=key, cos=cos, sin=sin)
    assert torch.equal(FAMILY.apply_rotary(query, cos.unsqueeze(1), sin.unsqueeze(1)), expected_query)
    assert torch.equal(FAMILY.apply_rotary(key, cos.unsqueeze(1), sin.unsqueeze(1)), expected_key)


# ----- the engine ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_keeping_everything_is_the_stock_model(models, processor, attn):
    """Prefill logits, and the greedy tokens and logits of every cached decode step, of a padded batch of
    images of different sizes, two images in one prompt and a text-only prompt."""
    model, inputs = models[attn], encode(processor, SAMPLES)
    with torch.no_grad():
        stock_logits, stock = model(**inputs).logits, generate(model, inputs)
        with apply_drop(model, KEEP_ALL):
            logits, kept = model(**inputs).logits, generate(model, inputs)
    valid = inputs.attention_mask.bool()
    assert torch.equal(logits[valid], stock_logits[valid])
    assert torch.equal(kept.sequences, stock.sequences)
    for step, stock_step in zip(kept.scores, stock.scores, strict=True):
        assert torch.equal(step, stock_step)


def test_padded_batch_gives_each_sample_what_it_gives_alone(models, processor):
    model = models["sdpa"]
    with apply_drop(model, PYRAMID) as handle, torch.no_grad():
        batch = generate(model, encode(processor, SAMPLES))
        batch_stats = handle.last_stats
        for index, sample in enumerate(SAMPLES):
            alone = generate(model, encode(processor, [sample]))
            assert handle.last_stats == [batch_stats[index]]
            assert torch.equal(alone.sequences[0, -5:], batch.sequences[index, -5:]), index
            for step, batch_step in zip(alone.scores, batch.scores, strict=True):
                torch.testing.assert_close(step[0], batch_step[index], rtol=1e-4, atol=1e-4)
    assert [stats.num_image_tokens for stats in batch_stats] == [15, 18 + 28, 0, 28]
    assert [stats.image_tokens_per_layer[-1] for stats in batch_stats] == [15 // 8, 46 // 8, 0, 28 // 8]


def _reference(model, inputs, config: DropConfig, given_kept=None):
    """A plain drop over one unpadded sample: the stock layers one by one on the surviving tokens, each
    boundary ranking the image tokens by the last token's head-mean eager attention weights of the
    unmodified score layer, every token at its original (t, h, w) ids from the model's own
    get_rope_index. `given_kept` (per boundary, image-block indices) replaces the ranking (random).
    Returns (last-token logits, kept image-block indices per boundary, positions (3, t) per stage)."""
    language_model = model.model.language_model
    wanted = inspect.signature(model.model.get_rope_index).parameters
    positions = model.model.get_rope_index(**{name: value for name, value in inputs.items() if name in wanted})[0][:, 0]  # (3, T)
    is_image = torch.isin(inputs.input_ids[0], torch.tensor(FAMILY.image_token_ids(model.config))).tolist()
    image_order = [index for index, image in enumerate(is_image) if image]
    boundaries = config.boundaries(len(language_model.layers))
    counts = config.kept_counts(len(image_order))
    alive, hidden = list(range(len(is_image))), language_model_embeddings(model, inputs)
    layer_inputs, kept, stage_positions = {}, [], [positions[:, alive]]
    with torch.no_grad():
        for layer_index, layer in enumerate(language_model.layers):
            layer_inputs[layer_index] = hidden
            for stage, (boundary, count) in enumerate(zip(boundaries, counts)):
                if boundary.drop_layer != layer_index:
                    continue
                image_slots = [slot for slot, original in enumerate(alive) if is_image[original]]
                if given_kept is None:
                    score_layer = language_model.layers[boundary.score_layer]
                    scores = _attention_weights(language_model, score_layer, layer_inputs[boundary.score_layer], positions[:, alive]).mean(0)[-1]
                    best = sorted(image_slots, key=lambda slot: -scores[slot].item())[:count]
                else:
                    best = [slot for slot in image_slots if image_order.index(alive[slot]) in given_kept[stage]]
                kept.append(tuple(sorted(image_order.index(alive[slot]) for slot in best)))
                keep = [slot for slot, original in enumerate(alive) if not is_image[original] or slot in best]
                hidden, alive = hidden[keep], [alive[slot] for slot in keep]
                stage_positions.append(positions[:, alive])
            embeddings = language_model.rotary_emb(hidden[None], positions[:, None, alive])
            hidden = layer(hidden[None], attention_mask=_causal_mask(len(alive)), position_embeddings=embeddings)[0]
        return model.lm_head(language_model.norm(hidden[-1])), kept, stage_positions


def _causal_mask(length: int) -> torch.Tensor:
    return torch.full((length, length), torch.finfo(torch.float32).min).triu(1)[None, None]


def _attention_weights(language_model, layer, hidden, positions) -> torch.Tensor:
    """(heads, t, t) the eager attention weights of the unmodified `layer` (the model is loaded eager)."""
    embeddings = language_model.rotary_emb(hidden[None], positions[:, None])
    normed = layer.input_layernorm(hidden[None])
    return layer.self_attn(hidden_states=normed, position_embeddings=embeddings, attention_mask=_causal_mask(len(hidden)))[1][0]


@pytest.mark.parametrize(
    "config",
    [PYRAMID, DropConfig.fastv(k=2, r=0.5), DropConfig.random(PYRAMID, seed=1)],
    ids=["pyramid", "fastv", "random"],
)
@pytest.mark.parametrize("sample", [SAMPLES[0], SAMPLES[1]], ids=["one_image", "two_images"])
def test_kept_sets_and_3d_positions_equal_a_plain_reimplementation(models, processor, config, sample):
    model = models["eager"]  # the reference reads the eager attention weights
    inputs = encode(processor, [sample])
    stage_positions = []
    record = model.model.language_model.rotary_emb.register_forward_pre_hook(lambda module, args: stage_positions.append(args[1][:, 0]))
    try:
        with apply_drop(model, config) as handle, torch.no_grad():
            logits = model(**inputs).logits[0, -1]
    finally:
        record.remove()
    (stats,) = handle.last_stats
    given_kept = stats.kept if config.method == "random" else None
    expected_logits, expected_kept, expected_positions = _reference(model, inputs, config, given_kept)
    assert [len(kept) for kept in stats.kept] == config.kept_counts(stats.num_image_tokens)
    assert stats.kept == tuple(expected_kept)
    assert len(stage_positions) == len(expected_positions) == len(config.boundaries(32)) + 1
    for positions, expected in zip(stage_positions, expected_positions):
        assert torch.equal(positions, expected)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)


def test_dart_pivots_are_the_image_keys_rotated_at_their_3d_ids(models, processor):
    """DART's image pivots (the largest L1 norms of layer K-1's keys after RoPE) are those of the keys the
    stock model's attention computes, rotated at the model's own (t, h, w) ids. With 16 pivots and 15
    image tokens no pivot adds a token, so the kept set is the image pivots; at text-like 1-D positions
    they would differ here."""
    model, inputs = models["eager"], encode(processor, SAMPLES[:1])
    config = DropConfig.from_args("method=dart,dart_k=3,dart_tokens=16,dart_pivot_image=4,dart_pivot_text=12")
    attention = model.model.language_model.layers[2].self_attn
    own_rotary = vars(sys.modules[type(attention).__module__])["apply_rotary_pos_emb"]
    seen = {}
    record = attention.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)  # the stock model
    finally:
        record.remove()
    with torch.no_grad():
        keys = attention.k_proj(seen["hidden_states"]).view(1, -1, 2, attention.head_dim).transpose(1, 2)
        keys = own_rotary(q=keys, k=keys, cos=seen["position_embeddings"][0], sin=seen["position_embeddings"][1])[1]
    image_l1 = keys[0].abs().sum(dim=(0, 2))[inputs.input_ids[0] == processor.image_token_id]
    with apply_drop(model, config) as handle, torch.no_grad():
        model(**inputs)
    assert handle.last_stats[0].kept == (tuple(sorted(image_l1.topk(4).indices.tolist())),)


def test_schedule_solves_with_the_checkpoints_dims_and_original_positions(tiny_qwen2_5_vl, models, capsys):
    """`pdrop-eval schedule` on the checkpoint: the decoder's widths, N up to the pixel limit, and a
    PyramidDrop schedule the engine runs on this family (original positions)."""
    assert cli_main(["schedule", "--model", str(tiny_qwen2_5_vl), "--tokens", "25%", "--image-tokens", "28"]) == 0
    out = capsys.readouterr().out
    assert "d=64 m=172 L=32 N=28;" in out
    (model_args,) = [line.split("|")[3].strip() for line in out.splitlines() if "| PDrop" in line]
    assert model_args.endswith("position_mode=original")
    apply_drop(models["sdpa"], DropConfig.from_args(model_args)).remove()


def test_compact_positions_and_methods_without_a_rule_are_refused(models):
    model = models["sdpa"]
    with pytest.raises(ValueError, match=r"position_mode='compact' cannot run on Qwen2\.5-VL \('qwen2_5_vl'\).*position_mode=original"):
        apply_drop(model, DropConfig.pyramid(ratio=0.5))
    for options, method in [("method=visionzip,dominant=12,contextual=4", "VisionZip"), ("method=pool,pool_tokens=16", "Average pooling|pool")]:
        with pytest.raises(ValueError, match=rf"({method}).* models only, got a Qwen2\.5-VL \('qwen2_5_vl'\) model"):
            apply_drop(model, DropConfig.from_args(options))
    # nothing of a refused config stays on the model
    assert not model.model._forward_pre_hooks and not model._forward_pre_hooks
    assert "forward" not in vars(model.model.language_model)
