"""`pdrop-eval train`: the prompts and label mask it trains on, bad rows, and short real Trainer runs."""

import io
import json
import subprocess

import pandas as pd
import pytest
import torch
from PIL import Image

from pdrop_eval import synth
from pdrop_eval.engine import DropConfig
from pdrop_eval.train import IGNORE_INDEX, ConversationDataset, collate, read_conversations, train
from pdrop_eval.train_settings import TrainSettings
from pdrop_eval.wrapper import LlavaRunner, Query


def write_rows(path, rows) -> str:
    pd.DataFrame(rows).to_parquet(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def synth_rows():
    rows, _ = synth.make_split("train", 6, seed=0, turns=2)
    return rows


@pytest.fixture(scope="module")
def next_processor(tiny_llava_next):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_llava_next)


def supervised_text(processor, encoded) -> list[str]:
    labels = encoded["labels"]
    return [processor.tokenizer.decode([token]) for token in labels[labels != IGNORE_INDEX].tolist()]


def test_only_answer_tokens_and_end_of_turn_are_supervised(synth_rows, next_processor, tmp_path):
    conversations = read_conversations(write_rows(tmp_path / "rows.parquet", synth_rows))
    dataset = ConversationDataset(conversations, next_processor)
    for index, row in enumerate(synth_rows):
        encoded = dataset[index]
        # The template renders "ASSISTANT: <answer></s>" per turn; exactly " <answer></s>" is supervised.
        assert "".join(supervised_text(next_processor, encoded)) == "".join(f" {answer}</s>" for answer in row["answer"])
        is_image = encoded["input_ids"] == next_processor.tokenizer.convert_tokens_to_ids("<image>")
        assert is_image.sum() > 50 and (encoded["labels"][is_image] == IGNORE_INDEX).all()
        # Supervised tokens are the input tokens themselves (HF shifts inside the loss).
        keep = encoded["labels"] != IGNORE_INDEX
        assert torch.equal(encoded["labels"][keep], encoded["input_ids"][keep])


@pytest.mark.parametrize("checkpoint", ["tiny_llava_next", "tiny_qwen2_5_vl"])
def test_training_prompt_is_the_evaluation_prompt(checkpoint, synth_rows, request, tmp_path):
    """Up to the first answer, the training tokens and pixels are exactly what LlavaRunner feeds at evaluation."""
    runner = LlavaRunner.load(str(request.getfixturevalue(checkpoint)), dtype="float32")
    conversations = read_conversations(write_rows(tmp_path / "rows.parquet", synth_rows))
    dataset = ConversationDataset(conversations, runner.processor)
    for row, conversation in zip(synth_rows, conversations):
        encoded = dataset.encode(conversation)
        image = Image.open(io.BytesIO(row["image"]))
        query = Query.from_parts([image, row["question"][0]])
        evaluation = runner._encode([query], [runner.render(query)])
        first_answer = int((encoded["labels"] != IGNORE_INDEX).nonzero()[0])
        assert torch.equal(encoded["input_ids"][:first_answer], evaluation["input_ids"][0])
        assert torch.equal(collate([encoded], runner.processor)["pixel_values"], evaluation["pixel_values"])


def test_collate_pads_right_and_never_supervises_padding(synth_rows, next_processor, tmp_path):
    dataset = ConversationDataset(read_conversations(write_rows(tmp_path / "rows.parquet", synth_rows)), next_processor)
    rows = [dataset[i] for i in range(4)]
    batch = collate(rows, next_processor)
    lengths = [len(row["input_ids"]) for row in rows]
    assert len(set(lengths)) > 1  # different image sizes: different lengths
    for index, (row, length) in enumerate(zip(rows, lengths)):
        assert batch["attention_mask"][index].tolist() == [1] * length + [0] * (max(lengths) - length)
        assert torch.equal(batch["input_ids"][index, :length], row["input_ids"])
        assert (batch["labels"][index, length:] == IGNORE_INDEX).all()
        alone = collate([row], next_processor)["pixel_values"][0]  # (tiles, C, H, W): fewer tiles get zero tiles after them
        assert torch.equal(batch["pixel_values"][index, : len(alone)], alone) and not batch["pixel_values"][index, len(alone) :].any()
    assert batch["image_sizes"].shape == (4, 2)


def test_a_row_that_would_be_truncated_is_refused(synth_rows, next_processor, tmp_path):
    conversations = read_conversations(write_rows(tmp_path / "rows.parquet", synth_rows))
    length = len(ConversationDataset(conversations, next_processor)[2]["input_ids"])
    dataset = ConversationDataset(conversations, next_processor, max_length=length - 1)
    with pytest.raises(ValueError, match=rf"rows.parquet row 2: {length} tokens .* exceed --max-length {length - 1}"):
        dataset[2]
    ConversationDataset(conversations, next_processor, max_length=length)[2]  # fits exactly


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda row: row.update(answer=None), "rows.parquet row 1: no 'answer'"),
        (lambda row: row.update(answer=["red", " "]), "rows.parquet row 1: empty answer"),
        (lambda row: row.update(answer=["red"]), r"rows.parquet row 1: 2 question\(s\) but 1 answer\(s\)"),
    ],
    ids=["no_answer", "blank_answer", "missing_turn"],
)
def test_bad_rows_are_named(change, message, synth_rows, tmp_path):
    rows = [dict(row) for row in synth_rows]
    change(rows[1])
    with pytest.raises(ValueError, match=message):
        read_conversations(write_rows(tmp_path / "rows.parquet", rows))


