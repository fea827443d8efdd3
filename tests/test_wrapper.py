"""The shared model wrapper on the tiny checkpoints: batching, statistics, prompts, errors; plus the
statistics file, the presets and the offline task data."""

import io
import json

import pandas as pd
import pytest
import torch
from PIL import Image, ImageFile

from conftest import hand_image_tokens_per_layer, hand_kv_size, hand_tflops
from pdrop_eval import flops, local_tasks, presets, stats
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.engine.hf_binding import cache_argument, output_cache
from pdrop_eval.wrapper import LlavaRunner, Query, plan_batches

LOCAL_DATA = local_tasks.DEFAULT_FOLDER


def local_queries(name: str) -> list[Query]:
    """Queries from the committed offline task data (images of three aspect ratios)."""
    frame = pd.read_parquet(LOCAL_DATA / f"{name}.parquet")
    return [Query.from_parts([Image.open(io.BytesIO(row.image)), row.question], f"{name} doc {row.id}") for row in frame.itertuples()]


@pytest.fixture(scope="module")
def pdrop_next(tiny_llava_next):
    return LlavaRunner.load(str(tiny_llava_next), drop=DropConfig.pyramid(), dtype="float32")


@pytest.fixture(scope="module")
def fastv_llava(tiny_llava):
    return LlavaRunner.load(str(tiny_llava), drop=DropConfig.fastv(k=2, r=0.5), dtype="float32")


@pytest.mark.parametrize("runner_name", ["pdrop_next", "fastv_llava"])
def test_batch_size_does_not_change_answers_or_scores(runner_name, request):
    runner = request.getfixturevalue(runner_name)
    queries = local_queries("vqa") + local_queries("yesno")[:2]
    one = runner.generate(queries, max_new_tokens=6, batch_size=1)
    four = runner.generate(queries, max_new_tokens=6, batch_size=4)
    assert [a.text for a in one] == [a.text for a in four]
    assert [a.stats for a in one] == [a.stats for a in four]
    assert len({a.text for a in one}) > 1  # the answers really depend on the input

    continuations = [" red", " yes", " A", " no"] * 2
    scored_one = runner.loglikelihood(queries, continuations, batch_size=1)
    scored_four = runner.loglikelihood(queries, continuations, batch_size=4)
    assert [s.is_greedy for s in scored_one] == [s.is_greedy for s in scored_four]
    assert torch.allclose(torch.tensor([s.logprob for s in scored_one]), torch.tensor([s.logprob for s in scored_four]), atol=1e-4)


def test_statistics_follow_the_drop_config(pdrop_next):
    queries = local_queries("mcq")[:3]  # three aspect ratios: three different N on LLaVA-NeXT
    answers = pdrop_next.generate(queries, max_new_tokens=2, batch_size=3)
    text_config = pdrop_next.model.config.text_config
    d, m, kv = text_config.hidden_size, text_config.intermediate_size, hand_kv_size(text_config)
    assert kv < d  # the tiny decoder uses grouped-query attention
    image_token_id = pdrop_next.model.config.image_token_id
    seen_counts = set()
    for query, answer in zip(queries, answers):
        encoded = pdrop_next.processor(images=list(query.images), text=[pdrop_next.render(query)], return_tensors="pt")
        n = int((encoded.input_ids == image_token_id).sum())
        text_tokens = encoded.input_ids.shape[1] - n
        seen_counts.add(n)
        per_layer = hand_image_tokens_per_layer("pyramid", n)
        assert answer.stats.num_image_tokens == n
        assert answer.stats.image_tokens_per_layer == per_layer
        assert answer.stats.tokens_per_layer == tuple(k + text_tokens for k in per_layer)
        assert answer.stats.tflops_paper == pytest.approx(hand_tflops(per_layer, d, m, kv))
        assert answer.stats.tflops_actual == pytest.approx(hand_tflops([k + text_tokens for k in per_layer], d, m, kv))
    assert len(seen_counts) == 3


