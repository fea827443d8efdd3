"""`pdrop-vlmeval`: VLMEvalKit's own `run.py` with the pdrop-eval models registered.

It takes VLMEvalKit's flags (`--data`, `--model`, `--config`, `--work-dir`, `--judge`, `--mode`, ...)
plus `--model-args key=value,...` for the pdrop-eval models named by `--model`. In every process
(also each `torchrun` worker, which runs this same entry point) it:

1. makes torchvision importable on CPU-only torch (importing `pdrop_eval` does that) before
   VLMEvalKit is imported;
2. registers the models into `vlmeval.config.supported_VLM` and `vlmeval.vlm`, and local Yes/No
   TSVs as VLMEvalKit Y/N datasets and other local VQA TSVs as an exact-match VQA set;
3. checks model names, model options, checkpoints and datasets, so bad input stops here with a
   clear message instead of being logged and skipped inside VLMEvalKit;
4. claims each pdrop-eval model's folder `<work_dir>/<model>/` for this run's prediction settings
   before any prediction is written (`<model>_pdrop_setting.json`), refusing a folder whose
   predictions were made with other settings (VLMEvalKit would reuse them);
5. lets `run.py`'s hard-coded NCCL process group fall back to gloo where NCCL cannot work (CPU);
6. wraps VLMEvalKit's inference job to gather the per-sample drop statistics of all processes and
   write the statistics file next to VLMEvalKit's outputs (`<work_dir>/<model>/`);
7. runs VLMEvalKit's `main()`, then exits non-zero if any model x dataset has no predictions or no
   scores (VLMEvalKit itself logs such failures and still exits 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from pdrop_eval.compat import import_vlmeval

import_vlmeval()  # must precede every other vlmeval import

from pdrop_eval.stats import vlmeval_stats_path, write_json_atomically  # noqa: E402

PROG = "pdrop-vlmeval"
YES_NO_ANSWERS = {"Yes", "No"}
SETTING_SUFFIX = "_pdrop_setting.json"
SETTING_SCHEMA = "pdrop-eval/vlmeval-setting/v1"


class LaunchError(Exception):
    """Bad input found before VLMEvalKit starts; the message says what and how to fix it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,  # else "--model" would be taken for "--model-args"
        add_help=False,  # --help goes on to VLMEvalKit's parser, which lists its own flags
        description="Run VLMEvalKit with the pdrop-eval models registered.",
    )
    parser.add_argument(
        "--model-args",
        default="",
        help="options for every pdrop-eval model named by --model, e.g. "
        "'pretrained=llava-hf/llava-v1.6-vicuna-7b-hf,max_new_tokens=16,lambda=0.4' "
        "(with --config, put them in the model's entry instead)",
    )
    return parser


