"""Token budgets to drop schedules: "keep 128 image tokens" or "spend 2 TFLOPs" as a PyramidDrop λ or
a FastV R, with exact integer counts. Plain Python (no torch).

Conventions (what a budget counts; `CONVENTIONS`):

- ``avg_layer`` (the default): the image tokens each decoder layer sees, averaged over all L layers,
  ``(1/L)·Σ_l n_l``. FLOPs are close to linear in it, so equal averages mean nearly equal cost; this is
  the FLOPs-consistent reading of "192 / 128 / 64 retained tokens".
- ``after_drop``: the image tokens kept right after the (first) drop layer, as FastV-style papers quote.
- ``tflops``: the paper's "Infer FLOPs (T)" (`pdrop_eval.flops`: image tokens only, language model only).

The counts are the engine's: PyramidDrop keeps ``int(N·λ^s)`` after boundary s, FastV ``N − int(N·R)``.
Every convention is therefore a step function of λ (of R). For a budget at one N the solver lists the
steps (the λ where some ``N·λ^s`` reaches an integer), finds the step whose exact counts come closest to
the target (a tie goes to the cheaper one) and writes its λ with as few decimals as give the same counts.

A budget may be a share of N (``"25%"``), for LLaVA-NeXT, whose N varies per image while a run applies
one λ to all: the λ (R) is then the one whose unrounded counts meet the share exactly, the same for every
N, so that each image's exact average is within one token per layer of the share. ``"50%"`` of the
no-drop TFLOPs is solved at one N like an absolute budget (attention is quadratic in the tokens, so
the share differs at other N). `Schedule.of` gives a config's exact figures at any N.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from pdrop_eval.engine.config import DropConfig
from pdrop_eval.engine.methods import METHODS, MethodSpec, method_spec
from pdrop_eval.flops import (
    ModelDims,
    dims_from_config_dict,
    image_tokens_from_config,
    layer_flops,
    paper_tflops,
    resolve_dims,
)

CONVENTIONS = ("avg_layer", "after_drop", "tflops")
CONVENTION_TEXT = {
    "avg_layer": "average image tokens per decoder layer, (1/L)·Σ_l n_l",
    "after_drop": "image tokens kept after the (first) drop layer",
    "tflops": "TFLOPs in the paper's convention (image tokens only, language model only)",
}
# PyramidDrop boundaries for budgets: the paper's 8/16/24 cannot average below N/4 (its first 8 of 32
# layers see all N tokens); 2/8/16 is what the PyramidDrop authors suggest for low budgets.
BUDGET_LAYER_LIST = (2, 8, 16)
# the methods whose schedule a budget is solved for (`solve`): λ, R, or a kept count (`MethodSpec.budget_family`)
SOLVABLE_METHODS = tuple(spec.name for spec in METHODS.values() if spec.budget_family)


@dataclass(frozen=True)
class Budget:
    """What to spend: `amount` in `convention`'s unit, or a fraction of the no-drop value if `relative`."""

    amount: float
    convention: str = "avg_layer"
    relative: bool = False

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise ValueError(f"budget convention must be one of {', '.join(CONVENTIONS)}, got {self.convention!r}")
        if isinstance(self.amount, bool) or not isinstance(self.amount, (int, float)) or not math.isfinite(self.amount):
            raise ValueError(f"a budget must be a finite number, got {self.amount!r}")
        if self.amount <= 0:
            raise ValueError(f"a budget must be positive: {self.describe()} keeps nothing")
        if self.relative and self.amount > 1:
            raise ValueError(f"a relative budget is at most 100% (no drop), got {self.describe()}")

    @classmethod
    def parse(cls, text: str | float, convention: str = "avg_layer") -> Budget:
        """``"128"`` (tokens, or TFLOPs under ``tflops``), ``"25%"`` (of N, or of the no-drop TFLOPs)."""
        raw = str(text).strip()
        relative = raw.endswith("%")
        try:
            amount = float(raw.removesuffix("%"))
        except ValueError:
            raise ValueError(f"a budget is a number or a percentage (e.g. 128 or 25%), got {text!r}") from None
        return cls(amount / 100 if relative else amount, convention, relative)

    @classmethod
    def same_flops_as(cls, config: DropConfig, dims: ModelDims) -> Budget:
        """The paper's equal-budget comparison: the TFLOPs `config` spends at N = `dims.image_tokens`."""
        return cls(paper_tflops(dims, config), "tflops")

    def target(self, dims: ModelDims) -> float:
        """The budget in its convention's unit at N = `dims.image_tokens`."""
        if not self.relative:
            return float(self.amount)
        return self.amount * no_drop_value(self.convention, dims)

    def describe(self) -> str:
        unit = {"avg_layer": "avg image tokens/layer", "after_drop": "image tokens after drop", "tflops": "TFLOPs"}[self.convention]
        if self.relative:
            return f"{self.amount * 100:g}% of the no-drop {unit}"
        return f"{self.amount:g} {unit}"


