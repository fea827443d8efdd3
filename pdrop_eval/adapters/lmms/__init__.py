"""lmms-eval registration of the models in `pdrop_eval.adapters.lmms.models`: one per drop method and
line of model families, named as `pdrop_eval.framework_names` says.

`manifests` is the target of the `lmms_eval.models` entry point (pyproject.toml). lmms-eval calls it
while `lmms_eval.models` initialises, for every run whatever the model, so this module imports
nothing heavy (no torch, no transformers): the classes are named by path and imported only when
lmms-eval resolves one of these models.
"""


def manifests() -> list:
    from lmms_eval.models.registry_v2 import ModelManifest

    from pdrop_eval.framework_names import ALL_NAMES

    return [
        ModelManifest(
            model_id=names.model,
            simple_class_path=f"{__name__}.models.{names.lmms_class}",
            chat_class_path=f"{__name__}.models.{names.lmms_chat_class}",
        )
        for names in ALL_NAMES
    ]
