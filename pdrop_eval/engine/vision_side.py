"""The parts of the methods that replace an image's tokens before the language model (VisionZip, the
pooling control; their rules are in `pdrop_eval.engine.methods.visionzip` and `.pool`).

The prompt keeps the model's N image placeholders, so the processor and HF's placeholder check see the
stock count. At the before-the-language-model boundary the reducer writes each image's K new tokens
into its sample's first K image slots (`FirstImageSlots` ranks them first) and the staged prefill drops
the other N - K with compact positions: the language model reads prefix, the K tokens, suffix, as it
does in these methods' own code.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from pdrop_eval.engine.methods.pool import image_grid_side, next_pool_split, pool_rows
from pdrop_eval.engine.methods.visionzip import kept_tokens
from pdrop_eval.engine.reducers import Reducer, Reduction
from pdrop_eval.engine.scoring import Scorer, StageView, select_top_images
from pdrop_eval.models import family_of_model

SUPPORTED_FAMILY = "llava"  # one image = one fixed grid of tokens
NEXT_FAMILY = "llava_next"  # base tile + anyres crops (rules: pdrop_eval.engine.methods.pool and .visionzip)


def check_family(model, method: str, supported=(SUPPORTED_FAMILY,)):
    """The model's family, if these parts handle it; otherwise a ValueError naming the supported ones."""
    family = family_of_model(model)
    if family.name not in supported:
        names = " and ".join(repr(name) for name in supported)
        title = "LLaVA-1.5" if supported == (SUPPORTED_FAMILY,) else "LLaVA-1.5 and LLaVA-NeXT"
        raise ValueError(f"{method} supports {title} ({names}) models only, got a {family.describe()} model")
    return family


class FirstImageSlots(Scorer):
    """Each sample's image slots in their order: the first K are the ones the reducer writes."""

    def scores(self, view: StageView) -> torch.Tensor:
        return -view.image_rank.float()


