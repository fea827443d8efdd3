"""The model wrapper every framework adapter shares: load, prompt, batch, drop, generate, score.

It knows no evaluation framework; adapters translate their requests into `Query` objects::

    from pdrop_eval import DropConfig
    from pdrop_eval.wrapper import ModelRunner, Query

    runner = ModelRunner.load("llava-hf/llava-v1.6-vicuna-7b-hf", drop=DropConfig.pyramid(), dtype="float16", device="cuda")
    queries = [Query.from_parts([image, "What is written on the sign?"])]
    for answer in runner.generate(queries, max_new_tokens=16, batch_size=8, stop=["ASSISTANT:"]):
        print(answer.text, answer.stats.image_tokens_per_layer, answer.stats.tflops_actual)
    scores = runner.loglikelihood(queries, [" A"], batch_size=8)   # Score(logprob, is_greedy, stats) each

`generate` / `loglikelihood` sort and batch for you; `generate_batch` / `loglikelihood_batch` run one
batch as given, for adapters that load inputs lazily and batch with `plan_batches` themselves.

* The model family (`pdrop_eval.models`: LLaVA-1.5, LLaVA-NeXT, ...) comes from the checkpoint's config.
* Prompts are rendered with the checkpoint's chat template, or the Vicuna v1 template when it has none,
  unless a `PromptFormat` says otherwise (a framework's own convention for the family).
* Every tensor the processor returns goes to the model (pixel values, and image_sizes or
  image_grid_thw where the family has them); a family with 3-D positions computes its own.
* Batches are formed after sorting the queries by length (longest first, so memory errors show up at
  once); results always come back in the order of the queries. Padding is on the left.
* The drop config is applied once at load through the engine, the no-drop baseline included, so every
  method shares one prompt and batching path and reports the same statistics.
* Errors are raised, never turned into empty answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image, ImageFile

from pdrop_eval.engine import DropConfig, apply_drop
from pdrop_eval.engine.stats import SampleDropStats
from pdrop_eval.flops import kv_size_of
from pdrop_eval.models import ROPE_1D, ModelFamily, family_named
from pdrop_eval.options import ModelOptions, checkpoint_architecture, resolve_pad_to_square
from pdrop_eval.stats import KV_SIZE_KEY, SampleStats

DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
IMAGE_PLACEHOLDER = "<image>"

# LLaVA-1.5's "vicuna_v1" conversation, for checkpoints whose processor has no chat template.
VICUNA_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}A chat between a curious human and an artificial intelligence "
    "assistant. The assistant gives helpful, detailed, and polite answers to the human's questions. {% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set prefix = '' %}"
    "{% elif message['role'] == 'user' %}{% set prefix = 'USER: ' %}"
    "{% else %}{% set prefix = 'ASSISTANT: ' %}{% endif %}{{ prefix }}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] == 'assistant' %}</s>{% else %} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class Query:
    """One prompt: a conversation in the HF chat format plus its images, in placeholder order.

    `messages` use content lists, e.g. ``{"role": "user", "content": [{"type": "image"},
    {"type": "text", "text": "..."}]}``; each ``{"type": "image"}`` item takes the next image.
    """

    messages: tuple[dict, ...]
    images: tuple[Image.Image, ...] = ()

    def __post_init__(self):
        placeholders = sum(item.get("type") == "image" for message in self.messages for item in message["content"])
        if placeholders != len(self.images):
            raise ValueError(f"query has {placeholders} image placeholder(s) but {len(self.images)} image(s)")

    @classmethod
    def from_parts(cls, parts: Sequence[str | Image.Image | Path], label: str = "query") -> Query:
        """A single user turn from parts in order: `str` is text, a PIL image or a `pathlib.Path` is an image.

        `label` names the query in error messages (e.g. "docvqa_val doc 12").
        """
        content, images = [], []
        for part in parts:
            if isinstance(part, str):
                content.append({"type": "text", "text": part})
            elif isinstance(part, (Image.Image, Path)):
                content.append({"type": "image"})
                images.append(load_image(part, label))
            else:
                raise TypeError(f"{label}: a query part must be text (str) or an image (PIL image or pathlib.Path), got {type(part).__name__}")
        return cls(messages=({"role": "user", "content": content},), images=tuple(images))

    @classmethod
    def from_text(cls, text: str, images: Sequence[Image.Image | Path] = (), label: str = "query") -> Query:
        """A user turn from text that may hold ``<image>`` placeholders; without any, images go first."""
        if IMAGE_PLACEHOLDER not in text:
            return cls.from_parts([*images, text], label)
        pieces = text.split(IMAGE_PLACEHOLDER)
        if len(pieces) - 1 != len(images):
            raise ValueError(f"{label}: the text has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but there are {len(images)} image(s)")
        parts = [pieces[0]]
        for image, piece in zip(images, pieces[1:]):
            parts += [image, piece.removeprefix("\n")]
        return cls.from_parts([part for part in parts if not isinstance(part, str) or part], label)


def load_image(image: Image.Image | Path, label: str = "query") -> Image.Image:
    """An RGB copy of `image`, fully decoded now so a broken file fails here with its name.

    Decoding is strict even where a framework has set PIL's global LOAD_TRUNCATED_IMAGES (lmms-eval
    does at import): a truncated file would otherwise be evaluated as a partly gray picture."""
    lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        if not isinstance(image, Image.Image):
            image = Image.open(image)
        return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ValueError(f"{label}: cannot decode image: {type(error).__name__}: {error}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


@dataclass(frozen=True)
class PromptFormat:
    """How a runner writes a query as prompt text; the default is the checkpoint's own chat template.
    Framework adapters set one to follow that framework's convention for a model family."""

    chat_template: str | None = None  # rendered with this instead of the checkpoint's template
    system_prompt: str | None = None  # a system message put first in a query that has none
    # each message becomes one text item, its images written into it as this text where they stand
    # (what VLMEvalKit's LLaVA_OneVision_HF sends its processor's chat template)
    inline_image_text: str | None = None

    def messages(self, query: Query) -> list[dict]:
        """The conversation of `query` as the chat template receives it."""
        messages = list(query.messages)
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        if self.inline_image_text is None:
            return messages
        return [
            {**message, "content": [{"type": "text", "text": "".join(
                self.inline_image_text if item["type"] == "image" else item["text"] for item in message["content"]
            )}]}
            for message in messages
        ]