def _vlmeval_view(argv: list[str]) -> argparse.Namespace:
    """The VLMEvalKit flags this launcher checks; VLMEvalKit parses all of them again itself."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--data", nargs="+")
    parser.add_argument("--model", nargs="+")
    parser.add_argument("--config")
    parser.add_argument("--work-dir", default="./outputs")
    parser.add_argument("--base-url")
    parser.add_argument("--mode", default="all")
    parser.add_argument("-h", "--help", action="store_true")
    return parser.parse_known_args(argv)[0]


def parse_model_args(text: str) -> dict[str, str]:
    from pdrop_eval.keyvalue import parse_key_values

    try:
        return parse_key_values(text, "--model-args key")
    except ValueError as error:
        raise LaunchError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    own_args, vlmeval_argv = build_parser().parse_known_args(argv)
    view = _vlmeval_view(vlmeval_argv)
    if view.help:
        build_parser().print_help()
        print("\nVLMEvalKit's flags follow.\n")

    import vlmeval.run as vlmeval_run  # sets CUDA_VISIBLE_DEVICES per torchrun worker; before any CUDA use

    from pdrop_eval.adapters import vlmeval as adapter

    try:
        model_args = parse_model_args(own_args.model_args)
        adapter.register_models(model_args)
        if view.help:
            models, datasets, settings = [], [], {}
        elif view.config:
            models, datasets, settings = _check_config(view, model_args, adapter)
        else:
            models, settings = _check_models(view, model_args, adapter)
            datasets = _check_datasets(view)
        for name, model_settings in settings.items():
            _claim_work_dir(_work_dir(view) / name, name, model_settings)
    except (LaunchError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2

    _fall_back_to_gloo_without_nccl()
    _name_the_exception_of_failures(vlmeval_run)
    _keep_world_size_when_building_from_config(vlmeval_run)
    vlmeval_run.infer_data_job = _recording_statistics(vlmeval_run.infer_data_job, adapter, settings)

    sys.argv = [PROG, *vlmeval_argv]
    vlmeval_run.main()
    if _rank() != 0:
        return 0
    return _report_failures(_work_dir(view), models, datasets, scored=view.mode != "infer")


# ----- checks before VLMEvalKit starts -------------------------------------------------------------
def _check_models(view: argparse.Namespace, model_args: dict, adapter) -> tuple[list[str], dict[str, dict]]:
    """The --model names, and the prediction settings of the pdrop-eval models among them (their
    options and checkpoint checked)."""
    from vlmeval.config import supported_VLM

    if not view.model:
        raise LaunchError("--model is required (or --config)")
    if model_args and not set(view.model) & set(adapter.MODELS):
        raise LaunchError(f"--model-args applies to the pdrop-eval models {sorted(adapter.MODELS)}, none of which is in --model")
    unknown = [name for name in view.model if name not in supported_VLM]
    if unknown and not view.base_url:
        raise LaunchError(
            f"unknown model(s) {unknown}: pdrop-eval provides {sorted(adapter.MODELS)}; "
            "other names must be in vlmeval.config.supported_VLM"
        )
    settings = {}
    for name in view.model:
        if name in adapter.MODELS:
            try:
                settings[name] = adapter.MODELS[name].check_options(**model_args).prediction_settings()
            except (ValueError, TypeError, FileNotFoundError) as error:
                raise LaunchError(f"model {name!r}: {error}") from None
    return list(view.model), settings


def _check_config(view: argparse.Namespace, model_args: dict, adapter) -> tuple[list[str], list[str], dict[str, dict]]:
    """The --config file's model and dataset names, checked like --model and --data, and the
    prediction settings of its pdrop-eval models."""
    import vlmeval.vlm
    from vlmeval.config import supported_VLM

    if view.model or view.data:
        raise LaunchError("--data and --model cannot be combined with --config (VLMEvalKit takes them from the file)")
    if model_args:
        raise LaunchError("--model-args cannot be combined with --config: put the options in the model's entry")
    try:
        config = json.loads(Path(view.config).read_text())
    except FileNotFoundError:
        raise LaunchError(f"--config file {view.config} does not exist") from None
    except json.JSONDecodeError as error:
        raise LaunchError(f"--config file {view.config} is not valid JSON: {error}") from None
    for section in ("model", "data"):
        if not isinstance(config.get(section), dict) or not config[section]:
            raise LaunchError(f"--config file {view.config} needs a non-empty {section!r} object")
    settings = {}
    for name, entry in config["model"].items():
        options = dict(entry)
        class_name = options.pop("class", None)
        if class_name is None:
            if name not in supported_VLM:
                raise LaunchError(f"--config model {name!r} has no 'class' and is not a model name VLMEvalKit knows")
            model_class = getattr(supported_VLM[name], "func", None)
        else:
            model_class = getattr(vlmeval.vlm, class_name, None)
        if isinstance(model_class, type) and issubclass(model_class, adapter.DropVLM):
            try:
                settings[name] = model_class.check_options(**options).prediction_settings()
            except (ValueError, TypeError, FileNotFoundError) as error:
                raise LaunchError(f"--config model {name!r}: {error}") from None
    for name, entry in config["data"].items():
        if entry != {} and "class" not in entry:
            raise LaunchError(f"--config dataset {name!r} needs a 'class' (e.g. ImageMCQDataset, ImageYORNDataset)")
        if entry.get("class") in ("ImageMCQDataset", "ImageYORNDataset", "ImageVQADataset"):
            dataset_name = entry.get("dataset", name)
            path = _check_local_tsv(dataset_name)
            if entry["class"] == "ImageYORNDataset" and path.is_file() and _local_answers(dataset_name, path) != "yes_no":
                raise LaunchError(f"--config dataset {name!r} is declared ImageYORNDataset but {path} has no Yes/No answers")
    return list(config["model"]), list(config["data"]), settings


def _claim_work_dir(model_dir: Path, model_name: str, settings: dict) -> None:
    """Record `settings` in `<model_dir>/<model>_pdrop_setting.json` before VLMEvalKit starts, or
    refuse the folder when it holds predictions made with other settings (or of unknown settings).

    VLMEvalKit reuses any prediction in `<work_dir>/<model>/`, even without --reuse, including the
    partial `<rank><world>_<dataset>.pkl` an interrupted run leaves every 10 rows: predictions of
    another checkpoint, drop config, dtype or max_new_tokens would be scored as this run's."""
    record_path = model_dir / f"{model_name}{SETTING_SUFFIX}"
    recorded = _recorded_settings(record_path)
    if recorded == settings:
        return
    holding = _prediction_files(model_dir, model_name)
    if holding:
        if recorded is None:
            made_with = "settings it does not record (no pdrop-eval setting record)"
        else:
            changed = sorted(key for key in {*recorded, *settings} if recorded.get(key) != settings.get(key))
            made_with = "other settings: " + "; ".join(f"{key} {recorded.get(key)!r} -> {settings.get(key)!r}" for key in changed)
        raise LaunchError(
            f"{model_dir} holds {model_name} predictions ({', '.join(path.name for path in holding[:3])}"
            f"{', ...' if len(holding) > 3 else ''}) made with {made_with}; VLMEvalKit would reuse them. "
            "Use another --work-dir or model name."
        )
    if _rank() == 0:
        write_json_atomically(record_path, {"schema": SETTING_SCHEMA, "model": model_name, "settings": settings})


