"""Each framework's own prompt conventions for a line of model families (`pdrop_eval.framework_names`),
which the pdrop-eval models of that line follow, read from the framework's own model of the family:

* lmms-eval 0.7.3 ``qwen2_5_vl``: a system message ("You are a helpful assistant."), the images before
  the text (``<image>`` placeholders removed), pixels per image in [256·28², 1605632], and "\\n\\n" never
  a stop string; ``llava_onevision``: its ``qwen_1_5`` conversation, the images (``<image>``, joined by
  spaces, then a newline) first unless the context places them.
* VLMEvalKit (ms-vlmeval 0.0.20) ``Qwen2VLChat`` as its Qwen2.5-VL entries configure it: the dataset's
  own prompts (``use_custom_prompt=False``), message items in order, the checkpoint's chat template
  (its default system prompt), pixels per image in [1280·28², 16384·28²]; ``LLaVA_OneVision_HF``: the
  dataset's own prompts, one text item with ``<image>\\n`` where each picture stands, the checkpoint's
  chat template. LLaVA-1.5 / LLaVA-NeXT keep VLMEvalKit's LLaVA multiple-choice prompt.

Options those models take that change nothing here, or that select what these models do not do
(videos, sampling, other back ends), are refused by name; the pixel range and system prompt are taken
(`pdrop_eval.options.FAMILY_KEYS`). Deliberate differences: pictures are not re-encoded as JPEG on the
way (lmms-eval's ``qwen2_5_vl`` sends them through a JPEG data URL), the processor resizes them
(``qwen_vl_utils`` resizes first to the same grid), and decoding is greedy everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pdrop_eval.framework_names import LLAVA, LLAVA_ONEVISION, QWEN2_5_VL, ModelLine
from pdrop_eval.wrapper import PromptFormat

QWEN_PATCH_AREA = 28 * 28  # pixels of one Qwen2.5-VL image token (a 2x2 block of 14-pixel patches)

# lmms-eval's llava_onevision conversation "qwen_1_5" (LLaVA-NeXT's conversation.py, ChatML): a
# system turn, then each turn as "<|im_start|>role\n...<|im_end|>\n"; pictures as "<image>", several in
# a row joined by spaces, a newline before the text.
QWEN_1_5_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>"
    "{% if loop.nextitem is defined and loop.nextitem['type'] == 'image' %}{{ ' ' }}{% else %}{{ '\\n' }}{% endif %}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Convention:
    """How one framework's own model of a line builds prompts and what it takes."""

    follows: str  # the framework's own model, for messages: "lmms-eval's qwen2_5_vl model"
    prompt_format: PromptFormat = PromptFormat()
    family_defaults: dict = field(default_factory=dict)  # FAMILY_KEYS taken, with that model's defaults
    foreign_options: tuple[str, ...] = ()  # that model's options these models refuse ...
    foreign_reason: str = ""  # ... and why
    # lmms-eval: the simple path removes <image> from the context and puts the pictures first
    images_first: bool = False
    ignored_stop_strings: tuple[str, ...] = ()  # the task's stop strings that model drops
    # VLMEvalKit: multiple-choice rows get VLMEvalKit's LLaVA prompt (else every row the dataset's own)
    llava_multiple_choice: bool = False
    text_joiner: str | None = None  # adjacent texts of a message joined with this (None: kept apart)

    def refuse_foreign_options(self, options: dict, owner: str) -> None:
        foreign = sorted(set(options) & set(self.foreign_options))
        if foreign:
            raise ValueError(f"{owner}: {foreign} are options of {self.follows} that {owner} does not take: {self.foreign_reason}")


LMMS_CONVENTIONS: dict[ModelLine, Convention] = {
    LLAVA: Convention("lmms-eval's llava_hf model"),
    QWEN2_5_VL: Convention(
        "lmms-eval's qwen2_5_vl model",
        family_defaults={"min_pixels": 256 * QWEN_PATCH_AREA, "max_pixels": 1605632, "system_prompt": "You are a helpful assistant."},
        foreign_options=("interleave_visuals", "reasoning_prompt", "max_num_frames", "fps", "use_cache"),
        foreign_reason="pictures always go before the text, the prompt is the task's, videos are not taken, the KV cache is always used",
        images_first=True,
        ignored_stop_strings=("\n\n",),
    ),
    LLAVA_ONEVISION: Convention(
        "lmms-eval's llava_onevision model",
        prompt_format=PromptFormat(chat_template=QWEN_1_5_CHAT_TEMPLATE),
        foreign_options=("conv_template", "model_name", "truncation", "truncate_context", "customized_config", "max_frames_num",
                         "mm_spatial_pool_stride", "mm_spatial_pool_mode", "token_strategy", "video_decode_backend", "use_cache"),
        foreign_reason="the conversation is always qwen_1_5, the checkpoint is a transformers one read as saved, videos are not taken",
    ),
}

VLMEVAL_FOREIGN_REASON = "give the checkpoint as pretrained=; decoding is greedy; the prompts are the dataset's own; videos are not taken"
VLMEVAL_CONVENTIONS: dict[ModelLine, Convention] = {
    LLAVA: Convention("VLMEvalKit's LLaVA models", llava_multiple_choice=True, text_joiner="\n"),
    QWEN2_5_VL: Convention(
        "VLMEvalKit's Qwen2VLChat",
        family_defaults={"min_pixels": 1280 * QWEN_PATCH_AREA, "max_pixels": 16384 * QWEN_PATCH_AREA, "system_prompt": None},
        foreign_options=("model_path", "total_pixels", "top_p", "top_k", "temperature", "repetition_penalty", "do_sample",
                         "use_custom_prompt", "post_process", "verbose", "use_audio_in_video", "fps", "nframe", "use_vllm", "use_lmdeploy"),
        foreign_reason=VLMEVAL_FOREIGN_REASON,
    ),
    LLAVA_ONEVISION: Convention(
        "VLMEvalKit's LLaVA_OneVision_HF",
        prompt_format=PromptFormat(inline_image_text="<image>\n"),
        foreign_options=("model_path", "video_kwargs", "nframe"),
        foreign_reason=VLMEVAL_FOREIGN_REASON,
    ),
}
