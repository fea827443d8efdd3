"""DART: the kept image tokens are those of the official rule (ZichenWen1/DART, `get_retained_image_token`),
re-implemented here on each sample alone from the stock model, and the engine gives them to every sample
of a padded batch, with eager and sdpa attention, on LLaVA-1.5 and LLaVA-NeXT."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from pdrop_eval import DropConfig, apply_drop
from pdrop_eval.presets import drop_preset

pytestmark = pytest.mark.newest_transformers  # also run on the newest transformers release (.ci/run)

PROMPTS = ["USER: <image>\nWhat color is the square in the middle? ASSISTANT:", "USER: <image>\nIs it round? ASSISTANT:"]


def load(checkpoint, attn_implementation):
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, attn_implementation=attn_implementation, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    processor.tokenizer.padding_side = "left"
    # A random model's final norm weighs every feature alike, which leaves cosine similarity unchanged; a
    # trained one does not: give it uneven weights, so that the similarity must be taken after the norm.
    generator = torch.Generator().manual_seed(7)
    model.model.language_model.norm.weight.data = torch.rand(model.config.text_config.hidden_size, generator=generator) + 0.5
    return model, processor


def images(shapes):
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(0, 256, (*shape, 3), generator=generator, dtype=torch.uint8).numpy() for shape in shapes]


def official_picks(model, sample_inputs, k, tokens, pivot_image=4, pivot_text=4):
    """The official rule on one sample alone (batch 1, no padding), written out from its description:
    pivots by the L1 norm of layer k-1's RoPE'd, head-repeated keys; for each pivot, in the iteration order
    of the Python set of their sequence indices, the image tokens least cosine-similar to it on layer k-1's
    output after the final norm, among those not taken yet. Returns indices into the image block."""
    lm = model.model.language_model
    attention = lm.layers[k - 1].self_attn
    captured = {}
    hook = attention.k_proj.register_forward_hook(lambda module, args, output: captured.update(keys=output))
    try:
        with torch.no_grad():
            hidden_states = model(**sample_inputs, output_hidden_states=True).hidden_states
    finally:
        hook.remove()
    ids = sample_inputs["input_ids"][0]
    length = len(ids)
    keys = captured["keys"].view(1, length, -1, attention.head_dim).transpose(1, 2)
    cos, sin = lm.rotary_emb(keys, torch.arange(length).unsqueeze(0))
    keys, _ = apply_rotary_pos_emb(keys, keys, cos, sin)
    keys = repeat_kv(keys, attention.num_key_value_groups)  # what the official layer returns
    key_norms = keys.permute(0, 2, 1, 3).reshape(length, -1).norm(p=1, dim=-1)
    with torch.no_grad():
        states = lm.norm(hidden_states[k])[0]  # layer k-1's output, final norm

    image = (ids == model.config.image_token_id).nonzero().squeeze(1)
    start, count = int(image[0]), len(image)
    per_pivot = min(tokens, count - pivot_image) // (pivot_image + pivot_text)
    image_pivots = [start + int(i) for i in key_norms[start : start + count].topk(pivot_image).indices]
    text_pivots = [start + count + int(i) for i in key_norms[start + count :].topk(pivot_text).indices]
    chosen = set(image_pivots + text_pivots)
    remaining = set(range(start, start + count)).difference(image_pivots)
    for pivot in list(chosen):
        candidates = list(remaining)
        similarity = F.cosine_similarity(states[pivot].unsqueeze(0), states[candidates], dim=-1)
        least_similar = [candidates[int(i)] for i in similarity.topk(per_pivot, largest=False).indices]
        chosen.update(least_similar)
        remaining.difference_update(least_similar)
    return sorted(index - start for index in chosen.difference(text_pivots))


def alone(inputs, sample):
    """One sample of a left-padded processor batch, as the processor would give it alone."""
    real = inputs["attention_mask"][sample].bool()
    single = {"input_ids": inputs["input_ids"][sample][real].unsqueeze(0), "attention_mask": torch.ones(1, int(real.sum()), dtype=torch.long)}
    for key in ("pixel_values", "image_sizes"):
        if key in inputs:
            single[key] = inputs[key][sample : sample + 1]
    return single


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_each_sample_of_a_padded_batch_keeps_the_official_picks(tiny_llava, attn_implementation):
    model, processor = load(tiny_llava, attn_implementation)
    inputs = processor(images=images([(48, 64), (64, 48)]), text=PROMPTS, return_tensors="pt", padding=True)
    config = DropConfig.from_args("method=dart,dart_tokens=24")
    with torch.no_grad(), apply_drop(model, config) as handle:
        model(**inputs)  # positions count the left padding: the pivots must not depend on it
        forward_stats = handle.last_stats
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)  # positions from the mask
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3  # decoding runs on the pruned cache
    layers = model.config.text_config.num_hidden_layers
    for sample in range(len(PROMPTS)):
        expected = official_picks(model, alone(inputs, sample), k=2, tokens=24)
        assert len(expected) == 4 + 8 * (24 // 8)
        for stats in (forward_stats[sample], handle.last_stats[sample]):
            assert list(stats.kept[0]) == expected
            assert stats.image_tokens_per_layer == (64, 64) + (28,) * (layers - 2)


def test_llava_next_samples_of_different_sizes_keep_the_official_picks_capped_at_their_image_tokens(tiny_llava_next):
    model, processor = load(tiny_llava_next, "sdpa")
    inputs = processor(images=images([(32, 64), (48, 48)]), text=PROMPTS, return_tensors="pt", padding=True)
    config = DropConfig.from_args("method=dart,dart_k=3,dart_tokens=400")  # more than these images hold
    with torch.no_grad(), apply_drop(model, config) as handle:
        model(**inputs)
    counts = []
    for sample in range(len(PROMPTS)):
        stats = handle.last_stats[sample]
        expected = official_picks(model, alone(inputs, sample), k=3, tokens=400)
        assert list(stats.kept[0]) == expected
        n = stats.num_image_tokens
        assert len(expected) == 4 + 8 * ((n - 4) // 8) == config.kept_counts(n)[0]
        counts.append(n)
    assert counts[0] != counts[1]


def test_presets_count_and_label_as_the_official_code():
    assert [drop_preset(f"dart-{budget}").kept_counts(576) for budget in (64, 128, 192)] == [[68], [132], [196]]
    assert drop_preset("dart-128") == DropConfig.from_args("method=dart")
    assert drop_preset("dart-128").image_tokens_per_layer(576, 32) == [576] * 2 + [132] * 30
    config = DropConfig.from_args("method=dart,dart_tokens=64,dart_pivot_text=2")
    assert config.label() == "DART K=2 tokens=64 pivots=4+2" and config.kept_counts(576) == [4 + 6 * 10]
    assert DropConfig.from_args(config.to_args()) == config and DropConfig.from_dict(config.to_dict()) == config


def test_bad_settings_are_refused_naming_them(tiny_llava):
    with pytest.raises(ValueError, match=r"DART does not take \['fastv_r'\]"):
        DropConfig.from_args("method=dart,fastv_r=0.5")
    with pytest.raises(ValueError, match=r"dart_tokens=7 is below DART's 8 pivots"):
        DropConfig.from_args("method=dart,dart_tokens=7")
    with pytest.raises(ValueError, match="dart_k must be >= 1"):
        DropConfig.from_args("method=dart,dart_k=0")
    with pytest.raises(ValueError, match=r"a sample has only 3 image tokens"):
        DropConfig.from_args("method=dart").kept_counts(3)

    model, processor = load(tiny_llava, "sdpa")
    inputs = processor(images=images([(48, 64)]), text=PROMPTS[1:], return_tensors="pt")
    with pytest.raises(ValueError, match="dart_k=32 must be below the model's 32 layers"):
        apply_drop(model, DropConfig.from_args("method=dart,dart_k=32"))
    after_image = inputs["input_ids"].shape[1] - 1 - int((inputs["input_ids"][0] == model.config.image_token_id).nonzero()[-1])
    with torch.no_grad(), apply_drop(model, DropConfig.from_args(f"method=dart,dart_pivot_text={after_image + 1}")):
        with pytest.raises(ValueError, match=rf"dart_pivot_text.*sample 0 has only {after_image} tokens after its image tokens"):
            model(**inputs)

    two_blocks = processor(images=[images([(48, 64), (64, 48)])], text=["USER: <image> and <image>\nSame? ASSISTANT:"], return_tensors="pt")
    with torch.no_grad(), apply_drop(model, DropConfig.from_args("method=dart")):
        with pytest.raises(ValueError, match="one contiguous block of image tokens per sample .* sample 0 has several"):
            model(**two_blocks)

    text_only = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2))
    with pytest.raises(TypeError, match="LlamaForCausalLM is not a model of a supported family"):
        apply_drop(text_only, DropConfig.from_args("method=dart"))