def _recorded_settings(record_path: Path) -> dict | None:
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError as error:
        raise LaunchError(f"{record_path} is corrupt ({error}); remove it together with the predictions beside it") from None
    if not isinstance(record, dict) or record.get("schema") != SETTING_SCHEMA or not isinstance(record.get("settings"), dict):
        raise LaunchError(f"{record_path} is not a pdrop-eval setting record ({SETTING_SCHEMA})")
    return record["settings"]


def _prediction_files(model_dir: Path, model_name: str) -> list[Path]:
    """VLMEvalKit's files in a model folder that hold predictions: `<model>_<dataset>.*` (and what
    is derived from them), the partial `*.pkl`, and their copies in per-run `T<date>...` folders."""
    ours = {f"{model_name}{SETTING_SUFFIX}", vlmeval_stats_path(model_dir, model_name).name}
    if not model_dir.is_dir():
        return []
    return sorted(
        path for path in model_dir.rglob("*")
        if path.is_file() and path.name not in ours and (path.suffix == ".pkl" or path.name.startswith(f"{model_name}_"))
    )


def _known_datasets() -> set[str]:
    from vlmeval.dataset import DATASET_CLASSES
    from vlmeval.dataset.video_dataset_config import supported_video_datasets

    return {name for cls in DATASET_CLASSES for name in cls.supported_datasets()} | set(supported_video_datasets)


def _lmu_data_root() -> Path:
    from vlmeval.smp import LMUDataRoot

    return Path(LMUDataRoot())


def _check_local_tsv(name: str) -> Path:
    path = _lmu_data_root() / f"{name}.tsv"
    if name not in _known_datasets() and not path.is_file():
        raise LaunchError(f"dataset {name!r} is not a VLMEvalKit dataset and {path} does not exist (set $LMUData)")
    return path


