"""VisionZip on the tiny LLaVA-1.5 and LLaVA-NeXT: the language model reads, for each sample of a padded
batch, exactly the tokens a plain re-implementation of the official rule (dvlab-research/VisionZip
@3151f6d, `CLIPVisionTower_VisionZip.forward`; on LLaVA-NeXT per crop, assembled as
`restore_image_features_sorted`) builds from the stock eager vision tower's attentions and hidden
states, with eager and sdpa vision towers; bad settings and models are refused by name."""

import pytest
import torch
from vision_side_reference import PROMPTS, models_and_batch, with_image_replaced

from pdrop_eval import DropConfig, apply_drop

pytestmark = pytest.mark.newest_transformers  # also run on the newest transformers release (.ci/run)

DOMINANT, CONTEXTUAL = 9, 5  # 8 patches by [CLS] attention; 56 remaining tokens: targets at stride 11, the 6th cut off
NEW_TOKENS = 3


NEXT_DOMINANT, NEXT_CONTEXTUAL = 10, 7  # per image, shared out over its crops
NEXT_GRIDS = ((1, 2), (2, 2))  # the tiny LLaVA-NeXT's anyres crop grid (rows, columns) of each picture below


@pytest.fixture(scope="module")
def llava(tiny_llava):
    return models_and_batch(tiny_llava, seed=5)


@pytest.fixture(scope="module")
def llava_next(tiny_llava_next):
    """48 x 96 pixels: a 1 x 2 crop grid (3 crops with the base tile); 96 x 88: 2 x 2 (5 crops)."""
    return models_and_batch(tiny_llava_next, seed=5, image_shapes=((48, 96), (96, 88)))


def reference_tokens(model, pixel_values):
    """The official rule, written out plainly for one image on the stock eager tower: (K, d) projected."""
    merged, _ = reference_crop(model, pixel_values, DOMINANT, CONTEXTUAL)
    return model.model.multi_modal_projector(merged)


