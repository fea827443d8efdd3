"""`apply_drop(model, config)`: enable dropping on a loaded HF vision-language model of a supported
family (`pdrop_eval.models`: LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL).

The language model's `forward` is replaced on the instance by a staged layer loop over the
unmodified decoder layers. LLaVA's forward hands the language model neither the token ids (it
passes merged embeddings) nor the labels (it computes the loss itself, after the language model), so
two forward pre-hooks record them: one on the multimodal model for `input_ids` (where the image
tokens are), one on the outer model for `labels` (which rows rank the image tokens in training).
The language-model call that follows consumes both.
`generate()` needs no override: prefill prunes, decode steps attend the pruned per-layer cache.
`handle.remove()` deletes the instance attributes and hooks, restoring the stock model exactly.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from pdrop_eval.engine.cache import StagedCache
from pdrop_eval.engine.config import DropConfig
from pdrop_eval.engine.hf_binding import cache_field, cache_parameter, pop_cache
from pdrop_eval.engine.scoring import Scorer
from pdrop_eval.engine.staged import QueryRows, Slots, staged_decode, staged_prefill
from pdrop_eval.engine.stats import SampleDropStats, sample_stats
from pdrop_eval.models import MROPE_3D, ROPE_1D, family_of_model

IGNORE_INDEX = -100  # HF's label for positions without loss
POSITION_AXES = {ROPE_1D: 1, MROPE_3D: 3}  # position ids per token of each position scheme
_UNSUPPORTED_GENERATE_OPTIONS = {
    "assistant_model": "assisted decoding",
    "prompt_lookup_num_tokens": "prompt-lookup decoding",
}


def apply_drop(model, config: DropConfig, *, scorer: Scorer | None = None) -> "DropHandle":
    """Enable `config` on `model`; returns a handle (`last_stats`, `remove()`, context manager).

    scorer: ranks the image tokens instead of the method's own scorer (`config.parts()`),
    with the method's schedule, counts and positions, e.g. to time or instrument the ranking."""
    return DropHandle(model, config, scorer=scorer)


@dataclass(frozen=True)
class _Batch:
    """The language model's inputs, completed the way the stock forward completes them."""

    hidden: torch.Tensor  # (B, q, d) input embeddings
    attention_mask: torch.Tensor  # (B, past + q) bool over the original sequence
    position_ids: torch.Tensor  # (B, q) long, or (B, q, 3) M-RoPE (t, h, w) ids
    cache: StagedCache | None  # the prompt's cache (a decode step's: filled by the prefill); None without caching
    use_cache: bool
    past_len: int


