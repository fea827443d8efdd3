"""LLaVA-OneVision (HF model_type "llava_onevision"): LLaVA-NeXT's anyres layout around a SigLIP tower
(no [CLS] token: a tile gives side² patch tokens, 729 for 384-pixel tiles of 14-pixel patches) and a
Qwen2 decoder with 1-D RoPE.

Per image alone in its prompt ("anyres_max_9", `LlavaOnevisionModel.pack_image_features`): the base tile's
side² tokens first, without a newline token; then the anyres grid as LLaVA-NeXT makes it (best grid
resolution, tiles joined, padded rows or columns removed). If that unpadded grid of R x C cells holds
more than 1.1² x 9 tiles' worth (ratio = sqrt(R·C / (9·side²)) > 1.1) it is bilinearly downsampled to
int(R // ratio) x int(C // ratio); then it is read row by row with one `image_newline` token closing
each row. The 9 is the config's `vision_aspect_ratio` ("anyres_max_<crops>"). So N depends on the
picture's size, and the newline tokens are part of it.

The newline tokens carry the image token id (the processor writes N ids, the model scatters the packed
features, newlines included, into them), so to the drop engine they are image tokens, as on LLaVA-NeXT:
PyramidDrop, FastV, DART and the random control rank and drop them with the patch tokens. VisionZip
(it ranks by the [CLS] token's attention, which SigLIP has not) and the pooling control (its rule covers
LLaVA-1.5's and LLaVA-NeXT's grids) refuse this family by name when applied.

Several images in one prompt: each is laid out as above when the processor gets them as a flat list
(what `pdrop_eval.wrapper` passes); given as one nested list (``images=[[a, b]]``) the processor and model
instead give each image its padded-to-square base tile and one newline token (side² + 1). N and the token
map here are the flat list's.
"""

from __future__ import annotations

import math

from pdrop_eval.models.family import config_value, transformers_class
from pdrop_eval.models.layout import size_dict
from pdrop_eval.models.llava_next import LlavaNextFamily

