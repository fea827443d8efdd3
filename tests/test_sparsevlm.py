"""SparseVLM: the kept and recycled image tokens are those of the official rule (Gumpest/SparseVLMs, the v1.5
code: raters from layer 0's input, top-k by the raters' attention at layers 2/6/15, the best pruned tokens
clustered and merged after the kept ones, the pruned sequence renumbered), re-implemented here on each
sample alone with the eager model's own attention weights; the engine gives every sample of a padded batch
the same logits, prefill and cached decoding, with eager and sdpa attention."""

import math

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaConfig, LlamaForCausalLM

from pdrop_eval import DropConfig, apply_drop
from pdrop_eval.budget import for_budget
from pdrop_eval.engine.methods.sparsevlm_parts import merge_clusters
from pdrop_eval.engine.methods.sparsevlm import budget_schedule
from pdrop_eval.presets import drop_preset

pytestmark = pytest.mark.newest_transformers  # also run on the newest transformers release (.ci/run)

PROMPTS = ["USER: <image>\nWhat color is the square in the middle? ASSISTANT:", "USER: <image>\nIs it round? ASSISTANT:"]
LAYERS = (2, 6, 15)


@pytest.fixture(scope="module")
def checkpoint(tiny_llava):
    processor = AutoProcessor.from_pretrained(tiny_llava)
    processor.tokenizer.padding_side = "left"
    generator = torch.Generator().manual_seed(5)
    pictures = [torch.randint(0, 256, (*shape, 3), generator=generator, dtype=torch.uint8).numpy() for shape in [(48, 64), (64, 48)]]
    return tiny_llava, processor, processor(images=pictures, text=PROMPTS, return_tensors="pt", padding=True)


def load(checkpoint_dir, attn_implementation):
    return AutoModelForImageTextToText.from_pretrained(checkpoint_dir, attn_implementation=attn_implementation, dtype=torch.float32).eval()


def alone(inputs, sample):
    real = inputs["attention_mask"][sample].bool()
    return {"input_ids": inputs["input_ids"][sample][real].unsqueeze(0), "pixel_values": inputs["pixel_values"][sample : sample + 1]}


def official_merge(tokens, groups):
    """cluster_and_merge written out token by token (ties in density: the earlier token is the denser)."""
    n, width = tokens.shape
    distance = [[float((tokens[i] - tokens[j]).norm()) / math.sqrt(width) for j in range(n)] for i in range(n)]
    density = [math.exp(-sum(d * d for d in sorted(row)[:groups]) / groups) for row in distance]
    largest = max(max(row) for row in distance)
    to_denser = [
        min([distance[i][j] for j in range(n) if density[j] > density[i] or (density[j] == density[i] and j < i)], default=largest)
        for i in range(n)
    ]
    centres = sorted(range(n), key=lambda i: -to_denser[i] * density[i])[:groups]
    members = [[] for _ in centres]
    for i in range(n):
        group = centres.index(i) if i in centres else min(range(groups), key=lambda c: distance[centres[c]][i])
        members[group].append(tokens[i])
    return torch.stack([torch.stack(group).sum(0) / (len(group) + 1e-6) for group in members])


@torch.no_grad()
def official_run(eager_model, sample_inputs, schedule, tail=()):
    """The official forward on one sample: returns (logits at the prompt's last token and at each `tail`
    token, carried along as decoded tokens: no raters, never pruned), the kept original image indices per
    pruning layer, and the image tokens every layer sees."""
    lm = eager_model.model.language_model
    captured = {}
    hook = lm.layers[0].register_forward_pre_hook(lambda module, args: captured.setdefault("embeddings", args[0]))
    eager_model(**sample_inputs)
    hook.remove()
    ids = sample_inputs["input_ids"][0]
    tail = torch.tensor(list(tail), dtype=torch.long)
    hidden = torch.cat([captured["embeddings"], lm.embed_tokens(tail).unsqueeze(0)], 1)
    image_at = (ids == eager_model.config.image_token_id).nonzero().squeeze(1)
    v_start, v_num = int(image_at[0]), len(image_at)
    prompt_len = len(ids)
    text = hidden[0, v_start + v_num : prompt_len]
    relevance = (hidden[0, v_start : v_start + v_num] @ text.T).softmax(dim=1).mean(0)
    raters = (relevance > relevance.mean()).nonzero().squeeze(1)
    origin = list(range(v_num))  # original image index of each image token now, None for a merged one
    kept_per_layer, seen = [], []
    for index, layer in enumerate(lm.layers):
        length = hidden.shape[1]
        mask = torch.full((length, length), float("-inf")).triu(1)[None, None]
        weights = {}
        attention_hook = layer.self_attn.register_forward_hook(lambda module, args, output: weights.update(attn=output[1]))
        output = layer(hidden, attention_mask=mask, position_embeddings=lm.rotary_emb(hidden, torch.arange(length)[None]))
        attention_hook.remove()
        seen.append(v_num)
        if index in LAYERS:
            text_start = v_start + v_num
            relation = weights["attn"][0].mean(0)[raters + text_start, v_start:text_start].mean(0)
            top = schedule[LAYERS.index(index)]
            keep = sorted(relation.topk(min(top, v_num - 1)).indices.tolist())
            pruned = [i for i in range(v_num) if i not in keep]
            recycled = relation[pruned].topk(int(len(pruned) * 0.3) + 1).indices
            merged = official_merge(output[0, [v_start + pruned[i] for i in recycled]], int(len(recycled) / 10) + 1)
            hidden = torch.cat([output[:, :v_start], output[:, [v_start + i for i in keep]], merged[None], output[:, text_start:]], 1)
            kept_per_layer.append([origin[i] for i in keep if origin[i] is not None])
            origin = [origin[i] for i in keep] + [None] * len(merged)
            v_num = len(keep) + len(merged)
        else:
            hidden = output
    logits = eager_model.lm_head(lm.norm(hidden))[0]
    return logits[len(logits) - len(tail) - 1 :], kept_per_layer, seen