@dataclass(frozen=True)
class Schedule:
    """A drop config's exact figures for one image of N tokens."""

    config: DropConfig
    dims: ModelDims  # dims.image_tokens is this N
    image_tokens_per_layer: tuple[int, ...]

    @classmethod
    def of(cls, config: DropConfig, dims: ModelDims) -> Schedule:
        counts = config.image_tokens_per_layer(dims.image_tokens, dims.num_layers)
        return cls(config, dims, tuple(counts))

    @property
    def num_image_tokens(self) -> int:
        return self.dims.image_tokens

    @property
    def avg_image_tokens(self) -> float:
        return average_image_tokens(self.image_tokens_per_layer)

    @property
    def kept_per_stage(self) -> tuple[int, ...]:
        return tuple(self.config.kept_counts(self.num_image_tokens))

    @property
    def kept_after_drop(self) -> int:
        return self.kept_per_stage[0] if self.kept_per_stage else self.num_image_tokens

    @property
    def tflops(self) -> float:
        return self.dims.tflops(self.image_tokens_per_layer)

    def value(self, convention: str) -> float:
        if convention == "tflops":
            return self.tflops
        return self.kept_after_drop if convention == "after_drop" else self.avg_image_tokens


@dataclass(frozen=True)
class Solution:
    """A solved budget: the schedule met, and how close it came."""

    budget: Budget
    target: float  # the budget in its convention's unit at this N
    schedule: Schedule

    @property
    def config(self) -> DropConfig:
        return self.schedule.config

    @property
    def achieved(self) -> float:
        return self.schedule.value(self.budget.convention)

    @property
    def error(self) -> float:
        return self.achieved - self.target


def average_image_tokens(image_tokens_per_layer: Iterable[int]) -> float:
    """The avg_layer convention: (1/L)·Σ_l n_l over one sample's decoder layers."""
    counts = list(image_tokens_per_layer)
    return sum(counts) / len(counts)


def no_drop_value(convention: str, dims: ModelDims) -> float:
    """What a budget of 100% means: N tokens, or the no-drop TFLOPs."""
    return Schedule.of(DropConfig.none(), dims).value(convention)


def model_dims(model: str | ModelDims, image_tokens: int | None = None) -> ModelDims:
    """A `pdrop_eval.flops` preset name, a checkpoint folder / config.json, or `ModelDims` itself."""
    if isinstance(model, ModelDims):
        return model if image_tokens is None else replace(model, image_tokens=image_tokens)
    return resolve_dims(model, image_tokens)


def as_budget(budget: Budget | str | float | DropConfig, convention: str, dims: ModelDims) -> Budget:
    """A `Budget` from what a caller wrote: a Budget, a number or text (`Budget.parse`), or a DropConfig
    (the same FLOPs as it)."""
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, DropConfig):
        return Budget.same_flops_as(budget, dims)
    if isinstance(budget, bool) or not isinstance(budget, (str, int, float)):
        raise TypeError(f"a budget is a number, text like '128' or '25%', a Budget or a DropConfig, got {budget!r}")
    return Budget.parse(budget, convention)


# ----- solving ----------------------------------------------------------------------------------------
def for_budget(budget, method: str = "pyramid", *, model="llava-1.5-7b", image_tokens: int | None = None, convention: str = "avg_layer", **shape) -> DropConfig:
    """The `method` config (one of SOLVABLE_METHODS) closest to `budget`: 128 image tokens, "25%" of N,
    a TFLOPs figure (convention="tflops") or another DropConfig (the same FLOPs). `model` is a FLOPs
    preset name, a checkpoint folder or a `ModelDims`; `image_tokens` overrides its N. `shape`:
    layer_list or search_layers=True (PyramidDrop), fastv_k (FastV), position_mode, or the other
    options of a method whose budget sets a token count (e.g. dart_k)."""
    return solve(budget, model_dims(model, image_tokens), method, convention=convention, **shape).config


