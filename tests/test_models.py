"""The model-family seam: lookups, refusals, and what each LLaVA family says about its models, held
against the models' and processors' own code."""

import json
import sys

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor, LlamaConfig, LlamaForCausalLM

from pdrop_eval.models import (
    FAMILY_NAMES,
    ROPE_1D,
    family_named,
    family_of_checkpoint,
    family_of_config,
    family_of_model,
    family_of_processor,
)
from pdrop_eval.tiny import TEXT_ARCHS, make_tiny_model

NON_SQUARE_SIZES = [(100, 40), (40, 100), (300, 57), (57, 131), (500, 3), (64, 64)]
SUPPORTED = r"supported: LLaVA-1\.5 \('llava'\), LLaVA-NeXT \('llava_next'\)"


@pytest.fixture(scope="module")
def checkpoints(tiny_llava, tiny_llava_next):
    return {"llava": tiny_llava, "llava_next": tiny_llava_next}


@pytest.fixture(scope="module")
def models(checkpoints):
    return {name: family_named(name).model_class().from_pretrained(path) for name, path in checkpoints.items()}


def test_every_lookup_finds_the_family(checkpoints, models):
    assert {"llava", "llava_next", "qwen2_5_vl"} <= set(FAMILY_NAMES)
    for name, path in checkpoints.items():
        family = family_named(name)
        assert family.name == name
        assert family_of_checkpoint(path) is family
        assert family_of_config(json.loads((path / "config.json").read_text())) is family
        assert family_of_config(AutoConfig.from_pretrained(path)) is family
        assert family_of_model(models[name]) is family
        assert family_of_processor(AutoProcessor.from_pretrained(path)) is family


def test_other_models_are_refused_naming_the_supported_families(tmp_path, tiny_llava):
    with pytest.raises(ValueError, match=rf"unknown model family 'qwen2_vl'; {SUPPORTED}"):
        family_named("qwen2_vl")
    with pytest.raises(ValueError, match=rf"this is a 'llama' checkpoint; {SUPPORTED}"):
        family_of_config({"model_type": "llama"})
    with pytest.raises(ValueError, match=rf"this has no model_type in its config; {SUPPORTED}"):
        family_of_config({"vision_config": {}})
    llama = LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2)
    llama.save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'llama'} is a 'llama' checkpoint; {SUPPORTED}"):
        family_of_checkpoint(tmp_path / "llama")
    with pytest.raises(FileNotFoundError, match="no model config at"):
        family_of_checkpoint(tmp_path / "missing")
    with pytest.raises(TypeError, match=r"LlamaForCausalLM is not a model of a supported family; supported: LLaVA-1\.5 \(LlavaForConditionalGeneration\)"):
        family_of_model(LlamaForCausalLM(llama))
    with pytest.raises(TypeError, match="expected a LlavaProcessor or LlavaNextProcessor or .*, got CLIPImageProcessor"):
        family_of_processor(AutoProcessor.from_pretrained(tiny_llava).image_processor)


@pytest.mark.parametrize("name", ["llava", "llava_next"])
def test_parts_tokens_and_positions_of_a_loaded_model(name, models):
    model, family = models[name], family_named(name)
    assert family.language_model(model) is model.model.language_model
    assert family.vision_tower(model) is model.model.vision_tower
    assert family.input_ids_module(model) is model.model
    assert family.freezable_part(model, "vision_tower") is model.model.vision_tower
    assert family.freezable_part(model, "projector") is model.model.multi_modal_projector
    assert set(family.freezable_part_paths) == {"vision_tower", "projector"}
    assert family.image_token_ids(model.config) == (model.config.image_token_id,)
    assert family.image_token_ids(model.config.to_dict()) == (model.config.image_token_id,)
    assert family.position_scheme == ROPE_1D


@pytest.mark.parametrize("name,text_arch", [(name, text_arch) for name in FAMILY_NAMES for text_arch in TEXT_ARCHS])
def test_rotary_is_the_decoders_own(name, text_arch, tmp_path):
    """The family rotates queries and keys exactly as its decoder's attention does, at the scattered
    positions a dropped stage has."""
    family = family_named(name)
    model = family.model_class().from_pretrained(make_tiny_model(tmp_path, arch=name, text_arch=text_arch, num_layers=1))
    language_model = family.language_model(model)
    attention = language_model.layers[0].self_attn
    own_rotary = vars(sys.modules[type(attention).__module__])["apply_rotary_pos_emb"]  # what the attention calls
    torch.manual_seed(0)
    heads, kv_heads = model.config.text_config.num_attention_heads, model.config.text_config.num_key_value_heads
    query, key = torch.randn(2, heads, 5, attention.head_dim), torch.randn(2, kv_heads, 5, attention.head_dim)
    positions = torch.tensor([[0, 1, 2, 3, 4], [0, 3, 4, 9, 17]])
    cos, sin = language_model.rotary_emb(query, positions)  # (B, T, head_dim) each
    expected_query, expected_key = own_rotary(q=query, k=key, cos=cos, sin=sin)
    assert torch.equal(family.apply_rotary(query, cos.unsqueeze(1), sin.unsqueeze(1)), expected_query)
    assert torch.equal(family.apply_rotary(key, cos.unsqueeze(1), sin.unsqueeze(1)), expected_key)


@pytest.mark.parametrize("name", ["llava", "llava_next"])
def test_image_tokens_per_image_are_the_processors(name, checkpoints):
    path = checkpoints[name]
    family, processor = family_named(name), AutoProcessor.from_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    counts = {}
    for size in NON_SQUARE_SIZES:
        encoded = processor(images=[Image.new("RGB", size)], text=["<image>"], return_tensors="pt")
        counts[size] = int((encoded.input_ids == processor.image_token_id).sum())
        assert family.image_tokens_per_image(config, size) == counts[size], size
    largest, varies = family.max_image_tokens(config)
    assert varies == (len(set(counts.values())) > 1) == (name == "llava_next")
    assert largest >= max(counts.values())
