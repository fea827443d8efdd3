"""VLMEvalKit integration: `pdrop-vlmeval` runs VLMEvalKit's own run.py on the tiny LLaVA-NeXT
checkpoint and two local datasets (multiple choice and Yes/No), offline, with exact-matching judges."""

import base64
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from conftest import hand_image_tokens_per_layer
from pdrop_eval import DropConfig, synth
from pdrop_eval.budget import for_budget
from pdrop_eval.adapters.vlmeval_data import TOY_MCQ, TOY_YN, make_toy_datasets, toy_mcq_rows, toy_yn_rows, write_tsv

DATASETS = (TOY_MCQ, TOY_YN)
MAX_NEW_TOKENS = 3  # random weights never stop early; a few tokens keep the runs short
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def lmu_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("LMUData")
    make_toy_datasets(folder)
    return folder


def _env(lmu_data) -> dict:
    return {**os.environ, "LMUData": str(lmu_data), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _launcher() -> str:
    path = shutil.which("pdrop-vlmeval", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert path, "the pdrop-vlmeval console script is not installed (pip install -e .)"
    return path


def _run(command: list[str], lmu_data, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=_env(lmu_data), cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def _predictions(work_dir, model: str, dataset: str) -> pd.DataFrame:
    return pd.read_excel(work_dir / model / f"{model}_{dataset}.xlsx")


def _stats(work_dir, model: str) -> dict:
    return json.loads((work_dir / model / f"{model}_pdrop_stats.json").read_text())


@pytest.fixture(scope="module")
def one_process_run(tiny_llava_next, lmu_data, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("vlmeval_one_process")
    result = _run(
        [
            _launcher(),
            "--model", "llava_next_pdrop", "llava_fastv",
            "--data", *DATASETS,
            "--judge", "exact_matching",
            "--work-dir", str(work_dir),
            "--model-args", f"pretrained={tiny_llava_next},max_new_tokens={MAX_NEW_TOKENS}",
        ],
        lmu_data,
        cwd=work_dir,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return work_dir


@pytest.mark.parametrize("model", ["llava_next_pdrop", "llava_fastv"])
def test_run_writes_predictions_scores_and_statistics(one_process_run, tiny_llava_next, model):
    work_dir = one_process_run
    expected_indices = {TOY_MCQ: [row["index"] for row in toy_mcq_rows()], TOY_YN: [row["index"] for row in toy_yn_rows()]}
    for dataset, indices in expected_indices.items():
        predictions = _predictions(work_dir, model, dataset)
        assert list(predictions["index"]) == indices
        assert predictions["prediction"].map(lambda text: isinstance(text, str)).all()
    # VLMEvalKit's scorers ran: MCQ accuracy table, Y/N score table.
    assert "Overall" in pd.read_csv(work_dir / model / f"{model}_{TOY_MCQ}_acc.csv").columns
    assert "Overall" in pd.read_csv(work_dir / model / f"{model}_{TOY_YN}_score.csv").columns
    status = json.loads((work_dir / model / "status.json").read_text())["datasets"]
    assert all("metrics" in status[dataset] and "error_message" not in status[dataset] for dataset in DATASETS)

    stats = _stats(work_dir, model)
    assert stats["schema"] == "pdrop-eval/stats/v2"
    assert stats["results_file"] == "status.json"
    assert stats["model_args"] == json.loads((work_dir / model / f"{model}_pdrop_setting.json").read_text())["settings"]
    assert stats["model_args"]["max_new_tokens"] == MAX_NEW_TOKENS
    assert (stats["framework"], stats["model"], stats["pretrained"]) == ("vlmeval", model, str(tiny_llava_next))
    assert stats["architecture"] == "llava_next"
    assert stats["world_size"] == 1
    assert stats["drop"]["method"] == {"llava_next_pdrop": "pyramid", "llava_fastv": "fastv"}[model]
    assert [(s["task"], s["doc_id"]) for s in stats["samples"]] == [(d, i) for d in DATASETS for i in expected_indices[d]]
    assert stats["num_samples"] == 12
    for sample in stats["samples"]:
        n, per_layer = sample["num_image_tokens"], sample["image_tokens_per_layer"]
        if model == "llava_next_pdrop":  # boundaries 8/16/24, lambda 0.5
            assert per_layer[7:9] + per_layer[15:17] + per_layer[23:25] == [n, n // 2, n // 2, n // 4, n // 4, n // 8]
        else:  # FastV K=2, R=0.5
            assert per_layer[:3] == [n, n, n - n // 2]
    # LLaVA-NeXT anyres: the square, wide and tall images give different image-token counts.
    assert len({sample["num_image_tokens"] for sample in stats["samples"]}) == 3
    assert stats["mean_tflops_paper"] == pytest.approx(sum(s["tflops_paper"] for s in stats["samples"]) / 12)


def test_two_processes_give_the_same_predictions(one_process_run, tiny_llava_next, lmu_data, tmp_path):
    """torchrun with 2 workers (gloo: no NCCL on CPU), model options from VLMEvalKit's --config JSON,
    the Y/N set declared there by class: predictions and statistics equal the 1-process run's."""
    config = {
        "model": {"llava_next_pdrop": {"pretrained": str(tiny_llava_next), "max_new_tokens": MAX_NEW_TOKENS}},
        "data": {
            TOY_MCQ: {"class": "ImageMCQDataset", "dataset": TOY_MCQ},
            TOY_YN: {"class": "ImageYORNDataset", "dataset": TOY_YN},
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python"]
    result = _run(
        [*torchrun, _launcher(), "--config", "config.json", "--judge", "exact_matching", "--work-dir", "out"],
        lmu_data,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "using the gloo backend" in result.stderr
    for dataset in DATASETS:
        two = _predictions(tmp_path / "out", "llava_next_pdrop", dataset)
        one = _predictions(one_process_run, "llava_next_pdrop", dataset)
        assert list(two["index"]) == list(one["index"])
        assert list(two["prediction"]) == list(one["prediction"])
    two_stats, one_stats = _stats(tmp_path / "out", "llava_next_pdrop"), _stats(one_process_run, "llava_next_pdrop")
    assert two_stats["world_size"] == 2
    assert two_stats["samples"] == one_stats["samples"]


# ----- Qwen2.5-VL and LLaVA-OneVision: one run of both families' models, VLMEvalKit's names -------------
FAMILY_MODELS = {"Qwen2.5-VL-PDrop": ("qwen2_5_vl", "pyramid"), "llava_onevision_fastv": ("llava_onevision", "fastv")}


@pytest.fixture(scope="module")
def family_run(tiny_qwen2_5_vl, tiny_llava_onevision, lmu_data, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("vlmeval_families")
    config = {
        "model": {
            "Qwen2.5-VL-PDrop": {"pretrained": str(tiny_qwen2_5_vl), "max_new_tokens": MAX_NEW_TOKENS, "min_pixels": 256,
                                 "max_pixels": 16384},  # the tiny model's own pixel range
            "llava_onevision_fastv": {"pretrained": str(tiny_llava_onevision), "max_new_tokens": MAX_NEW_TOKENS},
        },
        "data": {TOY_MCQ: {"class": "ImageMCQDataset", "dataset": TOY_MCQ}},
    }
    (work_dir / "config.json").write_text(json.dumps(config))
    result = _run([_launcher(), "--config", "config.json", "--judge", "exact_matching", "--work-dir", str(work_dir)], lmu_data, cwd=work_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    return work_dir


@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_each_family_runs_under_its_vlmeval_name_with_statistics(family_run, model):
    from transformers import AutoProcessor

    family, method = FAMILY_MODELS[model]
    predictions = _predictions(family_run, model, TOY_MCQ)
    rows = toy_mcq_rows()
    assert list(predictions["index"]) == [row["index"] for row in rows]
    assert "Overall" in pd.read_csv(family_run / model / f"{model}_{TOY_MCQ}_acc.csv").columns
    stats = _stats(family_run, model)
    assert (stats["model"], stats["architecture"], stats["drop"]["method"]) == (model, family, method)
    assert stats["drop"]["position_mode"] == "original"  # Qwen2.5-VL-PDrop's default: 3-D ids are kept
    assert stats["model_args"] == json.loads((family_run / model / f"{model}_pdrop_setting.json").read_text())["settings"]
    # N of each row as the checkpoint's processor makes it from the picture VLMEvalKit dumped, and the schedule
    checkpoint = stats["pretrained"]
    processor = AutoProcessor.from_pretrained(checkpoint, **({"size": {"shortest_edge": 256, "longest_edge": 16384}} if family == "qwen2_5_vl" else {}))
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    for sample, row in zip(stats["samples"], rows):
        encoded = processor(images=[row["image"]], text=[processor.image_token], return_tensors="pt")
        n = int((encoded.input_ids == image_token_id).sum())
        assert (sample["doc_id"], sample["num_image_tokens"]) == (row["index"], n)
        assert sample["image_tokens_per_layer"] == list(hand_image_tokens_per_layer(method, n))
    assert len({sample["num_image_tokens"] for sample in stats["samples"]}) > 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "llava_next_pdrop", "llava_pdrop_typo"], "unknown model(s) ['llava_pdrop_typo']"),
        (["--model", "llava_fastv", "--model-args", "pretrained=/nonexistent/ckpt"],
         "model 'llava_fastv': checkpoint folder /nonexistent/ckpt does not exist"),
        (["--model", "llava_fastv", "--model-args", "pretrained=no-such-org/no-such-model"],
         "model 'llava_fastv': cannot load checkpoint 'no-such-org/no-such-model'"),
    ],
    ids=["bad-name", "missing-folder", "missing-hub-id"],
)
def test_bad_models_stop_with_a_clear_error(lmu_data, tmp_path, extra, message):
    command = [_launcher(), "--data", TOY_MCQ, "--judge", "exact_matching", "--work-dir", "out", *extra]
    result = _run(command, lmu_data, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "out").exists()  # stopped before VLMEvalKit started


INTERRUPTED = "PDropInterruptedYN"
SHORT_CELL = "PDropShortCellYN"


@pytest.fixture(scope="module")
def interrupted_run(tiny_llava, lmu_data, tmp_path_factory):
    """A run that stops part-way: row 11 of 12 has an undecodable image, so VLMEvalKit has saved the
    first 10 predictions in its partial `01_<dataset>.pkl` when inference fails, as after a Ctrl-C.
    A second dataset has a 1-character image cell, which VLMEvalKit refuses with a bare assert."""
    rows = toy_yn_rows(12)
    write_tsv(lmu_data / f"{INTERRUPTED}.tsv", rows)
    data = pd.read_csv(lmu_data / f"{INTERRUPTED}.tsv", sep="\t")
    data.loc[10, "image"] = base64.b64encode(b"not an image " * 8).decode("ascii")
    data.to_csv(lmu_data / f"{INTERRUPTED}.tsv", sep="\t", index=False)
    data = pd.read_csv(lmu_data / f"{INTERRUPTED}.tsv", sep="\t").head(3)
    data.loc[1, "image"] = "x"
    data.to_csv(lmu_data / f"{SHORT_CELL}.tsv", sep="\t", index=False)
    # and make-synth's VQA set, which VLMEvalKit alone cannot score (its custom VQA set's evaluate raises)
    synth_tsv = synth.write_synth(tmp_path_factory.mktemp("synth"), train_images=1, test_questions=4)["tsv"]
    shutil.copy(synth_tsv, lmu_data / synth_tsv.name)
    work_dir = tmp_path_factory.mktemp("vlmeval_interrupted")
    command = _interrupted_command(tiny_llava, work_dir, f"max_new_tokens={MAX_NEW_TOKENS},lambda=0.5", INTERRUPTED, SHORT_CELL, synth.TSV_NAME)
    return work_dir, _run(command, lmu_data, cwd=work_dir)


def _interrupted_command(checkpoint, work_dir, options: str, *datasets) -> list[str]:
    return [_launcher(), "--model", "llava_next_pdrop", "--data", *datasets, "--judge", "exact_matching",
            "--work-dir", str(work_dir), "--model-args", f"pretrained={checkpoint},{options}"]


def test_a_failed_model_x_dataset_fails_the_run_whatever_its_message(interrupted_run):
    work_dir, result = interrupted_run
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"failed: llava_next_pdrop x {INTERRUPTED}: " in result.stderr
    # VLMEvalKit's bare assert records an empty message: the exception is named, with where it was raised
    named = f"failed: llava_next_pdrop x {SHORT_CELL}: AssertionError (raised in "
    assert named in result.stderr and "vlmeval/" in result.stderr.split(named)[1].splitlines()[0]
    status = json.loads((work_dir / "llava_next_pdrop" / "status.json").read_text())["datasets"]
    assert status[SHORT_CELL]["error_message"].startswith("AssertionError (raised in ")
    from pdrop_eval.report import build_report

    markdown = build_report([work_dir]).markdown
    assert f"{SHORT_CELL} was not scored" in markdown and f"{INTERRUPTED} was not scored" in markdown


def test_make_synth_tsv_is_scored_by_exact_match(interrupted_run):
    """PDropSynth.tsv (a VQA set without options) ran through pdrop-vlmeval: VLMEvalKit's own custom VQA
    set raised a bare NotImplementedError when scoring it, and the run failed without a message."""
    work_dir, result = interrupted_run
    model_dir = work_dir / "llava_next_pdrop"
    assert f"x {synth.TSV_NAME}" not in result.stderr
    predictions = pd.read_excel(model_dir / f"llava_next_pdrop_{synth.TSV_NAME}.xlsx")
    scores = pd.read_csv(model_dir / f"llava_next_pdrop_{synth.TSV_NAME}_acc.csv")
    matches = [synth.exact_match(str(prediction), str(answer)) for prediction, answer in zip(predictions["prediction"], predictions["answer"])]
    assert scores["Overall"][0] == pytest.approx(100 * sum(matches) / len(matches))
    assert "metrics" in json.loads((model_dir / "status.json").read_text())["datasets"][synth.TSV_NAME]


def test_exact_match_vqa_scores_overall_and_per_category(adapter, tmp_path):
    from pdrop_eval.adapters.vlmeval_exact_match import exact_match_scores

    predictions = pd.DataFrame({
        "index": [1, 2, 3, 4], "question": ["q"] * 4, "category": ["local", "local", "counting", "counting"],
        "answer": ["red", "Blue", "3", "2"], "prediction": ["Red.", "green", " 3", "two"],
    })
    eval_file = tmp_path / "model_PDropTestVQA.xlsx"
    predictions.to_excel(eval_file, index=False)
    scores = exact_match_scores(str(eval_file))
    assert scores.to_dict("records") == [{"Overall": 50.0, "counting": 50.0, "local": 50.0}]
    assert pd.read_csv(tmp_path / "model_PDropTestVQA_acc.csv").to_dict("records") == scores.to_dict("records")


@pytest.mark.parametrize("options, change", [
    (f"max_new_tokens={MAX_NEW_TOKENS},lambda=0.3", "'ratio': 0.3"),
    (f"max_new_tokens={MAX_NEW_TOKENS + 1},lambda=0.5", f"max_new_tokens {MAX_NEW_TOKENS} -> {MAX_NEW_TOKENS + 1}"),
], ids=["other-lambda", "other-max_new_tokens"])
def test_interrupted_predictions_are_not_reused_by_another_setting(interrupted_run, tiny_llava, lmu_data, options, change):
    work_dir, _ = interrupted_run
    partial = work_dir / "llava_next_pdrop" / f"01_{INTERRUPTED}.pkl"
    assert len(pd.read_pickle(partial)) == 10  # VLMEvalKit's own checkpoint of the first 10 answers
    before = sorted(path.name for path in (work_dir / "llava_next_pdrop").iterdir())
    result = _run(_interrupted_command(tiny_llava, work_dir, options, INTERRUPTED), lmu_data, cwd=work_dir)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"holds llava_next_pdrop predictions (01_{INTERRUPTED}.pkl" in result.stderr
    assert change in result.stderr and "VLMEvalKit would reuse them" in result.stderr
    assert sorted(path.name for path in (work_dir / "llava_next_pdrop").iterdir()) == before


# ----- in-process checks of the pieces -----------------------------------------------------------
@pytest.fixture(scope="module")
def adapter():
    from pdrop_eval.adapters import vlmeval

    return vlmeval


def test_multiple_choice_prompt_follows_vlmeval_llava(adapter):
    line = pd.Series({"index": 3, "question": "Which color?", "hint": "Look closely.", "A": "red", "B": "blue", "C": None})
    assert adapter.multiple_choice_prompt(line) == (
        "Look closely.\nWhich color?\nA. red\nB. blue\nAnswer with the option's letter from the given choices directly."
    )
    chinese = pd.Series({"index": 4, "question": "什么颜色？", "A": "红", "B": "蓝"})
    assert adapter.multiple_choice_prompt(chinese).endswith("\n请直接回答选项字母。")


def test_message_parts_keep_image_order_and_join_adjacent_texts(adapter, tmp_path):
    from pathlib import Path

    message = [
        {"type": "text", "value": "Compare"},
        {"type": "image", "value": str(tmp_path / "a.png")},
        {"type": "text", "value": "with"},
        {"type": "text", "value": "this one:"},
        {"type": "image", "value": str(tmp_path / "b.png")},
    ]
    assert adapter._message_parts(message) == ["Compare", Path(tmp_path / "a.png"), "with\nthis one:", Path(tmp_path / "b.png")]


def test_model_options_are_checked_without_loading(adapter, tiny_llava_next, tiny_llava):
    settings = adapter.LLaVAPyramidDrop.check_options(pretrained=str(tiny_llava_next), layer_list="4;8", **{"lambda": "0.25"})
    assert settings.drop == DropConfig.pyramid(layer_list=(4, 8), ratio=0.25)
    assert (settings.architecture, settings.max_new_tokens) == ("llava_next", 1024)
    assert adapter.LLaVAFastV.check_options(pretrained=str(tiny_llava), drop_preset="fastv-k2-r0.5").drop.params.fastv_k == 2
    with pytest.raises(ValueError, match="FastV does not take"):
        adapter.LLaVAFastV.check_options(pretrained=str(tiny_llava), layer_list="8;16")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['temperature'\]"):
        adapter.LLaVAVanilla.check_options(pretrained=str(tiny_llava), temperature=0.2)
    with pytest.raises(TypeError, match="pretrained must be a checkpoint folder or HF Hub id, got True"):
        adapter.LLaVAVanilla.check_options(pretrained=True)  # a JSON `true` in a --config entry
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        adapter.LLaVAVanilla.check_options(pretrained=str(tiny_llava), max_new_tokens="0")


def test_budget_model_args_resolve_for_the_checkpoint(adapter, tiny_llava_next):
    from pdrop_eval.adapters.vlmeval_run import parse_model_args

    options = parse_model_args(f"pretrained={tiny_llava_next},budget=22%,budget_convention=after_drop")
    expected = for_budget("22%", "fastv", model=str(tiny_llava_next), convention="after_drop")
    assert adapter.LLaVAFastV.check_options(**options).drop == expected


def test_model_args_with_brackets_and_repeated_keys(adapter, tiny_llava_next):
    from pdrop_eval.adapters.vlmeval_run import LaunchError, parse_model_args

    options = parse_model_args(f"pretrained={tiny_llava_next},layer_list=[8,16,24],lambda=0.4")
    assert adapter.LLaVAPyramidDrop.check_options(**options).drop == DropConfig.pyramid(ratio=0.4)
    assert adapter.LLaVAPyramidDrop.check_options(**options, drop_preset="pdrop-0.6").drop == DropConfig.pyramid(ratio=0.4)
    with pytest.raises(LaunchError, match="'lambda' given twice"):
        parse_model_args("lambda=0.5,lambda=0.4")


def test_random_control_is_registered_with_its_schedule_options(adapter, tiny_llava_next):
    import vlmeval.vlm
    from vlmeval.config import supported_VLM

    adapter.register_models()
    assert supported_VLM["llava_random_drop"].func is adapter.LLaVARandomDrop is vlmeval.vlm.LLaVARandomDrop
    settings = adapter.LLaVARandomDrop.check_options(pretrained=str(tiny_llava_next), fastv_k="3", seed="5")
    assert settings.drop == DropConfig.random(DropConfig.fastv(k=3), seed=5)
    assert adapter.LLaVARandomDrop.check_options(pretrained=str(tiny_llava_next), drop_preset="pdrop-0.5").drop == DropConfig.random()


def test_registration_is_in_place(adapter):
    import vlmeval.vlm
    from vlmeval.config import supported_VLM

    registry = supported_VLM
    adapter.register_models({"max_new_tokens": "5"})
    from vlmeval.config import supported_VLM as after

    assert after is registry
    assert supported_VLM["llava_fastv"].func is adapter.LLaVAFastV
    assert supported_VLM["llava_fastv"].keywords == {"max_new_tokens": "5"}
    assert vlmeval.vlm.LLaVAPyramidDrop is adapter.LLaVAPyramidDrop


def test_local_sets_are_typed_and_bad_spellings_refused(adapter, tmp_path, monkeypatch):
    from vlmeval.dataset import DATASET_TYPE, build_dataset

    from pdrop_eval.adapters.vlmeval_exact_match import ExactMatchVQA
    from pdrop_eval.adapters.vlmeval_run import LaunchError, _register_local_dataset

    rows = toy_yn_rows(2)
    _register_local_dataset("PDropTestYN", write_tsv(tmp_path / "PDropTestYN.tsv", rows))
    assert DATASET_TYPE("PDropTestYN") == "Y/N"
    lowercase = [{**row, "answer": row["answer"].lower()} for row in rows]
    with pytest.raises(LaunchError, match="exactly as"):
        _register_local_dataset("PDropTestLower", write_tsv(tmp_path / "PDropTestLower.tsv", lowercase))
    _register_local_dataset("PDropTestMCQ", write_tsv(tmp_path / "PDropTestMCQ.tsv", toy_mcq_rows(2)))
    assert DATASET_TYPE("PDropTestMCQ") == "MCQ"  # left to VLMEvalKit's own custom-MCQ rule
    monkeypatch.setenv("LMUData", str(tmp_path))
    vqa = [{**row, "answer": answer} for row, answer in zip(rows, ["red", "two"])]
    _register_local_dataset("PDropTestVQA", write_tsv(tmp_path / "PDropTestVQA.tsv", vqa))
    assert DATASET_TYPE("PDropTestVQA") == "VQA" and isinstance(build_dataset("PDropTestVQA"), ExactMatchVQA)


def test_work_dir_of_another_configuration_is_refused(one_process_run, tiny_llava_next, adapter):
    from pdrop_eval.adapters.vlmeval_run import LaunchError, _claim_work_dir

    def settings(**options):
        return adapter.LLaVAPyramidDrop.check_options(pretrained=str(tiny_llava_next), **options).prediction_settings()

    folder = one_process_run / "llava_next_pdrop"
    _claim_work_dir(folder, "llava_next_pdrop", settings(max_new_tokens=MAX_NEW_TOKENS, device="cpu"))  # placement may change
    with pytest.raises(LaunchError, match="would reuse them"):
        _claim_work_dir(folder, "llava_next_pdrop", settings(max_new_tokens=MAX_NEW_TOKENS, **{"lambda": 0.4}))
    with pytest.raises(LaunchError, match=f"max_new_tokens {MAX_NEW_TOKENS} -> {MAX_NEW_TOKENS + 1}"):
        _claim_work_dir(folder, "llava_next_pdrop", settings(max_new_tokens=MAX_NEW_TOKENS + 1))
    with pytest.raises(LaunchError, match="dtype 'auto' -> 'float32'"):
        _claim_work_dir(folder, "llava_next_pdrop", settings(max_new_tokens=MAX_NEW_TOKENS, dtype="float32"))


def test_write_tsv_refuses_incomplete_rows(tmp_path):
    with pytest.raises(ValueError, match="'answer' column"):
        write_tsv(tmp_path / "x.tsv", [{"index": 0, "image": None, "question": "q"}])


def test_model_builds_prompts_and_records_each_row(adapter, tiny_llava_next, lmu_data, monkeypatch):
    """The model class as VLMEvalKit's inference loop drives it: set_dump_image, build_prompt, generate."""
    from vlmeval.dataset import build_dataset

    monkeypatch.setenv("LMUData", str(lmu_data))
    model = adapter.LLaVAPyramidDrop(pretrained=str(tiny_llava_next), max_new_tokens=2)

    mcq = build_dataset(TOY_MCQ)
    model.set_dump_image(mcq.dump_image)
    line = mcq.data.iloc[1]
    message = model.build_prompt(line, dataset=TOY_MCQ) if model.use_custom_prompt(TOY_MCQ) else None
    assert [item["type"] for item in message] == ["image", "text"]
    assert message[1]["value"] == adapter.multiple_choice_prompt(line)
    assert isinstance(model.generate(message, dataset=TOY_MCQ), str)

    from pdrop_eval.adapters.vlmeval_run import _register_local_dataset

    _register_local_dataset(TOY_YN, lmu_data / f"{TOY_YN}.tsv")
    yes_no = build_dataset(TOY_YN)
    model.set_dump_image(yes_no.dump_image)
    line = yes_no.data.iloc[0]
    message = model.build_prompt(line, dataset=TOY_YN)
    assert message == yes_no.build_prompt(line)  # non-MCQ datasets keep their own prompt
    model.generate(message, dataset=TOY_YN)

    report = model.take_statistics("llava_next_pdrop")
    assert [(s.task, s.doc_id) for s in report.samples] == [(TOY_MCQ, 1), (TOY_YN, 100)]
    assert (report.model, report.drop.method) == ("llava_next_pdrop", "pyramid") and report.wall_time_s > 0
    assert model.take_statistics("llava_next_pdrop").samples == ()
    with pytest.raises(RuntimeError, match="did not build"):
        model.generate(message, dataset=TOY_YN)  # a prompt that skipped build_prompt has no known index
