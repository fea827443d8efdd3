"""LLaVA-OneVision (issue 28 item 2) on a tiny random checkpoint: the family's N, layout and newline tokens
against the processor's and the model's own, and the drop engine's invariants on it."""

import json

import pytest
import torch
from drop_reference import language_model_embeddings, logits, staged_drop
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaOnevisionConfig

from pdrop_eval import DropConfig, apply_drop
from pdrop_eval.models import family_named

NEWEST = pytest.mark.newest_transformers  # the fast ones also run on the newest transformers release (.ci/run)

FAMILY = family_named("llava_onevision")
# (width, height): a 2x2-tile grid downsampled (128x128), a 1x2 grid kept whole, a small and a sliver picture
SIZES = [(128, 128), (128, 64), (64, 128), (64, 64), (100, 40), (57, 131), (500, 3), (120, 100)]
TEXT_ONLY = "<|im_start|>user \nIs there a red circle in the picture?<|im_end|><|im_start|>assistant\n"


def _prompt(question: str, num_images: int = 1) -> str:
    return "<|im_start|>user " + "<image>" * num_images + "\n" + question + "<|im_end|><|im_start|>assistant\n"


def _image(seed: int, size) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8).numpy())


def _load(path, attn="sdpa"):
    return AutoModelForImageTextToText.from_pretrained(path, attn_implementation=attn).eval(), AutoProcessor.from_pretrained(path)


def _batch(processor, prompts, images):
    """`images`: one list per prompt (empty for text), as the OneVision processor batches them."""
    return processor(images=images if any(images) else None, text=prompts, return_tensors="pt", padding=True)


def _generate(model, inputs, steps=3):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True)
    return out.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(out.logits, 1)


def _image_tokens(model, inputs, sample: int) -> int:
    return int((inputs["input_ids"][sample] == model.config.image_token_id).sum())


@pytest.fixture(scope="module")
def onevision(tiny_llava_onevision):
    return _load(tiny_llava_onevision)


# ----- the family against the processor and the model -------------------------------------------------


@NEWEST
def test_n_layout_and_newline_tokens_are_the_processors_and_models(onevision, tiny_llava_onevision):
    model, processor = onevision
    config = json.loads((tiny_llava_onevision / "config.json").read_text())
    newline = model.model.image_newline
    counts = []
    for size in SIZES:
        inputs = _batch(processor, [_prompt("What?")], [[Image.new("RGB", size)]])
        counts.append(_image_tokens(model, inputs, 0))
        assert FAMILY.image_tokens_per_image(config, size) == counts[-1], size
        regions = FAMILY.image_token_regions(processor, [size], pad_to_square=False)
        with torch.no_grad():
            features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], return_dict=True).pooler_output[0]
        # the packed features hold the newline vector exactly where the layout puts newline tokens, and the
        # base tile (first, without a newline) and the grid rows where it puts them
        assert [bool(row) for row in (features == newline).all(-1)] == [region.kind == "newline" for region in regions], size
        assert [region.kind for region in regions[:64]] == ["base"] * 64
    assert counts[0] == 64 + 11 * 12, "the 16 x 16 grid of a 128x128 picture is downsampled to 11 x 11, plus 11 newlines"
    # a downsampled cell shows the 8-pixel cells it averages: 16/11 of them per side
    grid = [region.box for region in FAMILY.image_token_regions(processor, [(128, 128)], False) if region.kind == "grid"]
    assert len(grid) == 121 and grid[0] == (0, 0, 16, 16) and grid[12] == (8, 8, 24, 24) and grid[-1] == (112, 112, 128, 128)
    # N from the config is the most any picture gets (an exhaustive scan of picture sizes), and it varies
    largest = max(FAMILY.image_tokens_per_image(config, (width, height)) for width in range(1, 260, 3) for height in range(1, 260, 2))
    assert FAMILY.max_image_tokens(config) == (largest, True)
    # the released geometry: 384-pixel tiles of 14-pixel patches, 36 grid resolutions, anyres_max_9
    released_config = LlavaOnevisionConfig().to_dict()
    assert FAMILY.image_tokens_per_image(released_config, (950, 1158)) == FAMILY.max_image_tokens(released_config)[0] == 8765