def solve(
    budget: Budget | str | float | DropConfig,
    dims: ModelDims,
    method: str = "pyramid",
    *,
    convention: str = "avg_layer",
    search_layers: bool = False,
    **shape,
) -> Solution:
    """The `method` schedule closest to `budget` at N = `dims.image_tokens`: PyramidDrop's λ for
    `layer_list` (default 2/8/16; the best layer list too with `search_layers`), FastV's R for `fastv_k`
    (default 2), or the kept count of a method whose budget sets one (its other options in `shape`).

    Raises ValueError when no schedule of that shape reaches the budget, saying what is reachable.
    """
    budget = as_budget(budget, convention, dims)
    spec = method_spec(method) if method in METHODS else None
    family = spec.budget_family if spec else None
    if family == "pyramid":
        layer_list = tuple(shape.pop("layer_list", BUDGET_LAYER_LIST))
        position_mode = shape.pop("position_mode", None)
        _check_no_shape_left(spec, shape)
        if search_layers:
            return search_layer_lists(budget, dims, stages=len(layer_list), position_mode=position_mode)[0]
        return _solve_family(budget, dims, _pyramid_family(layer_list, position_mode))
    if search_layers:
        raise ValueError(f"search_layers searches PyramidDrop layer lists; {method} has none")
    if family == "fastv":
        fastv_k, position_mode = shape.pop("fastv_k", 2), shape.pop("position_mode", None)
        _check_no_shape_left(spec, shape)
        return _solve_family(budget, dims, _fastv_family(fastv_k, position_mode))
    if family == "count":
        return _solve_family(budget, dims, _count_family(spec, shape))
    raise ValueError(f"a budget is solved for one of the methods {', '.join(SOLVABLE_METHODS)}, got {method!r}")


def _check_no_shape_left(spec: MethodSpec, shape: dict) -> None:
    if shape:
        raise TypeError(f"a {spec.title} budget takes no {sorted(shape)}")


def solve_for_checkpoint(
    budget: Budget | str | float | DropConfig,
    config: dict,
    method: str,
    *,
    convention: str = "avg_layer",
    image_tokens: int | None = None,
    image_tokens_option: str = "budget_image_tokens=N",
    **shape,
) -> Solution:
    """`solve` for a checkpoint, given its HF config as a dict (config.json, `PretrainedConfig.to_dict()`).

    N is the checkpoint's own. LLaVA-NeXT's varies per image, so there an absolute budget needs
    `image_tokens`, the N it counts with (given as `image_tokens_option`, which the error names); a share
    of N, or the FLOPs of another config, is solved at the largest N."""
    largest, varies = image_tokens_from_config(config)
    dims = dims_from_config_dict(config, image_tokens)
    solved = as_budget(budget, convention, dims)
    counted = method in METHODS and METHODS[method].budget_family == "count"
    if varies and image_tokens is None and solved.relative and counted and solved.convention != "tflops":
        raise ValueError(
            f"budget {solved.describe()}: {METHODS[method].title} keeps a fixed number of image tokens, which is no fixed "
            f"share of N on this checkpoint, whose N varies per image (up to N={largest}); give a number of tokens and "
            f"the N it counts with ({image_tokens_option})"
        )
    if varies and image_tokens is None and not solved.relative and not isinstance(budget, DropConfig):
        share = solved.amount / no_drop_value(solved.convention, dims)
        of = "the no-drop TFLOPs" if solved.convention == "tflops" else "N"
        raise ValueError(
            f"budget {solved.describe()}: this checkpoint's number of image tokens varies per image (up to N={largest}); "
            f"give the budget as a share of {of} (it is {share:.1%} at the largest N), or the N it counts with ({image_tokens_option})"
        )
    return solve(solved, dims, method, **shape)