def _check_datasets(view: argparse.Namespace) -> list[str]:
    """Every --data name is a VLMEvalKit dataset or a local TSV (`_register_local_dataset` types it)."""
    if not view.data:
        raise LaunchError("--data is required (or --config)")
    known = _known_datasets()
    for name in view.data:
        path = _check_local_tsv(name)
        if name not in known:
            _register_local_dataset(name, path)
    return list(view.data)


def _register_local_dataset(name: str, path: Path) -> None:
    """A local TSV VLMEvalKit cannot score on its own: Yes/No answers become its Y/N set, other answers
    our exact-match VQA set (its custom VQA set's `evaluate` raises NotImplementedError); option columns
    stay its custom multiple-choice set, and a TSV without answers its custom VQA set (--mode infer)."""
    answers = _local_answers(name, path)
    if answers == "yes_no":
        from vlmeval.dataset import ImageYORNDataset

        # '' makes VLMEvalKit read <LMUData>/<name>.tsv without an MD5 check or download.
        ImageYORNDataset.DATASET_URL[name] = ""
    elif answers == "vqa":
        from pdrop_eval.adapters.vlmeval_exact_match import ExactMatchVQA

        ExactMatchVQA.register(name)


def _local_answers(name: str, path: Path) -> str | None:
    """What the TSV's answers are: "mcq" (option columns, VLMEvalKit's own rule), "yes_no", "vqa", or None
    (no answer column). VLMEvalKit's Y/N scorer compares the extracted 'Yes'/'No' with the answer
    exactly, so other spellings of yes and no are refused rather than scored as wrong."""
    import pandas as pd

    data = pd.read_csv(path, sep="\t", usecols=lambda column: column in ("answer", "A", "B"))
    if {"A", "B"} <= set(data.columns):
        return "mcq"
    if "answer" not in data:
        return None
    answers = set(data["answer"].astype(str))
    if not {answer.strip().lower() for answer in answers} <= {"yes", "no"}:
        return "vqa"
    if not answers <= YES_NO_ANSWERS:
        raise LaunchError(
            f"dataset {name!r} looks like a Yes/No set but its answers are {sorted(answers)}; "
            f"VLMEvalKit scores Y/N answers only when written exactly as {sorted(YES_NO_ANSWERS)}"
        )
    return "yes_no"


# ----- VLMEvalKit behaviour adjusted for this launcher ------------------------------------------------
def _name_the_exception_of_failures(vlmeval_run) -> None:
    """run.py records a failed model x dataset as the exception's text only, which is empty for a bare
    assert or a NotImplementedError: record its type and where it was raised as well."""
    upsert_dataset_status = vlmeval_run.upsert_dataset_status

    def upsert_naming_the_exception(*args, **kwargs):
        error = sys.exc_info()[1]  # run.py records a failure inside its `except Exception as e:`
        if kwargs.get("error_message") is not None and error is not None:
            kwargs["error_message"] = describe_exception(error)
        return upsert_dataset_status(*args, **kwargs)

    vlmeval_run.upsert_dataset_status = upsert_naming_the_exception


def describe_exception(error: BaseException) -> str:
    """E.g. "NotImplementedError (raised in evaluate, vlmeval/dataset/image_vqa.py:2433)"."""
    import traceback

    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return text
    frame = frames[-1]
    return f"{text} (raised in {frame.name}, {frame.filename.split('site-packages/')[-1]}:{frame.lineno})"


def _fall_back_to_gloo_without_nccl() -> None:
    """run.py always asks for NCCL; on machines without CUDA (or an NCCL build) use gloo."""
    import torch
    import torch.distributed as dist

    init_process_group = dist.init_process_group

    def init_with_available_backend(backend=None, *args, **kwargs):
        if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
            print(f"{PROG}: NCCL is not available here; using the gloo backend", file=sys.stderr)
            backend = "gloo"
        return init_process_group(backend, *args, **kwargs)

    dist.init_process_group = init_with_available_backend