@NEWEST
def test_parts_and_token_ids(onevision):
    model, processor = onevision
    assert FAMILY.language_model(model) is model.model.language_model and FAMILY.input_ids_module(model) is model.model
    assert FAMILY.freezable_part(model, "vision_tower") is FAMILY.vision_tower(model) is model.model.vision_tower
    assert FAMILY.freezable_part(model, "projector") is model.model.multi_modal_projector
    assert FAMILY.image_token_ids(model.config) == (model.config.image_token_id, model.config.video_token_id)
    assert processor.tokenizer.convert_ids_to_tokens(model.config.video_token_id) == "<video>"  # its own token, not <unk>


@NEWEST
def test_bad_configs_are_refused_by_name(tiny_llava_onevision):
    config = json.loads((tiny_llava_onevision / "config.json").read_text())
    with pytest.raises(ValueError, match="SigLIP tower has no \\[CLS\\] token, so vision_feature_select_strategy must be 'full'"):
        FAMILY.image_tokens_per_image({**config, "vision_feature_select_strategy": "default"}, (64, 64))
    with pytest.raises(ValueError, match="vision_aspect_ratio must be 'anyres_max_<crops>'.*got 'anyres'"):
        FAMILY.max_image_tokens({**config, "vision_aspect_ratio": "anyres"})


# ----- the drop engine ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attn,config",
    [  # compact and original positions
        pytest.param("eager", DropConfig.pyramid(ratio=1.0), id="eager-pyramid"),
        pytest.param("sdpa", DropConfig.fastv(k=2, r=0.0), id="sdpa-fastv", marks=NEWEST),
    ],
)
def test_keep_everything_is_the_stock_model(tiny_llava_onevision, attn, config):
    """Prefill logits, cached-decode logits and greedy tokens of a keep-everything setting equal the stock
    model's, on a padded batch of different N (a downsampled grid, two images) and a text prompt."""
    model, processor = _load(tiny_llava_onevision, attn)
    prompts = [_prompt("What color is the square?"), _prompt("Which shape is left?", 2), TEXT_ONLY]
    inputs = _batch(processor, prompts, [[_image(0, (128, 128))], [_image(1, (128, 64)), _image(2, (64, 64))], []])
    real = inputs["attention_mask"].bool()  # left padding's logits are nobody's
    with torch.no_grad():
        stock_prefill = model(**inputs).logits[real]
    stock_tokens, stock_logits = _generate(model, inputs)
    with apply_drop(model, config) as handle, torch.no_grad():
        assert torch.equal(model(**inputs).logits[real], stock_prefill)
        tokens, decode_logits = _generate(model, inputs)
    assert torch.equal(tokens, stock_tokens) and torch.equal(decode_logits, stock_logits)
    assert [stats.num_image_tokens for stats in handle.last_stats] == [_image_tokens(model, inputs, b) for b in range(3)]


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(DropConfig.pyramid(ratio=0.5), id="pyramid", marks=NEWEST),
        pytest.param(DropConfig.fastv(k=2, r=0.5), id="fastv"),
        pytest.param(DropConfig.from_args("method=dart,dart_tokens=64"), id="dart"),
        pytest.param(DropConfig.from_args("method=random,lambda=0.5"), id="random"),
    ],
)
def test_padded_batch_gives_each_sample_what_it_gives_alone(onevision, config):
    """Pictures of different N (downsampled or not), two pictures in one prompt and a text-only prompt in
    one left-padded batch: each sample's tokens, logits, kept sets and counts are those it gets alone."""
    model, processor = onevision
    prompts = [_prompt("What color is the square?"), _prompt("Which one is red?", 2), TEXT_ONLY, _prompt("What?")]
    images = [[_image(3, (128, 128))], [_image(4, (64, 128)), _image(5, (100, 40))], [], [_image(6, (128, 64))]]
    if config.method == "dart":  # DART takes one contiguous block of image tokens per sample (its official rule)
        prompts, images = prompts[::2] + prompts[3:], images[::2] + images[3:]
    inputs = _batch(processor, prompts, images)
    with apply_drop(model, config) as handle:
        batched_tokens, batched_logits = _generate(model, inputs)
        batched_stats = handle.last_stats
        counts = [_image_tokens(model, inputs, b) for b in range(len(prompts))]
        assert len(set(counts)) == len(counts), f"every sample should have its own N, got {counts}"
        for b, (prompt, pictures) in enumerate(zip(prompts, images)):
            tokens, alone_logits = _generate(model, _batch(processor, [prompt], [pictures]))
            assert torch.equal(tokens[0], batched_tokens[b]), b
            torch.testing.assert_close(alone_logits[0], batched_logits[b], rtol=1e-4, atol=1e-4)
            assert handle.last_stats[0] == batched_stats[b], b
    for n, stats in zip(counts, batched_stats):
        assert stats.num_image_tokens == n
        assert stats.image_tokens_per_layer[-1] == (config.kept_counts(n)[-1] if n else 0)


