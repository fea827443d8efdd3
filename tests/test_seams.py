"""The engine's seams: a method added in one file, a scorer passed to apply_drop, and transformers'
names bound from the installed release."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from pdrop_eval import DropConfig, apply_drop
from pdrop_eval.engine import hf_binding
from pdrop_eval.engine.methods import METHODS, OPTION_KEYS, SWEPT_METHODS
from pdrop_eval.engine.scoring import AttentionScorer, Scorer

pytestmark = pytest.mark.newest_transformers  # also run on the newest transformers release (.ci/run)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "l2_norm_drop.py"
PROMPTS = ["USER: <image>\nWhat color is the square? ASSISTANT:", "USER: <image>\nIs it round? ASSISTANT:"]


@pytest.fixture(scope="module")
def llava(tiny_llava):
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava, attn_implementation="sdpa", dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava)
    processor.tokenizer.padding_side = "left"
    generator = torch.Generator().manual_seed(3)
    images = [torch.randint(0, 256, (48, 64, 3), generator=generator, dtype=torch.uint8).numpy() for _ in PROMPTS]
    inputs = processor(images=images, text=PROMPTS, return_tensors="pt", padding=True)
    return model, inputs


@pytest.fixture
def l2_norm_method():
    """The README's worked example, registered for one test, and the registry restored after it."""
    saved = dict(METHODS), dict(OPTION_KEYS), dict(SWEPT_METHODS)
    spec = importlib.util.spec_from_file_location("l2_norm_drop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through it
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]
    for registry, before in zip((METHODS, OPTION_KEYS, SWEPT_METHODS), saved):
        registry.clear()
        registry.update(before)


def test_a_method_in_one_file_keeps_the_largest_norm_image_tokens(llava, l2_norm_method):
    """The example method keeps, per sample of a padded batch, the image tokens whose input to layer 4
    has the largest L2 norm in the stock model, and parses, labels and records like a built-in."""
    model, inputs = llava
    config = DropConfig.from_args("method=l2norm,norm_layer=4,norm_keep=0.25")
    assert config.params == l2_norm_method.NormParams(norm_layer=4, norm_keep=0.25)
    assert DropConfig.from_dict(config.to_dict()) == config and config.label() == "L2 @4 keep=0.25"
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[4]  # (B, T, d): layer 4's input
        with apply_drop(model, config) as handle:
            model(**inputs)
    for sample, stats in enumerate(handle.last_stats):
        image = inputs["input_ids"][sample] == model.config.image_token_id
        norms = hidden[sample][image].norm(dim=-1)
        keep = int(int(image.sum()) * 0.25)
        expected = sorted(norms.argsort(descending=True, stable=True)[:keep].tolist())
        assert list(stats.kept[0]) == expected
        assert stats.image_tokens_per_layer[3:5] == (int(image.sum()), keep)
    with pytest.raises(ValueError, match="norm_keep must be in"):
        DropConfig.from_args("method=l2norm,norm_keep=0")


def test_a_scorer_passed_to_apply_drop_replaces_the_methods_own(llava):
    """The method's schedule with another scorer: one that prefers the last image tokens keeps them."""
    model, inputs = llava

    class LastTokensFirst(Scorer):
        calls = 0

        def scores(self, view):
            LastTokensFirst.calls += 1
            return view.image_rank.float()

    config = DropConfig.fastv(k=2, r=0.75)
    with torch.no_grad(), apply_drop(model, config, scorer=LastTokensFirst()) as handle:
        model(**inputs)
    for sample, stats in enumerate(handle.last_stats):
        n = stats.num_image_tokens
        assert list(stats.kept[0]) == list(range(n - config.kept_counts(n)[0], n))
    assert LastTokensFirst.calls == 1
    with pytest.raises(TypeError, match="scorer must be a pdrop_eval.engine.scoring.Scorer"):
        apply_drop(model, config, scorer=lambda view: view.hidden)
    assert isinstance(config.parts()[0], AttentionScorer)


def test_a_release_without_the_names_the_engine_binds_to_names_the_versions(monkeypatch):
    import transformers

    def forward_without_cache(hidden_states, attention_mask=None):
        return hidden_states

    monkeypatch.setattr(hf_binding, "supported_range", lambda: ">=5.23.0,<6")
    with pytest.raises(hf_binding.UnsupportedTransformersError, match=rf"transformers {transformers.__version__} is installed, pdrop-eval supports transformers >=5\.23\.0,<6"):
        hf_binding.cache_parameter(forward_without_cache)


def test_the_supported_range_is_the_declared_one():
    assert hf_binding.supported_range().replace(" ", "") in (">=5.23.0,<6", "<6,>=5.23.0")


def test_a_decode_step_with_a_cache_the_prefill_did_not_fill_is_refused(llava):
    from transformers.cache_utils import DynamicCache

    model, inputs = llava
    with torch.no_grad(), apply_drop(model, DropConfig.pyramid(layer_list=[4], ratio=0.5)):
        prefill = model(**inputs, use_cache=True)
        stale = DynamicCache(config=model.config.get_text_config())
        for layer in range(model.config.get_text_config().num_hidden_layers):  # a cache the user filled elsewhere
            stale.update(torch.zeros(2, 2, inputs["input_ids"].shape[1], 8), torch.zeros(2, 2, inputs["input_ids"].shape[1], 8), layer)
        step = {"input_ids": prefill.logits[:, -1:].argmax(-1), "attention_mask": torch.ones(2, inputs["input_ids"].shape[1] + 1)}
        with pytest.raises(ValueError, match="was not filled by a prefill under PyramidDrop"):
            model(**step, **hf_binding.cache_argument(model, stale))
        model(**step, **hf_binding.cache_argument(model, hf_binding.output_cache(prefill)))  # the returned one decodes


