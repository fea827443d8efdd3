"""SparseVLM (Zhang et al., ICML 2025, arXiv 2410.04417), v1.5: inside the language model, text raters
rank the image tokens at three layers; each layer keeps its top image tokens and recycles the best of
the pruned ones into a few merged tokens.

The rule follows the official repository Gumpest/SparseVLMs at commit 26a5f48 (main, 2025-12-13), with
its default USE_VERSION "1_0" (the v1.5 code; "2_0" is SparseVLM+):

- `llava/model/language_model/modelling_sparse_llama.py`, `LlamaDynamicvitModel.forward`: the raters
  are chosen once, from the language model's input (layer 0's input states): `v_t @ t_t.T` between the
  image tokens and every token after the image block, softmax over the text tokens, mean over the image
  tokens; the text tokens above that mean are the raters;
- at each layer of `pruning_loc` (2, 6, 15) the layer runs on all tokens and its attention weights
  (softmax of its own q/k with RoPE, causal) are kept; `score.py`, `attn_postprocess_topk`: mean over
  heads, the raters' rows, the current image tokens' columns, mean over the raters; the top
  `min(k, image tokens - 1)` are kept, k from `sparse_token_dict[retained_tokens]`: 64 -> [66, 30, 17],
  128 -> [303, 110, 36], 192 -> [300, 200, 110];
- recycling, on that layer's output states: of the pruned image tokens the top `int(0.3 * pruned) + 1`
  by the same score, clustered into `int(that / 10) + 1` groups by `utils.py`, `cluster_and_merge`
  (DPC-kNN: Euclidean distance / sqrt(d); density exp(-mean squared distance to the `groups` nearest,
  itself included); each token's distance to the nearest denser token (the largest distance for the
  densest); centres: the `groups` largest distance·density; every token to its nearest centre, a centre
  to itself; a group's token = its members' sum / (count + 1e-6)), in the centres' order, placed right
  after the kept image tokens (`select_and_merge_token`);
- positions: the pruned sequence is numbered 0, 1, ... again (`position_ids[:, :len(kept) + groups]`),
  so the kept and recycled tokens take consecutive positions and the text after them moves up; decoding
  continues from each layer's own cache length (the sdpa attention's `get_usable_length`);
- the recycled tokens count as image tokens from then on (`v_token_num = kept + cluster_num`): a later
  layer ranks them with the others and may prune or recycle them again.

Here the drop follows each pruning layer l (`Boundary(score_layer=l, drop_layer=l + 1)`): the scorer
ranks with layer l's input and attention, the reducer (`sparsevlm_parts`) keeps and recycles on layer
l's output, and the recycled tokens are inserted by the staged prefill (`InsertedTokens`). The image
tokens after a boundary (`kept_counts`) are the kept plus the recycled ones. Deviations (README,
"Comparison methods"): batched; scores and clustering in float32; the official clustering adds
uniform noise (1e-6) to the densities to break ties, here a tie goes to the earlier token; ties in the
ranking go to the earlier token; one image per prompt, as the official code; LLaVA-NeXT's image block
(base tile, grid, newline tokens) is ranked whole (our extension).

Plain Python (no torch): the parts load when a model runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdrop_eval.engine.methods.base import Boundary, MethodSpec, check_int, parse_int, parse_list

# score.py, sparse_token_dict (USE_VERSION 1_0): retained tokens -> image tokens kept at each pruning layer
OFFICIAL_SCHEDULES = {64: (66, 30, 17), 128: (303, 110, 36), 192: (300, 200, 110)}
RECYCLED_SHARE = 0.3  # of the pruned image tokens, the best-ranked share (+1) is recycled
TOKENS_PER_GROUP = 10  # recycled tokens per merged token (+1 group)


@dataclass(frozen=True)
class SparseVLMParams:
    """sparsevlm_layers: the pruning layers (the official `pruning_loc`; each drops before the next
    layer); sparsevlm_tokens: the official retained-token setting naming a schedule (OFFICIAL_SCHEDULES);
    sparsevlm_counts: instead, the image tokens kept by score at each pruning layer."""

    sparsevlm_layers: tuple[int, ...]
    sparsevlm_tokens: int | None = None
    sparsevlm_counts: tuple[int, ...] | None = None

    @property
    def schedule(self) -> tuple[int, ...]:
        return OFFICIAL_SCHEDULES[self.sparsevlm_tokens] if self.sparsevlm_counts is None else self.sparsevlm_counts


def stage_split(top: int, image_tokens: int) -> tuple[int, int, int]:
    """At one pruning layer whose schedule keeps `top`, for a sample holding `image_tokens` image tokens:
    (image tokens kept by score, pruned tokens recycled, merged tokens they make)."""
    if image_tokens == 0:  # nothing to rank (the official code keeps everything then)
        return 0, 0, 0
    kept = min(top, image_tokens - 1)
    recycled = int((image_tokens - kept) * RECYCLED_SHARE) + 1
    return kept, recycled, int(recycled / TOKENS_PER_GROUP) + 1


def kept_and_recycled(schedule: tuple[int, ...], num_image_tokens: int) -> list[tuple[int, int, int]]:
    """`stage_split` at each pruning layer for a sample entering with `num_image_tokens`; the next layer
    ranks the kept and the merged tokens."""
    stages, image_tokens = [], num_image_tokens
    for top in schedule:
        kept, recycled, groups = stage_split(top, image_tokens)
        stages.append((kept, recycled, groups))
        image_tokens = kept + groups
    return stages


def budget_schedule(tokens: int) -> tuple[int, ...]:
    """The schedule a budget solved to `tokens` runs: the official one where it exists; between two
    official sizes, their schedules interpolated linearly; below 64 or above 192, the nearest official
    schedule scaled by tokens / its size; each count at least 1. The official code defines three sizes
    only, and a budget needs every size in between and beyond (`budget=64` averages 64 image tokens per
    layer only below the official 64 schedule, which averages 82.25 at N=576)."""
    sizes = sorted(OFFICIAL_SCHEDULES)
    below = [size for size in sizes if size <= tokens]
    above = [size for size in sizes if size >= tokens]
    if below and above:
        low, high = below[-1], above[0]
        share = 0.0 if high == low else (tokens - low) / (high - low)
        pairs = zip(OFFICIAL_SCHEDULES[low], OFFICIAL_SCHEDULES[high])
        return tuple(max(1, round(a + share * (b - a))) for a, b in pairs)
    reference = above[0] if above else below[-1]
    return tuple(max(1, round(count * tokens / reference)) for count in OFFICIAL_SCHEDULES[reference])


class SparseVLM(MethodSpec):
    def check(self, params: SparseVLMParams) -> None:
        layers = tuple(check_int("sparsevlm_layers entry", layer) for layer in params.sparsevlm_layers)
        if not layers or layers[0] < 0 or any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"sparsevlm_layers must be increasing layer indices >= 0 (the official 2;6;15), got {list(layers)}")
        if (params.sparsevlm_tokens is None) == (params.sparsevlm_counts is None):
            given = "neither" if params.sparsevlm_tokens is None else "both"
            raise ValueError(f"SparseVLM needs exactly one of sparsevlm_tokens or sparsevlm_counts, got {given}")
        if params.sparsevlm_tokens is not None and check_int("sparsevlm_tokens", params.sparsevlm_tokens) not in OFFICIAL_SCHEDULES:
            raise ValueError(
                f"sparsevlm_tokens must name an official SparseVLM schedule, one of {sorted(OFFICIAL_SCHEDULES)}, got {params.sparsevlm_tokens} "
                "(other schedules: sparsevlm_counts)"
            )
        counts = tuple(check_int("sparsevlm_counts entry", count) for count in params.schedule)
        if len(counts) != len(layers):
            raise ValueError(f"SparseVLM's schedule {list(counts)} has {len(counts)} counts for {len(layers)} sparsevlm_layers {list(layers)}")
        if any(count < 1 for count in counts):
            raise ValueError(f"sparsevlm_counts entries must be >= 1, got {list(counts)}")

    def boundaries(self, params: SparseVLMParams, num_layers: int) -> list[Boundary]:
        if params.sparsevlm_layers[-1] >= num_layers - 1:
            raise ValueError(
                f"sparsevlm_layers {list(params.sparsevlm_layers)}: each prunes before the next layer, so the last must be below "
                f"the model's last layer ({num_layers - 1})"
            )
        return [Boundary(score_layer=layer, drop_layer=layer + 1) for layer in params.sparsevlm_layers]

    def kept_counts(self, params: SparseVLMParams, num_image_tokens: int) -> list[int]:
        return [kept + groups for kept, _, groups in kept_and_recycled(params.schedule, num_image_tokens)]

    def parts(self, params: SparseVLMParams) -> tuple:
        from pdrop_eval.engine.methods.sparsevlm_parts import sparsevlm_parts  # torch: loaded only when a model runs

        return sparsevlm_parts(params)

    def budget_fields(self, count: int) -> dict:
        if count in OFFICIAL_SCHEDULES:
            return {"sparsevlm_tokens": count}
        return {"sparsevlm_counts": budget_schedule(count)}

    def budget_counts(self, num_image_tokens: int, shape: dict) -> range:
        """Sizes of `budget_schedule`, up to one whose every count keeps all image tokens but one."""
        largest = max(OFFICIAL_SCHEDULES)
        return range(1, max(largest, -(-num_image_tokens * largest // min(OFFICIAL_SCHEDULES[largest]))) + 1)

    def label(self, params: SparseVLMParams, position_mode: str) -> str:
        shape = f"{params.sparsevlm_tokens}" if params.sparsevlm_counts is None else "/".join(map(str, params.sparsevlm_counts))
        label = f"{self.series} {shape}"
        if params.sparsevlm_layers != self.defaults["sparsevlm_layers"]:
            label += " @" + ",".join(map(str, params.sparsevlm_layers))
        return label

    def describe(self, params: SparseVLMParams, position_mode: str) -> str:
        shape = f"tokens={params.sparsevlm_tokens}" if params.sparsevlm_counts is None else f"counts={list(params.sparsevlm_counts)}"
        return f"{self.title}(layers={list(params.sparsevlm_layers)}, {shape}, kept per layer {list(params.schedule)} plus recycled)"

    def options(self, params: SparseVLMParams, position_mode: str) -> dict[str, str]:
        options = {"sparsevlm_layers": ";".join(map(str, params.sparsevlm_layers))}
        if params.sparsevlm_counts is None:
            return {**options, "sparsevlm_tokens": str(params.sparsevlm_tokens)}
        return {**options, "sparsevlm_counts": ";".join(map(str, params.sparsevlm_counts))}


SPARSEVLM_OPTIONS = {  # register_method(options=)
    "sparsevlm_layers": ("sparsevlm_layers", lambda raw: parse_list(raw, parse_int)),
    "sparsevlm_tokens": ("sparsevlm_tokens", parse_int),
    "sparsevlm_counts": ("sparsevlm_counts", lambda raw: parse_list(raw, parse_int)),
}
SCHEDULE_FORMS = frozenset({"sparsevlm_tokens", "sparsevlm_counts"})

SPARSEVLM = SparseVLM(
    name="sparsevlm", title="SparseVLM", kind="sparsevlm", series="SparseVLM", keys=tuple(SPARSEVLM_OPTIONS),
    defaults={"sparsevlm_layers": (2, 6, 15), "sparsevlm_tokens": 192, "position_mode": "compact"},  # the official defaults
    params_class=SparseVLMParams, alternatives=(SCHEDULE_FORMS,), budget_family="count", budget_keys=tuple(SCHEDULE_FORMS),
)