def search_layer_lists(
    budget: Budget | str | float | DropConfig,
    dims: ModelDims,
    *,
    convention: str = "avg_layer",
    stages: int = 3,
    step: int | None = None,
    position_mode: str | None = None,
) -> list[Solution]:
    """PyramidDrop schedules over every layer list of `stages` boundaries on a grid of `step` layers
    (default L/16, i.e. 2 for 32 layers), best first: the closest to the budget; among those within one
    token at one layer of the closest, the largest λ (the most gradual pyramid), then the latest first
    boundary."""
    budget = as_budget(budget, convention, dims)
    step = step or max(1, dims.num_layers // 16)
    grid = range(step, dims.num_layers, step)
    solutions, refusals = [], []
    for layers in itertools.combinations(grid, stages):
        try:
            solutions.append(_solve_family(budget, dims, _pyramid_family(layers, position_mode)))
        except ValueError as error:
            refusals.append(error)
    if not solutions:
        raise ValueError(
            f"no PyramidDrop layer list of {stages} boundaries on multiples of {step} reaches "
            f"{budget.describe()} at N={dims.image_tokens}" + (f" (e.g. {refusals[0]})" if refusals else "")
        )
    best = min(abs(solution.error) for solution in solutions)
    tolerance = _one_token_one_layer(budget.convention, dims)
    close = [solution for solution in solutions if abs(solution.error) <= best + tolerance]
    rest = sorted((s for s in solutions if abs(s.error) > best + tolerance), key=lambda s: abs(s.error))
    close.sort(key=lambda s: (-s.config.params.ratio, -s.config.params.layer_list[0], s.config.params.layer_list))
    return close + rest


@dataclass(frozen=True)
class _Family:
    """Schedules of one shape with one free parameter whose exact counts change in steps."""

    shape: str  # for messages, e.g. "PyramidDrop with layer_list [2, 8, 16]"
    hint: str  # how to reach lower budgets
    make: Callable[[float], DropConfig]
    steps: Callable[[int], list[tuple[float, float]]]  # N -> parameter intervals [lo, hi), cheapest first
    extremes: tuple[float, float]  # the parameter that keeps nothing, the one that keeps everything
    counts: bool = False  # the parameter is a number of image tokens (a share of N is solved at this N)


def _pyramid_family(layers: tuple[int, ...], position_mode: str | None) -> _Family:
    def make(ratio: float) -> DropConfig:
        return DropConfig.pyramid(layer_list=layers, ratio=ratio, position_mode=position_mode or "compact")

    example = "" if layers == BUDGET_LAYER_LIST else f" (e.g. layer_list={';'.join(map(str, BUDGET_LAYER_LIST))})"
    hint = f"move the first boundary before layer {layers[0]}{example}, or search layer lists (pdrop-eval schedule --search-layers)"
    return _Family(f"PyramidDrop with layer_list {list(layers)}", hint, make, lambda n: _pyramid_steps(n, len(layers)), (0.0, 1.0))


def _fastv_family(k: int, position_mode: str | None) -> _Family:
    def make(r: float) -> DropConfig:
        return DropConfig.fastv(k=k, r=r, position_mode=position_mode or "original")

    def steps(n: int) -> list[tuple[float, float]]:
        # N - int(N·R) = kept for R in [(N-kept)/N, (N-kept+1)/N); cheapest (kept = 1) first
        return [((n - kept) / n, (n - kept + 1) / n) for kept in range(1, n + 1)]

    return _Family(f"FastV with K={k}", "drop earlier (a smaller K)", make, steps, (1.0, 0.0))


def _count_family(spec: MethodSpec, shape: dict) -> _Family:
    """A method whose budget sets a kept count (`MethodSpec.budget_fields`); `shape`: its other options."""

    def make(count: float) -> DropConfig:
        return DropConfig.from_args({**shape, **spec.budget_fields(int(count))}, method=spec.name)

    def steps(n: int) -> list[tuple[float, float]]:
        counts = [(count, count) for count in spec.budget_counts(n, shape)]
        if not counts:
            raise ValueError(f"{spec.title} has no setting for N={n} image tokens")
        return counts

    return _Family(spec.title, "give a larger budget", make, steps, (0.0, 0.0), counts=True)


def _pyramid_steps(n: int, stages: int) -> list[tuple[float, float]]:
    """λ intervals on which int(N·λ^s) is constant for every stage s, in increasing λ; the last is λ=1."""
    points = sorted((j / n) ** (1 / s) for s in range(1, stages + 1) for j in range(1, n + 1))
    bounds = [0.0]
    for point in points:
        # (j/N)^(1/s) of different stages can meet (0.5 = (144/576)^(1/2)); float error must not split them
        if point - bounds[-1] > 1e-12:
            bounds.append(point)
    return [*itertools.pairwise(bounds), (1.0, 1.0)]  # bounds end at (N/N)^(1/s) = 1


def _solve_family(budget: Budget, dims: ModelDims, family: _Family) -> Solution:
    target = budget.target(dims)
    steps = family.steps(dims.image_tokens)

    def schedule(step: tuple[float, float]) -> Schedule:
        lo, hi = step
        return Schedule.of(family.make(lo if lo == hi else (lo + hi) / 2), dims)

    def value(step: tuple[float, float]) -> float:
        return schedule(step).value(budget.convention)

    lowest, highest = value(steps[0]), value(steps[-1])
    if not lowest <= target <= highest:
        given = f"budget {budget.describe()}" + (f" (= {_format(target, budget.convention)})" if budget.relative else "")
        if target > highest:
            problem = f"more than the no-drop value ({_format(highest, budget.convention)})"
        else:
            problem = f"below what {family.shape} can reach; {family.hint}"
        raise ValueError(
            f"{given} at N={dims.image_tokens} is {problem} (reachable: {_format(lowest, budget.convention)} "
            f"to {_format(highest, budget.convention)}, {CONVENTION_TEXT[budget.convention]})"
        )
    if budget.relative and budget.convention != "tflops" and not family.counts:
        return Solution(budget, target, Schedule.of(family.make(_share_parameter(budget, dims, family)), dims))
    index = bisect_left(steps, target, key=value)
    neighbours = steps[max(index - 1, 0) : index + 1]
    best = min(neighbours, key=lambda step: (abs(value(step) - target), value(step)))
    counts = schedule(best).kept_per_stage
    if family.counts:  # several counts can keep the same tokens (DART rounds to its pivots): the smallest says it
        best = next(step for step in steps if schedule(step).kept_per_stage == counts)
    parameter = _shortest_parameter(best, lambda p: tuple(family.make(p).kept_counts(dims.image_tokens)) == counts)
    return Solution(budget, target, Schedule.of(family.make(parameter), dims))


def _share_parameter(budget: Budget, dims: ModelDims, family: _Family) -> float:
    """For a share of N: the parameter whose unrounded counts (N·λ^s, N·(1-R)) meet it exactly, found at
    a huge N. It is the same for every N, and the engine's floors then keep every sample within one
    token per layer of the share (the closest step at one N could miss it by more at another N)."""
    huge = replace(dims, image_tokens=10**9)

    def share(parameter: float) -> float:
        return Schedule.of(family.make(parameter), huge).value(budget.convention) / huge.image_tokens

    nothing, everything = family.extremes
    for _ in range(60):
        middle = (nothing + everything) / 2
        if share(middle) < budget.amount:
            nothing = middle
        else:
            everything = middle
    return float(f"{everything:.6f}")  # fixed decimals: R meeting 100% is 0.0, not the bisection's 1e-09


def _shortest_parameter(step: tuple[float, float], keeps_counts: Callable[[float], bool]) -> float:
    """The number with the fewest decimals in [lo, hi) that gives the same counts (else the midpoint)."""
    lo, hi = step
    if lo == hi:
        return lo
    for decimals in range(1, 16):
        candidate = round(math.ceil(lo * 10**decimals) / 10**decimals, decimals)
        try:
            if candidate < hi and keeps_counts(candidate):
                return candidate
        except ValueError:  # outside the method's range, e.g. λ = 0
            continue
    return (lo + hi) / 2


def _one_token_one_layer(convention: str, dims: ModelDims) -> float:
    """How much one image token in one layer moves a convention's value: the rounding unit of a solve."""
    if convention == "tflops":
        return layer_flops(1, dims.hidden_size, dims.intermediate_size, dims.kv_size) / 1e12
    return 1.0 / dims.num_layers if convention == "avg_layer" else 1.0


def _format(value: float, convention: str) -> str:
    return f"{value:.4g} TFLOPs" if convention == "tflops" else f"{value:g} tokens"
