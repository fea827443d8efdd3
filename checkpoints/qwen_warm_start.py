"""Warm start for the trained tiny Qwen2.5-VL: the untrained `synth` Qwen2.5-VL with the decoder of the
shipped vanilla-trained LLaVA-NeXT (`pdrop_eval/data/checkpoints/pdrop-synth-vanilla`).

Training the Qwen2.5-VL from scratch as `checkpoints/train.sh` trains LLaVA-NeXT takes about 100
minutes; the two `synth` presets share the decoder's widths, depth and tokenizer, so the decoder that
already reads pdrop_synth is reused and only the new vision path (patch embedding and merger, random
here) and Qwen's chat format are left to `pdrop-eval train`. Copied, where the name and shape match
in the loaded models: every decoder layer's projections and norms, the final norm, and the rows of the
input embeddings and lm_head for the token ids both tokenizers share (the tokenizers must give every
LLaVA-NeXT token the same id in Qwen2.5-VL's, or the script refuses). Left as initialized: Qwen's own
tokens (vision start/end, image and video pads, <|im_start|>, <|im_end|>), the q/k/v biases LLaMA
has not (zero), the vision patch embedding and the merger. The decoder's rotary differs only for
image tokens: text tokens get the same position three times, which M-RoPE rotates as 1-D RoPE does.

Usage (from the repository root): python checkpoints/qwen_warm_start.py UNTRAINED_QWEN OUT_DIR [--source LLAVA_NEXT]
where UNTRAINED_QWEN is `pdrop-eval make-tiny-model ... --arch qwen2_5_vl --preset synth`'s folder.
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


def warm_start(untrained: Path, out_dir: Path, source: Path) -> list[str]:
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
    target.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(untrained).save_pretrained(out_dir)
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("untrained", type=Path, help="the untrained synth Qwen2.5-VL (make-tiny-model --arch qwen2_5_vl --preset synth)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--source", type=Path, default=Path(SHIPPED_VANILLA), help="the trained LLaVA-NeXT whose decoder is copied")
    args = parser.parse_args()
    copied = warm_start(args.untrained, args.out_dir, args.source)
    print(f"copied {len(copied)} decoder tensors from {args.source} into {args.out_dir}")


if __name__ == "__main__":
    main()
