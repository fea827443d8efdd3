"""What each drop method is called in the evaluation frameworks, per line of model families: the model
name in lmms-eval and in VLMEvalKit, the adapter classes behind it, and the checkpoint a VLMEvalKit
model loads by default.

The LLaVA-1.5 / LLaVA-NeXT names came first and are listed as they are; the names of the other lines
are made from each line's prefixes and the method's suffixes (`ModelLine`), each framework in its own
style (lmms-eval's ``qwen2_5_vl`` / ``llava_onevision`` models, VLMEvalKit's ``Qwen2.5-VL-7B-Instruct``
/ ``llava_onevision_qwen2_7b_ov``). A method without a rule for a family gets no name in its line.

Plain data: lmms-eval's model listing, the report (which reads these names back from results files)
and the pipeline import it without loading a framework."""

from __future__ import annotations

from dataclasses import dataclass

LMMS_EVAL = "lmms-eval"
VLMEVAL = "vlmeval"


@dataclass(frozen=True)
class ModelLine:
    """The checkpoints one set of framework models takes: families of one architecture and prompt style."""

    title: str  # as people call it, for messages: "Qwen2.5-VL"
    families: tuple[str, ...]  # the model families (HF model_type, pdrop_eval.models) its checkpoints belong to
    lmms_format: str  # lmms-eval model name, "{method}" standing for the method's snake-case suffix
    vlmeval_format: str  # VLMEvalKit model name, "{method}" (snake case) or "{Method}" (title case)
    class_prefix: str  # of the adapter classes: prefix + the method's class suffix
    methods: tuple[str, ...]  # the methods with a rule for these families (DropConfig.method)
    drop_defaults: tuple[tuple[str, str], ...] = ()  # drop options its models set unless given (key, value)


@dataclass(frozen=True)
class FrameworkNames:
    method: str  # DropConfig.method (pdrop_eval.engine.methods.METHODS)
    model: str  # model name in lmms-eval (--model)
    lmms_class: str  # class in pdrop_eval.adapters.lmms.models (simple request path; see lmms_chat_class)
    vlmeval_class: str  # class in pdrop_eval.adapters.vlmeval, also registered in vlmeval.vlm
    default_model_preset: str | None  # checkpoint of a VLMEvalKit model given neither pretrained nor model_preset
    vlmeval_model: str = ""  # model name in VLMEvalKit (--model); "" for the same as `model`
    line: ModelLine | None = None  # set by the module: the line these names belong to

    @property
    def lmms_chat_class(self) -> str:
        return self.lmms_class + "Chat"

    def framework_model(self, framework: str) -> str:
        """The model's name in `framework` (LMMS_EVAL or VLMEVAL)."""
        return self.vlmeval_model or self.model if framework == VLMEVAL else self.model


LLAVA = ModelLine("LLaVA-1.5 / LLaVA-NeXT", ("llava", "llava_next"), "", "", "", ())  # names listed below, not made
QWEN2_5_VL = ModelLine(
    "Qwen2.5-VL", ("qwen2_5_vl",), "qwen2_5_vl_{method}", "Qwen2.5-VL-{Method}", "Qwen2_5_VL",
    ("none", "fastv", "pyramid", "dart", "random"),  # VisionZip and the pooling control have no rule for M-RoPE grids
    drop_defaults=(("position_mode", "original"),),  # 3-D ids have no compact renumbering (the engine refuses it): kept tokens keep theirs
)
LLAVA_ONEVISION = ModelLine(
    "LLaVA-OneVision", ("llava_onevision",), "llava_onevision_{method}", "llava_onevision_{method}", "LlavaOnevision",
    ("none", "fastv", "pyramid", "dart", "pool", "random"),  # VisionZip needs a [CLS] token, which SigLIP lacks
)
MODEL_LINES = (LLAVA, QWEN2_5_VL, LLAVA_ONEVISION)

# method -> (snake-case suffix, title-case suffix, class suffix) of the made names
METHOD_SUFFIXES = {
    "none": ("vanilla", "Vanilla", "Vanilla"),
    "fastv": ("fastv", "FastV", "FastV"),
    "pyramid": ("pdrop", "PDrop", "PyramidDrop"),
    "dart": ("dart", "DART", "Dart"),
    "visionzip": ("visionzip", "VisionZip", "VisionZip"),
    "pool": ("pool", "Pool", "Pool"),
    "random": ("random_drop", "RandomDrop", "RandomDrop"),
}


