"""Qwen2.5-VL (HF model_type "qwen2_5_vl"): a ViT with window attention whose patch features are
merged 2x2 into one token each, and a Qwen2 decoder with 3-D M-RoPE positions.

An image is resized to multiples of patch·merge pixels (28 for the released checkpoints) within the
image processor's pixel limits (`smart_resize`), keeping its aspect ratio, so N = (H/28)·(W/28) varies
per image. Its tokens are a run of ``<|image_pad|>`` between ``<|vision_start|>`` and
``<|vision_end|>``, one per merged block, row by row. Each token's position is (t, h, w)
(`get_rope_index`): text tokens carry the same number three times; the decoder's rotary embedding
composes the three rows into one (cos, sin) by the config's ``mrope_section``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pdrop_eval.models.family import MROPE_3D, ModelFamily, config_value, transformers_class
from pdrop_eval.models.layout import Frame, TokenRegion, cell_boxes

# The pixel limits of the released checkpoints' image processor (Qwen/Qwen2.5-VL-*-Instruct,
# preprocessor_config.json): config.json does not hold them, so N from a config uses these unless the
# config records its own (`min_pixels` / `max_pixels`, as the tiny checkpoints do).
RELEASED_MIN_PIXELS, RELEASED_MAX_PIXELS = 56 * 56, 28 * 28 * 16384
# Qwen's chat format (the released template without its default system turn), for the tiny checkpoints.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# token name on the tokenizer (as the processor reads it) -> the token
SPECIAL_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
TURN_TOKENS = ("<|im_start|>", "<|im_end|>")


class Qwen2_5_VLFamily(ModelFamily):
    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    processor_class_name = "Qwen2_5_VLProcessor"
    position_scheme = MROPE_3D
    language_model_path = "model.language_model"
    vision_tower_path = "model.visual"
    input_ids_module_path = "model"  # Qwen2_5_VLModel: it merges the vision features and computes the 3-D positions
    freezable_part_paths = {"vision_tower": vision_tower_path, "projector": "model.visual.merger"}

    def image_token_ids(self, config) -> tuple[int, ...]:
        try:
            return (config_value(config, "image_token_id"), config_value(config, "video_token_id"))
        except KeyError as error:
            raise ValueError(f"the {self.title} config has no {error.args[0]}, so its image tokens cannot be found") from None

    def apply_rotary(self, states, cos, sin):
        # The decoder's rotary embedding already composed the (t, h, w) rows by mrope_section into one
        # (cos, sin); its attention then rotates as LLaMA does, with this module's rotate_half.
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import rotate_half

        return states * cos + rotate_half(states) * sin

    # ----- image tokens ---------------------------------------------------------------------------
    def image_tokens_per_image(self, config, image_size: tuple[int, int]) -> int:
        width, height = self.resized_size(config, image_size)
        token = self.token_pixels(config)
        return (width // token) * (height // token)

    def max_image_tokens(self, config) -> tuple[int, bool]:
        """The most merged tokens the pixel limit allows (16384 for the released processor's 12845056 pixels)."""
        return self._pixel_limits(config)[1] // self.token_pixels(config) ** 2, True

    def resized_size(self, config, image_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) the image processor resizes a picture of `image_size` to (`smart_resize`)."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        min_pixels, max_pixels = self._pixel_limits(config)
        width, height = image_size
        resized_height, resized_width = smart_resize(height, width, factor=self.token_pixels(config), min_pixels=min_pixels, max_pixels=max_pixels)
        return resized_width, resized_height

    @staticmethod
    def token_pixels(config) -> int:
        """The side in resized pixels of the square one image token shows: patch size x spatial merge (28)."""
        vision = config_value(config, "vision_config", None) or {}
        try:
            return config_value(vision, "patch_size") * config_value(vision, "spatial_merge_size")
        except KeyError as error:
            raise ValueError(f"the config's vision_config lacks {error.args[0]!r}, so its number of image tokens is unknown") from None

    @staticmethod
    def _pixel_limits(config) -> tuple[int, int]:
        return config_value(config, "min_pixels", RELEASED_MIN_PIXELS), config_value(config, "max_pixels", RELEASED_MAX_PIXELS)

    # ----- token-to-pixel layout ------------------------------------------------------------------
    def image_token_regions(self, processor, image_sizes: Sequence[tuple[int, int]], pad_to_square: bool) -> list[TokenRegion]:
        """Each picture resized as its image processor resizes it, then the merged token grid row by row."""
        if pad_to_square:
            raise ValueError("token map: pad_to_square applies to LLaVA-1.5 only (Qwen2.5-VL keeps the aspect ratio)")
        image_processor = processor.image_processor
        limits = {"min_pixels": image_processor.size["shortest_edge"], "max_pixels": image_processor.size["longest_edge"]}
        geometry = {"vision_config": {"patch_size": image_processor.patch_size, "spatial_merge_size": image_processor.merge_size}, **limits}
        token = self.token_pixels(geometry)
        regions = []
        for image, size in enumerate(image_sizes):
            frame = Frame(*size).resize(*self.resized_size(geometry, size))
            regions += [TokenRegion(image, "patch", box) for row in cell_boxes(frame, token, size) for box in row]
        return regions

    # ----- tiny checkpoints -----------------------------------------------------------------------
    def build_tiny_model(self, spec, text_config, tokenizer, chat_template: str) -> tuple:
        """Qwen2.5-VL's own classes at toy size. Geometry from `spec`: one token shows `spec.patch_size`
        pixels (patches of half that, merged 2x2), so the synth preset's token is one pdrop_synth cell;
        the tower runs the blocks LLaVA's feature layer would have run (none for synth: each token is
        its own cell's patch embeddings, merged); pixel limits from 2x2 tokens (as the released 56x56)
        to the largest anyres resolution. The decoder is Qwen2.5-VL's (Qwen2 with M-RoPE) at the widths
        of `text_config`, whatever its class; the chat template is Qwen's (`chat_template` is LLaVA's)."""
        tokenizer.add_special_tokens({"additional_special_tokens": [*SPECIAL_TOKENS.values(), *TURN_TOKENS]})
        for name, token in SPECIAL_TOKENS.items():
            setattr(tokenizer, name, token)  # the processor reads them from the tokenizer
        tokenizer.eos_token = TURN_TOKENS[1]  # an answer ends its turn, as in Qwen's generation config
        token_pixels, depth = spec.patch_size, spec.vision_layers + spec.vision_feature_layer + 1
        limits = {"min_pixels": (2 * token_pixels) ** 2, "max_pixels": max(height * width for height, width in spec.grid_pinpoints)}
        ids = {f"{name}_id": tokenizer.convert_tokens_to_ids(token) for name, token in SPECIAL_TOKENS.items()}
        head_dim = spec.hidden_size // spec.num_attention_heads
        temporal = head_dim // 8  # the released sections' 16:24:24 of head_dim / 2 = 64
        config = transformers_class("Qwen2_5_VLConfig")(
            text_config=transformers_class("Qwen2_5_VLTextConfig")(
                vocab_size=len(tokenizer),
                hidden_size=text_config.hidden_size,
                intermediate_size=text_config.intermediate_size,
                num_hidden_layers=text_config.num_hidden_layers,
                num_attention_heads=text_config.num_attention_heads,
                num_key_value_heads=text_config.num_key_value_heads,
                max_position_embeddings=text_config.max_position_embeddings,
                initializer_range=text_config.initializer_range,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": text_config.rope_parameters["rope_theta"],
                    "mrope_section": [temporal, (head_dim // 2 - temporal) // 2, head_dim // 2 - temporal - (head_dim // 2 - temporal) // 2],
                },
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            ),
            vision_config=transformers_class("Qwen2_5_VLVisionConfig")(
                depth=depth,
                hidden_size=spec.vision_hidden_size,
                intermediate_size=2 * spec.vision_hidden_size,
                num_heads=2,
                patch_size=token_pixels // 2,
                spatial_merge_size=2,
                window_size=2 * token_pixels,  # windows of 2x2 tokens
                fullatt_block_indexes=[depth - 1] if depth else [],
                out_hidden_size=text_config.hidden_size,
                initializer_range=text_config.initializer_range,
            ),
            tie_word_embeddings=False,
            **ids,
            **limits,
        )
        model = self.model_class()(config)
        geometry = {"patch_size": token_pixels // 2, "merge_size": 2, "size": {"shortest_edge": limits["min_pixels"], "longest_edge": limits["max_pixels"]}}
        processor = self.processor_class()(
            image_processor=transformers_class("Qwen2VLImageProcessor")(**geometry),
            video_processor=transformers_class("Qwen2VLVideoProcessor")(**geometry),
            tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE,
        )
        return model, processor
