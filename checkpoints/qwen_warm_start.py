"""Warm start for the trained tiny Qwen2.5-VL: the untrained `synth` Qwen2.5-VL with the decoder of the
shipped vanilla-trained LLaVA-NeXT (`pdrop_eval/data/checkpoints/pdrop-synth-vanilla`).

Training the Qwen2.5-VL from scratch as `checkpoints/train.sh` trains LLaVA-NeXT takes about 100
minutes; the two `synth` presets share the decoder's widths, depth and tokenizer, so the decoder that
already reads pdrop_synth is reused and only the new vision path (patch embedding and merger, random
here) and Qwen's chat format are left to `pdrop-eval train`. Copied, where the name and shape match
in the loaded models: every decoder layer's projections and norms, the final norm, and the rows of the
input embeddings and lm_head for the token ids both tokenizers share (the tokenizers must give every
LLaVA-NeXT token the same id in Qwen2.5-VL's, or the script refuses). Left as initialized: Qwen's own
tokens (vision start/end, image and video pads, <|im_start|>, <|im_end|>) and the q/k/v biases LLaMA
has not (zero). The decoder's rotary differs only for image tokens: text tokens get the same position
three times, which M-RoPE rotates as 1-D RoPE does.

With ``--align-data TRAIN_PARQUET`` the vision path (patch embedding and merger) is not left random
either: it is fitted (mean squared error, Adam) to give each pdrop_synth cell the feature LLaVA-NeXT's
vision tower and projector give the same cell in its anyres grid, on the images of `--align-images`
rows of that file. With a random vision path, training (lr 1e-3, cosine over 1,200 steps) held the warm
decoder near the text-only answer prior for its first 600 steps (loss 0.29; 32.8% on the test split
after 300 steps, 52.2% after 900); fitted first, the model reached 57.2% in 600 steps (lr 5e-4). LLaVA-NeXT's base-tile tokens and row newlines have no Qwen counterpart and are
not fitted.

Usage (from the repository root): python checkpoints/qwen_warm_start.py UNTRAINED_QWEN OUT_DIR [--source LLAVA_NEXT]
[--align-data TRAIN_PARQUET] where UNTRAINED_QWEN is `pdrop-eval make-tiny-model ... --arch qwen2_5_vl --preset synth`'s folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHIPPED_VANILLA = "pdrop_eval/data/checkpoints/pdrop-synth-vanilla"
TOKEN_ROWS = ("model.language_model.embed_tokens.weight", "lm_head.weight")  # one row per token id


def shared_token_ids(source_tokenizer, target_tokenizer) -> list[int]:
    """The source's token ids, each checked to name the same token in the target tokenizer."""
    target_vocab = target_tokenizer.get_vocab()
    moved = {token: (index, target_vocab.get(token)) for token, index in source_tokenizer.get_vocab().items() if target_vocab.get(token) != index}
    if moved:
        raise ValueError(f"the tokenizers disagree on {len(moved)} shared token(s), e.g. {sorted(moved.items())[:5]} (token: source id, target id)")
    return sorted(source_tokenizer.get_vocab().values())


class _FeaturesTaken(Exception):
    """Stops LLaVA-NeXT's forward once the language model's input embeddings are read."""


def llava_next_grid_features(model, processor, image):
    """(rows, cols, width): LLaVA-NeXT's projected feature of each cell of `image`'s anyres grid, as its
    language model receives them (the base tile's tokens first, then the grid with a newline per row)."""
    import torch

    taken = {}

    def take(module, args, kwargs):
        taken["embeds"] = kwargs["inputs_embeds"]
        raise _FeaturesTaken

    hook = model.model.language_model.register_forward_pre_hook(take, with_kwargs=True)
    inputs = processor(images=[image], text=[processor.image_token], return_tensors="pt")
    try:
        with torch.no_grad():
            model(**inputs)
    except _FeaturesTaken:
        pass
    finally:
        hook.remove()
    features = taken["embeds"][0][inputs["input_ids"][0] == model.config.image_token_index]
    cell = model.config.vision_config.patch_size
    rows, cols = image.height // cell, image.width // cell
    base = len(features) - rows * (cols + 1)
    if base < 0 or image.height % cell or image.width % cell:
        raise ValueError(f"an image of {image.size} is not a whole grid of {cell}px cells in LLaVA-NeXT's layout")
    return features[base:].reshape(rows, cols + 1, -1)[:, :cols]