class ReplacingReducer(Reducer):
    """Writes each image's new tokens (`new_tokens`) into its sample's first image slots."""

    method = ""  # for messages

    def new_tokens(self, *, hidden: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
        """The new tokens of each sample that holds an image, in sample order: (images, K, d), or
        (tokens, d) when the images keep different numbers."""
        raise NotImplementedError

    def reduce(self, *, hidden, scores, is_image, image_rank, keep) -> Reduction:
        selected = select_top_images(scores, is_image, keep)
        if not is_image.any():
            return Reduction(selected=selected, hidden=hidden)
        tokens = self.new_tokens(hidden=hidden, is_image=is_image).reshape(-1, hidden.shape[-1])
        slots = int(selected.sum())
        if slots != len(tokens):
            raise ValueError(f"{self.method} built {len(tokens)} tokens for {slots} kept image slots")
        return Reduction(selected=selected, hidden=hidden.masked_scatter(selected.unsqueeze(-1), tokens.to(hidden.dtype)))


def image_blocks(hidden: torch.Tensor, is_image: torch.Tensor, method: str) -> torch.Tensor:
    """(images, N, d): each sample's image-token states, for prompts of one image of N tokens each."""
    per_sample = is_image.sum(1)
    counts = sorted(set(per_sample[per_sample > 0].tolist()))
    if len(counts) != 1:
        raise ValueError(f"{method} needs every prompt's images to give the same number of tokens, got {counts}")
    return hidden[is_image].view(-1, counts[0], hidden.shape[-1])


class GridPoolReducer(ReplacingReducer):
    """The pooling control: adaptive average pooling of each image's projected tokens, on their square
    patch grid, to `grid` = (h, w), row by row."""

    method = "Average pooling"

    def __init__(self, pool_tokens: int):
        self.pool_tokens = pool_tokens
        self._next_layout = None  # LLaVA-NeXT: (base tile side, image_newline vector)

    def attach(self, model) -> list:
        family = check_family(model, self.method, supported=(SUPPORTED_FAMILY, NEXT_FAMILY))
        if family.name == NEXT_FAMILY:
            self._next_layout = (family.patches_per_side(model.config), model.model.image_newline.detach())
        return []

    def new_tokens(self, *, hidden, is_image):
        if self._next_layout is not None:
            return torch.cat([self._pool_next_image(hidden[sample][is_image[sample]]) for sample in range(len(hidden)) if is_image[sample].any()])
        blocks = image_blocks(hidden, is_image, self.method)  # (I, N, d)
        if blocks.shape[1] <= self.pool_tokens:
            return blocks  # nothing to pool: pool_tokens >= N
        side = image_grid_side(blocks.shape[1])
        widths = pool_rows(self.pool_tokens, (side, side))
        return torch.stack([pool_part(block.float().view(side, side, -1), widths) for block in blocks])  # (I, K, d)

    def _pool_next_image(self, block: torch.Tensor) -> torch.Tensor:
        """(pool_tokens, d) of one LLaVA-NeXT image block (N, d): base tile then grid, newlines dropped
        (the block itself when it holds at most pool_tokens)."""
        side, newline = self._next_layout
        if len(block) <= self.pool_tokens:
            return block  # nothing to pool: pool_tokens >= N, newlines included
        base, grid = block[: side * side], block[side * side :]
        is_newline = (grid == newline.to(grid.dtype)).all(-1)
        rows = int(is_newline.sum())
        if not rows or len(grid) % rows or not is_newline.view(rows, -1)[:, -1].all() or int(is_newline.view(rows, -1).sum()) != rows:
            raise ValueError(
                f"{self.method} expects a LLaVA-NeXT image block of {side}x{side} base patches then grid rows each closed by one "
                f"image_newline token; the {len(block)} tokens read hold {rows} newline tokens not closing equal rows (several images in one prompt?)"
            )
        columns = len(grid) // rows - 1
        pool_tokens = self.pool_tokens
        if pool_tokens >= side * side + rows * columns:  # no more patches than pool_tokens: nothing to pool
            keep = torch.ones(len(block), dtype=torch.bool, device=block.device)
            keep[side * side + is_newline.nonzero().flatten()[: len(block) - pool_tokens]] = False
            return block[keep]  # the image as it is, less its first newline tokens
        base_count, grid_count = next_pool_split(pool_tokens, side * side, rows * columns)
        parts = ((base.float().view(side, side, -1), base_count), (grid[~is_newline].float().view(rows, columns, -1), grid_count))
        pooled = [pool_part(part, pool_rows(count, part.shape[:2])) for part, count in parts]
        return torch.cat(pooled)  # base then grid, each row by row


def pool_part(part: torch.Tensor, widths: list[int]) -> torch.Tensor:
    """(sum(widths), d): `part` (rows, columns, d) averaged to len(widths) row bands, band i to widths[i]
    cells, row by row, with adaptive average pooling's bands (equal widths: `adaptive_avg_pool2d`)."""
    rows, height = part.shape[0], len(widths)
    cells = []
    for band, width in enumerate(widths):
        band_mean = part[band * rows // height : -(-(band + 1) * rows // height)].mean(0)  # (columns, d)
        cells.append(F.adaptive_avg_pool1d(band_mean.T.unsqueeze(0), width)[0].T)  # (width, d)
    return torch.cat(cells)


class VisionZipReducer(ReplacingReducer):
    """VisionZip's dominant and contextual tokens (rule: `pdrop_eval.engine.methods.visionzip`), built by
    a hook on the vision layer LLaVA takes its features from and projected by the model's projector.
    LLaVA-NeXT: per crop, the image's budget shared out over its crops (`crop_shares`), assembled as
    the official NeXT path does (`_next_image`)."""

    method = "VisionZip"

    def __init__(self, dominant: int, contextual: int):
        self.dominant = dominant
        self.contextual = contextual
        self._projector = None
        self._drops_cls = True
        self._next_layout = None  # LLaVA-NeXT: (grid_pinpoints, tile pixels, patches per tile side)
        self._image_sizes = None  # LLaVA-NeXT: each image's (height, width), read by a pre-hook
        self._tokens = None  # (images, K, d) of the last vision-tower call, taken by the next reduce

    def attach(self, model) -> list:
        family = check_family(model, self.method, supported=(SUPPORTED_FAMILY, NEXT_FAMILY))
        tower = family.vision_tower(model)
        transformer = getattr(tower, "vision_model", tower)  # transformers 5.x puts embeddings and encoder on the tower itself
        if not hasattr(transformer.embeddings, "class_embedding"):
            raise ValueError(
                f"VisionZip ranks tokens by the [CLS] token's attention; this model's vision tower ({type(tower).__name__}) has no [CLS] token"
            )
        layers = transformer.encoder.layers
        layer = layers[self._feature_layer_index(model.config, len(layers))]
        self._projector = family.freezable_part(model, "projector")
        self._drops_cls = model.config.vision_feature_select_strategy == "default"  # LLaVA's tokens: the patches only
        hooks = [layer.register_forward_hook(self._capture, with_kwargs=True)]
        if family.name == NEXT_FAMILY:
            config = model.config
            self._next_layout = (config.image_grid_pinpoints, config.vision_config.image_size, family.patches_per_side(config))
            multimodal = family.input_ids_module(model)  # its forward takes image_sizes and calls the vision tower
            signature = inspect.signature(type(multimodal).forward)

            def record_image_sizes(module, args, kwargs):
                self._image_sizes = signature.bind_partial(module, *args, **kwargs).arguments.get("image_sizes")

            hooks.append(multimodal.register_forward_pre_hook(record_image_sizes, with_kwargs=True))
        return hooks

    @staticmethod
    def _feature_layer_index(config, num_layers: int) -> int:
        """The encoder layer whose output is `hidden_states[vision_feature_layer]` (the official code's
        `layers[-2]` for LLaVA's -2)."""
        feature_layer = config.vision_feature_layer
        if not isinstance(feature_layer, int) or isinstance(feature_layer, bool):
            raise TypeError(f"VisionZip needs one vision feature layer, got vision_feature_layer={feature_layer!r}")
        index = feature_layer % (num_layers + 1) - 1 if -(num_layers + 1) <= feature_layer <= num_layers else -1
        if index < 0:
            raise ValueError(
                f"VisionZip needs the features of a vision attention layer, got vision_feature_layer={feature_layer} "
                f"of a {num_layers}-layer tower (the patch embeddings, or none)"
            )
        return index

    def _capture(self, layer, args, kwargs, output):
        inputs = args[0] if args else kwargs["hidden_states"]
        features = output[0] if isinstance(output, tuple) else output
        if self._next_layout is None:
            kept_tokens(self.dominant, self.contextual, features.shape[1] - self._drops_cls)  # before merging more than there is
        with torch.no_grad():  # the official vision forward is no_grad; its projector is not (it trains in LLaVA)
            cls_attention, keys = _cls_attention_and_keys(layer, inputs)
            features32 = features.float()
            if self._next_layout is None:
                merged = visionzip_merge(features32, cls_attention, keys, dominant=self.dominant, contextual=self.contextual)
            else:
                merged = torch.stack([self._next_image(*crops) for crops in self._split_images(features32, cls_attention, keys)])
        self._tokens = self._projector(merged.to(features.dtype))

    def _split_images(self, *per_crop: torch.Tensor):
        """Yield ((crops, ...) of each tensor in `per_crop`, (grid rows, grid columns)) image by image:
        LLaVA-NeXT runs the tower on each image's base tile then its anyres crops row by row, and the
        images one after another."""
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

        pinpoints, tile, _ = self._next_layout
        sizes, self._image_sizes = self._image_sizes, None
        if sizes is None:
            raise ValueError("VisionZip on LLaVA-NeXT needs each image's size: the model was called without image_sizes")
        grids = [get_anyres_image_grid_shape(size, pinpoints, tile) for size in sizes]
        crops = [1 + rows * columns for rows, columns in grids]
        if sum(crops) != len(per_crop[0]):
            raise ValueError(f"VisionZip: the images' sizes give {sum(crops)} LLaVA-NeXT crops, the vision tower ran on {len(per_crop[0])}")
        start = 0
        for count, grid in zip(crops, grids):
            yield *(tensor[start : start + count] for tensor in per_crop), grid
            start += count

    def _next_image(self, features, cls_attention, keys, grid: tuple[int, int]) -> torch.Tensor:
        """(dominant + contextual, D) of one LLaVA-NeXT image from its crops' features (crops, T, D):
        the base crop's [CLS, dominant patches, contextual tokens], then the grid crops' dominant
        patches in raster order over the whole (rows·side) x (columns·side) grid, their [CLS] tokens and
        their contextual tokens crop by crop (`restore_image_features_sorted`)."""
        columns, side = grid[1], self._next_layout[2]
        shares = crop_shares(self.dominant, self.contextual, len(features), features.shape[1])
        crops = [
            visionzip_merge(features[crop : crop + 1], cls_attention[crop : crop + 1], keys[crop : crop + 1], dominant=dominant,
                            contextual=contextual, with_mask=True)
            for crop, (dominant, contextual) in enumerate(shares)
        ]
        patch = torch.arange(side * side, device=features.device)
        patches, raster, cls_tokens, contextual_tokens = [], [], [], []
        for crop, ((tokens, is_dominant), (dominant, _)) in enumerate(zip(crops[1:], shares[1:])):
            crop_row, crop_column = divmod(crop, columns)
            patches.append(tokens[0, 1:dominant])  # sequence order, as the patch indices below
            grid_index = (crop_row * side + patch // side) * (columns * side) + crop_column * side + patch % side
            raster.append(grid_index[is_dominant[0, 1:]])
            cls_tokens.append(tokens[0, :1])
            contextual_tokens.append(tokens[0, dominant:])
        order = torch.cat(raster).argsort()
        return torch.cat([crops[0][0][0], torch.cat(patches)[order], *cls_tokens, *contextual_tokens])

    def new_tokens(self, *, hidden, is_image):
        tokens, self._tokens = self._tokens, None
        if tokens is None:
            raise ValueError("VisionZip found image tokens but the vision tower did not run for this prompt (pass pixel_values)")
        prompts = int(is_image.any(1).sum())
        if tokens.shape[0] != prompts:
            raise ValueError(f"VisionZip handles one image per prompt: {tokens.shape[0]} images for {prompts} prompts with image tokens")
        return tokens


def crop_shares(dominant: int, contextual: int, crops: int, crop_tokens: int) -> list[tuple[int, int]]:
    """(dominant, contextual) of each of a LLaVA-NeXT image's `crops` crops: the image's counts shared
    out as evenly as they go, the first crops (base tile first) taking one more; every crop keeps at
    least its [CLS] token, and none more than its `crop_tokens` tokens ([CLS] included)."""
    if dominant < crops:
        raise ValueError(
            f"VisionZip keeps each LLaVA-NeXT crop's [CLS] token: dominant={dominant} is fewer than this image's {crops} crops"
        )
    shares = [(dominant // crops + (crop < dominant % crops), contextual // crops + (crop < contextual % crops)) for crop in range(crops)]
    if sum(shares[0]) > crop_tokens:
        raise ValueError(
            f"VisionZip: dominant + contextual = {dominant} + {contextual} over this image's {crops} LLaVA-NeXT crops gives its base crop "
            f"{shares[0][0]} + {shares[0][1]} tokens, more than the {crop_tokens} it has"
        )
    return shares


def _cls_attention_and_keys(layer, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The [CLS] query's attention over the patch tokens summed over heads (I, T-1), recomputed from the
    layer's q/k so that every attention backend works, and the key states averaged over heads (I, T, hd),
    VisionZip's metric (`CLIPAttention_forward`'s `raw_key_states.mean(1)`)."""
    attention = layer.self_attn
    normed = layer.layer_norm1(inputs)
    images, length, _ = normed.shape
    query = attention.q_proj(normed[:, :1]).view(images, 1, -1, attention.head_dim).float()  # (I, 1, H, hd)
    keys = attention.k_proj(normed).view(images, length, -1, attention.head_dim).float()  # (I, T, H, hd)
    weights = (torch.einsum("iqhd,ithd->iht", query, keys) * attention.scale).softmax(-1)  # (I, H, T)
    return weights.sum(1)[:, 1:], keys.mean(2)


def visionzip_merge(features: torch.Tensor, cls_attention: torch.Tensor, keys: torch.Tensor, *, dominant: int, contextual: int,
                    with_mask: bool = False):
    """(I, dominant + contextual, D): [CLS], the top `dominant - 1` patches by `cls_attention` in sequence
    order, then the contextual tokens in target order (`CLIPVisionTower_VisionZip.forward`); with
    `with_mask`, also the (I, T) mask of the dominant tokens. `contextual` 0 (a LLaVA-NeXT crop whose
    share has none): no contextual tokens.

    features (I, T, D) the feature layer's output; cls_attention (I, T-1); keys (I, T, hd). Ties go to
    the earlier patch (the official `topk` leaves them unspecified)."""
    images, length, width = features.shape
    top = cls_attention.argsort(dim=1, descending=True, stable=True)[:, : dominant - 1] + 1
    is_dominant = torch.zeros(images, length, dtype=torch.bool, device=features.device)
    is_dominant[:, 0] = True
    is_dominant.scatter_(1, top, True)
    dominant_tokens = features[is_dominant].view(images, dominant, width)  # sequence order, [CLS] first
    if not contextual:
        return (dominant_tokens, is_dominant) if with_mask else dominant_tokens

    remaining = length - dominant
    rest = features[~is_dominant].view(images, remaining, width)
    metric = keys[~is_dominant].view(images, remaining, -1)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    is_target = torch.zeros(remaining, dtype=torch.bool, device=features.device)
    is_target[torch.arange(0, remaining, max(1, remaining // contextual), device=features.device)[:contextual]] = True
    similarity = metric[:, ~is_target] @ metric[:, is_target].transpose(1, 2)  # (I, R - c, c)
    assignment = F.one_hot(similarity.argmax(2), contextual).to(rest.dtype)  # first maximum on ties, as argmax
    sums = assignment.transpose(1, 2) @ rest[:, ~is_target]  # (I, c, D)
    contextual_tokens = rest[:, is_target] + sums / assignment.sum(1).clamp(min=1).unsqueeze(-1)
    merged = torch.cat([dominant_tokens, contextual_tokens], dim=1)
    return (merged, is_dominant) if with_mask else merged