def test_loglikelihood_equals_generation_prefill_then_teacher_forced_decoding(pdrop_next):
    """A continuation's score in one forward equals what generation computes: prefill of the prompt
    alone (ranked by its last token), then the continuation fed through the pruned KV cache."""
    queries = local_queries("vqa")[:3]
    continuations = [" red circle", " a blue square", " yes it is"]
    scores = pdrop_next.loglikelihood(queries, continuations, batch_size=3)
    for query, continuation, score in zip(queries, continuations, scores):
        prompt = pdrop_next.render(query)
        inputs = pdrop_next.processor(images=list(query.images), text=[prompt], return_tensors="pt")
        targets = pdrop_next.tokenizer(prompt + continuation, return_tensors="pt").input_ids[:, len(pdrop_next.tokenizer(prompt).input_ids):]
        assert targets.shape[1] > 1  # at least one teacher-forced decode step
        with torch.inference_mode():
            prefill = pdrop_next.model(**inputs, use_cache=True)
            total = inputs.input_ids.shape[1] + targets.shape[1]
            decode = pdrop_next.model(
                input_ids=targets[:, :-1],
                attention_mask=torch.ones(1, total - 1, dtype=torch.long),
                position_ids=torch.arange(inputs.input_ids.shape[1], total - 1)[None],
                **cache_argument(pdrop_next.model, output_cache(prefill)),
                use_cache=True,
            )
        logits = torch.cat([prefill.logits[:, -1:], decode.logits], dim=1).float()  # (1, len, vocab)
        expected = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).sum().item()
        assert score.logprob == pytest.approx(expected, abs=1e-4)
        assert score.is_greedy == bool((logits.argmax(-1) == targets).all())


def test_no_drop_baseline_answers_like_the_stock_model(tiny_llava):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    queries = local_queries("vqa")[:2]
    runner = LlavaRunner.load(str(tiny_llava), dtype="float32", pad_to_square=False)  # as the stock processor sees images
    answers = runner.generate(queries, max_new_tokens=5, batch_size=2)
    assert all(a.stats.image_tokens_per_layer == (64,) * 32 for a in answers)

    stock = LlavaForConditionalGeneration.from_pretrained(tiny_llava, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava)
    for query, answer in zip(queries, answers):
        inputs = processor(images=list(query.images), text=[runner.render(query)], return_tensors="pt")
        output = stock.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert processor.batch_decode(output[:, inputs.input_ids.shape[1] :], skip_special_tokens=True)[0] == answer.text


def test_prompt_uses_the_checkpoint_template_and_places_images(pdrop_next):
    image = Image.new("RGB", (64, 64), "red")
    assert pdrop_next.render(Query.from_text("What color?", [image])) == "USER: <image>\nWhat color? ASSISTANT:"
    interleaved = Query.from_text("Compare <image> with <image>", [image, image])
    assert [item["type"] for item in interleaved.messages[0]["content"]] == ["text", "image", "text", "image"]
    with pytest.raises(ValueError, match="2 <image> placeholder"):
        Query.from_text("Compare <image> with <image>", [image])


def test_vicuna_fallback_template_when_the_checkpoint_has_none(pdrop_next, monkeypatch):
    from pdrop_eval.wrapper import VICUNA_CHAT_TEMPLATE

    monkeypatch.setattr(pdrop_next, "chat_template", VICUNA_CHAT_TEMPLATE)
    prompt = pdrop_next.render(Query.from_text("What color?", [Image.new("RGB", (8, 8))]))
    assert prompt.startswith("A chat between a curious human")
    assert prompt.endswith("USER: <image>\nWhat color? ASSISTANT:")


def test_stop_strings_cut_the_answer(pdrop_next):
    query = local_queries("vqa")[:1]
    full = pdrop_next.generate(query, max_new_tokens=6)[0].text
    stop = full[2:4]
    assert pdrop_next.generate(query, max_new_tokens=6, stop=[stop])[0].text == full[: full.find(stop)]


@pytest.mark.parametrize("framework_leniency", [False, True], ids=["pil-default", "lmms-eval-global"])
def test_truncated_image_fails_even_when_pil_is_lenient(monkeypatch, framework_leniency):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", framework_leniency)
    with pytest.raises(ValueError, match="task 'x' doc 3: cannot decode image"):
        Query.from_parts([Image.open(io.BytesIO(_truncated_png())), "hi"], label="task 'x' doc 3")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is framework_leniency  # the global is left as found


def test_bad_inputs_fail_with_clear_errors(tmp_path, tiny_llava):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LlavaRunner.load(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="dtype must be one of"):
        LlavaRunner.load(str(tiny_llava), dtype="float8")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        plan_batches([1, 2], 0)


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, format="PNG")
    return buffer.getvalue()[:60]  # valid header, data cut off


def test_plan_batches_sorts_longest_first_and_keeps_every_index():
    batches = plan_batches([3, 9, 1, 9, 5], 2)
    assert batches == [[1, 3], [4, 0], [2]]


# ----- statistics file -----------------------------------------------------------------------------
DIMS = {"hidden_size": 4, "intermediate_size": 8, "num_layers": 2}


