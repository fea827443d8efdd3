"""lmms-eval registration of the models in `pdrop_eval.adapters.lmms.models`.

`manifests` is the target of the `lmms_eval.models` entry point (pyproject.toml). lmms-eval calls it
while `lmms_eval.models` initialises, so this module imports nothing heavy: the classes are named by
path and imported only when lmms-eval resolves a model.
"""

# lmms-eval name -> simple class in .models; the chat class is the same name + "Chat".
MODEL_CLASSES = {
    "llava_next_pdrop": "LlavaNextPDrop",
    "llava_fastv": "LlavaFastV",
    "llava_next_vanilla": "LlavaNextVanilla",
}


def manifests() -> list:
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(
            model_id=model_id,
            simple_class_path=f"{__name__}.models.{class_name}",
            chat_class_path=f"{__name__}.models.{class_name}Chat",
        )
        for model_id, class_name in MODEL_CLASSES.items()
    ]