def test_undecodable_image_is_named_before_training(synth_rows, next_processor, tmp_path):
    rows = [dict(row) for row in synth_rows]
    rows[4]["image"] = b"\x89PNG not an image"
    dataset = ConversationDataset(read_conversations(write_rows(tmp_path / "rows.parquet", rows)), next_processor)
    with pytest.raises(ValueError, match="rows.parquet row 4: cannot decode image"):
        dataset.check_all()


def test_a_checkpoint_that_is_not_llava_is_refused(synth_rows, tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2).save_pretrained(tmp_path / "llama")
    settings = TrainSettings(pretrained=str(tmp_path / "llama"), data=write_rows(tmp_path / "rows.parquet", synth_rows), output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="is a 'llama' checkpoint; supported: LLaVA-1.5"):
        train(settings)


def mean_loss(checkpoint, rows_path) -> float:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    dataset = ConversationDataset(read_conversations(rows_path), processor)
    batch = collate([dataset[i] for i in range(len(dataset))], processor)
    with torch.no_grad():
        return model(**batch).loss.item()


def test_cli_trains_and_saves_a_loadable_smaller_checkpoint(synth_rows, tiny_llava_next, tmp_path):
    data = write_rows(tmp_path / "rows.parquet", synth_rows[:4])
    out = tmp_path / "trained"
    completed = subprocess.run(
        ["pdrop-eval", "train", "--pretrained", str(tiny_llava_next), "--data", data, "--output-dir", str(out),
         "--max-steps", "3", "--batch-size", "4", "--lr", "3e-3", "--warmup", "0", "--scheduler", "constant",
         "--logging-steps", "1", "--save-dtype", "float16", "--threads", "1", "--attn-implementation", "eager"],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "trained 3 steps" in completed.stdout
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["drop"]["method"] == "none"
    assert summary["attn_implementation"] == "eager"  # the model was loaded with it, not only asked for it
    assert summary["torch_threads"] == 1  # --threads is recorded: it can change the trained model
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert (out / "model.safetensors").stat().st_size < 0.6 * (tiny_llava_next / "model.safetensors").stat().st_size
    # Three steps on the same four rows lower their loss; the saved model loads as a stock LLaVA-NeXT.
    assert mean_loss(out, data) < mean_loss(tiny_llava_next, data) - 0.05


@pytest.mark.parametrize(
    "option, message",
    [
        (["--drop", "layer_list=8;16;24,lambda=1.5"], "lambda must be in (0, 1]"),
        (["--attn-implementation", "flash"], "--attn-implementation must be one of eager, sdpa, flash_attention_2, got 'flash'"),
    ],
)
def test_cli_reports_bad_input_by_option(option, message, synth_rows, tiny_llava_next, tmp_path):
    data = write_rows(tmp_path / "rows.parquet", synth_rows[:2])
    completed = subprocess.run(
        ["pdrop-eval", "train", "--pretrained", str(tiny_llava_next), "--data", data, "--output-dir", str(tmp_path / "o"), *option],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2 and message in completed.stderr


def test_training_with_a_drop_config_runs_and_saves_the_stock_model(synth_rows, tiny_llava_next, tmp_path):
    """PyramidDrop during training (apply_drop in train mode, the engine's training rule): the run
    differs from vanilla training with the same seed, and what is saved is the stock model."""
    data = write_rows(tmp_path / "rows.parquet", synth_rows[:4])
    common = dict(pretrained=str(tiny_llava_next), data=data, max_steps=2, batch_size=4, lr=3e-3, warmup=0, logging_steps=1)
    vanilla = train(TrainSettings(output_dir=str(tmp_path / "vanilla"), **common))
    pdrop = train(TrainSettings(output_dir=str(tmp_path / "pdrop"), drop=DropConfig.pyramid().to_args(), **common))
    assert pdrop["drop"] == DropConfig.pyramid().to_dict()
    assert pdrop["train_loss"] != pytest.approx(vanilla["train_loss"], abs=1e-6)
    assert mean_loss(tmp_path / "pdrop", data) < mean_loss(tiny_llava_next, data)


def test_sequential_keeps_the_file_order():
    """--sequential (pdrop_synth's curriculum) maps onto Trainer's sequential sampling; the default shuffles."""
    common = dict(pretrained="p", data="d.parquet", output_dir="/tmp/unused-out")
    assert TrainSettings(**common, sequential=True).training_arguments().train_sampling_strategy == "sequential"
    assert TrainSettings(**common).training_arguments().train_sampling_strategy == "random"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-steps", "0"], "--max-steps must be -1 (train for --epochs) or a positive integer, got 0"),
        (["--max-steps", "-5"], "--max-steps must be -1 (train for --epochs) or a positive integer, got -5"),
        (["--epochs", "0"], "--epochs must be a positive number, got 0.0"),
        (["--epochs", "nan"], "--epochs must be a positive number, got nan"),
        (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["--grad-accum", "0"], "--grad-accum must be a positive integer, got 0"),
        (["--logging-steps", "0"], "--logging-steps must be a positive integer, got 0"),
        (["--save-steps", "-1"], "--save-steps must be 0 (only the final model) or a positive integer, got -1"),
        (["--lr=-0.001"], "--lr must be a positive number, got -0.001"),
        (["--warmup", "-1"], "--warmup must be a fraction of the steps in [0, 1) or a whole number of steps, got -1.0"),
        (["--warmup", "2.5"], "--warmup must be a fraction of the steps in [0, 1) or a whole number of steps, got 2.5"),
        (["--max-length", "0"], "--max-length must be a positive integer, got 0"),
        (["--workers", "-1"], "--workers must be an integer >= 0, got -1"),
        (["--threads", "0"], "--threads must be a positive integer, got 0"),
    ],
)
def test_settings_that_would_train_otherwise_than_asked_are_refused(argv, message, tmp_path, capsys):
    """--max-steps 0 trained one step, -5 meant --epochs, --epochs 0 saved an untrained copy with a mean
    loss of 0.0: every count is checked before any model loads."""
    from pdrop_eval.cli import main

    out = tmp_path / "out"
    assert main(["train", "--pretrained", str(tmp_path / "unused"), "--data", "unused.parquet", "--output-dir", str(out), *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("pdrop-eval train: error: ") and message in error, error
    assert not out.exists()


@pytest.fixture(scope="module")
def qwen_processor(tiny_qwen2_5_vl):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_qwen2_5_vl)


def test_qwen_rows_supervise_answers_only_and_batch_as_each_row_alone(synth_rows, tiny_qwen2_5_vl, qwen_processor, tmp_path):
    """Qwen2.5-VL through the same dataset and collator: Qwen's template ends each answer with
    "<|im_end|>\\n", which is what is supervised; no vision token is; the batch's patch rows are its images'
    rows in order with one grid per image, and the right-padded batch gives each row its logits alone."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    dataset = ConversationDataset(read_conversations(write_rows(tmp_path / "rows.parquet", synth_rows[:3])), qwen_processor)
    rows = [dataset[i] for i in range(3)]
    vision_ids = torch.tensor(qwen_processor.tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]))
    for row, source in zip(rows, synth_rows):
        assert "".join(supervised_text(qwen_processor, row)) == "".join(f"{answer}<|im_end|>\n" for answer in source["answer"])
        is_vision = torch.isin(row["input_ids"], vision_ids)
        assert is_vision.sum() > 10 and (row["labels"][is_vision] == IGNORE_INDEX).all()
    batch = collate(rows, qwen_processor)
    assert len({len(row["input_ids"]) for row in rows}) > 1  # padding happens
    alone = [collate([row], qwen_processor) for row in rows]
    assert torch.equal(batch["pixel_values"], torch.cat([single["pixel_values"] for single in alone]))
    assert torch.equal(batch["image_grid_thw"], torch.cat([single["image_grid_thw"] for single in alone]))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen2_5_vl, dtype=torch.float32).eval()
    with torch.no_grad():
        batched = model(**batch).logits
        for index, single in enumerate(alone):
            expected = model(**single).logits[0]
            torch.testing.assert_close(batched[index, : len(expected)], expected, rtol=1e-4, atol=1e-4)


def test_qwen_training_with_and_without_pyramid_drop_lowers_the_loss_and_saves_the_stock_model(synth_rows, tiny_qwen2_5_vl, tmp_path):
    """Qwen2.5-VL through `train`, vanilla and with PyramidDrop (kept tokens keep their 3-D M-RoPE ids:
    position_mode=original); the two runs differ, and each saves a stock Qwen2.5-VL that fits the rows better."""
    data = write_rows(tmp_path / "rows.parquet", synth_rows[:2])
    common = dict(pretrained=str(tiny_qwen2_5_vl), data=data, max_steps=2, batch_size=2, lr=3e-3, warmup=0, scheduler="constant", logging_steps=1)
    pyramid = DropConfig.pyramid(position_mode="original").to_args()
    vanilla = train(TrainSettings(output_dir=str(tmp_path / "vanilla"), **common))
    pdrop = train(TrainSettings(output_dir=str(tmp_path / "pdrop"), drop=pyramid, **common))
    assert pdrop["drop"] == DropConfig.from_args(pyramid).to_dict() and pdrop["steps"] == vanilla["steps"] == 2
    assert pdrop["train_loss"] != pytest.approx(vanilla["train_loss"], abs=1e-6)
    untrained = mean_loss(tiny_qwen2_5_vl, data)
    for run in ("vanilla", "pdrop"):
        assert json.loads((tmp_path / run / "config.json").read_text())["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
        assert mean_loss(tmp_path / run, data) < untrained - 0.05
