"""`apply_drop(model, config)`: enable dropping on a loaded HF LLaVA / LLaVA-NeXT model.

The language model's `forward` is replaced on the instance by a staged layer loop over the
unmodified decoder layers; a pre-hook on the multimodal model records where the image tokens are.
`generate()` needs no override: prefill prunes, decode steps attend the pruned per-layer cache.
`handle.remove()` deletes the instance attributes and hooks, restoring the stock model exactly.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from pdrop_eval.engine.config import DropConfig
from pdrop_eval.engine.staged import staged_decode, staged_prefill

SUPPORTED_MODELS = (LlavaForConditionalGeneration, LlavaNextForConditionalGeneration)
_UNSUPPORTED_GENERATE_OPTIONS = {
    "assistant_model": "assisted decoding",
    "prompt_lookup_num_tokens": "prompt-lookup decoding",
}


def apply_drop(model, config: DropConfig) -> "DropHandle":
    """Enable `config` on `model`; returns a handle (`last_stats`, `remove()`, context manager)."""
    return DropHandle(model, config)


class DropHandle:
    """Drop state attached to one model. `last_stats` holds one dict per sample of the last prefill:
    `num_image_tokens`, `image_tokens_per_layer` and `tokens_per_layer` (one int per decoder layer,
    the latter counting text too), and `kept` (one sorted index list per boundary, into the sample's
    original image-token block)."""

    def __init__(self, model, config: DropConfig):
        if not isinstance(config, DropConfig):
            raise TypeError(f"config must be a DropConfig, got {type(config).__name__}")
        if not isinstance(model, SUPPORTED_MODELS):
            names = ", ".join(cls.__name__ for cls in SUPPORTED_MODELS)
            raise TypeError(f"apply_drop supports {names}; got {type(model).__name__}")
        language_model = model.model.language_model
        _check_decoder(language_model)
        if "forward" in vars(language_model):
            raise ValueError("a drop config is already applied to this model; call handle.remove() first")

        self.model = model
        self.config = config
        self.boundaries = config.boundaries(len(language_model.layers))
        self.image_token_id = model.config.image_token_id
        self.last_stats: list[dict] = []
        self._language_model = language_model
        self._input_ids = None  # set by the pre-hook for the language-model call that follows
        self._query_index = None
        self._prefill_states = weakref.WeakKeyDictionary()  # cache -> PrefillState

        self._hook = model.model.register_forward_pre_hook(self._record_input_ids, with_kwargs=True)
        language_model.forward = self._language_model_forward
        stock_generate = model.generate
        model.generate = lambda *args, **kwargs: stock_generate(*args, **self._check_generate(kwargs))
        self._removed = False

    # ----- public ---------------------------------------------------------------------------------
    def remove(self) -> None:
        """Restore the stock model exactly (idempotent)."""
        if self._removed:
            return
        self._hook.remove()
        del self._language_model.forward
        del self.model.generate
        self._prefill_states = weakref.WeakKeyDictionary()
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

    def _check_generate(self, kwargs: dict) -> dict:
        if not self.boundaries:
            return kwargs
        generation_config = kwargs.get("generation_config") or self.model.generation_config
        num_beams = kwargs.get("num_beams", generation_config.num_beams)
        if num_beams is not None and num_beams > 1:
            raise ValueError(
                f"num_beams={num_beams}: beam search reorders the KV cache, which {self.config.describe()} "
                "prunes per layer; use greedy or sampling (num_beams=1)"
            )
        for option, name in _UNSUPPORTED_GENERATE_OPTIONS.items():
            if kwargs.get(option) is not None:
                raise ValueError(f"{name} ({option}) is not supported with {self.config.describe()}")
        return kwargs

    def _language_model_forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ):
        lm = self._language_model
        image_input_ids, self._input_ids = self._input_ids, None
        if input_ids is not None:
            image_input_ids = input_ids
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        is_prefill = past_len == 0

        if not self.boundaries:  # nothing to drop: the stock forward
            if is_prefill:
                self.last_stats = self._undropped_stats(image_input_ids, attention_mask)
            return type(lm).forward(
                lm,
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **kwargs,
            )

        for flag in ("output_attentions", "output_hidden_states"):
            if kwargs.pop(flag, None):
                raise ValueError(f"{flag} is not available while {self.config.describe()} is applied")
        kwargs.pop("return_dict", None)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        hidden = lm.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, seq_len, _ = hidden.shape
        use_cache = lm.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=lm.config)
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + seq_len, device=hidden.device).unsqueeze(0)
        position_ids = position_ids.expand(batch, seq_len)
        if attention_mask is None:
            attention_mask = torch.ones(batch, past_len + seq_len, dtype=torch.bool, device=hidden.device)
        if attention_mask.shape != (batch, past_len + seq_len):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(batch, past_len + seq_len)}"
            )
        if not is_prefill:
            # Decode steps are text: a generated image-token id carries no image features.
            state = self._prefill_states.get(past_key_values)
            if state is None:
                raise ValueError("this KV cache was not filled by a prefill under the applied drop config")
            hidden = staged_decode(lm, self.config, state, hidden, attention_mask, position_ids, past_key_values, kwargs)
            return BaseModelOutputWithPast(last_hidden_state=lm.norm(hidden), past_key_values=past_key_values)

        image_mask = self._image_mask(image_input_ids, batch, seq_len)
        valid = attention_mask.bool()
        query_index = self._resolve_query_index(valid, image_mask)
        result = staged_prefill(
            lm,
            self.config,
            self.boundaries,
            hidden,
            valid,
            position_ids,
            image_mask & valid,
            query_index,
            past_key_values,
            use_cache,
            kwargs,
            token_ids=image_input_ids,
        )
        self.last_stats = result.stats
        if use_cache:
            self._prefill_states[past_key_values] = result.state
        return BaseModelOutputWithPast(
            last_hidden_state=lm.norm(result.hidden), past_key_values=past_key_values if use_cache else None
        )

    # ----- helpers --------------------------------------------------------------------------------
    def _image_mask(self, input_ids, batch: int, seq_len: int) -> torch.Tensor:
        if input_ids is None:
            raise ValueError(
                "the image tokens cannot be located: call the LLaVA model with input_ids (not inputs_embeds) "
                "while a drop config is applied"
            )
        if input_ids.shape != (batch, seq_len):
            raise ValueError(f"input_ids shape {tuple(input_ids.shape)} does not match the embeddings {(batch, seq_len)}")
        return input_ids == self.image_token_id

    def _resolve_query_index(self, valid: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
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
        if image_mask[rows, query_index].any():
            raise ValueError("the query token (last prompt token) is an image token; end the prompt with text")
        return query_index

    def _undropped_stats(self, input_ids, attention_mask) -> list[dict]:
        if input_ids is None:
            return []
        valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        num_layers = len(self._language_model.layers)
        num_image = ((input_ids == self.image_token_id) & valid).sum(1).tolist()
        num_tokens = valid.sum(1).tolist()
        return [
            {
                "num_image_tokens": n,
                "image_tokens_per_layer": [n] * num_layers,
                "tokens_per_layer": [t] * num_layers,
                "kept": [],
            }
            for n, t in zip(num_image, num_tokens)
        ]


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
    layer_types = getattr(language_model.config, "layer_types", None)
    sliding = getattr(language_model.config, "sliding_window", None) is not None
    if sliding and (layer_types is None or any(t != "full_attention" for t in layer_types)):
        raise TypeError(f"{type(language_model).__name__} uses sliding-window attention, which the drop engine does not support")