def _keep_world_size_when_building_from_config(vlmeval_run) -> None:
    """run.py's build_model_from_config hides WORLD_SIZE while building a model but forgets to put
    it back for entries without 'class'; every worker would then infer the whole dataset."""
    build_model_from_config = vlmeval_run.build_model_from_config

    def build_and_restore(*args, **kwargs):
        world_size = os.environ.get("WORLD_SIZE")
        try:
            return build_model_from_config(*args, **kwargs)
        finally:
            if world_size is not None:
                os.environ["WORLD_SIZE"] = world_size

    vlmeval_run.build_model_from_config = build_and_restore


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def _recording_statistics(infer_data_job, adapter, settings: dict[str, dict]):
    """Wrap VLMEvalKit's per-dataset inference job: afterwards gather every process's per-sample
    statistics on rank 0 and rewrite `<work_dir>/<model>/<model>_pdrop_stats.json`, linked to the
    folder's status.json and the model's prediction `settings`.

    Like VLMEvalKit's folder, the file accumulates: samples of datasets inferred by earlier runs
    (same settings, see `_claim_work_dir`) stay, those inferred now replace theirs, and wall_time_s
    adds up the generation time of the runs."""

    from pdrop_eval import stats

    def infer_and_record(model, *, work_dir, model_name, dataset, **kwargs):
        model = infer_data_job(model, work_dir=work_dir, model_name=model_name, dataset=dataset, **kwargs)
        # VLMEvalKit hands back the bare model name when every prediction was reused (nothing inferred).
        local = model.take_statistics(model_name) if isinstance(model, adapter.DropVLM) else None
        gathered = stats.gather_from_all_processes(local)  # a collective: every rank gets here for every dataset
        parts = [part for part in gathered if part is not None]
        if _rank() != 0 or not parts:
            return model
        current = stats.merge_processes(parts, world_size=len(gathered))
        path = stats.vlmeval_stats_path(work_dir, model_name)
        if path.is_file():
            previous = stats.read_run_stats(path)
            earlier = [sample for sample in previous.samples if sample.task != dataset.dataset_name]
            current = replace(
                current,
                samples=stats.unique_samples([*earlier, *current.samples]),
                wall_time_s=previous.wall_time_s + current.wall_time_s,
            )
        stats.write_run_stats(path, current.linked(stats.VLMEVAL_RESULTS_FILE, settings[model_name]))
        return model

    return infer_and_record


# ----- after VLMEvalKit ---------------------------------------------------------------------------
def _work_dir(view: argparse.Namespace) -> Path:
    return Path(os.environ.get("MMEVAL_ROOT", view.work_dir))  # run.py lets MMEVAL_ROOT win


def _report_failures(work_dir: Path, models: list[str], datasets: list[str], scored: bool) -> int:
    """VLMEvalKit logs a failed model x dataset, records it in status.json and exits 0; we don't.
    A combination failed when it has no prediction file, or no scores (`scored`: not --mode infer),
    or an error recorded, whatever the message (VLMEvalKit's bare asserts record an empty one)."""
    from vlmeval.smp import get_pred_file_path

    failures = []
    for model in models:
        status_file = work_dir / model / "status.json"
        recorded = json.loads(status_file.read_text()).get("datasets", {}) if status_file.is_file() else {}
        for dataset in datasets:
            status = recorded.get(dataset)
            predictions = Path(get_pred_file_path(str(work_dir / model), model, dataset, use_env_format=True))
            if status is None:
                failures.append(f"{model} x {dataset}: VLMEvalKit recorded no result in {status_file}")
            elif "error_message" in status:
                failures.append(f"{model} x {dataset}: {status['error_message'] or 'failed without an error message'}")
            elif not predictions.is_file():
                failures.append(f"{model} x {dataset}: no predictions ({predictions.name} missing; {status.get('skip_reason') or 'no reason recorded'})")
            elif scored and not status.get("metrics"):
                failures.append(f"{model} x {dataset}: no scores ({status.get('skip_reason') or 'no reason recorded'})")
    for failure in failures:
        print(f"{PROG}: failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