class DropHandle:
    """Drop state attached to one model. `last_stats` holds one `SampleDropStats` per sample of the
    last prefill (image tokens and all tokens at every layer, kept image tokens per boundary).

    Under `model.eval()` the last prompt token ranks the image tokens; under `model.train()` (with
    `labels`) every token just before an answer span does, as in the official training code."""

    def __init__(self, model, config: DropConfig, *, scorer: Scorer | None = None):
        if not isinstance(config, DropConfig):
            raise TypeError(f"config must be a DropConfig, got {type(config).__name__}")
        if scorer is not None and not isinstance(scorer, Scorer):
            raise TypeError(f"scorer must be a pdrop_eval.engine.scoring.Scorer, got {type(scorer).__name__}")
        family = family_of_model(model)
        language_model = family.language_model(model)
        _check_decoder(language_model)
        if "forward" in vars(language_model):
            raise ValueError("a drop config is already applied to this model; call handle.remove() first")

        self.model = model
        self.config = config
        self.family = family
        self.boundaries = config.boundaries(len(language_model.layers))
        own_scorer, self.reducer = config.parts()
        self.scorer = own_scorer if scorer is None else scorer
        self.image_token_ids = torch.tensor(family.image_token_ids(model.config))
        self.last_stats: list[SampleDropStats] = []
        self._language_model = language_model
        self._input_ids = None  # set by the pre-hooks for the language-model call that follows
        self._labels = None
        self._query_index = None

        self._forward_signature = inspect.signature(type(model).forward)  # the class's: wrappers may hide it
        self._language_model_signature = inspect.signature(type(language_model).forward)
        # The parts first: one that refuses this model (a method without a rule for its family) leaves no hook behind.
        part_hooks = [hook for part in (self.scorer, self.reducer) if part is not None for hook in part.attach(model)]
        if family.position_scheme != ROPE_1D and config.position_mode == "compact" and self.boundaries:
            for hook in part_hooks:
                hook.remove()
            raise ValueError(
                f"{config.describe()} with position_mode='compact' cannot run on {family.describe()}: compact renumbers "
                f"1-D positions, and its {family.position_scheme} (t, h, w) ids have no contiguous renumbering; pass "
                "position_mode=original (kept tokens keep their original ids)"
            )
        self._hooks = [
            family.input_ids_module(model).register_forward_pre_hook(self._record_input_ids, with_kwargs=True),
            model.register_forward_pre_hook(self._record_labels, with_kwargs=True),
            *part_hooks,
        ]
        language_model.forward = self._language_model_forward
        self._stock_generate = model.generate
        self._generate_signature = inspect.signature(model.generate)
        model.generate = self._checked_generate
        self._removed = False

    # ----- public ---------------------------------------------------------------------------------
    def remove(self) -> None:
        """Restore the stock model exactly (idempotent)."""
        if self._removed:
            return
        for hook in self._hooks:
            hook.remove()
        del self._language_model.forward
        del self.model.generate
        self._removed = True

    def __enter__(self) -> "DropHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    @contextmanager
    def query_positions(self, positions):
        """Rank with the token at `positions` (B,) instead of each sample's last token.

        For scoring a continuation in one forward (log-likelihood): the ranking must use the last
        context token, as generation would, not the continuation's last token."""
        self._query_index = torch.as_tensor(positions, dtype=torch.long)
        try:
            yield self
        finally:
            self._query_index = None

    # ----- hooks ----------------------------------------------------------------------------------
    def _record_input_ids(self, module, args, kwargs):
        self._input_ids = kwargs.get("input_ids", args[0] if args else None)

    def _record_labels(self, module, args, kwargs):
        self._labels = self._forward_signature.bind_partial(module, *args, **kwargs).arguments.get("labels")

    def _checked_generate(self, *args, **kwargs):
        if self.boundaries:
            self._check_generate_options(_named_arguments(self._generate_signature, *args, **kwargs))
        return self._stock_generate(*args, **kwargs)

    def _check_generate_options(self, options: dict) -> None:
        generation_config = options.get("generation_config") or self.model.generation_config
        num_beams = options.get("num_beams", generation_config.num_beams)
        if num_beams is not None and num_beams > 1:
            raise ValueError(
                f"num_beams={num_beams}: beam search reorders the KV cache, which {self.config.describe()} "
                "prunes per layer; use greedy or sampling (num_beams=1)"
            )
        for option, name in _UNSUPPORTED_GENERATE_OPTIONS.items():
            if options.get(option) is not None:
                raise ValueError(f"{name} ({option}) is not supported with {self.config.describe()}")

    # ----- the language model's forward -----------------------------------------------------------
    def _language_model_forward(self, *args, **kwargs):
        """The language model's forward, its arguments bound by the names of the stock signature (the
        KV cache under either name transformers has used)."""
        recorded_ids, labels = self._input_ids, self._labels
        self._input_ids = self._labels = None
        if not self.boundaries:  # nothing to drop: the stock forward
            return self._undropped_forward(recorded_ids, args, kwargs)
        arguments = _named_arguments(self._language_model_signature, self._language_model, *args, **kwargs)
        cache = pop_cache(arguments)
        for flag in ("output_attentions", "output_hidden_states"):
            if arguments.pop(flag, None):
                raise ValueError(f"{flag} is not available while {self.config.describe()} is applied")
        arguments.pop("return_dict", None)
        input_ids = arguments.pop("input_ids", None)
        token_ids = input_ids if input_ids is not None else recorded_ids
        batch = self._complete_inputs(
            input_ids=input_ids,
            attention_mask=arguments.pop("attention_mask", None),
            position_ids=arguments.pop("position_ids", None),
            cache=cache,
            inputs_embeds=arguments.pop("inputs_embeds", None),
            use_cache=arguments.pop("use_cache", None),
        )
        if batch.past_len:
            return self._decode(batch, layer_kwargs=arguments)
        return self._prefill(batch, token_ids=token_ids, labels=labels, layer_kwargs=arguments)

    def _undropped_forward(self, recorded_ids, args: tuple, kwargs: dict):
        """The stock forward; a prefill still records its statistics."""
        lm = self._language_model
        given = _named_arguments(self._language_model_signature, lm, *args, **kwargs)
        token_ids = given.get("input_ids")
        token_ids = recorded_ids if token_ids is None else token_ids
        cache = pop_cache(given)
        if token_ids is not None and (cache is None or cache.get_seq_length() == 0):
            mask = given.get("attention_mask")
            valid = mask.bool() if mask is not None else torch.ones_like(token_ids, dtype=torch.bool)
            self.last_stats = sample_stats(
                num_layers=len(lm.layers),
                stage_first_layers=[0],
                image_tokens=(self._is_image_token(token_ids) & valid).sum(1, keepdim=True),
                tokens=valid.sum(1, keepdim=True),
                kept=torch.zeros(token_ids.shape[0], 0, 0, dtype=torch.bool),
            )
        return type(lm).forward(lm, *args, **kwargs)

    def _complete_inputs(self, *, input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache) -> _Batch:
        lm = self._language_model
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        past_len = cache.get_seq_length() if cache is not None else 0
        if lm.training:
            use_cache = self._check_training_cache(past_len, use_cache)
        hidden = lm.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, seq_len, _ = hidden.shape
        use_cache = lm.config.use_cache if use_cache is None else use_cache
        if use_cache:
            cache = self._prompt_cache(cache, past_len)
        position_ids = self._token_positions(position_ids, past_len=past_len, batch=batch, seq_len=seq_len, device=hidden.device)
        if attention_mask is None:
            attention_mask = torch.ones(batch, past_len + seq_len, dtype=torch.bool, device=hidden.device)
        if attention_mask.shape != (batch, past_len + seq_len):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(batch, past_len + seq_len)}"
            )
        return _Batch(
            hidden=hidden,
            attention_mask=attention_mask.bool(),
            position_ids=position_ids,
            cache=cache if use_cache else None,
            use_cache=use_cache,
            past_len=past_len,
        )

    def _token_positions(self, position_ids, *, past_len: int, batch: int, seq_len: int, device) -> torch.Tensor:
        """(B, q) positions, or (B, q, 3) (t, h, w) ids for M-RoPE, from what the language model was given,
        read by shape: none (the positions after the cache, text-like), (B, q) (one id for every axis),
        or (axes, B, q); M-RoPE's (4, B, q) leads with a text row that transformers reads for packed masks
        only, which the engine does not use."""
        axes = POSITION_AXES[self.family.position_scheme]
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + seq_len, device=device).unsqueeze(0)
        if position_ids.ndim == 2:
            position_ids = position_ids.unsqueeze(0).expand(axes, -1, -1)
        elif axes > 1 and position_ids.ndim == 3 and position_ids.shape[0] in (axes, axes + 1):
            position_ids = position_ids[-axes:]
        else:
            raise ValueError(
                f"position_ids of shape {tuple(position_ids.shape)}: {self.family.describe()} takes (batch, length)"
                + (f" or ({axes} or {axes + 1}, batch, length)" if axes > 1 else "")
            )
        position_ids = position_ids.expand(axes, batch, seq_len)
        return position_ids[0] if axes == 1 else position_ids.permute(1, 2, 0)

    def _prompt_cache(self, cache, past_len: int) -> StagedCache:
        """The cache a prefill fills (a new `StagedCache`, returned in the output, where generate() and
        callers decoding by hand take the next step's cache from), or the one a decode step continues."""
        if past_len:
            if not isinstance(cache, StagedCache) or cache.layout is None:
                raise ValueError(
                    f"this KV cache ({type(cache).__name__}) was not filled by a prefill under {self.config.describe()}: "
                    "decode with the cache the prefill returned (its output's past_key_values, or cache since transformers 5.24)"
                )
            return cache
        if cache is not None and type(cache) not in (DynamicCache, StagedCache):
            raise ValueError(
                f"{type(cache).__name__} is not supported with {self.config.describe()}: its layers would hold "
                "different lengths; use the default DynamicCache"
            )
        return StagedCache(config=self._language_model.config)

    def _check_training_cache(self, past_len: int, use_cache) -> bool:
        """Under model.train() there is no KV cache: a training forward ranks the image tokens by its
        answer spans, so its pruned cache is no prompt cache anything could decode from."""
        if past_len or use_cache:
            raise ValueError(
                f"KV caching (use_cache=True or past_key_values) is not available under model.train() while "
                f"{self.config.describe()} is applied; call model.eval() to generate, or pass use_cache=False"
            )
        return False

    def _decode(self, batch: _Batch, *, layer_kwargs: dict) -> BaseModelOutputWithPast:
        """Decode steps are text: a generated image-token id carries no image features."""
        lm = self._language_model
        hidden = staged_decode(
            lm,
            config=self.config,
            layout=batch.cache.layout,
            hidden=batch.hidden,
            attention_mask=batch.attention_mask,
            positions=batch.position_ids,
            cache=batch.cache,
            layer_kwargs=layer_kwargs,
        )
        return _model_output(lm.norm(hidden), batch.cache)

    def _prefill(self, batch: _Batch, *, token_ids, labels, layer_kwargs: dict) -> BaseModelOutputWithPast:
        lm = self._language_model
        valid = batch.attention_mask
        is_image = self._image_mask(token_ids, batch.hidden.shape[:2]) & valid
        if lm.training:
            queries = self._answer_query_rows(valid, is_image, labels)
        else:
            queries = self._prompt_query_row(valid, is_image)
        result = staged_prefill(
            lm,
            config=self.config,
            boundaries=self.boundaries,
            slots=Slots.from_prompt(hidden=batch.hidden, valid=valid, positions=batch.position_ids, is_image=is_image),
            queries=queries,
            token_ids=token_ids,
            cache=batch.cache,
            use_cache=batch.use_cache,
            layer_kwargs=layer_kwargs,
            scorer=self.scorer,
            reducer=self.reducer,
            apply_rotary=self.family.apply_rotary,
        )
        self.last_stats = result.stats
        if batch.use_cache:
            batch.cache.layout = result.layout
        return _model_output(lm.norm(result.hidden), batch.cache)

    # ----- where the image tokens are and who ranks them ------------------------------------------
    def _image_mask(self, token_ids, shape) -> torch.Tensor:
        if token_ids is None:
            raise ValueError(
                "the image tokens cannot be located: call the model with input_ids (not inputs_embeds) "
                "while a drop config is applied"
            )
        if token_ids.shape != shape:
            raise ValueError(f"input_ids shape {tuple(token_ids.shape)} does not match the embeddings {tuple(shape)}")
        return self._is_image_token(token_ids)

    def _is_image_token(self, token_ids: torch.Tensor) -> torch.Tensor:
        return torch.isin(token_ids, self.image_token_ids.to(token_ids.device))

    def _prompt_query_row(self, valid: torch.Tensor, is_image: torch.Tensor) -> QueryRows:
        """Inference: the last prompt token (or `query_positions`) of each sample."""
        batch, seq_len = valid.shape
        if self._query_index is None:
            # the last real token of each sample (left or right padding)
            query_index = seq_len - 1 - valid.flip(1).long().argmax(1)
        else:
            query_index = self._query_index.to(valid.device)
            if query_index.shape != (batch,):
                raise ValueError(f"query positions must have shape ({batch},), got {tuple(query_index.shape)}")
            if ((query_index < 0) | (query_index >= seq_len)).any():
                raise ValueError(f"query positions {query_index.tolist()} out of range for length {seq_len}")
        rows = torch.arange(batch, device=valid.device)
        if not valid[rows, query_index].all():
            raise ValueError("a query position points at a padding token")
        if is_image[rows, query_index].any():
            raise ValueError("the query token (last prompt token) is an image token; end the prompt with text")
        return QueryRows(index=query_index.unsqueeze(1), valid=torch.ones_like(query_index, dtype=torch.bool).unsqueeze(1))

    def _answer_query_rows(self, valid: torch.Tensor, is_image: torch.Tensor, labels) -> QueryRows:
        """Training: every token p just before an answer span (labels[p] == -100, labels[p + 1] != -100,
        HF's unshifted labels), as the official training code ranks; samples without one get no row."""
        if self._query_index is not None:
            raise ValueError("query_positions applies under model.eval(); under model.train() the labels choose the query rows")
        if labels is None:
            raise ValueError(
                f"under model.train(), {self.config.describe()} ranks image tokens by the tokens before each answer "
                "span, which needs labels: pass labels to the model's forward, or call model.eval()"
            )
        if labels.shape != valid.shape:
            raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {tuple(valid.shape)} like input_ids")
        answer = (labels.to(valid.device) != IGNORE_INDEX) & valid  # (B, T)
        labelled_images = (answer & is_image).any(1)
        if labelled_images.any():
            raise ValueError(
                f"labels of samples {labelled_images.nonzero().flatten().tolist()} mark image tokens as answer tokens; "
                f"image tokens' labels must be {IGNORE_INDEX}"
            )
        before_answer = valid[:, :-1] & ~answer[:, :-1] & answer[:, 1:]  # (B, T-1)
        image_queries = (before_answer & is_image[:, :-1]).any(1)
        if image_queries.any():
            raise ValueError(
                f"in samples {image_queries.nonzero().flatten().tolist()} an answer span starts right after an image "
                "token; put text between the image and the answer"
            )
        num_rows = max(int(before_answer.sum(1).max()), 1)
        # The rows of each sample first, in order; shorter samples padded with invalid rows.
        index = torch.sort(before_answer.long(), dim=1, descending=True, stable=True).indices[:, :num_rows]
        return QueryRows(index=index, valid=before_answer.gather(1, index))