# the SigLIP image statistics the llava-hf OneVision processors normalize with
SIGLIP_MEAN = SIGLIP_STD = [0.5, 0.5, 0.5]
ANYRES_PREFIX = "anyres_max_"
DOWNSAMPLE_ABOVE = 1.1  # the grid is downsampled when its side ratio to the crop budget exceeds this
# The tiny checkpoints' crop budget: 2 tiles, so a 2x2-tile grid is downsampled (a real checkpoint's 9
# tiles would never be reached by the tiny grid resolutions).
TINY_VISION_ASPECT_RATIO = "anyres_max_2"
VIDEO_TOKEN = "<video>"
TURN_TOKENS = ("<|im_start|>", "<|im_end|>")
# The llava-hf OneVision conversation format: "<|im_start|>user <image>\nQuestion<|im_end|><|im_start|>assistant\n"
# (a turn's images first, then its texts, each on its own line).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ '\\n' + item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class LlavaOnevisionFamily(LlavaNextFamily):
    name = "llava_onevision"
    title = "LLaVA-OneVision"
    model_class_name = "LlavaOnevisionForConditionalGeneration"
    processor_class_name = "LlavaOnevisionProcessor"
    config_class_name = "LlavaOnevisionConfig"
    image_processor_class_name = "LlavaOnevisionImageProcessor"

    def image_token_ids(self, config) -> tuple[int, ...]:
        """The image token and the video token (video frames are vision features too)."""
        try:
            return (config_value(config, "image_token_index"), config_value(config, "video_token_index"))
        except KeyError as error:
            raise ValueError(f"the {self.title} config has no {error.args[0]}, so its image tokens cannot be found") from None

    # ----- image tokens ---------------------------------------------------------------------------
    def _tile_tokens(self, config) -> int:
        strategy = config_value(config, "vision_feature_select_strategy", "full")
        if strategy != "full":
            raise ValueError(
                f"{self.title}'s SigLIP tower has no [CLS] token, so vision_feature_select_strategy must be 'full', got {strategy!r}"
            )
        return self.patches_per_side(config) ** 2

    def _grid_tokens(self, config, rows: int, columns: int) -> int:
        rows, columns = downsampled_grid(rows, columns, self.patches_per_side(config), max_crops(config_value(config, "vision_aspect_ratio", None)))
        return super()._grid_tokens(config, rows, columns)

    def max_image_tokens(self, config) -> tuple[int, bool]:
        """The most tokens a picture becomes, exactly. Downsampling makes it no grid resolution's full grid
        (8765 for the released 384-pixel tiles and their 36 grid resolutions, where a full grid gives at
        most 8154): every grid resolution's unpadded grids (its rows or columns trimmed by equal margins)
        are counted, and the largest count that a picture of that shape, just fitting the resolution,
        really gets (the processor picks that resolution for it) is N. A picture that a smaller
        resolution also holds gets the smaller one, at any scale, so a shape no such picture reaches is
        reached by none."""
        counts = []
        for height, width in self._grid_resolutions(config):
            rows, columns = self.resolution_grid(config, height, width)
            for kept_rows in range(rows, 0, -2):  # a picture wider than the grid: rows trimmed
                counts.append((self._grid_tokens(config, kept_rows, columns), (width, round(kept_rows * width / columns))))
            for kept_columns in range(columns - 2, 0, -2):  # taller: columns trimmed
                counts.append((self._grid_tokens(config, rows, kept_columns), (round(kept_columns * height / rows), height)))
        for count, picture in sorted(counts, reverse=True):
            if self.image_tokens_per_image(config, picture) == self._tile_tokens(config) + count:
                return self._tile_tokens(config) + count, True
        raise ValueError(f"no picture reaches a grid of the {self.title} config's image_grid_pinpoints")

    # ----- token-to-pixel layout ------------------------------------------------------------------
    # LLaVA-NeXT's layout, per picture of a flat list (see the module docstring), with the grid's cells
    # downsampled as the model downsamples them (`_token_rows`).
    def _extra_tokens(self, processor, pad_to_square: bool) -> int:
        if pad_to_square:
            raise ValueError(f"token map: pad_to_square applies to LLaVA-1.5 only ({self.title}'s anyres keeps the aspect ratio)")
        if processor.vision_feature_select_strategy != "full" or not processor.num_image_tokens:
            raise ValueError(
                f"token map: a {self.title} processor needs num_image_tokens and vision_feature_select_strategy='full' "
                f"(got {processor.num_image_tokens!r} and {processor.vision_feature_select_strategy!r})"
            )
        return 0

    def _patch_pixels(self, processor) -> int:
        return size_dict(processor.image_processor.size).height // math.isqrt(processor.num_image_tokens)

    def _token_rows(self, processor, cells: list[list[tuple]]) -> list[list[tuple]]:
        """Cell boxes after the model's downsampling: output cell (i, j) of an r x c grid averages the
        unpadded cells of rows [i·R/r, (i+1)·R/r) and columns [j·C/c, (j+1)·C/c); its box spans them."""
        if not cells:  # a sliver of a picture keeps no grid row
            return cells
        rows, columns = len(cells), len(cells[0])
        kept_rows, kept_columns = downsampled_grid(rows, columns, math.isqrt(processor.num_image_tokens), max_crops(processor.vision_aspect_ratio))
        if (kept_rows, kept_columns) == (rows, columns):
            return cells
        return [
            [_union([cells[row][column] for row in row_span for column in column_span]) for column_span in _spans(columns, kept_columns)]
            for row_span in _spans(rows, kept_rows)
        ]

    # ----- tiny checkpoints -----------------------------------------------------------------------
    def build_tiny_model(self, spec, text_config, tokenizer, chat_template: str) -> tuple:
        """OneVision's own classes at toy size: a SigLIP tower (no [CLS] token, feature strategy "full")
        at the widths and tiles of `spec`, the anyres grid resolutions of `spec`, a crop budget of
        `TINY_VISION_ASPECT_RATIO`, the decoder of `text_config` (Qwen2 by default: `pdrop_eval.tiny`),
        the ``<video>`` and Qwen turn tokens added to the tokenizer, and the OneVision chat template
        (`chat_template` is LLaVA-1.5's)."""
        from transformers import SiglipVisionConfig

        tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN, *TURN_TOKENS]})
        tokenizer.eos_token = TURN_TOKENS[1]  # an answer ends its turn
        text_config.vocab_size, text_config.eos_token_id = len(tokenizer), tokenizer.eos_token_id
        side = spec.image_size // spec.patch_size
        pinpoints = [list(resolution) for resolution in spec.grid_pinpoints]
        config = transformers_class(self.config_class_name)(
            vision_config=SiglipVisionConfig(**self._tiny_vision_settings(spec), vision_use_head=False),
            text_config=text_config,
            image_token_index=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
            video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
            vision_feature_layer=spec.vision_feature_layer,
            vision_feature_select_strategy="full",
            image_grid_pinpoints=pinpoints,
            vision_aspect_ratio=TINY_VISION_ASPECT_RATIO,
            tie_word_embeddings=False,
        )
        model = self.model_class()(config)
        geometry = {"size": {"height": spec.image_size, "width": spec.image_size}, "image_mean": SIGLIP_MEAN, "image_std": SIGLIP_STD}
        processor = self.processor_class()(
            image_processor=transformers_class(self.image_processor_class_name)(image_grid_pinpoints=pinpoints, **geometry),
            video_processor=transformers_class("LlavaOnevisionVideoProcessor")(**geometry),
            tokenizer=tokenizer,
            num_image_tokens=side * side,
            vision_feature_select_strategy="full",
            vision_aspect_ratio=TINY_VISION_ASPECT_RATIO,
            chat_template=CHAT_TEMPLATE,
        )
        return model, processor


def max_crops(vision_aspect_ratio) -> int:
    """The crop budget of a OneVision `vision_aspect_ratio` ("anyres_max_9" -> 9; None: the default 9)."""
    vision_aspect_ratio = "anyres_max_9" if vision_aspect_ratio is None else vision_aspect_ratio
    crops = str(vision_aspect_ratio).removeprefix(ANYRES_PREFIX)
    if str(vision_aspect_ratio) == crops or not crops.isdigit() or int(crops) < 1:
        raise ValueError(f"vision_aspect_ratio must be 'anyres_max_<crops>' (as LLaVA-OneVision's 'anyres_max_9'), got {vision_aspect_ratio!r}")
    return int(crops)


def downsampled_grid(rows: int, columns: int, side: int, crops: int) -> tuple[int, int]:
    """(rows, columns) of an unpadded anyres grid after the model's downsampling: unchanged unless it
    exceeds the crop budget's side ratio (`DOWNSAMPLE_ABOVE`), else each side floor-divided by the ratio."""
    ratio = math.sqrt(rows * columns / (crops * side * side))
    if ratio > DOWNSAMPLE_ABOVE:
        return int(rows // ratio), int(columns // ratio)
    return rows, columns


def _spans(cells: int, kept: int) -> list[range]:
    """The cells (of `cells`) each of `kept` equal parts overlaps."""
    return [range(i * cells // kept, -(-(i + 1) * cells // kept)) for i in range(kept)]


def _union(boxes: list[tuple]) -> tuple:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
