"""Tiny checkpoints of every model family (`ARCHS`: LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL, ...), built offline,
loadable with `from_pretrained`.

They have the real architecture (CLIP tower, projector, GQA decoder with 32 layers so the paper's
default boundaries 8/16/24 apply) at toy width, a byte-level BPE tokenizer trained here, and a
processor with a LLaVA chat template. Two presets:

* ``tiny`` (`TINY`): random weights with peaked attention; tests, the demo and both integrations run
  on it where only shapes and code paths matter.
* ``synth`` (`SYNTH`): the untrained starting point for `pdrop-eval train` on the `pdrop_synth`
  benchmark (`pdrop_eval.synth`): LLaVA-NeXT whose vision patch is one 8x8 grid cell of the
  benchmark, and whose image features are the vision tower's patch embeddings (taken before any
  vision attention layer), so every image token describes its own cell and nothing else: a question
  about one cell needs that cell's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pdrop_eval.models import FAMILY_NAMES, family_named

ARCHS = FAMILY_NAMES
TEXT_ARCHS = ("llama", "mistral", "qwen2")
DEFAULT_TEXT_ARCHS = {"llava_onevision": "qwen2"}  # the decoder a family is released with, where not llama


def default_text_arch(arch: str) -> str:
    """The decoder family a tiny checkpoint of `arch` gets unless told otherwise."""
    return DEFAULT_TEXT_ARCHS.get(arch, "llama")


SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# LLaVA-1.5 conversation format ("USER: <image>\n... ASSISTANT:"), as the llava-hf processors use.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ message['content'] if message['content'] is string else message['content'][0]['text'] }}{{ ' ' }}"
    "{% elif message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ ' ' }}"
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "What color is the square in the image? Answer the question using a single word or phrase.",
    "Is there a red circle in the picture? Please answer yes or no.",
    "Which shape is in the top left corner? A. circle B. square C. triangle D. star",
    "Answer with the option's letter from the given choices directly.",
    "The chart shows the number of apples, bananas and cherries sold in 2023 and 2024.",
    "red green blue yellow black white purple orange one two three four five six seven eight nine ten",
    "USER: ASSISTANT: yes no true false left right top bottom center",
]


_SYNTH_CORPUS = [
    "What color is the circle? What color is the square? What color is the triangle? What color is the cross?",
    "Which shape is red? Which shape is green? Which shape is blue? Which shape is yellow? Which shape is purple?",
    "Which digit is red? What color is the 1? 2 3 4 5 6 7 8 9",
    "What is left of the red circle? How many blue objects are there?",
]


@dataclass(frozen=True)
class TinySpec:
    """Widths and image geometry of a tiny checkpoint (see the module docstring for the presets)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    initializer_range: float
    image_size: int  # pixels per tile (LLaVA-NeXT) or per image (LLaVA-1.5)
    patch_size: int
    grid_pinpoints: tuple[tuple[int, int], ...]  # LLaVA-NeXT anyres resolutions, (height, width)
    vision_hidden_size: int
    vision_layers: int
    vision_feature_layer: int
    corpus: tuple[str, ...]  # extra tokenizer training text
    vocab_size: int = 512
    # GPT-2's initialization: the projections that write into the residual stream (attention output,
    # MLP down) scaled by 1/sqrt(2 * layers), so a deep narrow decoder starts close to a shallow one
    # and trains from scratch in hundreds of steps instead of stalling on the text-only answer prior.
    scaled_residual_init: bool = False


TINY = TinySpec(
    hidden_size=64,
    intermediate_size=172,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA, as in Mistral / Qwen2 / LLaMA-3
    initializer_range=0.2,  # peaked attention, so rankings are not decided by rounding
    image_size=64,
    patch_size=8,  # 8x8 = 64 image tokens per 64px tile
    grid_pinpoints=((64, 128), (128, 64), (128, 128)),
    vision_hidden_size=32,
    vision_layers=2,
    vision_feature_layer=-2,
    corpus=(),
)
SYNTH = TinySpec(
    hidden_size=64,
    intermediate_size=172,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.08,  # about 1/sqrt(width): 0.02 suits 4096-wide models, not 64-wide ones
    image_size=16,  # 2x2 patches per tile: the low-resolution base view cannot read an 8px glyph
    patch_size=8,  # one pdrop_synth grid cell
    grid_pinpoints=((32, 32), (32, 48), (48, 32), (48, 48), (32, 64), (64, 32)),  # pdrop_synth.SIZES as (h, w)
    vision_hidden_size=64,
    vision_layers=1,
    vision_feature_layer=-2,  # the embeddings, before the single (unused) vision layer: local features
    corpus=tuple(_SYNTH_CORPUS),
    vocab_size=1024,  # whole words for the benchmark's questions and answers: one token per answer
    scaled_residual_init=True,
)
PRESETS = {"tiny": TINY, "synth": SYNTH}


def build_tokenizer(vocab_size: int = 512, corpus: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable: any prompt works
        show_progress=False,
    )
    tokenizer.train_from_iterator((_CORPUS + list(corpus)) * 4, trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=4096,
    )


def _text_config(text_arch: str, tokenizer, num_layers: int, spec: TinySpec):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=spec.initializer_range,
        tie_word_embeddings=False,
    )
    if text_arch == "llama":
        return LlamaConfig(**common)
    if text_arch == "mistral":
        return MistralConfig(sliding_window=None, **common)
    return Qwen2Config(**common)  # q/k/v projections with bias


def make_tiny_model(
    out_dir: str | Path,
    arch: str = "llava",
    text_arch: str | None = None,
    num_layers: int = 32,
    seed: int = 0,
    spec: TinySpec = TINY,
) -> Path:
    """Write a tiny checkpoint with fresh weights (model, tokenizer, processor, chat template) to `out_dir`;
    `text_arch` None: `default_text_arch(arch)`."""
    from pdrop_eval.compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # before transformers imports torchvision
    import torch
    from transformers import GenerationConfig

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    text_arch = default_text_arch(arch) if text_arch is None else text_arch
    if text_arch not in TEXT_ARCHS:
        raise ValueError(f"text_arch must be one of {TEXT_ARCHS}, got {text_arch!r}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers (--num-layers) must be a positive integer, got {num_layers!r}")
    out_dir = Path(out_dir)
    torch.manual_seed(seed)

    tokenizer = build_tokenizer(spec.vocab_size, spec.corpus)
    family = family_named(arch)
    model, processor = family.build_tiny_model(spec, _text_config(text_arch, tokenizer, num_layers, spec), tokenizer, CHAT_TEMPLATE)

    if spec.scaled_residual_init:
        with torch.no_grad():
            for layer in family.language_model(model).layers:
                for projection in (layer.self_attn.o_proj, layer.mlp.down_proj):
                    projection.weight.mul_((2 * num_layers) ** -0.5)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