# None: the official 64-token schedule, its first count capped at 63 of the tiny model's 64 image tokens
@pytest.mark.parametrize(("attn_implementation", "schedule"), [("eager", (20, 10, 4)), ("sdpa", (20, 10, 4)), ("sdpa", None)])
def test_each_sample_of_a_padded_batch_gets_the_official_tokens_prefill_and_cached_decoding(checkpoint, attn_implementation, schedule):
    checkpoint_dir, _, inputs = checkpoint
    model, eager = load(checkpoint_dir, attn_implementation), load(checkpoint_dir, "eager")
    config = DropConfig.from_args("method=sparsevlm," + (f"sparsevlm_counts={';'.join(map(str, schedule))}" if schedule else "sparsevlm_tokens=64"))
    schedule = schedule or (66, 30, 17)
    with torch.no_grad(), apply_drop(model, config) as handle:
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    decoded = generated.sequences[:, inputs["input_ids"].shape[1] :]
    for sample in range(len(PROMPTS)):
        logits, kept, seen = official_run(eager, alone(inputs, sample), schedule, tail=decoded[sample, :-1].tolist())
        stats = handle.last_stats[sample]
        assert [list(layer) for layer in stats.kept] == kept
        assert stats.image_tokens_per_layer == tuple(seen) == tuple(config.image_tokens_per_layer(64, len(seen)))
        for step, step_logits in enumerate(generated.logits):  # step 0: the prefill's last token; then cached decoding
            torch.testing.assert_close(step_logits[sample], logits[step], atol=2e-4, rtol=1e-4)


def test_clustering_merges_as_the_official_code_ties_included():
    generator = torch.Generator().manual_seed(11)
    spread = torch.randn(40, 8, generator=generator) * torch.rand(40, 1, generator=generator) * 3
    torch.testing.assert_close(merge_clusters(spread, 5), official_merge(spread, 5))
    twins = torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 0.0], [2.0, 0.5]])  # equal densities; every token a centre
    torch.testing.assert_close(merge_clusters(twins, 4), official_merge(twins, 4))
    evenly = torch.tensor([[0.0], [1.0], [3.0], [4.0]])  # equal densities: the earlier token leads, its group first
    torch.testing.assert_close(merge_clusters(evenly, 2), official_merge(evenly, 2))


def test_presets_budgets_and_labels(checkpoint):
    assert [drop_preset(f"sparsevlm-{tokens}").kept_counts(576) for tokens in (64, 128, 192)] == [[66 + 16, 30 + 2, 17 + 1], [303 + 9, 110 + 7, 36 + 3], [300 + 9, 200 + 4, 110 + 3]]
    assert drop_preset("sparsevlm-192") == DropConfig.from_args("method=sparsevlm")
    assert drop_preset("sparsevlm-192").image_tokens_per_layer(576, 32) == [576] * 3 + [309] * 4 + [204] * 9 + [113] * 16
    # budgets average their tokens per layer (the presets' official schedules average more: 82.25 for 64);
    # between official sizes the schedules are interpolated, below 64 the 64 schedule is scaled down
    for budget, target, counts in (("64", 64, [19, 8, 5]), ("96", 96, [118, 48, 21]), ("25%", 144, [296, 108, 35])):
        solved = for_budget(budget, "sparsevlm")
        assert solved == DropConfig.from_args(f"method=sparsevlm,sparsevlm_counts={';'.join(map(str, counts))}")
        assert abs(sum(solved.image_tokens_per_layer(576, 32)) / 32 - target) < 1
    assert [budget_schedule(tokens) for tokens in (32, 64, 96, 160, 384)] == [
        (33, 15, 8), (66, 30, 17), (184, 70, 26), (302, 155, 73), (600, 400, 220)
    ]
    config = DropConfig.from_args("method=sparsevlm,sparsevlm_counts=20;10;4,sparsevlm_layers=1;3;5")
    assert config.label() == "SparseVLM 20/10/4 @1,3,5" and config.kept_counts(64) == [22, 11, 5]
    assert DropConfig.from_args(config.to_args()) == config and DropConfig.from_dict(config.to_dict()) == config