@dataclass(frozen=True)
class Generation:
    text: str
    stats: SampleStats


@dataclass(frozen=True)
class Score:
    logprob: float  # summed log-probability of the continuation's tokens
    is_greedy: bool  # greedy decoding would produce exactly the continuation
    stats: SampleStats


class ModelRunner:
    """A loaded model of a supported family (`pdrop_eval.models`) with a drop config applied. Build it
    with `load`.

    Attributes: pretrained, architecture (the family's name: "llava", "llava_next", ...), drop
    (DropConfig), model_dims (hidden_size, intermediate_size, num_layers of the language model), model,
    processor, prompt_format (`PromptFormat`), and pad_to_square (LLaVA-1.5 images padded to a square
    with the mean colour, as the original LLaVA evaluated them; see `resolve_pad_to_square`).
    """

    def __init__(self, pretrained: str, architecture: str, drop: DropConfig, model, processor, pad_to_square: bool | None = None, scorer=None,
                 prompt_format: PromptFormat | None = None):
        self.pretrained = pretrained
        self.architecture = architecture
        self.drop = drop
        self.pad_to_square = resolve_pad_to_square(architecture, pad_to_square)
        self.model = model
        self.processor = processor
        self.prompt_format = prompt_format or PromptFormat()
        self.chat_template = self.prompt_format.chat_template or chat_template_of(processor)
        # 1-D rotary positions are counted here past left padding; a 3-D scheme's model computes its own
        self._counts_positions = family_named(architecture).position_scheme == ROPE_1D
        text_config = model.config.get_text_config()
        self.model_dims = {
            "hidden_size": text_config.hidden_size,
            "intermediate_size": text_config.intermediate_size,
            "num_layers": text_config.num_hidden_layers,
        }
        if (kv_size := kv_size_of(text_config)) is not None:
            self.model_dims[KV_SIZE_KEY] = kv_size
        self._handle = apply_drop(model, drop, scorer=scorer)

    @classmethod
    def load(
        cls,
        pretrained: str,
        drop: DropConfig | None = None,
        dtype: str = "auto",
        device: str = "cpu",
        device_map: str | None = None,
        attn_implementation: str | None = None,
        pad_to_square: bool | None = None,
        scorer=None,
        processor_options: dict | None = None,
        prompt_format: PromptFormat | None = None,
    ) -> ModelRunner:
        """Load a HF checkpoint (folder or Hub id) and apply `drop` (default: no drop).

        `device_map` (e.g. "auto") hands placement to accelerate; otherwise the model moves to `device`.
        `scorer`: ranks the image tokens instead of the method's own (see `apply_drop`).
        `processor_options`: set on the processor as it loads (e.g. Qwen2.5-VL's min_pixels, max_pixels).
        """
        from transformers import AutoProcessor

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        family = checkpoint_family(pretrained)
        placement = {"device_map": device_map} if device_map else {}
        model = family.model_class().from_pretrained(pretrained, dtype=DTYPES[dtype], attn_implementation=attn_implementation, **placement)
        if not device_map:
            model.to(device)
        model.eval()
        processor = AutoProcessor.from_pretrained(pretrained, **(processor_options or {}))
        processor.tokenizer.padding_side = "left"  # batched generation appends on the right
        if processor.tokenizer.pad_token is None:
            processor.tokenizer.pad_token = processor.tokenizer.eos_token
        return cls(str(pretrained), family.name, drop or DropConfig.none(), model, processor, pad_to_square, scorer, prompt_format)

    @classmethod
    def from_options(cls, options: ModelOptions, device=None, prompt_format: PromptFormat | None = None) -> ModelRunner:
        """Load the model that resolved framework options describe (`device` overrides theirs), its
        prompts written in `prompt_format` (with the options' system prompt, where they set one)."""
        if options.system_prompt is not None:
            prompt_format = replace(prompt_format or PromptFormat(), system_prompt=options.system_prompt)
        return cls.load(
            options.pretrained,
            drop=options.drop,
            dtype=options.dtype,
            device=options.device if device is None else device,
            device_map=options.device_map,
            attn_implementation=options.attn_implementation,
            pad_to_square=options.pad_to_square,
            processor_options=options.processor_options(),
            prompt_format=prompt_format,
        )

    # ----- prompts ---------------------------------------------------------------------------------
    def render(self, query: Query, add_generation_prompt: bool = True) -> str:
        """The prompt text of `query`, image placeholders not yet expanded."""
        return render_messages(self.processor, self.prompt_format.messages(query), add_generation_prompt, self.chat_template)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ----- generation ------------------------------------------------------------------------------
    def generate(self, queries: Sequence[Query], max_new_tokens: int, batch_size: int = 1, **settings) -> list[Generation]:
        """Answer each query, in batches of similar length; `settings` as for `generate_batch`."""
        answers: list[Generation | None] = [None] * len(queries)
        for batch in plan_batches(self._prompt_lengths(queries), batch_size):
            for i, answer in zip(batch, self.generate_batch([queries[i] for i in batch], max_new_tokens, **settings)):
                answers[i] = answer
        return answers

    @torch.inference_mode()
    def generate_batch(
        self,
        queries: Sequence[Query],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        top_p: float | None = None,
        num_beams: int = 1,
    ) -> list[Generation]:
        """Answer `queries` as one padded batch. Greedy unless temperature > 0; the text is cut before
        the first of the `stop` strings."""
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        stopping = {"stop_strings": list(stop), "tokenizer": self.tokenizer} if stop else {}
        inputs = self._encode(queries, [self.render(query) for query in queries])
        output = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
            **stopping,
        )
        texts = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [Generation(text=_cut_at_stop(text, stop), stats=stats) for text, stats in zip(texts, self._last_stats())]

    # ----- scoring ---------------------------------------------------------------------------------
    def loglikelihood(self, queries: Sequence[Query], continuations: Sequence[str], batch_size: int = 1) -> list[Score]:
        """Score each continuation after its query, in batches of similar length."""
        if len(queries) != len(continuations):
            raise ValueError(f"{len(queries)} queries but {len(continuations)} continuations")
        scores: list[Score | None] = [None] * len(queries)
        for batch in plan_batches(self._prompt_lengths(queries), batch_size):
            batch_scores = self.loglikelihood_batch([queries[i] for i in batch], [continuations[i] for i in batch])
            for i, score in zip(batch, batch_scores):
                scores[i] = score
        return scores

    @torch.inference_mode()
    def loglikelihood_batch(self, queries: Sequence[Query], continuations: Sequence[str]) -> list[Score]:
        """Log-probability of each continuation right after its query's generation prompt, one batch.

        Image tokens are ranked with the last *context* token as the query row, so every continuation
        of one question sees the same kept image tokens.
        """
        prompts = [self.render(query) for query in queries]
        full_texts = [prompt + continuation for prompt, continuation in zip(prompts, continuations)]
        inputs = self._encode(queries, full_texts)
        # Continuation length from the unexpanded texts: image expansion only touches the context.
        lengths = [len(self.tokenizer(full).input_ids) - len(self.tokenizer(prompt).input_ids) for full, prompt in zip(full_texts, prompts)]
        for continuation, length in zip(continuations, lengths):
            if length < 1:
                raise ValueError(f"continuation {continuation!r} adds no tokens to its prompt")
        total = inputs["input_ids"].shape[1]
        query_positions = torch.tensor([total - length - 1 for length in lengths], device=self.device)
        positions = {}
        if self._counts_positions:  # left padding: positions count real tokens only, as generate() does
            positions["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with self._handle.query_positions(query_positions):
            logits = self.model(**inputs, **positions, use_cache=False).logits.float()
        scores = []
        for row, (length, stats) in enumerate(zip(lengths, self._last_stats())):
            targets = inputs["input_ids"][row, total - length :]
            logprobs = torch.log_softmax(logits[row, -length - 1 : -1], dim=-1)  # row t predicts token t+1
            scores.append(
                Score(
                    logprob=logprobs.gather(-1, targets[:, None]).sum().item(),
                    is_greedy=bool((logprobs.argmax(-1) == targets).all()),
                    stats=stats,
                )
            )
        return scores

    def close(self) -> None:
        """Restore the stock model and release it."""
        self._handle.remove()
        self.model = None

    # ----- internals -------------------------------------------------------------------------------
    def _prompt_lengths(self, queries: Sequence[Query]) -> list[tuple[int, int]]:
        """Sort keys: text tokens of the rendered prompt, then pixels (LLaVA-NeXT's image tokens grow with them)."""
        return [
            (len(self.tokenizer(self.render(query)).input_ids), sum(image.width * image.height for image in query.images))
            for query in queries
        ]

    def _encode(self, queries: Sequence[Query], texts: Sequence[str]):
        images = [image for query in queries for image in query.images]
        return processor_inputs(self.processor, images, texts, self.pad_to_square).to(self.device, self.model.dtype)

    def _last_stats(self) -> list[SampleStats]:
        return [sample_stats(sample, self.model_dims) for sample in self._handle.last_stats]


LlavaRunner = ModelRunner  # its first name, from when it ran LLaVA models only


def sample_stats(engine_sample: SampleDropStats, model_dims: dict) -> SampleStats:
    """The statistics record of one entry of the engine's `handle.last_stats` (the one place that reads
    the engine's per-sample numbers)."""
    return SampleStats.measure(
        num_image_tokens=engine_sample.num_image_tokens,
        image_tokens_per_layer=engine_sample.image_tokens_per_layer,
        tokens_per_layer=engine_sample.tokens_per_layer,
        model_dims=model_dims,
        kept=engine_sample.kept,
    )


def processor_inputs(processor, images: Sequence[Image.Image], texts: Sequence[str], pad_to_square: bool):
    """The processor's tensors for rendered `texts` and their `images` (in placeholder order), the
    images prepared as evaluation prepares them; training (`pdrop_eval.train`) encodes rows here too."""
    images = prepared_images(processor, images, pad_to_square)
    return processor(images=images or None, text=list(texts), return_tensors="pt", padding=True)


def prepared_images(processor, images: Sequence[Image.Image], pad_to_square: bool) -> list[Image.Image]:
    """`images` as evaluation hands them to the processor: with `pad_to_square` (LLaVA-1.5), each
    centered on a square of the image processor's mean colour."""
    if not pad_to_square:
        return list(images)
    background = tuple(round(channel * 255) for channel in processor.image_processor.image_mean)
    return [expand_to_square(image, background) for image in images]


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """`image` centered on a square canvas of its longer side, filled with `background`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def plan_batches(lengths: Sequence, batch_size: int) -> list[list[int]]:
    """Indices into `lengths` grouped in batches of `batch_size`, longest first (memory errors show up at
    once, and padding stays small). `lengths` are sort keys: numbers or tuples."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def chat_template_of(processor) -> str:
    """The checkpoint's chat template, or the Vicuna v1 template when it has none."""
    return processor.chat_template or VICUNA_CHAT_TEMPLATE


def render_messages(processor, messages: Sequence[dict], add_generation_prompt: bool = True, chat_template: str | None = None) -> str:
    """Conversation text in the chat template (default: `chat_template_of(processor)`), image
    placeholders not yet expanded. Evaluation (`ModelRunner.render`) and training
    (`pdrop_eval.train`) both render prompts here, so a model is trained on the prompts it is scored on."""
    return processor.apply_chat_template(
        list(messages),
        chat_template=chat_template or chat_template_of(processor),
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )


def checkpoint_family(pretrained: str) -> ModelFamily:
    """The model family of a checkpoint folder or Hub id (its config only); a model of no supported family is an error."""
    return family_named(checkpoint_architecture(pretrained))


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]