def test_a_method_placed_before_the_language_model_with_a_merging_reducer(llava):
    """A vision-side method built from the parts alone (no change to the staged loop): before any decoder
    layer, each run of 4 image tokens is averaged into one. Each sample of a padded batch then prefills
    and greedily decodes exactly as the stock model does on its hand-built pooled sequence."""
    from dataclasses import dataclass

    from pdrop_eval.engine.methods import register_method
    from pdrop_eval.engine.methods.base import PLACE_BEFORE_LANGUAGE_MODEL, Boundary, MethodSpec
    from pdrop_eval.engine.reducers import Reducer, Reduction

    @dataclass(frozen=True)
    class PoolParams:
        pool_size: int = 4

    class FirstOfEachRun(Scorer):
        def scores(self, view):
            assert view.layer is None  # nothing of the language model has run
            return (view.image_rank % 4 == 0).float()

    class MeanOfRun(Reducer):
        def reduce(self, *, hidden, scores, is_image, image_rank, keep):
            run = torch.where(is_image, image_rank // 4, -1)  # (B, T) the run each image slot belongs to
            same_run = (run.unsqueeze(2) == run.unsqueeze(1)) & is_image.unsqueeze(1)  # (B, T, T)
            means = same_run.float() @ hidden.float() / same_run.sum(2, keepdim=True).clamp(min=1)
            selected = is_image & (image_rank % 4 == 0)
            return Reduction(selected=selected, hidden=torch.where(selected.unsqueeze(-1), means.to(hidden.dtype), hidden))

    class Pool(MethodSpec):
        def boundaries(self, params, num_layers):
            return [Boundary.before_language_model()]

        def kept_counts(self, params, num_image_tokens):
            return [num_image_tokens // 4]

        def scorer(self, params):
            return FirstOfEachRun()

        def reducer(self, params):
            return MeanOfRun()

    model, inputs = llava
    saved = dict(METHODS)
    register_method(Pool(name="pool4", title="Pool by 4", kind="pool4", series="Pool4", keys=(), defaults={"position_mode": "compact"},
                         params_class=PoolParams, place=PLACE_BEFORE_LANGUAGE_MODEL))
    try:
        config = DropConfig.from_args("method=pool4")
        assert config.image_tokens_per_layer(64, 4) == [16] * 4
        with torch.no_grad():
            embeddings = model(**inputs, output_hidden_states=True).hidden_states[0]  # (B, T, d): the language model's input
            with apply_drop(model, config) as handle:
                dropped_logits = model(**inputs).logits[:, -1]
                dropped_tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)[:, inputs["input_ids"].shape[1]:]
            for sample in range(len(PROMPTS)):
                real = inputs["attention_mask"][sample].bool()
                image = inputs["input_ids"][sample][real] == model.config.image_token_id
                sequence = embeddings[sample][real]
                first = int(image.nonzero()[0])
                pooled = sequence[image].view(-1, 4, sequence.shape[-1]).mean(1)
                reduced = torch.cat([sequence[:first], pooled, sequence[first + int(image.sum()):]]).unsqueeze(0)
                assert torch.allclose(model(inputs_embeds=reduced).logits[0, -1], dropped_logits[sample], atol=1e-4)
                expected = model.generate(inputs_embeds=reduced, attention_mask=torch.ones(reduced.shape[:2], dtype=torch.long), max_new_tokens=4, do_sample=False)
                assert dropped_tokens[sample].tolist() == expected[0, -4:].tolist()
                assert handle.last_stats[sample].image_tokens_per_layer == (16,) * model.config.text_config.num_hidden_layers
                assert handle.last_stats[sample].num_image_tokens == int(image.sum())  # N, not what layer 0 saw
        with pytest.raises(ValueError, match="Pool by 4 drops at before_language_model but its schedule gives"):
            DropConfig.from_args("method=pool4").spec.check_boundaries([Boundary(score_layer=1, drop_layer=2)])
    finally:
        METHODS.clear()
        METHODS.update(saved)


def test_a_scorer_sees_the_drop_layers_input_and_may_hook_the_model(llava):
    """Scoring at layer 1 for a drop before layer 2: `view.hidden` is layer 1's input and
    `view.drop_hidden` layer 2's (as the stock model computes them); hooks the scorer attaches to the
    model run while the config is applied and are gone after `remove()`."""
    model, inputs = llava
    seen = {}

    class ByDropInputNorm(Scorer):
        vision_calls = 0

        def attach(self, model):
            def count(module, args, output):
                ByDropInputNorm.vision_calls += 1
            return [model.model.vision_tower.register_forward_hook(count)]

        def scores(self, view):
            seen["hidden"], seen["drop_hidden"] = view.hidden, view.drop_hidden
            return view.drop_hidden.float().norm(dim=-1)

    config = DropConfig.fastv(k=2, r=0.5, position_mode="original")
    with torch.no_grad():
        stock = model(**inputs, output_hidden_states=True).hidden_states
        with apply_drop(model, config, scorer=ByDropInputNorm()) as handle:
            model(**inputs)
        model(**inputs)  # after remove(): the hook is gone
    assert ByDropInputNorm.vision_calls == 1
    assert torch.allclose(seen["hidden"], stock[1], atol=1e-5) and torch.allclose(seen["drop_hidden"], stock[2], atol=1e-5)
    for sample, stats in enumerate(handle.last_stats):
        image = inputs["input_ids"][sample] == model.config.image_token_id
        norms = stock[2][sample][image].norm(dim=-1)
        assert list(stats.kept[0]) == sorted(norms.argsort(descending=True, stable=True)[: config.kept_counts(int(image.sum()))[0]].tolist())
