"""lmms-eval models, one per drop method and line of model families (`pdrop_eval.framework_names`):
e.g. `llava_next_pdrop` (PyramidDrop), `llava_fastv` (FastV), `llava_next_vanilla` (no drop) and
`llava_random_drop` (the random control) for LLaVA-1.5 / LLaVA-NeXT, `qwen2_5_vl_pdrop`,
`llava_onevision_pdrop`, ... for the others, thin adapters over `pdrop_eval.wrapper.ModelRunner`
(registration: `pdrop_eval.adapters.lmms`). A model refuses a checkpoint of another line at start-up,
naming the model that takes it, and builds prompts as lmms-eval's own model of its families does
(`pdrop_eval.adapters.conventions`).

Each model has a simple class (``--force_simple``; needed by multiple_choice / loglikelihood tasks)
and a chat class (lmms-eval's default when both exist), both built from the registry entry. Both
paths build the same prompt for the same document, and all models share one prompt and batching
path, so comparisons are fair.

``--model_args`` keys (resolved by `pdrop_eval.options`): pretrained, model_preset, dtype,
device_map, attn_implementation, max_new_tokens, drop_preset, and the method's own keys (registry
`keys`). A key given twice is an error. The batch size and device are lmms-eval's own
``--batch_size`` and ``--device``.

Statistics (`pdrop_eval.stats`): every process records one entry per document it answered. When the
evaluator calls `clean()` after the last request (on every process), the entries are gathered on rank
0, which then waits for lmms-eval to save this run's results: its `EvaluationTracker` knows the exact
``<date>_results.json`` it wrote, so right after saving it this process writes ``<date>_pdrop_stats.json``
beside it, naming that file and the run's model_args as lmms-eval recorded them. A run that fails
before its results are saved, or saves none (no ``--output_path``), writes no statistics.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from loguru import logger
from tqdm import tqdm

from pdrop_eval import stats
from pdrop_eval.adapters.conventions import LMMS_CONVENTIONS, Convention
from pdrop_eval.engine.config import METHODS
from pdrop_eval.framework_names import ALL_NAMES, LMMS_EVAL, FrameworkNames, check_family, model_drop_defaults
from pdrop_eval.keyvalue import parse_key_values
from pdrop_eval.options import (
    DEFAULT_MAX_NEW_TOKENS,
    positive_int,
    resolve_model_options,
)
from pdrop_eval.wrapper import IMAGE_PLACEHOLDER, ModelRunner, Query, load_image, plan_batches

FRAMEWORK = "lmms-eval"
# generation_kwargs of lmms-eval tasks. image_aspect_ratio steers the original LLaVA repo's
# preprocessing; the HF processors fix it per architecture, so it is accepted and ignored.
GENERATION_KEYS = ("until", "max_new_tokens", "temperature", "top_p", "num_beams", "do_sample", "image_aspect_ratio")


class DropModel(lmms):
    """Simple request path. Subclasses set `model_id` (the lmms-eval name), `method`, `names` (its
    `FrameworkNames`) and `convention` (lmms-eval's prompt convention for its families)."""

    model_id: str
    method: str
    names: FrameworkNames
    convention: Convention

    def __init__(
        self,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,  # lmms-eval's --max_batch_size, only meaningful with batch_size=auto
        device: str | None = None,
        **options,
    ) -> None:
        super().__init__()
        self._batch_size = positive_int("batch_size (lmms-eval --batch_size)", batch_size)
        self.convention.refuse_foreign_options(options, self.model_id)
        resolved = resolve_model_options(
            self.method, {**model_drop_defaults(self.model_id), **options, "device": device}, owner=self.model_id, family_defaults=self.convention.family_defaults,
            check_family=lambda family: check_family(self.names, family, LMMS_EVAL),
        )
        self._drop = resolved.drop
        self._max_new_tokens = resolved.max_new_tokens
        self._save_kept = resolved.save_kept

        self.accelerator = Accelerator()
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        self._device = torch.device(_process_device(resolved.device, self.accelerator.local_process_index))
        self._runner = ModelRunner.from_options(resolved, device=self._device, prompt_format=self.convention.prompt_format)
        self._samples: list[stats.SampleRecord] = []
        self._seconds = 0.0  # wall-clock time spent answering requests in this process
        self._model_args: str | None = None  # as lmms-eval passed them (create_from_arg_string)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        # Not lmms-eval's own parser: it keeps the last of a repeated key and turns values into
        # Python objects ("true" -> True); ours refuses repeats and leaves checking to the resolver.
        try:
            model_args = parse_key_values(arg_string, "--model_args key")
        except ValueError as error:
            raise ValueError(f"{cls.model_id}: {error}") from None
        cli_settings = {key: value for key, value in (additional_config or {}).items() if value is not None}
        duplicated = sorted(set(model_args) & set(cli_settings))
        if duplicated:
            raise ValueError(
                f"{cls.model_id}: {duplicated} given in --model_args and by lmms-eval's own options "
                f"(--batch_size, --max_batch_size, --device); set them with those options only"
            )
        model = cls(**model_args, **cli_settings)
        model._model_args = arg_string
        return model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self._batch_size

    # ----- requests ------------------------------------------------------------------------------
    def generate_until(self, requests) -> list[str]:
        started = time.perf_counter()
        answers: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}  # one generate() setting per group
        for index, request in enumerate(requests):
            groups.setdefault(self._generation_settings(request), []).append(index)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{self.model_id} answering")
        for settings, indices in groups.items():
            lengths = [self._text_length(requests[i].args[0]) for i in indices]
            for batch in plan_batches(lengths, self._batch_size):
                chosen = [indices[j] for j in batch]
                queries = [self._query(requests[i]) for i in chosen]
                for i, generation in zip(chosen, self._runner.generate_batch(queries, **dict(settings))):
                    answers[i] = generation.text
                    self._record(requests[i], generation.stats)
                progress.update(len(chosen))
        progress.close()
        self._seconds += time.perf_counter() - started
        return answers

    def loglikelihood(self, requests) -> list[GenerationResult]:
        """(negative log-likelihood of the continuation, is_greedy) per request.

        lmms-eval 0.7.3 picks the answer option with the *smallest* value (its own LLaVA adapters return
        losses), so the sign is flipped here. Its evaluator turns any result other than a string or a
        `GenerationResult` into ``str(result)``, so the pair travels as a GenerationResult payload.
        """
        started = time.perf_counter()
        for request in requests:
            if len(request.args) != 6:
                raise NotImplementedError(
                    f"{self.model_id}: task {request.task_name!r} asks for a loglikelihood without an image context "
                    f"(e.g. the acc_mutual_info metric); this model scores continuations of image prompts only"
                )
        continuations = [self._continuation(request) for request in requests]
        lengths = [self._text_length(request.args[0] + continuation) for request, continuation in zip(requests, continuations)]
        scores: list[GenerationResult | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{self.model_id} scoring")
        for batch in plan_batches(lengths, self._batch_size):
            queries = [self._query_from_context(*_context_args(requests[i])) for i in batch]
            for i, score in zip(batch, self._runner.loglikelihood_batch(queries, [continuations[i] for i in batch])):
                scores[i] = GenerationResult(text=(-score.logprob, score.is_greedy))
                self._record(requests[i], score.stats)
            progress.update(len(batch))
        progress.close()
        self._seconds += time.perf_counter() - started
        return scores

    def generate_until_multi_round(self, requests) -> list[str]:
        tasks = sorted({request.task_name for request in requests})
        raise NotImplementedError(f"{self.model_id} answers single-round tasks only; multi-round task(s) {tasks} are not supported")

    # ----- request parsing (simple path; the chat path overrides `_query` and `_generation_kwargs`) --
    def _query(self, request) -> Query:
        context, _gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        return self._query_from_context(context, doc_to_visual, doc_id, task, split)

    def _generation_kwargs(self, request) -> dict:
        return request.args[1]

    def _query_from_context(self, context: str, doc_to_visual, doc_id: int, task: str, split: str) -> Query:
        label = f"task {task!r} doc {doc_id}"
        images = [as_image(visual, label) for visual in self._call_on_doc(doc_to_visual, task, split, doc_id, label) or []]
        if self.convention.images_first:
            return Query.from_parts([*images, context.replace(IMAGE_PLACEHOLDER, "")], label)
        return Query.from_text(context, images, label)

    def _call_on_doc(self, function, task: str, split: str, doc_id: int, label: str):
        try:
            return function(self.task_dict[task][split][doc_id])
        except Exception as error:  # re-raised with the document named, never swallowed
            raise RuntimeError(f"{self.model_id}: {label}: reading the document failed: {type(error).__name__}: {error}") from error

    def _continuation(self, request) -> str:
        _context, target, _doc_to_visual, doc_id, task, split = request.args
        if isinstance(target, str):
            return target
        return self._call_on_doc(target, task, split, doc_id, f"task {task!r} doc {doc_id}")

    def _generation_settings(self, request) -> tuple:
        """`ModelRunner.generate_batch` keywords for a request, as a hashable, sorted tuple."""
        gen_kwargs = dict(self._generation_kwargs(request) or {})
        unknown = sorted(set(gen_kwargs) - set(GENERATION_KEYS))
        if unknown:
            raise ValueError(f"{self.model_id}: task {request.task_name!r} sets generation_kwargs {unknown}, which this model does not support")
        until = gen_kwargs.get("until", ())
        until = tuple(stop for stop in ((until,) if isinstance(until, str) else until) if stop not in self.convention.ignored_stop_strings)
        max_new_tokens = int(gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        if self._max_new_tokens is not None:
            max_new_tokens = min(max_new_tokens, self._max_new_tokens)
        temperature = float(gen_kwargs.get("temperature", 0.0))  # lmms-eval's LLaVA convention: sample iff > 0
        settings = {"max_new_tokens": max_new_tokens, "stop": until, "temperature": temperature, "num_beams": int(gen_kwargs.get("num_beams", 1))}
        if temperature > 0:
            settings["top_p"] = gen_kwargs.get("top_p")
        return tuple(sorted(settings.items()))

    def _text_length(self, text: str) -> int:
        return len(self._runner.tokenizer(text).input_ids)

    # ----- statistics ------------------------------------------------------------------------------
    def _record(self, request, sample_stats: stats.SampleStats) -> None:
        if request.metadata.get("__padding_only__"):  # filler the evaluator adds to even out processes
            return
        recorded = sample_stats if self._save_kept else replace(sample_stats, kept=None)  # kept lists are large
        self._samples.append(stats.SampleRecord(request.task_name, request.doc_id, recorded))

    def clean(self) -> None:
        """Called by the evaluator on every process after the last request: gather statistics on rank 0,
        to be written when lmms-eval saves this run's results (`_statistics_awaiting_results`)."""
        local = stats.RunStats(
            framework=FRAMEWORK,
            model=self.model_id,
            pretrained=self._runner.pretrained,
            architecture=self._runner.architecture,
            drop=self._drop,
            model_dims=self._runner.model_dims,
            wall_time_s=self._seconds,
            samples=tuple(self._samples),
        )
        gathered = stats.gather_from_all_processes(local)
        if self.rank == 0:
            _await_results_file(stats.merge_processes(gathered), self._model_args)
        super().clean()


class ChatRequests:
    """Chat request path: the task supplies messages (lmms-eval's chat protocol) instead of text."""

    is_simple = False

    def _query(self, request) -> Query:
        _context, doc_to_messages, _gen_kwargs, doc_id, task, split = request.args
        label = f"task {task!r} doc {doc_id}"
        return query_from_messages(self._call_on_doc(doc_to_messages, task, split, doc_id, label), label, self.model_id)

    def _generation_kwargs(self, request) -> dict:
        return request.args[2]


def _model_classes(names: FrameworkNames) -> tuple[type, type]:
    """The simple and chat classes of the model `names`, named as its manifest names them."""
    simple = type(names.lmms_class, (DropModel,), {
        "__module__": __name__, "__doc__": f"lmms-eval model {names.model}: {METHODS[names.method].title} on {names.line.title}.",
        "model_id": names.model, "method": names.method, "names": names, "convention": LMMS_CONVENTIONS[names.line],
    })
    chat = type(names.lmms_chat_class, (ChatRequests, simple), {"__module__": __name__, "__doc__": simple.__doc__})
    return simple, chat


# One simple and one chat class per model name (e.g. LlavaNextPDrop, LlavaNextPDropChat), module
# attributes so that lmms-eval's manifests (class paths) and pickling find them.
MODEL_CLASSES = {names.model: _model_classes(names) for names in ALL_NAMES}
globals().update({model_class.__name__: model_class for pair in MODEL_CLASSES.values() for model_class in pair})


# ----- helpers ---------------------------------------------------------------------------------------
def _context_args(request) -> tuple:
    context, _target, doc_to_visual, doc_id, task, split = request.args
    return context, doc_to_visual, doc_id, task, split


def query_from_messages(raw_messages, label: str, owner: str) -> Query:
    """The `Query` of a task's chat messages (lmms-eval's chat protocol), pictures in message order;
    `owner` names the model in the error for inputs other than text and images."""
    messages, images = [], []
    for message in ChatMessages(messages=raw_messages).messages:
        content = []
        for item in message.content:
            if item.type == "text":
                content.append({"type": "text", "text": item.text})
            elif item.type == "image":
                content.append({"type": "image"})
                images.append(load_image(as_image(item.url, label), label))
            else:
                raise ValueError(f"{owner}: {label} contains {item.type} input; this model takes images and text only")
        messages.append({"role": message.role, "content": content})
    return Query(messages=tuple(messages), images=tuple(images))


def as_image(visual, label: str):
    """PIL images pass through; a string is an image file path. Anything else (video) is refused."""
    from PIL import Image

    if isinstance(visual, Image.Image):
        return visual
    if isinstance(visual, (str, Path)):
        return Path(visual)
    raise ValueError(f"{label}: expected images, got {type(visual).__name__}; videos and audio are not supported")


def _process_device(device: str, local_index: int) -> str:
    """The device of this process: --device as given, a bare "cuda" meaning this process's GPU."""
    return f"cuda:{local_index}" if device == "cuda" else device


# ----- statistics beside this run's own results file ------------------------------------------------
# Set on rank 0 by `clean()`: (this run's statistics, its model_args), until lmms-eval saves the results.
_statistics_awaiting_results: tuple[stats.RunStats, str | None] | None = None


def _await_results_file(run_stats: stats.RunStats, model_args: str | None) -> None:
    global _statistics_awaiting_results
    _statistics_awaiting_results = (run_stats, model_args)
    _write_statistics_after_results_are_saved()


def _write_statistics_after_results_are_saved() -> None:
    """Make lmms-eval's `EvaluationTracker.save_results_aggregated` write the awaiting statistics right
    after it saved the results: only the tracker knows the exact name of the file it wrote."""
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker

    save_results = EvaluationTracker.save_results_aggregated
    if getattr(save_results, "writes_pdrop_statistics", False):
        return

    def save_results_then_statistics(tracker, results, samples, datetime_str):
        save_results(tracker, results, samples, datetime_str)
        _write_awaiting_statistics(tracker, results, datetime_str)

    save_results_then_statistics.writes_pdrop_statistics = True
    EvaluationTracker.save_results_aggregated = save_results_then_statistics


def _write_awaiting_statistics(tracker, results: dict, datetime_str: str) -> None:
    """Write the awaiting statistics beside the results file `tracker` just saved, if these results are
    that run's (same model and model_args); otherwise, or when the file cannot be found for sure,
    write nothing rather than guess."""
    global _statistics_awaiting_results
    awaiting, _statistics_awaiting_results = _statistics_awaiting_results, None
    if awaiting is None:
        return
    run_stats, model_args = awaiting
    config = results.get("config") or {}
    if config.get("model") != run_stats.model or model_args is None or config.get("model_args") != model_args:
        logger.warning(
            f"{run_stats.model}: the results being saved are not this run's (model {config.get('model')!r}, "
            f"model_args {config.get('model_args')!r}); pdrop statistics not written"
        )
        return
    results_file = _saved_results_file(tracker, datetime_str, model_args)
    if results_file is None:
        logger.warning(f"{run_stats.model}: lmms-eval saved no results file for this run (no --output_path?); pdrop statistics not written")
        return
    path = stats.write_run_stats(stats.lmms_stats_path(results_file), run_stats.linked(results_file.name, model_args))
    logger.info(f"{run_stats.model}: wrote {path}")


def _saved_results_file(tracker, datetime_str: str, model_args: str) -> Path | None:
    """The ``<date>_results.json`` `tracker` wrote for the run of `datetime_str` (lmms-eval 0.7.3:
    ``<output_path>/<model_name_sanitized>/<date_id>_results.json``), checked by reading it back."""
    date_id = getattr(tracker, "date_id", None)  # set by save_results_aggregated just before writing
    if not tracker.output_path or date_id != datetime_str.replace(":", "-"):
        return None
    path = Path(tracker.output_path) / tracker.general_config_tracker.model_name_sanitized / f"{date_id}{stats.LMMS_RESULTS_SUFFIX}"
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if saved.get("date") != datetime_str or (saved.get("config") or {}).get("model_args") != model_args:
        return None
    return path
