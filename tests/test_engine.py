"""The drop engine against the unmodified model and SPEC section 2, on tiny random checkpoints."""

import pytest
import torch
from drop_reference import language_model_embeddings, logits, pyramid_drop
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

from pdrop_eval import DropConfig, apply_drop
from pdrop_eval.engine.hf_binding import cache_argument, output_cache
from pdrop_eval.tiny import make_tiny_model

pytestmark = pytest.mark.newest_transformers  # also run on the newest transformers release (.ci/run)

QUESTIONS = [
    "What color is the square in the image?",
    "Is there a red circle in the picture? Please answer yes or no.",
    "Which shape is in the top left corner?",
    "What?",
]


def _image(seed: int, size=(64, 64)) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def _prompt(question: str, num_images: int = 1) -> str:
    return "USER: " + "<image>\n" * num_images + question + " ASSISTANT:"


def _load(path, attn="sdpa", dtype=torch.float32):
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation=attn, dtype=dtype).eval()
    return model, AutoProcessor.from_pretrained(path)


def _batch(processor, prompts, images):
    return processor(images=images or None, text=prompts, return_tensors="pt", padding=True)


def _generate(model, inputs, **kwargs):
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, **kwargs}
    with torch.no_grad():
        return model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1] :]


def _image_positions(inputs, model, sample: int) -> torch.Tensor:
    return (inputs["input_ids"][sample] == model.config.image_token_id).nonzero().squeeze(1)


@pytest.fixture(scope="module")
def llava(tiny_llava):
    return _load(tiny_llava)


@pytest.fixture(scope="module")
def llava_next(tiny_llava_next):
    return _load(tiny_llava_next)


# ----- lossless settings are the stock model --------------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize(
    "config",
    [
        DropConfig.pyramid(ratio=1.0),
        DropConfig.pyramid(ratio=1.0, position_mode="original"),
        DropConfig.fastv(k=2, r=0.0),
    ],
    ids=["pdrop-compact", "pdrop-original", "fastv"],
)
def test_lossless_config_generates_like_stock_and_remove_restores(tiny_llava_next, attn, batch_size, config):
    model, processor = _load(tiny_llava_next, attn=attn)
    prompts = [_prompt(QUESTIONS[0]), _prompt(QUESTIONS[1])][:batch_size]
    images = [_image(0, (128, 64)), _image(1, (64, 64))][:batch_size]  # different N per sample
    inputs = _batch(processor, prompts, images)
    stock = _generate(model, inputs)

    handle = apply_drop(model, config)
    dropped = _generate(model, inputs)
    assert torch.equal(dropped, stock)
    assert [s.image_tokens_per_layer for s in handle.last_stats] == [
        (s.num_image_tokens,) * 32 for s in handle.last_stats
    ]
    handle.remove()
    assert "forward" not in vars(model.model.language_model)
    assert torch.equal(_generate(model, inputs), stock)


def test_sampling_with_lossless_config_matches_stock(llava):
    model, processor = llava
    inputs = _batch(processor, [_prompt(QUESTIONS[2])], [_image(3)])
    torch.manual_seed(7)
    stock = _generate(model, inputs, do_sample=True, top_k=20)
    with apply_drop(model, DropConfig.pyramid(ratio=1.0)):
        torch.manual_seed(7)
        assert torch.equal(_generate(model, inputs, do_sample=True, top_k=20), stock)


# ----- how many image tokens each layer sees ---------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.5, 0.4, 0.6])
def test_image_tokens_per_layer_follow_lambda_in_padded_anyres_batch(llava_next, ratio):
    model, processor = llava_next
    images = [_image(0, (128, 64)), _image(1, (64, 128)), _image(2, (64, 64)), _image(3, (96, 64))]
    inputs = _batch(processor, [_prompt(q) for q in QUESTIONS], images)
    config = DropConfig.pyramid(layer_list=[8, 16, 24], ratio=ratio)
    with apply_drop(model, config) as handle:
        _generate(model, inputs, max_new_tokens=2, min_new_tokens=2)
    counts = [(inputs["input_ids"][b] == model.config.image_token_id).sum().item() for b in range(4)]
    assert len(set(counts)) > 1, "the batch should mix different numbers of image tokens"
    for n, stats in zip(counts, handle.last_stats):
        expected = (n,) * 8 + (int(n * ratio),) * 8 + (int(n * ratio**2),) * 8 + (int(n * ratio**3),) * 8
        assert stats.num_image_tokens == n
        assert stats.image_tokens_per_layer == expected
        assert [len(kept) for kept in stats.kept] == [int(n * ratio**s) for s in (1, 2, 3)]
        # later stages keep a subset of earlier ones, indices into the original image block
        for earlier, later in zip(stats.kept, stats.kept[1:]):
            assert set(later) <= set(earlier)
        assert all(0 <= i < n for i in stats.kept[0])


