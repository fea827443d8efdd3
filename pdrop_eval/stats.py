"""The per-run statistics record: what each sample cost, tied to the framework results it belongs to.

Both framework adapters build a `RunStats` and write it with `write_run_stats`; `pdrop-eval report`
reads it back with `read_run_stats` (nothing else parses these files). One JSON object per run, in
a file ending in ``_pdrop_stats.json`` in the folder of the framework's own results:

* lmms-eval: ``<date>_pdrop_stats.json`` beside ``<date>_results.json`` (`lmms_stats_path`),
  written by the process that wrote the results, right after lmms-eval saved them;
* VLMEvalKit: ``<work_dir>/<model>/<model>_pdrop_stats.json`` (`vlmeval_stats_path`), one per model
  folder, accumulating the datasets inferred there (``status.json`` is its results file).

Schema ``pdrop-eval/stats/v2``::

    {
      "schema": "pdrop-eval/stats/v2",
      "framework": "lmms-eval" | "vlmeval",
      "model": "llava_next_pdrop",            # the name the framework ran
      "results_file": "20250101_120000_results.json",  # its results, in this file's folder
      "model_args": "pretrained=...,lambda=0.5",  # lmms-eval: results' config.model_args verbatim;
                                               # VLMEvalKit: the model's resolved options (object)
      "pretrained": "llava-hf/llava-v1.6-vicuna-7b-hf",
      "architecture": "llava" | "llava_next",
      "drop": {...},                           # DropConfig.to_dict()
      "model_dims": {"hidden_size": 4096, "intermediate_size": 11008, "num_layers": 32},  # + "kv_size" under GQA
      "world_size": 1,                         # processes the documents were split across
      "wall_time_s": 12.3,                     # seconds spent answering requests (slowest process)
      "num_samples": 10,                       # these four are summaries for readers; the
      "mean_image_tokens": 64.0,               # report recomputes them from the samples
      "mean_tflops_paper": 0.1,
      "mean_tflops_actual": 0.2,
      "samples": [{"task": "...", "doc_id": 0, "num_image_tokens": 64,
                   "image_tokens_per_layer": [64, ...], "tokens_per_layer": [80, ...],
                   "tflops_paper": 0.1, "tflops_actual": 0.2,
                   "kept": [[...], ...]}]      # only with the model arg save_kept=true: kept image-token
                                               # indices per stage boundary (pdrop_eval.token_map)
    }

Per sample: ``image_tokens_per_layer`` and ``tokens_per_layer`` have one entry per decoder layer (the
image tokens left, and all valid tokens text included, during prefill); ``tflops_paper`` is
``flops.tflops(d, m, L, image_tokens_per_layer, kv_size)`` and ``tflops_actual`` the same over
``tokens_per_layer``. Samples are sorted by task then doc_id; a document the framework asks about more
than once (one request per answer option) appears once. Means are null when there are no samples.
Schema v1 files (no ``results_file``) are refused: nothing tied them to their run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pdrop_eval import flops
from pdrop_eval.engine.config import DropConfig

SCHEMA = "pdrop-eval/stats/v2"
FILE_SUFFIX = "_pdrop_stats.json"
LMMS_RESULTS_SUFFIX = "_results.json"
VLMEVAL_RESULTS_FILE = "status.json"
FRAMEWORKS = ("lmms-eval", "vlmeval")
MODEL_DIMS_KEYS = ("hidden_size", "intermediate_size", "num_layers")
KV_SIZE_KEY = "kv_size"  # only under grouped-query attention (flops.kv_size_of); files before it have full attention


class StatsFileError(ValueError):
    """A statistics file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class SampleStats:
    """What one sample cost: image tokens and all tokens at every decoder layer, and TFLOPs.

    tflops_paper counts image tokens only (the paper's convention); tflops_actual counts every token the
    layers really processed (text included). `kept`: the kept image-token indices after each stage
    boundary, when recorded.
    """

    num_image_tokens: int
    image_tokens_per_layer: tuple[int, ...]
    tokens_per_layer: tuple[int, ...]
    tflops_paper: float
    tflops_actual: float
    kept: tuple[tuple[int, ...], ...] | None = None

    @classmethod
    def measure(
        cls,
        num_image_tokens: int,
        image_tokens_per_layer: Sequence[int],
        tokens_per_layer: Sequence[int],
        model_dims: dict,
        kept: Sequence[Sequence[int]] | None = None,
    ) -> SampleStats:
        """The record of one sample from the engine's token counts and the language model's sizes."""
        dims = flops.ModelDims(*(model_dims[key] for key in MODEL_DIMS_KEYS), int(num_image_tokens), model_dims.get(KV_SIZE_KEY))
        return cls(
            num_image_tokens=int(num_image_tokens),
            image_tokens_per_layer=tuple(image_tokens_per_layer),
            tokens_per_layer=tuple(tokens_per_layer),
            tflops_paper=dims.tflops(list(image_tokens_per_layer)),
            tflops_actual=dims.tflops(list(tokens_per_layer)),
            kept=None if kept is None else tuple(tuple(stage) for stage in kept),
        )