def test_sample_tflops_are_the_papers_count():
    # 3 then 1 token, d=4, m=8: (4·3·16 + 2·9·4 + 3·3·4·8) + (4·1·16 + 2·1·4 + 3·1·4·8) = 552 + 168 = 720 FLOPs
    cost = stats.SampleStats.measure(3, [3, 1], [5, 3], DIMS)
    assert cost.tflops_paper == pytest.approx(720e-12)
    # 5 then 3 tokens: (320 + 200 + 480) + (192 + 72 + 288) = 1000 + 552
    assert cost.tflops_actual == pytest.approx(1552e-12)
    # grouped-query attention, keys and values 2 wide: the projections cost 2·n·16 + 2·n·4·2 = 48·n, not 64·n
    grouped = stats.SampleStats.measure(3, [3, 1], [5, 3], {**DIMS, "kv_size": 2})
    assert grouped.tflops_paper == pytest.approx((720 - 16 * 3 - 16 * 1) * 1e-12)


def _run(samples, **fields) -> stats.RunStats:
    return stats.RunStats(
        framework="lmms-eval", model="llava_next_pdrop", pretrained="p", architecture="llava", drop=DropConfig.pyramid(layer_list=[1], ratio=0.5),
        model_dims=DIMS, wall_time_s=fields.pop("wall_time_s", 1.0), samples=tuple(samples), **fields,
    )


def test_run_stats_merge_deduplicate_link_and_round_trip(tmp_path):
    small = stats.SampleStats.measure(4, [4, 2], [6, 4], DIMS)
    large = stats.SampleStats.measure(8, [8, 4], [10, 6], DIMS)
    first = _run([stats.SampleRecord("b", 0, small), stats.SampleRecord("b", 0, large)], wall_time_s=1.5)
    second = _run([stats.SampleRecord("a", 1, large)], wall_time_s=2.5)
    run = stats.merge_processes([first, second])
    assert [(s.task, s.doc_id) for s in run.samples] == [("a", 1), ("b", 0)]
    assert run.samples[1].stats is small  # the first record of a document wins
    assert (run.world_size, run.wall_time_s, run.num_samples, run.mean("num_image_tokens")) == (2, 2.5, 2, 6.0)
    with pytest.raises(ValueError, match="not linked"):
        stats.write_run_stats(tmp_path / "x_pdrop_stats.json", run)  # no results file named: never written
    linked = run.linked("x_results.json", "pretrained=p,layer_list=1,lambda=0.5")
    path = stats.write_run_stats(stats.lmms_stats_path(tmp_path / "x_results.json"), linked)
    assert path.name == "x_pdrop_stats.json"
    assert stats.read_run_stats(path) == linked
    written = json.loads(path.read_text())
    assert (written["schema"], written["results_file"], written["mean_tflops_paper"]) == ("pdrop-eval/stats/v2", "x_results.json", pytest.approx((small.tflops_paper + large.tflops_paper) / 2))
    with pytest.raises(ValueError, match="must end in"):
        stats.write_run_stats(tmp_path / "x.json", linked)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data["samples"][0].update(tflops_paper=float("nan")), "samples\\[0\\].tflops_paper should be a finite number, got nan"),
    (lambda data: data["samples"][0].update(tflops_actual=float("inf")), "samples\\[0\\].tflops_actual should be a finite number, got inf"),
    (lambda data: data.update(schema="pdrop-eval/stats/v1"), "an older pdrop-eval's file"),
    (lambda data: data.pop("results_file"), "missing 'results_file'"),
])
def test_unusable_statistics_files_name_the_file_and_key(tmp_path, damage, message):
    run = _run([stats.SampleRecord("a", 0, stats.SampleStats.measure(4, [4, 2], [6, 4], DIMS))]).linked("x_results.json", "")
    path = stats.write_run_stats(tmp_path / "x_pdrop_stats.json", run)
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))  # Python writes NaN / Infinity, as a careless tool would
    with pytest.raises(stats.StatsFileError, match=message) as error:
        stats.read_run_stats(path)
    assert str(path) in str(error.value)


# ----- presets and task data --------------------------------------------------------------------------
def test_presets_give_the_papers_settings():
    assert presets.drop_preset("pdrop-0.5") == DropConfig.pyramid(layer_list=[8, 16, 24], ratio=0.5)
    assert presets.drop_preset("pdrop-0.4").params.ratio == 0.4 and presets.drop_preset("pdrop-0.6").params.ratio == 0.6
    assert presets.drop_preset("fastv-k2-r0.5") == DropConfig.fastv(k=2, r=0.5)
    assert presets.drop_preset("vanilla") == DropConfig.none()
    assert presets.model_preset("llava-next-7b")["pretrained"] == "llava-hf/llava-v1.6-vicuna-7b-hf"
    assert set(presets.model_preset_names()) <= set(flops.PRESETS)  # one name per model everywhere
    with pytest.raises(ValueError, match="unknown drop preset 'pdrop-9'"):
        presets.drop_preset("pdrop-9")