@NEWEST
@pytest.mark.parametrize("method", ["pyramid", "fastv"])
def test_kept_sets_and_positions_equal_a_plain_reimplementation(tiny_llava_onevision, method):
    """At every boundary the kept image tokens (newline tokens included, as image tokens) are those a plain
    layer-by-layer re-implementation keeps, and the logits at every position agree, which they only do
    with the same positions (compact for PyramidDrop, original for FastV)."""
    model, processor = _load(tiny_llava_onevision, "eager")
    inputs = _batch(processor, [_prompt("Which shape is in the top left corner?")], [[_image(7, (120, 100))]])
    is_image = (inputs["input_ids"][0] == model.config.image_token_id).tolist()
    num_image, last = sum(is_image), len(is_image) - 1
    if method == "pyramid":
        config, compact = DropConfig.pyramid(ratio=0.5), True
        schedule = [(layer, layer, int(num_image * 0.5**stage)) for stage, layer in enumerate((8, 16, 24), 1)]
    else:
        config, compact = DropConfig.fastv(k=2, r=0.5), False
        schedule = [(1, 2, num_image - num_image // 2)]
    with apply_drop(model, config) as handle, torch.no_grad():
        engine = model(**inputs).logits[0]
        engine_kept = handle.last_stats[0].kept
    with torch.no_grad():
        embeds = language_model_embeddings(model, inputs)
        reference = staged_drop(model, embeds, is_image=is_image, query_rows=[last], schedule=schedule, compact=compact)
        expected = logits(model, reference.outputs)
    assert [list(kept) for kept in engine_kept] == reference.kept
    assert any(FAMILY.image_token_regions(processor, [(120, 100)], False)[i].kind == "newline" for i in reference.kept[0])
    torch.testing.assert_close(engine, expected, rtol=1e-4, atol=1e-4)


@NEWEST
def test_methods_without_a_onevision_rule_are_refused_by_name(onevision):
    model, _ = onevision
    with pytest.raises(ValueError, match=r"VisionZip supports .* models only, got a LLaVA-OneVision \('llava_onevision'\) model"):
        apply_drop(model, DropConfig.from_args("method=visionzip"))
    with pytest.raises(ValueError, match=r"Average pooling supports LLaVA-1\.5 and LLaVA-NeXT .* only, got a LLaVA-OneVision \('llava_onevision'\) model"):
        apply_drop(model, DropConfig.from_args("method=pool"))
    assert "forward" not in vars(model.model.language_model)  # a refused config leaves the stock model