def test_bad_settings_are_refused_naming_them(checkpoint, tiny_qwen2_5_vl):
    with pytest.raises(ValueError, match=r"SparseVLM does not take \['fastv_r'\]"):
        DropConfig.from_args("method=sparsevlm,fastv_r=0.5")
    with pytest.raises(ValueError, match=r"SparseVLM does not take \['position_mode'\]"):
        DropConfig.from_args("method=sparsevlm,position_mode=original")
    with pytest.raises(ValueError, match=r"sparsevlm_tokens must name an official SparseVLM schedule, one of \[64, 128, 192\], got 100"):
        DropConfig.from_args("method=sparsevlm,sparsevlm_tokens=100")
    with pytest.raises(ValueError, match=r"schedule \[20, 10\] has 2 counts for 3 sparsevlm_layers"):
        DropConfig.from_args("method=sparsevlm,sparsevlm_counts=20;10")
    with pytest.raises(ValueError, match=r"budget 5 avg image tokens/layer at N=576 is below what SparseVLM can reach.*reachable: 57\.9375 tokens to 576 tokens"):
        for_budget("5", "sparsevlm")

    checkpoint_dir, processor, _ = checkpoint
    model = load(checkpoint_dir, "sdpa")
    with pytest.raises(ValueError, match=r"the last must be below the model's last layer \(31\)"):
        apply_drop(model, DropConfig.from_args("method=sparsevlm,sparsevlm_layers=2;6;31"))
    text_only = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2))
    with pytest.raises(TypeError, match="LlamaForCausalLM is not a model of a supported family"):
        apply_drop(text_only, DropConfig.from_args("method=sparsevlm,sparsevlm_layers=0;1;2,sparsevlm_counts=4;2;1"))
    with pytest.raises(ValueError, match=r"SparseVLM supports LLaVA-1.5 and LLaVA-NeXT \('llava' and 'llava_next'\) models only, got a Qwen2.5-VL"):
        apply_drop(load(tiny_qwen2_5_vl, "sdpa"), DropConfig.from_args("method=sparsevlm"))
    generator = torch.Generator().manual_seed(3)
    pictures = [torch.randint(0, 256, (48, 64, 3), generator=generator, dtype=torch.uint8).numpy() for _ in range(2)]
    two_blocks = processor(images=[pictures], text=["USER: <image> and <image>\nSame? ASSISTANT:"], return_tensors="pt")
    with torch.no_grad(), apply_drop(model, DropConfig.from_args("method=sparsevlm")):
        with pytest.raises(ValueError, match=r"one contiguous block of image tokens per sample .* samples \[0\] have several"):
            model(**two_blocks)


def test_llava_next_padded_batch_gives_each_sample_what_it_gets_alone(tiny_llava_next):
    """LLaVA-NeXT's image block (base tile, grid and newline tokens) ranked whole: a padded batch of two
    aspect ratios (two N) keeps per layer the counts the config gives each N, and each sample's logits
    are those it gets alone."""
    processor = AutoProcessor.from_pretrained(tiny_llava_next)
    processor.tokenizer.padding_side = "left"
    generator = torch.Generator().manual_seed(7)
    pictures = [torch.randint(0, 256, (*shape, 3), generator=generator, dtype=torch.uint8).numpy() for shape in [(32, 64), (64, 40)]]
    batch = processor(images=pictures, text=PROMPTS, return_tensors="pt", padding=True)
    model = load(tiny_llava_next, "sdpa")
    config = DropConfig.from_args("method=sparsevlm,sparsevlm_counts=40;20;8")
    with torch.no_grad(), apply_drop(model, config) as handle:
        together = model(**batch).logits[:, -1]
        stats = handle.last_stats
        for sample in range(2):
            real = batch["attention_mask"][sample].bool()
            single = {"input_ids": batch["input_ids"][sample][real].unsqueeze(0), "pixel_values": batch["pixel_values"][sample : sample + 1],
                      "image_sizes": batch["image_sizes"][sample : sample + 1]}
            torch.testing.assert_close(model(**single).logits[0, -1], together[sample], atol=2e-4, rtol=0)
    counts = [entry.num_image_tokens for entry in stats]
    assert counts[0] != counts[1]
    assert [list(entry.image_tokens_per_layer) for entry in stats] == [config.image_tokens_per_layer(n, 32) for n in counts]