def reference_crop(model, pixel_values, dominant_count, contextual_count):
    """The official rule on one tower image (a LLaVA-1.5 image, a LLaVA-NeXT crop): its unprojected
    tokens [CLS, dominant patches, contextual tokens] and the indices of its dominant patches."""
    tower = model.model.vision_tower
    out = tower(pixel_values.unsqueeze(0), output_hidden_states=True, output_attentions=True)
    features = out.hidden_states[-2][0]  # (T, D): LLaVA's feature layer, the output of layers[-2]
    attention = out.attentions[-2][0]  # (H, T, T) of layers[-2]
    layer = getattr(tower, "vision_model", tower).encoder.layers[-2]
    keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[-3][0]))  # layers[-2]'s input -> keys
    keys = keys.view(keys.shape[0], -1, layer.self_attn.head_dim).mean(1)  # metric: mean over heads

    cls_attention = attention[:, 0, 1:].sum(0).tolist()
    top = sorted(range(len(cls_attention)), key=lambda patch: (-cls_attention[patch], patch))[: dominant_count - 1]
    dominant = sorted([0] + [patch + 1 for patch in top])  # [CLS] and its patches, in sequence order
    rest = [token for token in range(features.shape[0]) if token not in dominant]
    metric = keys[rest] / keys[rest].norm(dim=-1, keepdim=True)
    targets = list(range(0, len(rest), max(1, len(rest) // contextual_count)))[:contextual_count] if contextual_count else []
    assigned = {target: [] for target in targets}
    for token in range(len(rest)):
        if token not in targets:
            similarity = [float(metric[token] @ metric[target]) for target in targets]
            assigned[targets[similarity.index(max(similarity))]].append(token)
    contextual = [
        features[rest[target]] + (torch.stack([features[rest[t]] for t in group]).mean(0) if group else 0)
        for target, group in assigned.items()
    ]
    return torch.stack([features[token] for token in dominant] + contextual), dominant[1:]


def reference_next_tokens(model, crops, grid):
    """One LLaVA-NeXT image's (K, d) projected tokens from its crops (base tile first): each crop's
    share of the counts, the base crop's tokens, the grid crops' dominant patches in raster order over
    the whole grid, their [CLS] tokens, their contextual tokens."""
    rows, columns = grid
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    count = len(crops)
    shares = [(NEXT_DOMINANT // count + (crop < NEXT_DOMINANT % count), NEXT_CONTEXTUAL // count + (crop < NEXT_CONTEXTUAL % count))
              for crop in range(count)]
    merged = [reference_crop(model, crops[crop], *shares[crop]) for crop in range(count)]
    placed, cls_tokens, contextual = [], [], []
    for crop in range(1, count):
        tokens, patches = merged[crop]
        dominant_count = shares[crop][0]
        crop_row, crop_column = divmod(crop - 1, columns)
        for token, patch in zip(tokens[1:dominant_count], patches):
            row, column = crop_row * side + (patch - 1) // side, crop_column * side + (patch - 1) % side
            placed.append((row * columns * side + column, token))
        cls_tokens.append(tokens[0])
        contextual += list(tokens[dominant_count:])
    grid_tokens = [token for _, token in sorted(placed, key=lambda item: item[0])] + cls_tokens + contextual
    return model.model.multi_modal_projector(torch.cat([merged[0][0], torch.stack(grid_tokens)]))


def zipped_batch(model, inputs, dominant, contextual, new_tokens=0):
    """The stock model's language-model input (B, T, d), and under VisionZip the last logits (B, V),
    `new_tokens` greedy tokens and each sample's statistics."""
    config = DropConfig.from_args(f"method=visionzip,dominant={dominant},contextual={contextual}")
    embeddings = model(**inputs, output_hidden_states=True).hidden_states[0]
    with apply_drop(model, config) as handle:
        logits = model(**inputs).logits[:, -1]
        tokens = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)[:, inputs["input_ids"].shape[1]:] if new_tokens else None
    return embeddings, logits, tokens, handle.last_stats


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_each_sample_of_a_batch_reads_the_official_tokens(llava, attention):
    models, inputs = llava
    model = models[attention]
    kept = DOMINANT + CONTEXTUAL
    with torch.no_grad():
        embeddings, logits, tokens, last_stats = zipped_batch(model, inputs, DOMINANT, CONTEXTUAL, NEW_TOKENS)
        for sample in range(len(PROMPTS)):
            reference = reference_tokens(models["eager"], inputs["pixel_values"][sample])
            zipped = with_image_replaced(model, inputs, embeddings, sample, lambda _, reference=reference: reference)
            assert torch.allclose(model(inputs_embeds=zipped[None]).logits[0, -1], logits[sample], atol=1e-4)
            expected = model.generate(inputs_embeds=zipped[None], attention_mask=torch.ones(1, len(zipped), dtype=torch.long),
                                      max_new_tokens=NEW_TOKENS, do_sample=False)
            assert tokens[sample].tolist() == expected[0, -NEW_TOKENS:].tolist()
            stats = last_stats[sample]
            assert list(stats.kept[0]) == list(range(kept))
            assert stats.image_tokens_per_layer == (kept,) * model.config.text_config.num_hidden_layers


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_llava_next_reads_each_crops_tokens_as_the_official_next_path(llava_next, attention):
    """Two aspect ratios in one padded batch (3 and 5 crops, N = 200 and 304): 10 + 7 tokens per image."""
    models, inputs = llava_next
    model = models[attention]
    kept = NEXT_DOMINANT + NEXT_CONTEXTUAL
    with torch.no_grad():
        embeddings, logits, _, last_stats = zipped_batch(model, inputs, NEXT_DOMINANT, NEXT_CONTEXTUAL)
        for sample, grid in enumerate(NEXT_GRIDS):
            crops = inputs["pixel_values"][sample][: 1 + grid[0] * grid[1]]  # the batch pads the 3-crop image to 5
            reference = reference_next_tokens(models["eager"], crops, grid)
            zipped = with_image_replaced(model, inputs, embeddings, sample, lambda _, reference=reference: reference)
            assert torch.allclose(model(inputs_embeds=zipped[None]).logits[0, -1], logits[sample], atol=1e-4)
            assert last_stats[sample].image_tokens_per_layer == (kept,) * model.config.text_config.num_hidden_layers
        assert [stats.num_image_tokens for stats in last_stats] == [200, 304]


def test_llava_next_counts_a_crop_cannot_take_are_refused(llava_next):
    models, inputs = llava_next
    model = models["sdpa"]
    for options, message in (("dominant=4,contextual=2", "dominant=4 is fewer than this image's 5 crops"),
                             ("dominant=190,contextual=5", "gives its base crop 64 \\+ 2 tokens, more than the 65 it has")):
        with torch.no_grad(), apply_drop(model, DropConfig.from_args(f"method=visionzip,{options}")), pytest.raises(ValueError, match=message):
            model(**inputs)


def test_bad_settings_and_models_are_refused_by_name(llava):
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        SiglipVisionConfig,
    )

    models, inputs = llava
    model = models["sdpa"]
    with pytest.raises(ValueError, match=r"VisionZip does not take \['fastv_k'\]"):
        DropConfig.from_args("method=visionzip,fastv_k=2")
    with pytest.raises(ValueError, match="contextual .* must be >= 1"):
        DropConfig.from_args("method=visionzip,contextual=0")
    too_many = pytest.raises(ValueError, match="dominant \\+ contextual = 60 \\+ 10 = 70 tokens per image, more than the 64 image tokens")
    with torch.no_grad(), apply_drop(model, DropConfig.from_args("method=visionzip,dominant=60,contextual=10")), too_many:
        model(**inputs)
    config = DropConfig.from_args("method=visionzip")
    siglip = LlavaConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        text_config=model.config.text_config.to_dict(), image_token_index=model.config.image_token_id,
    )
    with pytest.raises(ValueError, match=r"has no \[CLS\] token"):
        apply_drop(LlavaForConditionalGeneration(siglip), config)
    model.config.vision_feature_layer = 0
    try:
        with pytest.raises(ValueError, match="needs the features of a vision attention layer, got vision_feature_layer=0"):
            apply_drop(model, config)
    finally:
        model.config.vision_feature_layer = -2
