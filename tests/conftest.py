"""Shared fixtures: tiny random checkpoints built once per session, everything offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from pdrop_eval.compat import ensure_torchvision_importable  # noqa: E402
from pdrop_eval.tiny import make_tiny_model  # noqa: E402

ensure_torchvision_importable()  # before any test imports transformers' image processors or a framework


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """LLaVA-1.5 style: 64 image tokens per image, 32-layer GQA LLaMA decoder."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_llava"), arch="llava")


@pytest.fixture(scope="session")
def tiny_llava_next(tmp_path_factory):
    """LLaVA-NeXT style: anyres, the number of image tokens depends on the image's aspect ratio."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_llava_next"), arch="llava_next")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`pdrop-eval demo` as the README runs it (plus --limit to stay fast): real lmms-eval runs of
    vanilla, PyramidDrop and FastV on a tiny checkpoint and the bundled tasks. (folder, stdout)"""
    import subprocess

    out_dir = tmp_path_factory.mktemp("demo") / "out"
    completed = subprocess.run(
        ["pdrop-eval", "demo", "--out-dir", str(out_dir), "--limit", "2"], capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out_dir, completed.stdout
