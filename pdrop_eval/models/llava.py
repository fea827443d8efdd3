"""LLaVA-1.5 (HF model_type "llava"): a CLIP vision tower, a projector, and a LLaMA-style decoder that
reads one image as a fixed grid of patch tokens. `LlavaNextFamily` builds on it."""

from __future__ import annotations

from collections.abc import Sequence

from pdrop_eval.models.family import ROPE_1D, ModelFamily, config_value, transformers_class
from pdrop_eval.models.layout import Frame, TokenRegion, cell_boxes, resize_and_crop

# the CLIP image statistics the llava-hf processors normalize with
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


class LlavaFamily(ModelFamily):
    name = "llava"
    title = "LLaVA-1.5"
    model_class_name = "LlavaForConditionalGeneration"
    processor_class_name = "LlavaProcessor"
    config_class_name = "LlavaConfig"
    image_processor_class_name = "CLIPImageProcessor"  # of the tiny checkpoints
    position_scheme = ROPE_1D
    language_model_path = "model.language_model"
    vision_tower_path = "model.vision_tower"
    input_ids_module_path = "model"  # LlavaModel: it merges the image features and hands the LM embeddings only
    freezable_part_paths = {"vision_tower": vision_tower_path, "projector": "model.multi_modal_projector"}

    def image_token_ids(self, config) -> tuple[int, ...]:
        # image_token_index is the stored name (config.json's); the config object maps image_token_id onto it
        try:
            return (config_value(config, "image_token_index"),)
        except KeyError:
            raise ValueError(f"the {self.title} config has no image_token_index, so its image tokens cannot be found") from None

    def apply_rotary(self, states, cos, sin):
        from transformers.models.llama.modeling_llama import rotate_half  # every LLaVA decoder rotates as LLaMA

        return states * cos + rotate_half(states) * sin

    # ----- image tokens ---------------------------------------------------------------------------
    def image_tokens_per_image(self, config, image_size: tuple[int, int]) -> int:
        return self._tile_tokens(config)  # every picture is resized to the tower's one image size

    def max_image_tokens(self, config) -> tuple[int, bool]:
        return self._tile_tokens(config), False

    def _tile_tokens(self, config) -> int:
        """Tokens of one vision-tower image: its patches, plus the CLS token that the feature strategy
        "full" keeps ("default" removes it)."""
        side = self.patches_per_side(config)
        return side * side + (config_value(config, "vision_feature_select_strategy", "default") == "full")

    @classmethod
    def patches_per_side(cls, config) -> int:
        """The side of one vision-tower image's square patch grid (24 for 336-pixel tiles of 14-pixel patches)."""
        return cls._vision_field(config, "image_size") // cls._vision_field(config, "patch_size")

    @staticmethod
    def _vision_field(config, key: str) -> int:
        try:
            return config_value(config_value(config, "vision_config", None) or {}, key)
        except KeyError:
            raise ValueError(f"the config's vision_config lacks {key!r}, so its number of image tokens is unknown") from None

    # ----- token-to-pixel layout ------------------------------------------------------------------
    def image_token_regions(self, processor, image_sizes: Sequence[tuple[int, int]], pad_to_square: bool) -> list[TokenRegion]:
        """Optional pad to a square (`pad_to_square`, or `LlavaImageProcessor`'s ``do_pad``), resize,
        center crop, then the vision tower's patch grid row by row (after the CLS token when the
        feature strategy keeps it)."""
        extra = self._extra_tokens(processor, pad_to_square)
        regions = []
        for image, size in enumerate(image_sizes):
            regions += self._image_regions(processor, image, size, extra, pad_to_square)
        return regions

    def _extra_tokens(self, processor, pad_to_square: bool) -> int:
        """Non-spatial vision tokens per image (CLS) that the processor counts and the model keeps; a
        processor or padding the layout cannot follow is refused here, before any image."""
        if not processor.patch_size:
            raise ValueError("token map: the processor has no patch_size, so its image token count is unknown")
        extra = processor.num_additional_image_tokens - (processor.vision_feature_select_strategy == "default")
        if extra < 0:
            raise ValueError(
                f"token map: vision_feature_select_strategy='default' removes a CLS token but the processor's "
                f"num_additional_image_tokens is {processor.num_additional_image_tokens}"
            )
        return extra

    def _image_regions(self, processor, image: int, size: tuple[int, int], extra: int, pad_to_square: bool) -> list[TokenRegion]:
        image_processor = processor.image_processor
        frame = Frame(*size)
        processor_pads = getattr(image_processor, "do_pad", False)
        if processor_pads and not hasattr(image_processor, "pad_to_square"):
            raise ValueError(f"token map: do_pad of {type(image_processor).__name__} is not supported (only LlavaImageProcessor's pad to square)")
        if pad_to_square or processor_pads:  # a square stays as it is, so padding twice is padding once
            side = max(size)
            frame = frame.crop(-((side - size[0]) // 2), -((side - size[1]) // 2), side, side)
        frame = resize_and_crop(frame, image_processor)
        regions = [TokenRegion(image, "extra", None)] * extra
        return regions + [TokenRegion(image, "patch", box) for row in cell_boxes(frame, processor.patch_size, size) for box in row]

    # ----- tiny checkpoints -----------------------------------------------------------------------
    def build_tiny_model(self, spec, text_config, tokenizer, chat_template: str) -> tuple:
        from transformers import CLIPVisionConfig

        vision_config = CLIPVisionConfig(**self._tiny_vision_settings(spec), projection_dim=spec.vision_hidden_size)
        config = transformers_class(self.config_class_name)(
            vision_config=vision_config,
            text_config=text_config,
            image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
            vision_feature_layer=spec.vision_feature_layer,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
            **self._anyres_settings(spec),
        )
        model = self.model_class()(config)
        image_processor = transformers_class(self.image_processor_class_name)(
            size={"shortest_edge": spec.image_size},
            crop_size={"height": spec.image_size, "width": spec.image_size},
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
            **self._anyres_settings(spec),
        )
        processor = self.processor_class()(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=spec.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # the CLS token the "default" strategy removes
            chat_template=chat_template,
        )
        return model, processor

    @staticmethod
    def _tiny_vision_settings(spec) -> dict:
        """The vision tower config's widths and geometry for a tiny checkpoint of `spec` (CLIP's and SigLIP's alike)."""
        return {
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": 2 * spec.vision_hidden_size,
            "num_hidden_layers": spec.vision_layers,
            "num_attention_heads": 2,
            "image_size": spec.image_size,
            "patch_size": spec.patch_size,
        }

    def _anyres_settings(self, spec) -> dict:
        """Settings of the tiny checkpoint's config and image processor beyond LLaVA-1.5's: none."""
        return {}
