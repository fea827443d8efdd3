"""Fine-tune a vision-language checkpoint of a supported family (LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL, ...) on a
local visual QA dataset, with or without a drop config.

transformers' `Trainer` does the training (optimizer, schedule, accumulation, checkpoints, logging,
progress bar, multi-GPU); this module supplies what it cannot know:

* `read_conversations`: rows of a ``.parquet`` / ``.json`` / ``.jsonl`` file, each an image and one
  or more question-answer turns about it;
* `ConversationDataset`: each conversation rendered with the checkpoint's chat template exactly as
  evaluation renders prompts (`pdrop_eval.wrapper.render_messages`), tokenized by the checkpoint's
  processor (image placeholders expanded), with labels on the assistant turns only: the answer tokens
  and the end-of-turn token the template adds; instructions, image tokens and padding are -100;
* `collate`: right-padded batches, the images batched by the checkpoint's image processor as the
  processor batches them at evaluation (LLaVA-NeXT's tiles padded with zero tiles, Qwen2.5-VL's patch
  rows concatenated over images with a grid per image), so no model family needs its own collator;
* `train`: loads the model, applies the drop config in training mode (`apply_drop`), trains, removes
  the drop hooks and saves the stock model and processor with `save_pretrained`.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pdrop_eval.bench_settings import check_attn_implementation
from pdrop_eval.engine import DropConfig, apply_drop
from pdrop_eval.options import resolve_pad_to_square
from pdrop_eval.train_settings import TrainSettings
from pdrop_eval.wrapper import DTYPES, checkpoint_family, load_image, prepared_images, processor_inputs, render_messages

IGNORE_INDEX = -100  # HF's label value for "no loss here"
DATA_SUFFIXES = (".parquet", ".json", ".jsonl")


@dataclass(frozen=True)
class Conversation:
    """One training row: an image and question-answer turns about it. `label` names the row in errors."""

    label: str
    image: bytes | Path
    turns: tuple[tuple[str, str], ...]


def read_conversations(path: str | Path) -> list[Conversation]:
    """Rows of a local dataset: columns ``image`` (PNG/JPEG bytes, or a file path relative to the data
    file), ``question`` and ``answer``, each a string or, for a multi-turn conversation, a list of
    strings of the same length. The image goes with the first question."""
    path = Path(path)
    if path.suffix not in DATA_SUFFIXES:
        raise ValueError(f"--data {path}: expected one of {DATA_SUFFIXES}")
    if not path.is_file():
        raise FileNotFoundError(f"--data {path} does not exist")
    if path.suffix == ".parquet":
        import pandas as pd

        records = pd.read_parquet(path).to_dict("records")
    elif path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        records = json.loads(path.read_text())
        if not isinstance(records, list):
            raise ValueError(f"--data {path}: a JSON dataset is a list of rows, got {type(records).__name__}")
    if not records:
        raise ValueError(f"--data {path} has no rows")
    return [_conversation(record, f"{path.name} row {index}", path.parent) for index, record in enumerate(records)]


def _conversation(record: dict, label: str, folder: Path) -> Conversation:
    if not isinstance(record, dict):
        raise ValueError(f"{label}: a row is an object with image, question and answer, got {type(record).__name__}")
    for column in ("image", "question", "answer"):
        if record.get(column) is None:
            raise ValueError(f"{label}: no {column!r}")
    questions, answers = _as_texts(record["question"], "question", label), _as_texts(record["answer"], "answer", label)
    if len(questions) != len(answers):
        raise ValueError(f"{label}: {len(questions)} question(s) but {len(answers)} answer(s)")
    image = record["image"]
    if isinstance(image, str):
        image = folder / image
    elif not isinstance(image, bytes):
        raise ValueError(f"{label}: 'image' must be encoded image bytes or a file path, got {type(image).__name__}")
    return Conversation(label, image, tuple(zip(questions, answers)))


def _as_texts(value, column: str, label: str) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value) if hasattr(value, "__iter__") else None
    if not texts or not all(isinstance(text, str) for text in texts):
        raise ValueError(f"{label}: {column!r} must be a string or a non-empty list of strings, got {value!r}")
    if any(not text.strip() for text in texts):
        raise ValueError(f"{label}: empty {column}")
    return texts


class ConversationDataset(torch.utils.data.Dataset):
    """Conversations encoded for the checkpoint's model, one row at a time: ``input_ids``, ``labels``
    and the processor's other per-token tensors (``attention_mask``; Qwen2.5-VL's ``mm_token_type_ids``),
    and ``image``, the picture as prepared for the processor; `collate` turns the batch's images into
    the model's image tensors.

    Images are prepared as evaluation prepares them (`pad_to_square`: LLaVA-1.5's padding to a square).
    Rows longer than `max_length` tokens (image tokens included) are refused, never truncated: cutting
    the end would cut the answer, the only supervised part. `check_all()` encodes every row once so
    that bad rows (undecodable image, answer masked away) fail before training starts.
    """

    def __init__(self, conversations: Sequence[Conversation], processor, max_length: int | None = None, pad_to_square: bool = False):
        if max_length is not None and max_length < 1:
            raise ValueError(f"--max-length must be positive, got {max_length}")
        self.conversations = list(conversations)
        self.processor = processor
        self.max_length = max_length
        self.pad_to_square = pad_to_square
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        self.image_input_names = set(processor.image_processor.model_input_names)  # batched by `collate`

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> dict:
        return self.encode(self.conversations[index])

    def check_all(self) -> None:
        for conversation in self.conversations:
            self.encode(conversation)

    def encode(self, conversation: Conversation) -> dict:
        label = conversation.label
        image = load_image(io.BytesIO(conversation.image) if isinstance(conversation.image, bytes) else conversation.image, label)
        [image] = prepared_images(self.processor, [image], self.pad_to_square)
        text, answer_spans = self._render(conversation)
        tokenizer = self.processor.tokenizer
        plain = tokenizer(text, return_offsets_mapping=True)
        supervised = [_in_spans(start, end, answer_spans, label) for start, end in plain["offset_mapping"]]
        inputs = processor_inputs(self.processor, [image], [text], pad_to_square=False)  # prepared above
        input_ids = inputs["input_ids"][0]
        is_image = input_ids == self.image_token_id
        text_ids = [i for i in plain["input_ids"] if i != self.image_token_id]
        if input_ids[~is_image].tolist() != text_ids:
            raise ValueError(f"{label}: the processor tokenizes the conversation differently from its tokenizer")
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        text_labels = [token if keep else IGNORE_INDEX for token, keep in zip(plain["input_ids"], supervised) if token != self.image_token_id]
        labels[~is_image] = torch.tensor(text_labels, dtype=labels.dtype)
        if not (labels != IGNORE_INDEX).any():
            raise ValueError(f"{label}: no answer token is supervised (the template renders no assistant text)")
        if self.max_length is not None and len(input_ids) > self.max_length:
            raise ValueError(
                f"{label}: {len(input_ids)} tokens ({int(is_image.sum())} image tokens) exceed --max-length {self.max_length}; "
                "truncating would cut the answer"
            )
        encoded = {key: value[0] for key, value in inputs.items() if key not in self.image_input_names}
        for key, value in encoded.items():
            if value.shape != input_ids.shape:
                raise ValueError(f"{label}: the processor's {key!r} is not one value per token {tuple(value.shape)}, so it cannot be padded")
        return {**encoded, "labels": labels, "image": image}

    def _render(self, conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
        """The whole conversation's text and the character spans of the assistant turns (answer plus
        the template's end-of-turn marker), found by rendering each prefix as evaluation would."""
        messages, spans, text = [], [], ""
        for turn, (question, answer) in enumerate(conversation.turns):
            content = ([{"type": "image"}] if turn == 0 else []) + [{"type": "text", "text": question}]
            messages.append({"role": "user", "content": content})
            prompt = render_messages(self.processor, messages, add_generation_prompt=True)
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
            text = render_messages(self.processor, messages, add_generation_prompt=False)
            if not text.startswith(prompt):
                raise ValueError(
                    f"{conversation.label}: the chat template does not render the answer after the generation prompt "
                    f"(prompt {prompt[-40:]!r}, conversation {text[-60:]!r}), so training would not match evaluation"
                )
            spans.append((len(prompt), len(text)))
        return text, spans


def _in_spans(start: int, end: int, spans: list[tuple[int, int]], label: str) -> bool:
    """Whether the token at characters [start, end) belongs to an answer span; one that straddles a
    span's start would merge prompt and answer, which generation never sees."""
    for span_start, span_end in spans:
        if start < span_start < end:
            raise ValueError(f"{label}: a token spans the end of the prompt and the start of the answer")
        if span_start <= start < span_end:
            return True
    return False


def collate(rows: list[dict], processor) -> dict:
    """Right-padded batch (the usual layout in training) of `ConversationDataset` rows: per-token
    tensors padded with the pad token (``input_ids``), -100 (``labels``) or 0 (the attention mask, and
    any other per-token tensor: Qwen2.5-VL's ``mm_token_type_ids``, 0 for text), and the rows' images
    in row order through `processor`'s image processor, which batches them as the processor does."""
    longest = max(len(row["input_ids"]) for row in rows)
    pad_values = {"input_ids": processor.tokenizer.pad_token_id, "labels": IGNORE_INDEX}
    batch = {}
    for key in (key for key in rows[0] if key != "image"):
        batch[key] = torch.full((len(rows), longest), pad_values.get(key, 0), dtype=rows[0][key].dtype)
        for index, row in enumerate(rows):
            batch[key][index, : len(row[key])] = row[key]
    return {**batch, **processor.image_processor(images=[row["image"] for row in rows], return_tensors="pt")}


def train(settings: TrainSettings) -> dict:
    """Train, save the model and processor to `settings.output_dir`, and return a summary (also
    written there as ``train_summary.json``)."""
    from transformers import AutoProcessor, Trainer

    if settings.save_dtype not in DTYPES or settings.save_dtype == "auto":
        raise ValueError(f"--save-dtype must be float32, float16 or bfloat16, got {settings.save_dtype!r}")
    if settings.attn_implementation is not None:  # None: transformers' choice
        check_attn_implementation(settings.attn_implementation)
    drop = DropConfig.from_args(settings.drop) if settings.drop else DropConfig.none()
    arguments = settings.training_arguments()
    family = checkpoint_family(settings.pretrained)
    unknown = sorted(set(settings.freeze) - set(family.freezable_part_paths))
    if unknown:
        raise ValueError(f"--freeze: unknown part(s) {unknown}; choose from {sorted(family.freezable_part_paths)}")
    pad_to_square = resolve_pad_to_square(family.name, settings.pad_to_square)
    processor = AutoProcessor.from_pretrained(settings.pretrained)
    if processor.tokenizer.pad_token_id is None:
        raise ValueError(f"--pretrained {settings.pretrained}: the tokenizer has no pad token")
    dataset = ConversationDataset(read_conversations(settings.data), processor, settings.max_length, pad_to_square)
    dataset.check_all()

    model = family.model_class().from_pretrained(settings.pretrained, dtype=torch.float32, attn_implementation=settings.attn_implementation)
    for part in settings.freeze:
        family.freezable_part(model, part).requires_grad_(False)
    # Trainer puts the model in training mode; the engine then ranks image tokens with the tokens
    # just before each answer span (the official PyramidDrop training rule).
    handle = apply_drop(model, drop) if drop.method != "none" else None
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=dataset,
        data_collator=lambda rows: collate(rows, processor),
        processing_class=processor,  # saved with every checkpoint
    )
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    if handle is not None:
        handle.remove()  # the stock model is what gets saved

    summary = {
        "settings": asdict(settings),
        "drop": drop.to_dict(),
        "steps": result.global_step,
        "attn_implementation": model.config.text_config._attn_implementation,  # what transformers chose when not set
        "torch_threads": torch.get_num_threads(),  # the order of float sums, and so the trained model, can depend on it
        "train_loss": result.training_loss,
        "train_seconds": seconds,
        "seconds_per_step": seconds / max(result.global_step, 1),
        "rows": len(dataset),
    }
    if trainer.is_world_process_zero():
        output = Path(settings.output_dir)
        model.to(DTYPES[settings.save_dtype]).save_pretrained(output)
        processor.save_pretrained(output)
        (output / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
