"""VLMEvalKit models: one per drop method and line of model families (LLaVA-1.5 / LLaVA-NeXT, Qwen2.5-VL,
LLaVA-OneVision), named as `pdrop_eval.framework_names` says; a model refuses a checkpoint of another
line before VLMEvalKit starts, naming the model that takes it.

Thin translations from VLMEvalKit's model interface to the shared `pdrop_eval.wrapper.ModelRunner`:
a VLMEvalKit message (a list of ``{'type': 'text'|'image', 'value': ...}``) becomes a `Query`, the
runner generates, and each answer's drop statistics are kept per (dataset, index) until the
launcher (`pdrop_eval.adapters.vlmeval_run`) collects them with `take_statistics(model_name)`.

VLMEvalKit's local inference loop hands a model one message at a time, so each query is a batch of
one. Prompts follow VLMEvalKit's own model of the line (`pdrop_eval.adapters.conventions`): for
LLaVA, multiple-choice datasets get VLMEvalKit's LLaVA prompt (hint, question, lettered options,
"Answer with the option's letter from the given choices directly.") and other datasets keep their own
prompt; Qwen2.5-VL and LLaVA-OneVision take every dataset's own prompt. Import this module (or run `pdrop-vlmeval`) to register the models: `register_models()`.
"""

from __future__ import annotations

import string
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

from pdrop_eval.compat import import_vlmeval

import_vlmeval()  # torchvision made importable, autograd left as it was

import pandas as pd
from vlmeval.smp import cn_string
from vlmeval.vlm.base import BaseModel

from pdrop_eval.adapters.conventions import VLMEVAL_CONVENTIONS, Convention
from pdrop_eval.engine.config import METHODS
from pdrop_eval.framework_names import ALL_NAMES, VLMEVAL, FrameworkNames, check_family, model_drop_defaults
from pdrop_eval.options import (
    DEFAULT_MAX_NEW_TOKENS,
    ModelOptions,
    resolve_model_options,
)
from pdrop_eval.stats import RunStats, SampleRecord
from pdrop_eval.wrapper import ModelRunner, Query

FRAMEWORK = "vlmeval"
MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
MCQ_INSTRUCTION_CN = "请直接回答选项字母。"
OPEN_INSTRUCTION = "Answer the question directly."  # an MCQ-typed row without options
OPEN_INSTRUCTION_CN = "请直接回答问题。"


class DropVLM(BaseModel):
    """A checkpoint of one line of model families (family read from it) with one drop method.

    Options (keyword arguments: `supported_VLM` partials, `--model-args`, a `--config` entry), as in
    the lmms-eval adapter and resolved by `pdrop_eval.options`: pretrained (folder or Hub id) or
    model_preset (default: the names' default_model_preset), dtype, device (default cuda
    when available), device_map, attn_implementation, max_new_tokens (default 1024), drop_preset,
    this method's drop options (registry `keys`), and the family options VLMEvalKit's own model of
    the line takes (Qwen2.5-VL: min_pixels, max_pixels, system_prompt).
    """

    INSTALL_REQ = False
    INTERLEAVE = True
    allowed_types = ["text", "image"]
    DROP_METHOD: str  # a key of METHODS
    NAMES: FrameworkNames
    CONVENTION: Convention  # VLMEvalKit's prompt convention for the line

    def __init__(self, **options):
        super().__init__()
        settings = self.check_options(**options)
        self.max_new_tokens = settings.max_new_tokens
        self.save_kept = settings.save_kept
        self.runner = ModelRunner.from_options(settings, prompt_format=self.CONVENTION.prompt_format)
        self.dataset = None  # the VLMEvalKit dataset being inferred (see set_dump_image)
        self.pending_index = None  # index of the row build_prompt prepared for the next generate
        self.samples: list[SampleRecord] = []
        self.generate_seconds = 0.0

    @classmethod
    def check_options(cls, **options) -> ModelOptions:
        """Resolve and validate options without loading weights (ValueError / FileNotFoundError)."""
        cls.CONVENTION.refuse_foreign_options(options, cls.__name__)
        return resolve_model_options(
            cls.DROP_METHOD,
            {**model_drop_defaults(cls.NAMES.framework_model(VLMEVAL)), **options},
            owner=cls.__name__,
            default_model_preset=cls.NAMES.default_model_preset,
            default_max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
            family_defaults=cls.CONVENTION.family_defaults,
            check_family=lambda family: check_family(cls.NAMES, family, VLMEVAL),
        )

    # ----- prompts -------------------------------------------------------------------------------
    def set_dump_image(self, dump_image_func):
        # VLMEvalKit passes the dataset's bound `dump_image` once per dataset; its owner is the
        # dataset, whose own prompt non-MCQ rows keep.
        super().set_dump_image(dump_image_func)
        self.dataset = getattr(dump_image_func, "__self__", None)

    def use_custom_prompt(self, dataset):
        # Always: build_prompt is where the row's index is seen, for the per-sample statistics.
        return self.dataset is not None

    def build_prompt(self, line, dataset=None):
        self.pending_index = line["index"].item() if hasattr(line["index"], "item") else line["index"]
        # The dataset object's TYPE, not DATASET_TYPE(name): a --config dataset of a known class under
        # a new name is typed by its class, but VLMEvalKit's name lookup would call it MCQ.
        if self.dataset.TYPE != "MCQ" or not self.CONVENTION.llava_multiple_choice:
            return self.dataset.build_prompt(line)
        images = self.dump_image(line, dataset)
        return [*({"type": "image", "value": path} for path in images), {"type": "text", "value": multiple_choice_prompt(line)}]

    # ----- generation ----------------------------------------------------------------------------
    def generate_inner(self, message, dataset=None):
        if self.pending_index is None:
            raise RuntimeError(
                f"{type(self).__name__} got a {dataset} prompt it did not build, so the sample's index "
                "(needed for the per-sample statistics) is unknown; datasets that force their own prompt "
                "(force_use_dataset_prompt) are not supported"
            )
        label = f"{dataset} index {self.pending_index}"
        query = Query.from_parts(_message_parts(message, self.CONVENTION.text_joiner), label=label)
        started = time.perf_counter()
        (answer,) = self.runner.generate([query], max_new_tokens=self.max_new_tokens)
        self.generate_seconds += time.perf_counter() - started
        recorded = answer.stats if self.save_kept else replace(answer.stats, kept=None)  # kept lists are large
        self.samples.append(SampleRecord(dataset, self.pending_index, recorded))
        self.pending_index = None
        return answer.text.strip()

    def take_statistics(self, model_name: str) -> RunStats:
        """This process's statistics since the last call, as run `model_name` (samples and generation
        time are reset; the launcher links the merged record to its results)."""
        samples, self.samples = self.samples, []
        seconds, self.generate_seconds = self.generate_seconds, 0.0
        return RunStats(
            framework=FRAMEWORK,
            model=model_name,
            pretrained=self.runner.pretrained,
            architecture=self.runner.architecture,
            drop=self.runner.drop,
            model_dims=dict(self.runner.model_dims),
            wall_time_s=seconds,
            samples=tuple(samples),
        )