def _made_names(line: ModelLine) -> tuple[FrameworkNames, ...]:
    names = []
    for method in line.methods:
        snake, title, class_suffix = METHOD_SUFFIXES[method]
        names.append(FrameworkNames(
            method, line.lmms_format.format(method=snake), line.class_prefix + class_suffix, line.class_prefix + class_suffix,
            None, line.vlmeval_format.format(method=snake, Method=title), line,
        ))
    return tuple(names)


# The LLaVA line, by method (its names are shared by lmms-eval and VLMEvalKit).
FRAMEWORK_NAMES: dict[str, FrameworkNames] = {
    names.method: names
    for names in (
        FrameworkNames("none", "llava_next_vanilla", "LlavaNextVanilla", "LLaVAVanilla", "llava-next-7b", line=LLAVA),
        FrameworkNames("fastv", "llava_fastv", "LlavaFastV", "LLaVAFastV", "llava-1.5-7b", line=LLAVA),  # FastV's own evaluation model
        FrameworkNames("pyramid", "llava_next_pdrop", "LlavaNextPDrop", "LLaVAPyramidDrop", "llava-next-7b", line=LLAVA),
        FrameworkNames("random", "llava_random_drop", "LlavaRandomDrop", "LLaVARandomDrop", "llava-next-7b", line=LLAVA),
        FrameworkNames("visionzip", "llava_visionzip", "LlavaVisionZip", "LLaVAVisionZip", "llava-1.5-7b", line=LLAVA),  # LLaVA-NeXT: per crop
        FrameworkNames("pool", "llava_pool", "LlavaPool", "LLaVAPool", "llava-1.5-7b", line=LLAVA),  # LLaVA-NeXT: base tile and grid
        FrameworkNames("dart", "llava_dart", "LlavaDart", "LLaVADart", "llava-1.5-7b", line=LLAVA),  # DART's presets are LLaVA-1.5's
        FrameworkNames("sparsevlm", "llava_sparsevlm", "LlavaSparseVLM", "LLaVASparseVLM", "llava-1.5-7b", line=LLAVA),  # its schedules are LLaVA-1.5's
    )
}
ALL_NAMES: tuple[FrameworkNames, ...] = (*FRAMEWORK_NAMES.values(), *(names for line in MODEL_LINES[1:] for names in _made_names(line)))
# every pdrop-eval framework model, by its name in either framework
NAMES_OF_MODEL = {name: names for names in ALL_NAMES for name in {names.model, names.framework_model(VLMEVAL)}}
METHOD_OF_MODEL = {name: names.method for name, names in NAMES_OF_MODEL.items()}


def model_drop_defaults(model: str) -> dict:
    """The drop options the framework model named `model` sets unless they are given: its line's
    defaults for the options its method takes (the adapters apply them, the report reads them back)."""
    from pdrop_eval.engine.config import METHODS

    names = NAMES_OF_MODEL[model]
    return {key: value for key, value in names.line.drop_defaults if key in METHODS[names.method].keys}


def line_of_family(family: str) -> ModelLine:
    """The line whose models take checkpoints of model family `family`."""
    for line in MODEL_LINES:
        if family in line.families:
            return line
    raise ValueError(f"no framework models take {family!r} checkpoints")


def names_for(method: str, family: str) -> FrameworkNames:
    """The framework names of `method` for checkpoints of `family`; a method without a rule there is an error."""
    line = line_of_family(family)
    for names in ALL_NAMES:
        if names.line is line and names.method == method:
            return names
    raise ValueError(f"method {method!r} has no framework model for {line.title} checkpoints")


def check_family(names: FrameworkNames, family: str, framework: str) -> None:
    """Refuse a checkpoint of model family `family` given to the model `names` of `framework` (LMMS_EVAL
    or VLMEVAL) when that model's line does not take it, naming the model to use instead."""
    from pdrop_eval.models import family_named

    if family in names.line.families:
        return
    model, title = names.framework_model(framework), family_named(family).title
    try:
        right = names_for(names.method, family)
    except ValueError:
        others = sorted(other.framework_model(framework) for other in ALL_NAMES if family in other.line.families)
        raise ValueError(
            f"{model} takes {names.line.title} checkpoints; this is a {title} checkpoint, and {names.method!r} "
            f"has no model for it (its models: {', '.join(others)})"
        ) from None
    use = f"--model {right.model}" if framework == LMMS_EVAL else f"--model {right.framework_model(framework)} (--config class {right.vlmeval_class})"
    raise ValueError(f"{model} takes {names.line.title} checkpoints; this is a {title} checkpoint: use {use}")
