"""Model options, resolved in one place for both framework adapters.

lmms-eval (``--model_args``) and VLMEvalKit (``--model-args``, a ``--config`` entry) hand a model flat
``key=value`` options; `resolve_model_options` turns them into `ModelOptions`: the checkpoint (given,
or from a model preset) and its architecture, the drop config (the method's keys over an optional
drop preset, or a token / TFLOPs budget solved for the checkpoint), dtype, device, placement, attention backend and the cap on generated tokens. Every
bad option is a ValueError naming it (a missing checkpoint: FileNotFoundError), before any weights
load. No framework is imported here; torch only for the default device, transformers only to read
the checkpoint's config.json.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from pdrop_eval import presets
from pdrop_eval.engine.config import METHODS, OPTION_KEYS, DropConfig
from pdrop_eval.models import family_of_config

MODEL_PRESET_KEYS = ("pretrained", "dtype", "device_map", "attn_implementation")  # what a model preset may set
MODEL_KEYS = (*MODEL_PRESET_KEYS, "model_preset", "device", "max_new_tokens", "drop_preset", "pad_to_square", "save_kept")
# budget=128 (or 25%, of N) instead of λ / R: `pdrop_eval.budget` solves it for the checkpoint
BUDGET_KEYS = ("budget", "budget_convention", "budget_image_tokens")
# take budget=...: a method solves it for its own schedule, the random control for the schedule it copies
BUDGET_METHODS = tuple(name for name, spec in METHODS.items() if spec.budget_method({}))
# lmms-eval's LLaVA adapters generate up to this many tokens when a task sets none; VLMEvalKit's
# allow more, but benchmark answers need far less, so it is the default cap there too.
DEFAULT_MAX_NEW_TOKENS = 1024
# Options of one model family, each taken only where a framework's convention for the family has it
# (the adapters pass their defaults): Qwen2.5-VL's pixel range per image and system prompt.
FAMILY_KEYS = ("min_pixels", "max_pixels", "system_prompt")
PROCESSOR_KEYS = ("min_pixels", "max_pixels")  # set on the processor as it loads (a convention's defaults give both)
PLACEMENT_FIELDS = ("device", "device_map")  # where the model runs, not what it predicts
RECORDING_FIELDS = ("save_kept",)  # what the statistics file stores, not what the model predicts


@dataclass(frozen=True)
class ModelOptions:
    pretrained: str  # checkpoint folder or HF Hub id
    architecture: str  # the model family's name ("llava", "llava_next", ...), from the checkpoint's config
    drop: DropConfig
    dtype: str = "auto"
    device: str = "cpu"
    device_map: str | None = None  # for from_pretrained (e.g. "auto"); then `device` is not used
    attn_implementation: str | None = None
    max_new_tokens: int | None = None  # cap on generated tokens; None: the task's own
    pad_to_square: bool = False  # LLaVA-1.5 pictures padded to a square first (see resolve_pad_to_square)
    save_kept: bool = False  # store each document's kept image-token indices in the statistics file (large)
    min_pixels: int | None = None  # FAMILY_KEYS: None where the model's family and framework take none
    max_pixels: int | None = None
    system_prompt: str | None = None

    def prediction_settings(self) -> dict:
        """Every option that decides the predictions, as JSON values: all but where the model runs
        (PLACEMENT_FIELDS), what is recorded (RECORDING_FIELDS) and family options the model has not
        (so the settings of a LLaVA model read as before they existed). A work folder's predictions are
        reusable only under equal settings."""
        return {
            field.name: value.to_dict() if isinstance(value, DropConfig) else value
            for field in fields(self)
            if field.name not in PLACEMENT_FIELDS + RECORDING_FIELDS
            for value in [getattr(self, field.name)]
            if not (field.name in FAMILY_KEYS and value is None)
        }

    def processor_options(self) -> dict:
        """The processor's from_pretrained options: the pixel range as Qwen2.5-VL's image processor
        takes it (`size` edges; its min_pixels / max_pixels keywords are deprecated). The range comes
        whole, from the framework's defaults where an end is not given."""
        if self.min_pixels is None:
            return {}
        return {"size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}}


def resolve_model_options(
    method: str,
    options: dict,
    *,
    owner: str,
    default_model_preset: str | None = None,
    default_max_new_tokens: int | None = None,
    family_defaults: dict | None = None,
    check_family=None,
) -> ModelOptions:
    """`options` of a model of drop method `method`; `owner` names the model in error messages.

    Keys: MODEL_KEYS, the method's drop options (`METHODS[method].keys`), for the methods that drop
    BUDGET_KEYS (`budget_drop`), and the FAMILY_KEYS in `family_defaults` (key -> the framework's
    default). Explicit keys override the model preset's and the drop preset's. `check_family(name)`
    refuses (ValueError) a checkpoint of a model family the model does not take, before a budget reads it.
    """
    spec = METHODS[method]
    budget_keys = BUDGET_KEYS if method in BUDGET_METHODS else ()
    family_defaults = family_defaults or {}
    unknown = sorted(set(options) - set(MODEL_KEYS) - set(OPTION_KEYS) - set(budget_keys) - set(family_defaults))
    if unknown:
        raise ValueError(f"{owner}: unknown option(s) {unknown}; accepted: {sorted({*MODEL_KEYS, *spec.keys, *budget_keys, *family_defaults})}")
    family_options = resolve_family_options({**family_defaults, **{key: options[key] for key in family_defaults if key in options}}, owner)
    if "budget" in options:
        check_budget_options(method, options, owner=owner)
    else:
        drop = resolve_drop(method, options, owner=owner)

    model_preset = options.get("model_preset")
    if model_preset is None and options.get("pretrained") is None:
        model_preset = default_model_preset
    model_args = presets.resolve_model_args(model_preset, {key: options.get(key) for key in MODEL_PRESET_KEYS})
    extra = sorted(set(model_args) - set(MODEL_PRESET_KEYS))
    if extra:
        raise ValueError(f"{owner}: model preset {model_preset!r} sets {extra}; a model preset may set {list(MODEL_PRESET_KEYS)}")
    pretrained = model_args.get("pretrained")
    if not pretrained:
        raise ValueError(f"{owner}: give pretrained=<checkpoint folder or HF Hub id> or model_preset=<name>")
    if not isinstance(pretrained, (str, Path)):
        raise TypeError(f"{owner}: pretrained must be a checkpoint folder or HF Hub id, got {pretrained!r}")

    max_new_tokens = options.get("max_new_tokens", default_max_new_tokens)
    if max_new_tokens is not None:
        max_new_tokens = positive_int(f"{owner}: max_new_tokens", max_new_tokens)
    pad_to_square = options.get("pad_to_square")
    if pad_to_square is not None:
        pad_to_square = boolean(f"{owner}: pad_to_square", pad_to_square)
    architecture = checkpoint_architecture(str(pretrained))  # the last checks: they read the checkpoint
    if check_family is not None:
        check_family(architecture)  # its message names the model
    try:
        pad_to_square = resolve_pad_to_square(architecture, pad_to_square)
    except ValueError as error:
        raise ValueError(f"{owner}: {error}") from None
    if "budget" in options:
        drop = budget_drop(method, options, load_config(str(pretrained)).to_dict(), owner=owner)
    return ModelOptions(
        pretrained=str(pretrained),
        architecture=architecture,
        drop=drop,
        dtype=model_args.get("dtype", "auto"),
        device=options.get("device") or default_device(),
        device_map=model_args.get("device_map"),
        attn_implementation=model_args.get("attn_implementation"),
        max_new_tokens=max_new_tokens,
        pad_to_square=pad_to_square,
        save_kept=boolean(f"{owner}: save_kept", options.get("save_kept", False)),
        **family_options,
    )


def resolve_family_options(values: dict, owner: str) -> dict:
    """FAMILY_KEYS `values` checked: pixel counts are positive integers, the smaller first; a system
    prompt is text."""
    resolved = {key: positive_int(f"{owner}: {key}", value) for key, value in values.items() if key in PROCESSOR_KEYS and value is not None}
    low, high = resolved.get("min_pixels"), resolved.get("max_pixels")
    if low is not None and high is not None and low > high:
        raise ValueError(f"{owner}: min_pixels={low} exceeds max_pixels={high}")
    if values.get("system_prompt") is not None:
        resolved["system_prompt"] = str(values["system_prompt"])
    return resolved


def resolve_drop(method: str | None, options: dict, *, owner: str) -> DropConfig:
    """The drop config of a model of drop method `method`: its drop options in `options` (other keys
    are ignored) over the optional ``drop_preset``; budget keys without ``budget`` are refused. Also how
    the report reads lmms-eval's model_args. `method` None: the one the options (or the preset) name."""
    stray = sorted(set(options) & set(BUDGET_KEYS))
    if stray:
        raise ValueError(f"{owner}: bad drop settings: {stray} go with budget=..., which is not given")
    drop_preset = options.get("drop_preset")
    try:
        return DropConfig.from_args(
            {key: value for key, value in options.items() if key in OPTION_KEYS},
            method=method,
            preset=presets.drop_preset_args(drop_preset) if drop_preset else None,
        )
    except (ValueError, TypeError) as error:
        raise ValueError(f"{owner}: bad drop settings: {error}") from None


def resolve_drop_option(text: str, model, *, owner: str) -> DropConfig:
    """A command's ``--drop`` (show, train, flops): the `--model_args` drop keys (a method's options,
    ``drop_preset``, ``budget`` and its keys) with ``method=``, else the method the keys name;
    ``budget=...`` alone is PyramidDrop's. A budget is solved for `model`: a checkpoint (folder or Hub
    id) or the `ModelDims` a command counts with (flops: a preset's, or --image-tokens)."""
    from pdrop_eval.keyvalue import parse_key_values

    options = parse_key_values(text, f"{owner} key")
    method = options.pop("method", None)
    unknown = sorted(set(options) - set(OPTION_KEYS) - set(BUDGET_KEYS) - {"drop_preset"})
    if unknown:
        raise ValueError(f"{owner}: unknown key(s) {unknown}; it takes method and the --model_args drop keys {sorted({*OPTION_KEYS, *BUDGET_KEYS, 'drop_preset'})}")
    if "budget" not in options:
        return resolve_drop(method, options, owner=owner)
    if method is None:
        shape = {key: value for key, value in options.items() if key in OPTION_KEYS}
        method = resolve_drop(None, shape, owner=owner).method if shape else "pyramid"
    check_budget_options(method, options, owner=owner)
    return budget_drop(method, options, load_config(model).to_dict() if isinstance(model, str) else model, owner=owner)


def check_budget_options(method: str, options: dict, *, owner: str) -> None:
    """What a budget may come with: the schedule's shape (layer_list, fastv_k, position_mode, seed) of one
    method, valid as it would be without a budget; not the λ / R it solves for, nor a drop preset."""
    if method not in BUDGET_METHODS:
        raise ValueError(f"{owner}: bad drop settings: budget applies to the methods that drop ({', '.join(BUDGET_METHODS)}), not {METHODS[method].title}")
    drop_options = {key: value for key, value in options.items() if key in OPTION_KEYS}
    solved = sorted(set(drop_options) & set(METHODS[method].budget_keys))
    if solved or "drop_preset" in options:
        given = solved + (["drop_preset"] if "drop_preset" in options else [])
        raise ValueError(f"{owner}: bad drop settings: budget=... sets λ / R (or the kept count) itself; leave out {given} (the other options shape it)")
    # the shape as a config with the default λ / R: its values, and a random control's one schedule
    resolve_drop(method, drop_options, owner=owner)


def budget_drop(method: str, options: dict, model, *, owner: str) -> DropConfig:
    """The drop config for ``budget=...`` (`check_budget_options` passed): the method's schedule closest
    to the budget (`pdrop_eval.budget`), in the convention ``budget_convention`` (avg_layer, the
    default; after_drop; tflops). `model` is a checkpoint's HF config as a dict (solved at its N, or at
    ``budget_image_tokens``, `checked_image_tokens`) or the `ModelDims` a command counts with. The random
    control takes a FastV schedule's counts when fastv_k is given, else a PyramidDrop one's."""
    from pdrop_eval import budget

    values = {OPTION_KEYS[key][0]: OPTION_KEYS[key][1](value) for key, value in options.items() if key in OPTION_KEYS}
    schedule_method = METHODS[method].budget_method(values)
    shape = {name: value for name, value in values.items() if name != "seed"}  # the random control's seed is not the schedule's
    convention = options.get("budget_convention", "avg_layer")
    try:
        if isinstance(model, dict):
            image_tokens = checked_image_tokens(model, options.get("budget_image_tokens"), "budget_image_tokens")
            solution = budget.solve_for_checkpoint(options["budget"], model, schedule_method, convention=convention, image_tokens=image_tokens, **shape)
        elif "budget_image_tokens" in options:
            raise ValueError("budget_image_tokens: the N a budget counts with is the command's own (--image-tokens)")
        else:
            solution = budget.solve(options["budget"], model, schedule_method, convention=convention, **shape)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{owner}: bad drop settings: {error}") from None
    if method != "random":
        return solution.config
    return DropConfig.random(solution.config, seed=values.get("seed", 0))


def checked_image_tokens(model_config: dict, image_tokens, option: str) -> int | None:
    """`image_tokens`, the N a budget counts with (None: the checkpoint's own), given as `option`, for a
    checkpoint of HF config `model_config`: one no image exceeds. Where N is the same for every image
    (LLaVA-1.5) any other N would solve a schedule that the run then applies at the real N."""
    from pdrop_eval.flops import image_tokens_from_config

    if image_tokens is None:
        return None
    number = positive_int(option, image_tokens)
    largest, varies = image_tokens_from_config(model_config)
    if not varies and number != largest:
        raise ValueError(f"{option}={number}: this checkpoint has N={largest} image tokens for every image; leave it out")
    if number > largest:
        raise ValueError(f"{option}={number}: no image of this checkpoint has more than N={largest} image tokens")
    return number


def resolve_pad_to_square(architecture: str, pad_to_square: bool | None) -> bool:
    """LLaVA-1.5 as the paper evaluated it pads every image to a square with the mean colour before the
    CLIP processor (the original repo's image_aspect_ratio="pad"); llava-hf's processors resize and
    center-crop instead, cutting off the sides of a non-square picture. Default: pad for LLaVA-1.5.
    LLaVA-NeXT's anyres tiling handles the aspect ratio itself, so padding is refused there."""
    if pad_to_square is None:
        return architecture == "llava"
    if pad_to_square and architecture != "llava":
        raise ValueError(f"pad_to_square applies to LLaVA-1.5 checkpoints only; this one is {architecture!r} (anyres keeps the aspect ratio)")
    return bool(pad_to_square)


def boolean(name: str, value) -> bool:
    """`value` (a bool or true/false/1/0 text) as a bool; `name` is the option in the error message."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return text in ("true", "1")


def positive_int(name: str, value) -> int:
    """`value` (an int or its text) as a positive int; `name` is the option in the error message."""
    try:
        number = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_config(pretrained: str):
    """The checkpoint's config (config.json only, no weights); a missing one is a FileNotFoundError."""
    from pdrop_eval.compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # AutoConfig's model-type lookup may import torchvision
    from transformers import AutoConfig

    path = Path(pretrained).expanduser()
    if str(pretrained).startswith((".", "/", "~")) and not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {pretrained} does not exist")
    try:
        return AutoConfig.from_pretrained(pretrained)
    except OSError as error:
        raise FileNotFoundError(f"cannot load checkpoint {pretrained!r}: {error}") from None


def checkpoint_architecture(pretrained: str) -> str:
    """The checkpoint's model family (its HF model_type: "llava", "llava_next"; see `pdrop_eval.models`),
    read from its config; a model of no supported family is refused."""
    return family_of_config(load_config(pretrained), source=pretrained).name