def _model_class(names: FrameworkNames) -> type:
    """The class of the model `names` (e.g. LLaVAPyramidDrop), as --config "class" names it."""
    return type(names.vlmeval_class, (DropVLM,), {
        "__module__": __name__, "__doc__": f"VLMEvalKit model {names.framework_model(VLMEVAL)}: {METHODS[names.method].title} on {names.line.title}.",
        "DROP_METHOD": names.method, "NAMES": names, "CONVENTION": VLMEVAL_CONVENTIONS[names.line],
    })


# By their VLMEvalKit names (the LLaVA ones are lmms-eval's too); the classes are module attributes (pickling, --config).
MODELS = {names.framework_model(VLMEVAL): _model_class(names) for names in ALL_NAMES}
globals().update({model_class.__name__: model_class for model_class in MODELS.values()})


def register_models(options: dict | None = None) -> None:
    """Put the models into VLMEvalKit's registries, in place, so run.py and inference.py see them:
    `supported_VLM[name]` (for `--model`) and `vlmeval.vlm.<ClassName>` (for `--config` "class").
    `options` become the defaults of every registered model."""
    import vlmeval.vlm
    from vlmeval.config import supported_VLM

    for name, model_class in MODELS.items():
        supported_VLM[name] = partial(model_class, **(options or {}))
        setattr(vlmeval.vlm, model_class.__name__, model_class)


def multiple_choice_prompt(line) -> str:
    """VLMEvalKit's LLaVA multiple-choice prompt: hint, question, lettered options, instruction."""
    hint = line["hint"] if "hint" in line and not pd.isna(line["hint"]) else None
    prompt = f"{hint}\n{line['question']}" if hint is not None else str(line["question"])
    options = [letter for letter in string.ascii_uppercase if letter in line and not pd.isna(line[letter])]
    for letter in options:
        prompt += f"\n{letter}. {line[letter]}"
    chinese = cn_string(prompt)
    if options:
        return prompt + "\n" + (MCQ_INSTRUCTION_CN if chinese else MCQ_INSTRUCTION)
    return prompt + "\n" + (OPEN_INSTRUCTION_CN if chinese else OPEN_INSTRUCTION)


def _message_parts(message: list[dict], joiner: str | None = "\n") -> list:
    """Query parts in message order; adjacent texts joined by `joiner` as VLMEvalKit's LLaVA models join
    them (None: kept apart, as its Qwen2VLChat sends them)."""
    parts = []
    for item in message:
        if item["type"] == "image":
            parts.append(Path(item["value"]))
        elif joiner is not None and parts and isinstance(parts[-1], str):
            parts[-1] += joiner + item["value"]
        else:
            parts.append(item["value"])
    return parts
