"""VisionZip on the tiny LLaVA-1.5: the language model reads, for each sample of a padded batch, exactly
the tokens a plain re-implementation of the official rule (dvlab-research/VisionZip @3151f6d,
`CLIPVisionTower_VisionZip.forward`) builds from the stock eager vision tower's attentions and hidden
states, with eager and sdpa vision towers; bad settings and models are refused by name."""

import pytest
import torch
from vision_side_reference import PROMPTS, load, models_and_batch, with_image_replaced

from pdrop_eval import DropConfig, apply_drop

pytestmark = pytest.mark.newest_transformers  # also run on the newest transformers release (.ci/run)

DOMINANT, CONTEXTUAL = 9, 5  # 8 patches by [CLS] attention; 56 remaining tokens: targets at stride 11, the 6th cut off
NEW_TOKENS = 3


@pytest.fixture(scope="module")
def llava(tiny_llava):
    return models_and_batch(tiny_llava, seed=5)


def reference_tokens(model, pixel_values):
    """The official rule, written out plainly for one image on the stock eager tower: (K, d) projected."""
    tower = model.model.vision_tower
    out = tower(pixel_values.unsqueeze(0), output_hidden_states=True, output_attentions=True)
    features = out.hidden_states[-2][0]  # (T, D): LLaVA's feature layer, the output of layers[-2]
    attention = out.attentions[-2][0]  # (H, T, T) of layers[-2]
    layer = getattr(tower, "vision_model", tower).encoder.layers[-2]
    keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[-3][0]))  # layers[-2]'s input -> keys
    keys = keys.view(keys.shape[0], -1, layer.self_attn.head_dim).mean(1)  # metric: mean over heads

    cls_attention = attention[:, 0, 1:].sum(0).tolist()
    top = sorted(range(len(cls_attention)), key=lambda patch: (-cls_attention[patch], patch))[: DOMINANT - 1]
    dominant = sorted([0] + [patch + 1 for patch in top])  # [CLS] and its patches, in sequence order
    rest = [token for token in range(features.shape[0]) if token not in dominant]
    metric = keys[rest] / keys[rest].norm(dim=-1, keepdim=True)
    targets = list(range(0, len(rest), max(1, len(rest) // CONTEXTUAL)))[:CONTEXTUAL]
    assigned = {target: [] for target in targets}
    for token in range(len(rest)):
        if token not in targets:
            similarity = [float(metric[token] @ metric[target]) for target in targets]
            assigned[targets[similarity.index(max(similarity))]].append(token)
    contextual = [
        features[rest[target]] + (torch.stack([features[rest[t]] for t in group]).mean(0) if group else 0)
        for target, group in assigned.items()
    ]
    merged = torch.stack([features[token] for token in dominant] + contextual)
    return model.model.multi_modal_projector(merged)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_each_sample_of_a_batch_reads_the_official_tokens(llava, attention):
    models, inputs = llava
    model = models[attention]
    config = DropConfig.from_args(f"method=visionzip,dominant={DOMINANT},contextual={CONTEXTUAL}")
    kept = DOMINANT + CONTEXTUAL
    with torch.no_grad():
        embeddings = model(**inputs, output_hidden_states=True).hidden_states[0]  # (B, T, d): the language model's input
        with apply_drop(model, config) as handle:
            logits = model(**inputs).logits[:, -1]
            tokens = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[:, inputs["input_ids"].shape[1]:]
        for sample in range(len(PROMPTS)):
            reference = reference_tokens(models["eager"], inputs["pixel_values"][sample])
            zipped = with_image_replaced(model, inputs, embeddings, sample, lambda _, reference=reference: reference)
            assert torch.allclose(model(inputs_embeds=zipped[None]).logits[0, -1], logits[sample], atol=1e-4)
            expected = model.generate(inputs_embeds=zipped[None], attention_mask=torch.ones(1, len(zipped), dtype=torch.long),
                                      max_new_tokens=NEW_TOKENS, do_sample=False)
            assert tokens[sample].tolist() == expected[0, -NEW_TOKENS:].tolist()
            stats = handle.last_stats[sample]
            assert list(stats.kept[0]) == list(range(kept))
            assert stats.image_tokens_per_layer == (kept,) * model.config.text_config.num_hidden_layers


def test_bad_settings_and_models_are_refused_by_name(llava, tiny_llava_next):
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
    with pytest.raises(ValueError, match=r"VisionZip supports LLaVA-1.5 \('llava'\) models only, got a LLaVA-NeXT"):
        apply_drop(load(tiny_llava_next, "sdpa"), config)
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
