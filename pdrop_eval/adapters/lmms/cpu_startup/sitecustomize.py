"""Put this folder on PYTHONPATH to run lmms-eval with a CUDA-only torchvision next to a CPU torch.

lmms-eval imports transformers' image utilities, and with them torchvision, before it loads any
plugin model, so the shim in `pdrop_eval.compat` must run at interpreter start. Python imports
`sitecustomize` at start-up in every process, accelerate's workers included (they inherit PYTHONPATH).
"""

from pdrop_eval.compat import ensure_torchvision_importable

ensure_torchvision_importable()
