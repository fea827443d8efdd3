"""`pdrop-vlmeval`: VLMEvalKit's own `run.py` with the pdrop-eval models registered.

It takes VLMEvalKit's flags (`--data`, `--model`, `--config`, `--work-dir`, `--judge`, `--mode`, ...)
plus `--model-args key=value,...` for the pdrop-eval models named by `--model`. In every process
(also each `torchrun` worker, which runs this same entry point) it:

1. makes torchvision importable on CPU-only torch (importing `pdrop_eval` does that) before
   VLMEvalKit is imported;
2. registers the models into `vlmeval.config.supported_VLM` and `vlmeval.vlm`, and local Yes/No
   TSVs as VLMEvalKit Y/N datasets;
3. checks model names, model options, checkpoints and datasets, so bad input stops here with a
   clear message instead of being logged and skipped inside VLMEvalKit;
4. lets `run.py`'s hard-coded NCCL process group fall back to gloo where NCCL cannot work (CPU);
5. wraps VLMEvalKit's inference job to gather the per-sample drop statistics of all processes and
   write the statistics file next to VLMEvalKit's outputs (`<work_dir>/<model>/`);
6. runs VLMEvalKit's `main()`, then exits non-zero if any model x dataset failed (VLMEvalKit itself
   logs such failures and still exits 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pdrop_eval.compat import ensure_torchvision_importable

ensure_torchvision_importable()  # must precede every vlmeval import

PROG = "pdrop-vlmeval"
YES_NO_ANSWERS = {"Yes", "No"}


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
            models, datasets = [], []
        elif view.config:
            models, datasets = _check_config(view, model_args, adapter)
        else:
            models, datasets = _check_models(view, model_args, adapter), _check_datasets(view)
    except (LaunchError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2

    _fall_back_to_gloo_without_nccl()
    _keep_world_size_when_building_from_config(vlmeval_run)
    vlmeval_run.infer_data_job = _recording_statistics(vlmeval_run.infer_data_job, adapter)

    sys.argv = [PROG, *vlmeval_argv]
    vlmeval_run.main()
    if _rank() != 0:
        return 0
    return _report_failures(_work_dir(view), models, datasets)


# ----- checks before VLMEvalKit starts -------------------------------------------------------------
def _check_models(view: argparse.Namespace, model_args: dict, adapter) -> list[str]:
    """The --model names; pdrop-eval models get their options, checkpoint and work dir checked."""
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
    for name in view.model:
        if name in adapter.MODELS:
            try:
                settings = adapter.MODELS[name].check_options(**model_args)
            except (ValueError, TypeError, FileNotFoundError) as error:
                raise LaunchError(f"model {name!r}: {error}") from None
            _check_work_dir_fits(_work_dir(view) / name, name, settings)
    return list(view.model)


def _check_config(view: argparse.Namespace, model_args: dict, adapter) -> tuple[list[str], list[str]]:
    """The --config file's model and dataset names, checked like --model and --data."""
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
                settings = model_class.check_options(**options)
            except (ValueError, TypeError, FileNotFoundError) as error:
                raise LaunchError(f"--config model {name!r}: {error}") from None
            _check_work_dir_fits(_work_dir(view) / name, name, settings)
    for name, entry in config["data"].items():
        if entry != {} and "class" not in entry:
            raise LaunchError(f"--config dataset {name!r} needs a 'class' (e.g. ImageMCQDataset, ImageYORNDataset)")
        if entry.get("class") in ("ImageMCQDataset", "ImageYORNDataset", "ImageVQADataset"):
            dataset_name = entry.get("dataset", name)
            path = _check_local_tsv(dataset_name)
            if entry["class"] == "ImageYORNDataset" and path.is_file() and not _has_yes_no_answers(dataset_name, path):
                raise LaunchError(f"--config dataset {name!r} is declared ImageYORNDataset but {path} has no Yes/No answers")
    return list(config["model"]), list(config["data"])


