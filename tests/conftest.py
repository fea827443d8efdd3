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
def tiny_qwen2_5_vl(tmp_path_factory):
    """Qwen2.5-VL: one token per 8x8 pixels at the processor's resize (N varies), 3-D M-RoPE, 32-layer GQA decoder."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2_5_vl"), arch="qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_llava_onevision(tmp_path_factory):
    """LLaVA-OneVision style: SigLIP tiles without [CLS], anyres grid downsampled above 2 tiles' worth, newline
    tokens per grid row, 32-layer GQA Qwen2 decoder."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_llava_onevision"), arch="llava_onevision")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`pdrop-eval demo` on a tiny random LLaVA and the bundled local tasks (plus --limit to stay fast):
    real lmms-eval runs of vanilla, PyramidDrop λ=0.5 and FastV. (folder, stdout); the checkpoint is
    the folder's sibling ``tiny-llava``."""
    import subprocess

    root = tmp_path_factory.mktemp("demo")
    checkpoint = make_tiny_model(root / "tiny-llava", arch="llava")
    out_dir = root / "out"
    command = ["pdrop-eval", "demo", "--pretrained", str(checkpoint), "--tasks", "pdrop_local,pdrop_local_mcq_ll", "--force-simple",
               "--only", "vanilla,pdrop-lambda0.5,fastv", "--out-dir", str(out_dir), "--limit", "2"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out_dir, completed.stdout


def hand_tflops(tokens_per_layer, hidden_size: int, intermediate_size: int, kv_size: int | None = None) -> float:
    """The paper's per-layer count 4·n·d² + 2·n²·d + 3·n·d·m summed over layers, its key and value
    projections narrowed to `kv_size` columns under grouped-query attention (2·n·d² + 2·n·d·kv), written
    out here on purpose: expected statistics must not come from the helper the code uses (pdrop_eval.flops)."""
    d, m = hidden_size, intermediate_size
    kv = d if kv_size is None else kv_size
    return sum(2 * n * d * d + 2 * n * d * kv + 2 * n * n * d + 3 * n * d * m for n in tokens_per_layer) / 1e12


def hand_kv_size(text_config) -> int:
    """Key/value projection width of a decoder config, by hand: key-value heads times head width."""
    return text_config.num_key_value_heads * (text_config.hidden_size // text_config.num_attention_heads)


def hand_image_tokens_per_layer(method: str, n: int) -> tuple[int, ...]:
    """Image tokens per layer of the 32-layer tiny models, by hand: PyramidDrop at 8/16/24 with λ=0.5,
    FastV K=2 R=0.5."""
    if method == "pyramid":
        return (n,) * 8 + (n // 2,) * 8 + (n // 4,) * 8 + (n // 8,) * 8
    return (n,) * 2 + (n - n // 2,) * 30