def test_committed_task_data_matches_the_builder(tmp_path):
    for built in local_tasks.write_all(tmp_path):
        committed = pd.read_parquet(LOCAL_DATA / built.name)
        fresh = pd.read_parquet(built)
        pd.testing.assert_frame_equal(committed.drop(columns="image"), fresh.drop(columns="image"))
        for old, new in zip(committed.image, fresh.image):
            assert Image.open(io.BytesIO(old)).tobytes() == Image.open(io.BytesIO(new)).tobytes()


def test_ocrvqa_task_makes_one_document_per_question():
    import importlib.util

    import datasets

    spec = importlib.util.spec_from_file_location("ocrvqa_utils", local_tasks.DEFAULT_FOLDER.parents[1] / "pdrop_ocrvqa" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    cover = Image.new("RGB", (40, 60), "blue")
    raw = datasets.Dataset.from_dict(
        {"image": [cover, cover], "image_id": ["a", "b"], "questions": [["Who wrote this book?", "Is this a novel?"], ["What is the title?"]],
         "answers": [["Jane Doe", "Yes"], ["Blue Book"]], "genre": ["x", "y"]},
        features=datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("string"),
                                    "questions": datasets.Sequence(datasets.Value("string")),
                                    "answers": datasets.Sequence(datasets.Value("string")), "genre": datasets.Value("string")}),
    )
    docs = utils.ocrvqa_process_docs(raw)
    assert [(d["image_id"], d["question"], d["answer"]) for d in docs] == [
        ("a", "Who wrote this book?", "Jane Doe"), ("a", "Is this a novel?", "Yes"), ("b", "What is the title?", "Blue Book")]
    assert utils.ocrvqa_doc_to_visual(docs[2])[0].size == (40, 60)
    assert utils.ocrvqa_process_results(docs[0], ["jane doe."]) == {"exact_match": 1.0}


def test_llava15_pads_non_square_images_with_the_mean_colour_by_default(tiny_llava):
    """A wide red picture: the original LLaVA-1.5 convention pads it to a square with the mean colour
    (top and bottom bands normalise to ~0); llava-hf's default resize + center crop keeps only red."""
    from PIL import Image

    from pdrop_eval.wrapper import LlavaRunner, Query

    image = Image.new("RGB", (64, 32), (255, 0, 0))
    query = Query.from_parts([image, "What color?"])
    padded = LlavaRunner.load(str(tiny_llava))
    cropped = LlavaRunner.load(str(tiny_llava), pad_to_square=False)
    assert padded.pad_to_square and not cropped.pad_to_square
    padded_pixels = padded._encode([query], [padded.render(query)])["pixel_values"][0]  # (3, 64, 64)
    cropped_pixels = cropped._encode([query], [cropped.render(query)])["pixel_values"][0]
    red = cropped_pixels[:, 32, 32]
    assert red[0] > 1.5 and red[1] < -1.0  # normalised pure red
    assert padded_pixels[:, :14].abs().max() < 0.05 and padded_pixels[:, -14:].abs().max() < 0.05  # mean colour bands
    assert (padded_pixels[:, 32, 32] - red).abs().max() < 0.05  # the picture sits in the middle
    assert (cropped_pixels[:, :14] - red[:, None, None]).abs().max() < 0.05  # no band without padding


def test_pad_to_square_is_refused_for_llava_next(tiny_llava_next):
    import pytest

    from pdrop_eval.wrapper import LlavaRunner

    with pytest.raises(ValueError, match="pad_to_square applies to LLaVA-1.5 checkpoints only"):
        LlavaRunner.load(str(tiny_llava_next), pad_to_square=True)


def test_pad_to_square_option_in_both_frameworks(tiny_llava, tiny_llava_next):
    import pytest

    from pdrop_eval.options import resolve_model_options

    assert resolve_model_options("none", {"pretrained": str(tiny_llava)}, owner="m").pad_to_square is True
    assert resolve_model_options("none", {"pretrained": str(tiny_llava), "pad_to_square": "false"}, owner="m").pad_to_square is False
    assert resolve_model_options("none", {"pretrained": str(tiny_llava_next)}, owner="m").pad_to_square is False
    with pytest.raises(ValueError, match="m: pad_to_square must be true or false, got 'maybe'"):
        resolve_model_options("none", {"pretrained": str(tiny_llava), "pad_to_square": "maybe"}, owner="m")
    with pytest.raises(ValueError, match="m: pad_to_square applies to LLaVA-1.5 checkpoints only"):
        resolve_model_options("none", {"pretrained": str(tiny_llava_next), "pad_to_square": True}, owner="m")
