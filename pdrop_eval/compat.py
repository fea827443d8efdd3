"""Make a CUDA-only torchvision importable next to a CPU-only torch.

PyPI only ships CUDA builds of torchvision. With a CPU torch its C extension fails to load, and
``import torchvision`` then dies registering fake kernels for ``torchvision::nms``/``qnms``, ops whose
schemas the extension would have defined. transformers (image processors), lmms-eval and VLMEvalKit
all import torchvision, so we define those two schemas ourselves before the import. None of the
detection ops are used by this project; calling one still fails loudly inside torchvision.

`import_vlmeval` also undoes what importing VLMEvalKit does to autograd.
"""

import torch

_shim_library = None  # keeps the schema definitions alive for the life of the process


def ensure_torchvision_importable() -> None:
    global _shim_library
    try:
        import torchvision  # noqa: F401
        return
    except ModuleNotFoundError:
        return  # not installed: transformers uses its PIL image processors
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
    _shim_library = torch.library.Library("torchvision", "DEF")
    _shim_library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _shim_library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401,F811


def import_vlmeval() -> None:
    """Import the VLMEvalKit package (torchvision made importable first) without its side effect:
    importing it turns autograd off process-wide, which would silently break training and gradient
    code that runs later in the same process. Import vlmeval's modules after calling this."""
    ensure_torchvision_importable()
    grad_enabled = torch.is_grad_enabled()
    import vlmeval  # noqa: F401

    torch.set_grad_enabled(grad_enabled)