@dataclass(frozen=True)
class SampleRecord:
    """One entry of a run's samples: the document (task, doc_id) and what it cost."""

    task: str
    doc_id: int | str
    stats: SampleStats


@dataclass(frozen=True)
class RunStats:
    """One evaluation run's statistics. `results_file` and `model_args` link it to the framework's
    results; they are set (`linked`) by the code that knows which results file is this run's, and a
    record without them is never written."""

    framework: str
    model: str
    pretrained: str
    architecture: str
    drop: DropConfig
    model_dims: dict
    wall_time_s: float
    samples: tuple[SampleRecord, ...]
    world_size: int = 1
    results_file: str | None = None
    model_args: str | dict | None = None

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    def mean(self, field: str) -> float | None:
        """Mean of a numeric `SampleStats` field over the samples (None without samples)."""
        if not self.samples:
            return None
        return sum(getattr(sample.stats, field) for sample in self.samples) / len(self.samples)

    def linked(self, results_file: str, model_args: str | dict) -> RunStats:
        return replace(self, results_file=results_file, model_args=model_args)

    # ----- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "framework": self.framework,
            "model": self.model,
            "results_file": self.results_file,
            "model_args": self.model_args,
            "pretrained": self.pretrained,
            "architecture": self.architecture,
            "drop": self.drop.to_dict(),
            "model_dims": dict(self.model_dims),
            "world_size": self.world_size,
            "wall_time_s": self.wall_time_s,
            "num_samples": self.num_samples,
            "mean_image_tokens": self.mean("num_image_tokens"),
            "mean_tflops_paper": self.mean("tflops_paper"),
            "mean_tflops_actual": self.mean("tflops_actual"),
            "samples": [_sample_to_json(sample) for sample in self.samples],
        }

    @classmethod
    def from_json(cls, data: dict, path: Path) -> RunStats:
        """Parse a statistics file's content; every problem is a StatsFileError naming `path` and the key."""
        check = _Checker(path)
        if data.get("schema") != SCHEMA:
            old = " (an older pdrop-eval's file, which does not name its results file; re-run to get a linked one)"
            raise StatsFileError(f"{path}: schema is {data.get('schema')!r}, expected {SCHEMA!r}" + (old if data.get("schema") == "pdrop-eval/stats/v1" else ""))
        check.present(data, "statistics file", "framework", "model", "results_file", "model_args", "pretrained", "architecture",
                      "drop", "model_dims", "world_size", "wall_time_s", "samples")
        if data["framework"] not in FRAMEWORKS:
            raise StatsFileError(f"{path}: framework is {data['framework']!r}, expected one of {FRAMEWORKS}")
        try:
            drop = DropConfig.from_dict(data["drop"])
        except (TypeError, ValueError) as error:
            raise StatsFileError(f"{path}: invalid drop config {data['drop']!r}: {error}") from None
        dims = data["model_dims"]
        if not isinstance(dims, dict):
            raise StatsFileError(f"{path}: model_dims should be an object")
        if not isinstance(data["samples"], list):
            raise StatsFileError(f"{path}: samples should be a list")
        optional_dims = (KV_SIZE_KEY,) if KV_SIZE_KEY in dims else ()
        run = cls(
            framework=data["framework"],
            model=check.text(data["model"], "model"),
            pretrained=check.text(data["pretrained"], "pretrained"),
            architecture=check.text(data["architecture"], "architecture"),
            drop=drop,
            model_dims={key: check.integer(dims.get(key), f"model_dims.{key}") for key in MODEL_DIMS_KEYS + optional_dims},
            wall_time_s=check.number(data["wall_time_s"], "wall_time_s"),
            samples=tuple(_sample_from_json(sample, f"samples[{index}]", check) for index, sample in enumerate(data["samples"])),
            world_size=check.integer(data["world_size"], "world_size"),
            results_file=check.text(data["results_file"], "results_file"),
            model_args=data["model_args"],
        )
        for sample in run.samples:
            check_sample_follows_config(sample, drop, run.model_dims["num_layers"], path)
        return run


