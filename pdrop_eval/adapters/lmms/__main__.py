"""`python -m pdrop_eval.adapters.lmms ARGS`: lmms-eval's own command line (`lmms-eval ARGS`) on a CPU-only
torch next to PyPI's CUDA build of torchvision.

lmms-eval imports torchvision before it loads any plugin, and there that build dies with
`RuntimeError: operator torchvision::nms does not exist`; `pdrop_eval.compat` defines the missing
operator schemas first, so no start-up shim on PYTHONPATH is needed, also in accelerate's workers
(`python -m accelerate.commands.launch ... -m pdrop_eval.adapters.lmms ARGS`)."""

import runpy

from pdrop_eval.compat import ensure_torchvision_importable

ensure_torchvision_importable()
runpy.run_module("lmms_eval", run_name="__main__", alter_sys=True)