def test_explicit_ratio_list_equals_lambda(llava_next):
    model, processor = llava_next
    inputs = _batch(processor, [_prompt(QUESTIONS[0]), _prompt(QUESTIONS[3])], [_image(0, (128, 64)), _image(1)])
    results = []
    for config in (DropConfig.pyramid(ratio=0.5), DropConfig.pyramid(image_token_ratio_list=[0.5, 0.25, 0.125])):
        with apply_drop(model, config) as handle:
            results.append((_generate(model, inputs), handle.last_stats))
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_fastv_keeps_n_minus_int_n_r(llava_next):
    model, processor = llava_next
    inputs = _batch(processor, [_prompt(QUESTIONS[0]), _prompt(QUESTIONS[1])], [_image(0, (128, 64)), _image(1)])
    with apply_drop(model, DropConfig.fastv(k=3, r=0.3)) as handle:
        _generate(model, inputs, max_new_tokens=1, min_new_tokens=1)
    for stats in handle.last_stats:
        n = stats.num_image_tokens
        assert stats.image_tokens_per_layer == (n,) * 3 + (n - int(n * 0.3),) * 29


# ----- the ranking is the true attention of the unmodified model -------------------------------------


def _true_attention_top_k(model, inputs, layer, sample, k):
    """Top-k image tokens (indices into the image block) by the stock model's eager attention of the
    sample's last prompt token at `layer`, averaged over heads."""
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
    row = attentions[layer][sample, :, -1, :].float().mean(0)  # left padding: last column is the query
    image_scores = row[_image_positions(inputs, model, sample)]
    return set(image_scores.topk(k).indices.tolist())


@pytest.mark.parametrize(
    "config,score_layer",
    [(DropConfig.pyramid(layer_list=[8, 16, 24], ratio=0.5), 8), (DropConfig.fastv(k=2, r=0.5), 1), (DropConfig.fastv(k=5, r=0.75), 4)],
    ids=["pdrop", "fastv-k2", "fastv-k5"],
)
def test_first_boundary_keeps_top_k_of_true_attention(tiny_llava_next, config, score_layer):
    model, processor = _load(tiny_llava_next, attn="eager")
    images = [_image(4, (128, 64)), _image(5, (64, 64))]
    inputs = _batch(processor, [_prompt(QUESTIONS[0]), _prompt(QUESTIONS[2])], images)
    with apply_drop(model, config) as handle:
        _generate(model, inputs, max_new_tokens=1, min_new_tokens=1)
    for sample, stats in enumerate(handle.last_stats):
        k = config.kept_counts(stats.num_image_tokens)[0]
        assert set(stats.kept[0]) == _true_attention_top_k(model, inputs, score_layer, sample, k)


@pytest.mark.parametrize("text_arch", ["mistral", "qwen2"])
def test_other_decoders_rank_by_true_attention_and_are_lossless(tmp_path, text_arch):
    path = make_tiny_model(tmp_path / text_arch, arch="llava", text_arch=text_arch, num_layers=12)
    model, processor = _load(path, attn="eager")
    inputs = _batch(processor, [_prompt(QUESTIONS[0]), _prompt(QUESTIONS[3])], [_image(6), _image(7)])
    stock = _generate(model, inputs)
    with apply_drop(model, DropConfig.pyramid(layer_list=[3, 6, 9], ratio=1.0)):
        assert torch.equal(_generate(model, inputs), stock)
    with apply_drop(model, DropConfig.pyramid(layer_list=[3, 6, 9], ratio=0.5)) as handle:
        _generate(model, inputs, max_new_tokens=1, min_new_tokens=1)
    for sample in range(2):
        assert set(handle.last_stats[sample].kept[0]) == _true_attention_top_k(model, inputs, 3, sample, 32)


def test_several_images_are_ranked_together(tiny_llava):
    model, processor = _load(tiny_llava, attn="eager")
    inputs = _batch(processor, [_prompt(QUESTIONS[0], num_images=2)], [_image(8), _image(9)])
    with apply_drop(model, DropConfig.pyramid(ratio=0.5)) as handle:
        _generate(model, inputs, max_new_tokens=1, min_new_tokens=1)
    stats = handle.last_stats[0]
    assert stats.num_image_tokens == 128
    assert set(stats.kept[0]) == _true_attention_top_k(model, inputs, 8, 0, 64)