def _check_work_dir_fits(model_dir: Path, model_name: str, settings) -> None:
    """VLMEvalKit reuses any prediction file already in `<work_dir>/<model>/`, even without --reuse.
    Predictions made with another checkpoint or drop config under the same name would be scored as
    this run's, so such a folder is refused (its statistics file records what produced it)."""
    from pdrop_eval.stats import FILE_SUFFIX

    stats_path = model_dir / f"{model_name}{FILE_SUFFIX}"
    if not stats_path.is_file():
        return
    previous = json.loads(stats_path.read_text())
    now = {"pretrained": settings.pretrained, "drop": settings.drop.to_dict()}
    before = {key: previous.get(key) for key in now}
    if before != now:
        raise LaunchError(
            f"{model_dir} holds {model_name} results made with {before}, but this run uses {now}; "
            "VLMEvalKit would reuse those predictions. Use another --work-dir or model name."
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
    """Every --data name is a VLMEvalKit dataset or a local TSV; local Yes/No TSVs become Y/N sets."""
    if not view.data:
        raise LaunchError("--data is required (or --config)")
    known = _known_datasets()
    for name in view.data:
        path = _check_local_tsv(name)
        if name not in known:
            _register_if_yes_no(name, path)
    return list(view.data)


def _register_if_yes_no(name: str, path: Path) -> None:
    """A local TSV without option columns whose answers are all yes/no is scored as Y/N; VLMEvalKit
    would take it as a custom VQA set, which it cannot score."""
    from vlmeval.dataset import ImageYORNDataset

    if _has_yes_no_answers(name, path):
        # '' makes VLMEvalKit read <LMUData>/<name>.tsv without an MD5 check or download.
        ImageYORNDataset.DATASET_URL[name] = ""


def _has_yes_no_answers(name: str, path: Path) -> bool:
    """Whether the TSV is a Yes/No set. VLMEvalKit's Y/N scorer compares the extracted 'Yes'/'No'
    with the answer exactly, so other spellings are refused rather than scored as wrong."""
    import pandas as pd

    data = pd.read_csv(path, sep="\t", usecols=lambda column: column in ("answer", "A", "B"))
    if {"A", "B"} <= set(data.columns) or "answer" not in data:
        return False  # an MCQ set (VLMEvalKit's own rule), or no answers to score
    answers = set(data["answer"].astype(str))
    if not {answer.strip().lower() for answer in answers} <= {"yes", "no"}:
        return False
    if not answers <= YES_NO_ANSWERS:
        raise LaunchError(
            f"dataset {name!r} looks like a Yes/No set but its answers are {sorted(answers)}; "
            f"VLMEvalKit scores Y/N answers only when written exactly as {sorted(YES_NO_ANSWERS)}"
        )
    return True


# ----- VLMEvalKit behaviour adjusted for this launcher ------------------------------------------------
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


def _recording_statistics(infer_data_job, adapter):
    """Wrap VLMEvalKit's per-dataset inference job: afterwards gather every process's per-sample
    statistics on rank 0 and rewrite `<work_dir>/<model>/<model>_pdrop_stats.json`.

    Like VLMEvalKit's folder, the file accumulates: samples of datasets inferred by earlier runs
    (same checkpoint and drop config, see `_check_work_dir_fits`) stay, those inferred now replace
    theirs, and wall_time_s adds up the generation time of the runs."""

    from pdrop_eval.stats import FILE_SUFFIX, build_run_stats, gather_from_all_processes, write_run_stats

    def infer_and_record(model, *, work_dir, model_name, dataset, **kwargs):
        model = infer_data_job(model, work_dir=work_dir, model_name=model_name, dataset=dataset, **kwargs)
        # VLMEvalKit hands back the bare model name when every prediction was reused (nothing inferred).
        local = model.take_statistics() if isinstance(model, adapter.DropVLM) else None
        gathered = gather_from_all_processes(local)  # a collective: every rank gets here for every dataset
        world_size = len(gathered)
        reports = [report for report in gathered if report is not None]
        if _rank() != 0 or not reports:
            return model
        path = Path(work_dir) / f"{model_name}{FILE_SUFFIX}"
        previous = json.loads(path.read_text()) if path.is_file() else {"samples": [], "wall_time_s": 0.0}
        kept = [sample for sample in previous["samples"] if sample["task"] != dataset.dataset_name]
        content = build_run_stats(
            framework=adapter.FRAMEWORK,
            model=model_name,
            pretrained=reports[0]["pretrained"],
            architecture=reports[0]["architecture"],
            drop=reports[0]["drop"],
            model_dims=reports[0]["model_dims"],
            world_size=world_size,
            # the slowest process sets the pace
            wall_time_s=previous["wall_time_s"] + max(report["generate_seconds"] for report in reports),
            samples=kept + [sample for report in reports for sample in report["samples"]],
        )
        write_run_stats(path, content)
        return model

    return infer_and_record


# ----- after VLMEvalKit ---------------------------------------------------------------------------
def _work_dir(view: argparse.Namespace) -> Path:
    return Path(os.environ.get("MMEVAL_ROOT", view.work_dir))  # run.py lets MMEVAL_ROOT win


def _report_failures(work_dir: Path, models: list[str], datasets: list[str]) -> int:
    """VLMEvalKit logs a failed model x dataset, records it in status.json and exits 0; we don't."""
    failures = []
    for model in models:
        status_file = work_dir / model / "status.json"
        recorded = json.loads(status_file.read_text()).get("datasets", {}) if status_file.is_file() else {}
        for dataset in datasets:
            status = recorded.get(dataset)
            if status is None:
                failures.append(f"{model} x {dataset}: VLMEvalKit recorded no result in {status_file}")
            elif status.get("error_message"):
                failures.append(f"{model} x {dataset}: {status['error_message']}")
            elif status.get("skip_reason") in ("invalid_dataset", "No infer result found", "Incomplete infer result"):
                failures.append(f"{model} x {dataset}: skipped ({status['skip_reason']})")
    for failure in failures:
        print(f"{PROG}: failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