def check_sample_follows_config(sample: SampleRecord, drop: DropConfig, num_layers: int, path: Path) -> None:
    """Refuse a sample whose counts contradict the file's own drop config: negative counts, a list per
    layer of another depth, text counts below image counts, or image tokens per layer other than the
    schedule the config gives at the sample's N (every registered method's counts are fixed by N)."""
    cost = sample.stats
    where = f"{path}: {sample.task} doc_id {sample.doc_id!r}"
    counts = (cost.num_image_tokens, *cost.image_tokens_per_layer, *cost.tokens_per_layer)
    if min(counts, default=0) < 0:
        raise StatsFileError(f"{where} records negative token counts")
    for key, per_layer in (("image_tokens_per_layer", cost.image_tokens_per_layer), ("tokens_per_layer", cost.tokens_per_layer)):
        if len(per_layer) != num_layers:
            raise StatsFileError(f"{where}: {key} has {len(per_layer)} entries for a model of {num_layers} layers")
    if any(tokens < image for tokens, image in zip(cost.tokens_per_layer, cost.image_tokens_per_layer)):
        raise StatsFileError(f"{where}: tokens_per_layer counts fewer tokens than image_tokens_per_layer at some layer")
    try:
        expected = drop.image_tokens_per_layer(cost.num_image_tokens, num_layers)
    except ValueError as error:
        raise StatsFileError(f"{where}: the file's drop config {drop.describe()} does not fit a model of {num_layers} layers: {error}") from None
    wrong = [layer for layer, (recorded, wanted) in enumerate(zip(cost.image_tokens_per_layer, expected)) if recorded != wanted]
    if wrong:
        layer = wrong[0]
        raise StatsFileError(
            f"{where}: image tokens per layer contradict the file's drop config {drop.describe()} at N={cost.num_image_tokens}: "
            f"layer {layer} records {cost.image_tokens_per_layer[layer]}, the config gives {expected[layer]} "
            f"({len(wrong)} layers differ); these statistics are not this setting's"
        )


def unique_samples(samples) -> tuple[SampleRecord, ...]:
    """Sorted by (task, doc_id), one per document: the first record of a document wins."""
    unique: dict[tuple, SampleRecord] = {}
    for sample in samples:
        unique.setdefault((sample.task, sample.doc_id), sample)
    return tuple(unique[key] for key in sorted(unique))


def merge_processes(parts: Sequence[RunStats], world_size: int | None = None) -> RunStats:
    """The run's record from each process's own (same model and setting): samples together, the
    slowest process's time. `world_size` defaults to the number of parts."""
    first = parts[0]
    for part in parts[1:]:
        if (part.model, part.pretrained, part.drop) != (first.model, first.pretrained, first.drop):
            raise ValueError(f"statistics of different runs cannot be merged: {first.model} {first.drop.describe()} vs {part.model} {part.drop.describe()}")
    return replace(
        first,
        samples=unique_samples(sample for part in parts for sample in part.samples),
        wall_time_s=max(part.wall_time_s for part in parts),
        world_size=len(parts) if world_size is None else world_size,
    )


# ----- files ---------------------------------------------------------------------------------------
def lmms_stats_path(results_file: str | Path) -> Path:
    """``<date>_pdrop_stats.json`` for lmms-eval's ``<date>_results.json``."""
    results_file = Path(results_file)
    if not results_file.name.endswith(LMMS_RESULTS_SUFFIX):
        raise ValueError(f"{results_file} is not an lmms-eval results file (*{LMMS_RESULTS_SUFFIX})")
    return results_file.with_name(results_file.name.removesuffix(LMMS_RESULTS_SUFFIX) + FILE_SUFFIX)


def vlmeval_stats_path(model_dir: str | Path, model: str) -> Path:
    """``<work_dir>/<model>/<model>_pdrop_stats.json``."""
    return Path(model_dir) / f"{model}{FILE_SUFFIX}"