# ----- decoding, batching, text-only samples ----------------------------------------------------------


@pytest.mark.parametrize("position_mode", ["compact", "original"])
@pytest.mark.parametrize("method", ["pyramid", "fastv"])
def test_cached_decoding_matches_uncached_pruned_forward(llava_next, position_mode, method):
    model, processor = llava_next
    images = [_image(10, (128, 64)), _image(11)]
    inputs = _batch(processor, [_prompt(QUESTIONS[1]), _prompt(QUESTIONS[3])], images)
    config = (
        DropConfig.pyramid(ratio=0.5, position_mode=position_mode)
        if method == "pyramid"
        else DropConfig.fastv(k=2, r=0.5, position_mode=position_mode)
    )
    prompt_len, steps = inputs["input_ids"].shape[1], 5
    with apply_drop(model, config) as handle, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        cached_logits = torch.stack(out.logits, dim=1)  # (B, steps, V)
        cached_kept = [s.kept for s in handle.last_stats]

        full_ids = out.sequences[:, :-1]
        mask = torch.cat([inputs["attention_mask"], torch.ones(2, steps - 1, dtype=torch.long)], dim=1)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        with handle.query_positions(torch.full((2,), prompt_len - 1)):
            uncached = model(
                input_ids=full_ids,
                attention_mask=mask,
                position_ids=positions,
                pixel_values=inputs["pixel_values"],
                image_sizes=inputs["image_sizes"],
                use_cache=False,
            ).logits[:, prompt_len - 1 :]
        assert [s.kept for s in handle.last_stats] == cached_kept
    torch.testing.assert_close(cached_logits, uncached, rtol=1e-4, atol=1e-4)


def test_decode_step_builds_every_stage_mask_before_running_layers(llava, monkeypatch):
    """Building a mask may read the GPU back (transformers checks whether it can skip it); between two
    stages that read would stall the layers already queued, so a decode step builds all of them first."""
    from pdrop_eval.engine import staged

    model, processor = llava
    inputs = _batch(processor, [_prompt(QUESTIONS[0])], [_image(0)])
    calls = []
    for name in ("_stage_inputs", "_run_layers"):
        original = getattr(staged, name)
        monkeypatch.setattr(staged, name, lambda *args, _name=name, _original=original, **kwargs: calls.append(_name) or _original(*args, **kwargs))
    with apply_drop(model, DropConfig.pyramid(ratio=0.5)), torch.no_grad():
        prefill = model(**inputs, use_cache=True)
        calls.clear()
        mask = torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1)
        model(input_ids=prefill.logits[:, -1:].argmax(-1), attention_mask=mask, **cache_argument(model, output_cache(prefill)))
    assert calls == ["_stage_inputs"] * 4 + ["_run_layers"] * 4  # four stages: layers 0-7, 8-15, 16-23, 24-31


class _DeviceReads(torch.overrides.TorchFunctionMode):
    """Counts the tensor calls that copy a value from the device to the host while the decoder layers run
    (from the first layer's start to the last layer's end): on a GPU each one waits for every layer
    queued before it."""

    READS = frozenset({"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy", "nonzero", "repeat_interleave"})

    def __init__(self, layers):
        super().__init__()
        self.calls, self.running = [], False
        self.hooks = [
            layers[0].register_forward_pre_hook(lambda *_: setattr(self, "running", True)),
            layers[-1].register_forward_hook(lambda *_: setattr(self, "running", False)),
        ]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.running and name in self.READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch", [1, 2])
def test_prefill_boundaries_read_nothing_back_from_the_device_without_padding(tiny_llava, attn, batch):
    """Without padding, each stage's length is known on the host from the prompt's layout (read before
    the first layer), so no boundary reads the device and waits for the layers queued before it."""
    model, processor = _load(tiny_llava, attn=attn)
    inputs = _batch(processor, [_prompt(QUESTIONS[0])] * batch, [_image(seed) for seed in range(batch)])  # equal lengths
    with apply_drop(model, DropConfig.pyramid(ratio=0.5)), torch.no_grad(), _DeviceReads(model.model.language_model.layers) as reads:
        model(**inputs)
    assert reads.calls == []


# ----- positions: compact renumbering against an independent recompute ---------------------------------


