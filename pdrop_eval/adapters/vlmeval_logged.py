"""An evaluated VLMEvalKit row read back from a work dir (for `pdrop-eval show --run`): the question and
the prediction from ``<model>_<dataset>.xlsx``, and the row's pictures as VLMEvalKit dumps them for the
model (``dataset.dump_image``), from the dataset's TSV under ``$LMUData`` as during the run."""

from __future__ import annotations

from pathlib import Path

from pdrop_eval.compat import import_vlmeval
from pdrop_eval.show import EvaluatedDocument


def vlmeval_document(model_dir: Path, model: str, dataset: str, index) -> EvaluatedDocument:
    import_vlmeval()  # torchvision made importable, autograd left as it was
    import pandas as pd
    from vlmeval.dataset import build_dataset

    from pdrop_eval.wrapper import load_image

    predictions = Path(model_dir) / f"{model}_{dataset}.xlsx"
    if not predictions.is_file():
        raise FileNotFoundError(f"{predictions} is missing: no predictions of {model} on {dataset} in {model_dir}")
    frame = pd.read_excel(predictions)
    rows = frame[frame["index"].astype(str) == str(index)]
    if rows.empty:
        raise ValueError(f"{predictions} has no row with index {index}")
    data = build_dataset(dataset)
    if data is None:
        raise ValueError(f"VLMEvalKit cannot build dataset {dataset!r} (is $LMUData the folder the run used?)")
    lines = data.data[data.data["index"].astype(str) == str(index)]
    if lines.empty:
        raise ValueError(f"dataset {dataset!r} has no row with index {index}")
    label = f"{dataset} index {index}"
    images = tuple(load_image(Path(path), label) for path in data.dump_image(lines.iloc[0]))
    row = rows.iloc[0]
    return EvaluatedDocument(images=images, question=str(row.get("question", "")), answer=str(row.get("prediction", "")))
