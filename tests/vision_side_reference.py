"""Shared by the tests of the methods that replace an image's tokens before the language model
(tests/test_visionzip.py, tests/test_pool.py): a tiny LLaVA-1.5 or LLaVA-NeXT with eager and sdpa attention on one
padded batch, and each sample's language-model input with its image block replaced by hand."""

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

PROMPTS = ["USER: <image>\nWhat color is the square? ASSISTANT:", "USER: <image>\nIs it round? ASSISTANT:"]


def load(path, attention):
    return AutoModelForImageTextToText.from_pretrained(path, attn_implementation=attention, dtype=torch.float32).eval()


def models_and_batch(path, seed: int, image_shapes=((48, 64), (48, 64))):
    """({"eager": model, "sdpa": model}, a left-padded batch of PROMPTS with random pictures of
    `image_shapes` (height, width) pixels)."""
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    generator = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (*shape, 3), generator=generator, dtype=torch.uint8).numpy() for shape in image_shapes]
    return {attention: load(path, attention) for attention in ("eager", "sdpa")}, processor(images=images, text=PROMPTS, return_tensors="pt", padding=True)


def with_image_replaced(model, inputs, embeddings, sample: int, replace) -> torch.Tensor:
    """(T', d): sample's real language-model input (`embeddings`, the stock model's, (B, T, d)) with its
    image block swapped for `replace(image_block)` (N, d) -> (K, d)."""
    real = inputs["attention_mask"][sample].bool()
    image = inputs["input_ids"][sample][real] == model.config.image_token_id
    first, count = int(image.nonzero()[0]), int(image.sum())
    sequence = embeddings[sample][real]
    return torch.cat([sequence[:first], replace(sequence[image]), sequence[first + count:]])
