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
    assert isinstance(config.spec.scorer(config), AttentionScorer)


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
