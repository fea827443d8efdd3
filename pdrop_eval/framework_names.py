"""What each drop method is called in the evaluation frameworks: one model name for lmms-eval and
VLMEvalKit, the adapter classes behind it, and the checkpoint a VLMEvalKit model loads by default.

Plain data: lmms-eval's model listing, the report (which reads these names back from results files)
and the pipeline import it without loading a framework."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameworkNames:
    method: str  # DropConfig.method (pdrop_eval.engine.methods.METHODS)
    model: str  # model name in lmms-eval (--model) and in VLMEvalKit (--model)
    lmms_class: str  # class in pdrop_eval.adapters.lmms.models (simple request path; see lmms_chat_class)
    vlmeval_class: str  # class in pdrop_eval.adapters.vlmeval, also registered in vlmeval.vlm
    default_model_preset: str  # checkpoint of a VLMEvalKit model given neither pretrained nor model_preset

    @property
    def lmms_chat_class(self) -> str:
        return self.lmms_class + "Chat"


FRAMEWORK_NAMES: dict[str, FrameworkNames] = {
    names.method: names
    for names in (
        FrameworkNames("none", "llava_next_vanilla", "LlavaNextVanilla", "LLaVAVanilla", "llava-next-7b"),
        FrameworkNames("fastv", "llava_fastv", "LlavaFastV", "LLaVAFastV", "llava-1.5-7b"),  # FastV's own evaluation model
        FrameworkNames("pyramid", "llava_next_pdrop", "LlavaNextPDrop", "LLaVAPyramidDrop", "llava-next-7b"),
        FrameworkNames("random", "llava_random_drop", "LlavaRandomDrop", "LLaVARandomDrop", "llava-next-7b"),
        FrameworkNames("visionzip", "llava_visionzip", "LlavaVisionZip", "LLaVAVisionZip", "llava-1.5-7b"),  # LLaVA-NeXT: per crop
        FrameworkNames("pool", "llava_pool", "LlavaPool", "LLaVAPool", "llava-1.5-7b"),  # LLaVA-NeXT: base tile and grid
        FrameworkNames("dart", "llava_dart", "LlavaDart", "LLaVADart", "llava-1.5-7b"),  # DART's presets are LLaVA-1.5's
        FrameworkNames("sparsevlm", "llava_sparsevlm", "LlavaSparseVLM", "LLaVASparseVLM", "llava-1.5-7b"),  # LLaVA-1.5 only
    )
}
METHOD_OF_MODEL = {names.model: method for method, names in FRAMEWORK_NAMES.items()}  # pdrop-eval's framework models