def _named_arguments(signature: inspect.Signature, *args, **kwargs) -> dict:
    """The call's arguments by name: the signature's named parameters and what its **kwargs took."""
    arguments = dict(signature.bind_partial(*args, **kwargs).arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
    arguments.pop("self", None)
    return arguments


def _model_output(last_hidden_state: torch.Tensor, cache) -> BaseModelOutputWithPast:
    return BaseModelOutputWithPast(last_hidden_state=last_hidden_state, **{cache_field(BaseModelOutputWithPast): cache})


def _check_decoder(language_model) -> None:
    """The staged loop needs a LLaMA-style decoder (LLaMA/Vicuna, Mistral, Qwen2) with full attention."""
    needed = ("layers", "rotary_emb", "norm", "embed_tokens")
    missing = [name for name in needed if not hasattr(language_model, name)]
    layer = language_model.layers[0] if hasattr(language_model, "layers") else None
    if layer is not None:
        missing += [name for name in ("input_layernorm", "self_attn") if not hasattr(layer, name)]
        missing += [f"self_attn.{n}" for n in ("q_proj", "k_proj", "head_dim", "scaling", "num_key_value_groups") if not hasattr(getattr(layer, "self_attn", None), n)]
    if missing:
        raise TypeError(f"unsupported decoder {type(language_model).__name__}: lacks {missing}")
    # Raise now, naming the installed transformers, if a name the engine binds to is gone.
    cache_parameter(type(language_model).forward)
    cache_parameter(type(layer).forward)
    cache_field(BaseModelOutputWithPast)
    layer_types = getattr(language_model.config, "layer_types", None)
    sliding = getattr(language_model.config, "sliding_window", None) is not None
    if sliding and (layer_types is None or any(t != "full_attention" for t in layer_types)):
        raise TypeError(f"{type(language_model).__name__} uses sliding-window attention, which the drop engine does not support")