def align_vision_path(target, target_processor, donor, donor_processor, images, steps: int = 1500, batch_cells: int = 4096, seed: int = 0) -> float:
    """Fit `target`'s patch embedding and merger to LLaVA-NeXT's cell features on `images`; returns the
    final mean squared error relative to the features' variance."""
    import torch

    wanted = torch.cat([llava_next_grid_features(donor, donor_processor, image).reshape(-1, donor.config.text_config.hidden_size) for image in images])
    inputs = target_processor.image_processor(images=list(images), return_tensors="pt")
    patches_per_cell = target.model.visual.spatial_merge_size**2
    patches = inputs["pixel_values"].reshape(-1, patches_per_cell, inputs["pixel_values"].shape[-1])  # one cell's patches together
    if len(patches) != len(wanted):
        raise ValueError(f"{len(patches)} Qwen2.5-VL tokens but {len(wanted)} LLaVA-NeXT cells: the two layouts do not match")
    visual = target.model.visual
    parameters = [*visual.patch_embed.parameters(), *visual.merger.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    variance = wanted.var(0).sum()

    def vision_features(cells):
        embedded = visual.patch_embed(cells.reshape(-1, cells.shape[-1]))  # (cells * 4, width)
        return visual.merger(embedded)  # the merger groups each 4 consecutive patches into one token

    for _ in range(steps):
        chosen = torch.randint(len(wanted), (batch_cells,), generator=generator)
        loss = (vision_features(patches[chosen]) - wanted[chosen]).pow(2).sum(-1).mean() / variance
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return float((vision_features(patches) - wanted).pow(2).sum(-1).mean() / variance)


def warm_start(untrained: Path, out_dir: Path, source: Path, align_images=()) -> list[str]:
    """Write the warm-started model (float32) and the untrained checkpoint's processor to `out_dir`;
    returns the names of the parameters copied."""
    from pdrop_eval.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torch
    from transformers import AutoProcessor, AutoTokenizer, LlavaNextForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

    target = Qwen2_5_VLForConditionalGeneration.from_pretrained(untrained, dtype=torch.float32)
    donor = LlavaNextForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    ids = torch.tensor(shared_token_ids(AutoTokenizer.from_pretrained(source), AutoTokenizer.from_pretrained(untrained)))
    donor_weights = donor.state_dict()
    copied = []
    with torch.no_grad():
        for name, weight in target.state_dict().items():
            if not name.startswith(("model.language_model.", "lm_head.")) or name not in donor_weights:
                continue
            if name in TOKEN_ROWS:
                weight[ids] = donor_weights[name][ids]
            elif weight.shape == donor_weights[name].shape:
                weight.copy_(donor_weights[name])
            else:
                raise ValueError(f"{name}: shape {tuple(weight.shape)} in {untrained}, {tuple(donor_weights[name].shape)} in {source}")
            copied.append(name)
        for layer in target.model.language_model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                projection.bias.zero_()  # LLaMA's projections have none: the copied layer computes as it did
    donor_layers = sum(name.endswith(".weight") for name in donor_weights if name.startswith("model.language_model.layers."))
    copied_layers = sum(name.startswith("model.language_model.layers.") for name in copied)
    if copied_layers != donor_layers:
        raise ValueError(f"copied {copied_layers} of the source's {donor_layers} decoder layer weights: the decoders do not match")
    if align_images:
        error = align_vision_path(target, AutoProcessor.from_pretrained(untrained), donor, AutoProcessor.from_pretrained(source), align_images)
        print(f"vision path fitted to LLaVA-NeXT's cell features on {len(align_images)} images: relative squared error {error:.4f}")
    target.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(untrained).save_pretrained(out_dir)
    return copied


def _sample_images(path: Path, count: int) -> list:
    import io

    import pandas as pd
    from PIL import Image

    rows = pd.read_parquet(path, columns=["image"]).sample(n=count, random_state=0)
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in rows["image"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("untrained", type=Path, help="the untrained synth Qwen2.5-VL (make-tiny-model --arch qwen2_5_vl --preset synth)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--source", type=Path, default=Path(SHIPPED_VANILLA), help="the trained LLaVA-NeXT whose decoder is copied")
    parser.add_argument("--align-data", type=Path, help="pdrop_synth rows (.parquet) whose images fit the vision path to the source's")
    parser.add_argument("--align-images", type=int, default=800, help="how many rows' images, drawn with seed 0")
    args = parser.parse_args()
    copied = warm_start(args.untrained, args.out_dir, args.source, _sample_images(args.align_data, args.align_images) if args.align_data else ())
    print(f"copied {len(copied)} decoder tensors from {args.source} into {args.out_dir}")


if __name__ == "__main__":
    main()