def write_run_stats(path: str | Path, run: RunStats) -> Path:
    """Write `run` (which must be linked to its results) atomically: a reader never sees half a file."""
    path = Path(path)
    if not path.name.endswith(FILE_SUFFIX):
        raise ValueError(f"a statistics file name must end in {FILE_SUFFIX!r}, got {path.name!r}")
    if run.results_file is None or run.model_args is None:
        raise ValueError(f"{path}: refusing to write statistics that are not linked to their results file and model_args")
    return write_json_atomically(path, run.to_json())


def write_json_atomically(path: Path, data) -> Path:
    """Write `data` as JSON through a temporary file renamed over `path` (no NaN or Infinity)."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def read_run_stats(path: str | Path) -> RunStats:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise StatsFileError(f"{path}: not a text file, expected a pdrop-eval statistics file") from None
    except json.JSONDecodeError as error:
        raise StatsFileError(f"{path}: corrupt JSON ({error}), expected a pdrop-eval statistics file") from None
    if not isinstance(data, dict):
        raise StatsFileError(f"{path}: holds a JSON {type(data).__name__}, expected a pdrop-eval statistics file")
    return RunStats.from_json(data, path)


def gather_from_all_processes(value) -> list:
    """`value` from every process of the default torch.distributed group, in rank order (a collective:
    every process must call it); just ``[value]`` when no group of several processes is running."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


# ----- JSON of one sample ----------------------------------------------------------------------------
def _sample_to_json(sample: SampleRecord) -> dict:
    cost = sample.stats
    data = {
        "task": sample.task,
        "doc_id": sample.doc_id,
        "num_image_tokens": cost.num_image_tokens,
        "image_tokens_per_layer": list(cost.image_tokens_per_layer),
        "tokens_per_layer": list(cost.tokens_per_layer),
        "tflops_paper": cost.tflops_paper,
        "tflops_actual": cost.tflops_actual,
    }
    if cost.kept is not None:
        data["kept"] = [list(stage) for stage in cost.kept]
    return data


def _sample_from_json(data, where: str, check: _Checker) -> SampleRecord:
    if not isinstance(data, dict):
        raise StatsFileError(f"{check.path}: {where} should be an object")
    check.present(data, f"statistics sample ({where})", "task", "doc_id", "num_image_tokens", "image_tokens_per_layer",
                  "tokens_per_layer", "tflops_paper", "tflops_actual")
    kept = data.get("kept")
    return SampleRecord(
        task=check.text(data["task"], f"{where}.task"),
        doc_id=data["doc_id"] if isinstance(data["doc_id"], str) else check.integer(data["doc_id"], f"{where}.doc_id"),
        stats=SampleStats(
            num_image_tokens=check.integer(data["num_image_tokens"], f"{where}.num_image_tokens"),
            image_tokens_per_layer=check.integers(data["image_tokens_per_layer"], f"{where}.image_tokens_per_layer"),
            tokens_per_layer=check.integers(data["tokens_per_layer"], f"{where}.tokens_per_layer"),
            tflops_paper=check.number(data["tflops_paper"], f"{where}.tflops_paper"),
            tflops_actual=check.number(data["tflops_actual"], f"{where}.tflops_actual"),
            kept=None if kept is None else tuple(check.integers(stage, f"{where}.kept") for stage in kept),
        ),
    )


class _Checker:
    """Type checks of values read from `path`; failures name the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def present(self, data: dict, what: str, *keys: str) -> None:
        missing = [key for key in keys if key not in data]
        if missing:
            raise StatsFileError(f"{self.path}: not a complete {what} (missing {', '.join(map(repr, missing))})")

    def text(self, value, key: str) -> str:
        if not isinstance(value, str):
            raise StatsFileError(f"{self.path}: {key} should be a string, got {value!r}")
        return value

    def number(self, value, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise StatsFileError(f"{self.path}: {key} should be a finite number, got {value!r}")
        return float(value)

    def integer(self, value, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise StatsFileError(f"{self.path}: {key} should be an integer, got {value!r}")
        return value

    def integers(self, values, key: str) -> tuple[int, ...]:
        if not isinstance(values, list):
            raise StatsFileError(f"{self.path}: {key} should be a list of integers, got {values!r}")
        return tuple(self.integer(value, key) for value in values)