def _reference_logits(model, inputs, query_row: int, compact: bool) -> torch.Tensor:
    """(T, V) logits of the plain re-implementation (tests/drop_reference.py) on an unpadded sample."""
    is_image = (inputs["input_ids"][0] == model.config.image_token_id).tolist()
    with torch.no_grad():
        embeds = language_model_embeddings(model, inputs)
        run = pyramid_drop(model, embeds, is_image=is_image, query_rows=[query_row], layer_list=[8, 16, 24], ratio=0.5, compact=compact)
        return logits(model, run.outputs)


@pytest.mark.parametrize("position_mode", ["compact", "original"])
def test_prefill_positions_match_an_independent_recompute(llava, position_mode):
    model, processor = llava
    inputs = _batch(processor, [_prompt(QUESTIONS[1])], [_image(20)])
    last = inputs["input_ids"].shape[1] - 1
    with apply_drop(model, DropConfig.pyramid(ratio=0.5, position_mode=position_mode)), torch.no_grad():
        engine = model(**inputs).logits[0]
    expected = {mode: _reference_logits(model, inputs, last, compact=mode == "compact") for mode in ("compact", "original")}
    torch.testing.assert_close(engine, expected[position_mode], rtol=1e-4, atol=1e-4)
    # the two conventions differ far beyond the tolerance, so the comparison above tells them apart
    assert (expected["compact"] - expected["original"])[last].abs().max() > 1e-2


def test_compact_decoding_shifts_positions_like_an_independent_recompute(llava):
    """Decode steps after a compact prefill continue the renumbered positions (original minus the
    tokens dropped before each stage), as a recompute over prompt + generated tokens does."""
    model, processor = llava
    inputs = _batch(processor, [_prompt(QUESTIONS[2])], [_image(21)])
    prompt_len, steps = inputs["input_ids"].shape[1], 4
    with apply_drop(model, DropConfig.pyramid(ratio=0.5)), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True)
    full = {"input_ids": out.sequences[:, :-1], "attention_mask": torch.ones_like(out.sequences[:, :-1]), "pixel_values": inputs["pixel_values"]}
    expected = _reference_logits(model, full, prompt_len - 1, compact=True)[prompt_len - 1 :]
    torch.testing.assert_close(torch.cat(out.logits), expected, rtol=1e-4, atol=1e-4)


def test_generated_image_token_id_decodes_as_text(llava):
    """A model may emit the <image> id; decode steps carry no image features, so it is plain text."""
    model, processor = llava
    inputs = _batch(processor, [_prompt(QUESTIONS[0])], [_image(0)])
    image_step = torch.tensor([[model.config.image_token_id]])
    logits = {}
    for name, config in (("stock", None), ("lossless", DropConfig.pyramid(ratio=1.0))):
        handle = apply_drop(model, config) if config else None
        with torch.no_grad():
            prefill = model(**inputs, use_cache=True)
            mask = torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1)
            logits[name] = model(input_ids=image_step, attention_mask=mask, **cache_argument(model, output_cache(prefill))).logits
        if handle:
            handle.remove()
    torch.testing.assert_close(logits["lossless"], logits["stock"], rtol=1e-5, atol=1e-5)


def test_sample_output_does_not_depend_on_batch(llava_next):
    model, processor = llava_next
    prompts = [_prompt(q) for q in QUESTIONS[:3]]
    images = [_image(12, (64, 128)), _image(13, (128, 128)), _image(14)]
    with apply_drop(model, DropConfig.pyramid(ratio=0.5)) as handle, torch.no_grad():
        batched_inputs = _batch(processor, prompts, images)
        batched = model.generate(**batched_inputs, max_new_tokens=6, min_new_tokens=6, output_logits=True, return_dict_in_generate=True)
        batched_stats = handle.last_stats
        for b in range(3):
            alone_inputs = _batch(processor, [prompts[b]], [images[b]])
            alone = model.generate(**alone_inputs, max_new_tokens=6, min_new_tokens=6, output_logits=True, return_dict_in_generate=True)
            prompt_len = alone_inputs["input_ids"].shape[1]
            assert torch.equal(alone.sequences[0, prompt_len:], batched.sequences[b, batched_inputs["input_ids"].shape[1] :])
            torch.testing.assert_close(
                torch.stack(alone.logits, 1)[0], torch.stack(batched.logits, 1)[b], rtol=1e-4, atol=1e-4
            )
            assert handle.last_stats[0].kept == batched_stats[b].kept


def test_text_only_sample_in_image_batch_is_untouched(llava):
    model, processor = llava
    text_prompt = "USER: " + QUESTIONS[1] + " ASSISTANT:"
    inputs = _batch(processor, [_prompt(QUESTIONS[0]), text_prompt], [_image(15)])
    alone = _batch(processor, [text_prompt], None)
    stock_alone = _generate(model, alone)
    with apply_drop(model, DropConfig.pyramid(ratio=0.5)) as handle:
        mixed = _generate(model, inputs)
        stats = handle.last_stats
        assert torch.equal(_generate(model, alone), stock_alone)  # text-only batch
    assert torch.equal(mixed[1], stock_alone[0])
    assert stats[1].num_image_tokens == 0 and stats[1].image_tokens_per_layer == (0,) * 32
    assert stats[0].image_tokens_per_layer[-1] == 8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(tiny_llava_next, dtype):
    model, processor = _load(tiny_llava_next, dtype=dtype)
    inputs = _batch(processor, [_prompt(QUESTIONS[0]), _prompt(QUESTIONS[1])], [_image(16, (128, 64)), _image(17)])
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    stock = _generate(model, inputs)
    with apply_drop(model, DropConfig.pyramid(ratio=1.0)):
        assert torch.equal(_generate(model, inputs), stock)
    with apply_drop(model, DropConfig.pyramid(ratio=0.5)) as handle:
        out = _generate(model, inputs)
    assert out.shape == stock.shape
    for stats in handle.last_stats:
        assert stats.image_tokens_per_layer[-1] == int(stats.num_image_tokens * 0.125)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash_attention_2 needs a CUDA GPU")
def test_flash_attention_2_matches_sdpa_on_gpu(tiny_llava_next):
    pytest.importorskip("flash_attn")
    results = {}
    for attn in ("sdpa", "flash_attention_2"):
        model = AutoModelForImageTextToText.from_pretrained(tiny_llava_next, attn_implementation=attn, dtype=torch.bfloat16).cuda().eval()
        processor = AutoProcessor.from_pretrained(tiny_llava_next)
        inputs = _batch(processor, [_prompt(QUESTIONS[0]), _prompt(QUESTIONS[1])], [_image(0, (128, 64)), _image(1)]).to("cuda")
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
        with apply_drop(model, DropConfig.pyramid(ratio=0.5)) as handle:
            _generate(model, inputs, max_new_tokens=1, min_new_tokens=1)
            results[attn] = handle.last_stats
    for sdpa_stats, flash_stats in zip(results["sdpa"], results["flash_attention_2"]):
        assert sdpa_stats.image_tokens_per_layer == flash_stats.image_tokens_per_layer
        overlap = len(set(sdpa_stats.kept[0]) & set(flash_stats.kept[0])) / max(1, len(sdpa_stats.kept[0]))
        assert overlap > 0.9  # bf16 kernels differ in rounding; near-ties may swap


# ----- errors ---------------------------------------------------------------------------------------


def test_bad_models_and_calls_are_rejected(llava, tiny_llava):
    model, processor = llava
    from transformers import LlamaForCausalLM

    text_model = LlamaForCausalLM(model.config.text_config)
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        apply_drop(text_model, DropConfig.pyramid())
    with pytest.raises(TypeError, match="DropConfig"):
        apply_drop(model, {"method": "pyramid"})
    with pytest.raises(ValueError, match="beyond the model's 32 layers"):
        apply_drop(model, DropConfig.pyramid(layer_list=[8, 16, 32]))
    with pytest.raises(ValueError, match="fastv_k=32"):
        apply_drop(model, DropConfig.fastv(k=32))

    inputs = _batch(processor, [_prompt(QUESTIONS[0])], [_image(0)])
    with apply_drop(model, DropConfig.pyramid()):
        with pytest.raises(ValueError, match="already applied"):
            apply_drop(model, DropConfig.fastv())
        with pytest.raises(ValueError, match="num_beams=2"):
            model.generate(**inputs, num_beams=2, max_new_tokens=2)
        beams = GenerationConfig(num_beams=3, max_new_tokens=2)
        with pytest.raises(ValueError, match="num_beams=3"):  # the config passed positionally, as generate allows
            model.generate(inputs["input_ids"], beams, pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"])
        with pytest.raises(ValueError, match="output_attentions"):
            model(**inputs, output_attentions=True)
        ending_with_image = _batch(processor, ["USER: hello <image>"], [_image(0)])
        with pytest.raises(ValueError, match="query token"):
            model(**ending_with_image)
    # nothing stays behind after the errors
    assert "forward" not in vars(model.model.language_model)
    assert "generate" not in vars(model)
