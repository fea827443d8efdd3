"""The random control: the boundaries and per-stage counts of another method's schedule (PyramidDrop,
FastV, DART, SparseVLM, VisionZip, pooling), with the kept image tokens drawn uniformly at random
(`pdrop_eval.engine.scoring.RandomScorer`) and kept as they are. It shows whether ranking (and
merging) matters at all."""

from __future__ import annotations

from dataclasses import dataclass

from pdrop_eval.engine.methods.base import Boundary, MethodSpec, check_int
from pdrop_eval.engine.methods.dart import DART
from pdrop_eval.engine.methods.fastv import FASTV
from pdrop_eval.engine.methods.pool import POOL
from pdrop_eval.engine.methods.pyramid import PYRAMID, RATIO_FORMS
from pdrop_eval.engine.methods.sparsevlm import SPARSEVLM
from pdrop_eval.engine.methods.visionzip import VISIONZIP

SCHEDULES = (PYRAMID, FASTV, DART, SPARSEVLM, VISIONZIP, POOL)  # whose counts it takes; the first when the options name none


@dataclass(frozen=True)
class RandomParams:
    """schedule_method: the method whose counts it takes; schedule: that method's parameters;
    seed: with each sample's own tokens it seeds which image tokens are kept."""

    schedule_method: str
    schedule: object
    seed: int = 0


class RandomDrop(MethodSpec):
    schedules: tuple[MethodSpec, ...] = SCHEDULES

    def schedule_spec(self, given) -> MethodSpec:
        """The schedule whose fields `given` names (the first one when they name none)."""
        named = [spec for spec in self.schedules if set(given) & (spec.fields - {"position_mode"})]
        if len(named) > 1:
            raise ValueError(f"{self.title} takes the counts of one schedule; got options of {' and '.join(s.title for s in named)}")
        return named[0] if named else self.schedules[0]

    def of_schedule(self, schedule: MethodSpec) -> MethodSpec:
        if schedule not in self.schedules:
            names = tuple(spec.name for spec in self.schedules)
            raise ValueError(f"random drop takes the counts of one of {names}, got a {schedule.name!r} config")
        return schedule

    def budget_method(self, fields) -> str | None:
        return self.schedule_spec(fields).name

    def preset_methods(self) -> tuple[str, ...]:
        return (self.name, *(spec.name for spec in self.schedules))

    def complete(self, values: dict) -> dict:
        schedule = self.schedule_spec(values)
        return {**super().complete(values), **schedule.complete({k: v for k, v in values.items() if k in schedule.fields})}

    def make_params(self, values: dict) -> RandomParams:
        values = dict(values)
        seed = values.pop("seed", self.defaults["seed"])
        stray = sorted(set(values) - (self.fields - {"position_mode"}))
        if stray:
            raise ValueError(f"{self.title} does not take {stray}")
        if not values:
            names = " or ".join(spec.title for spec in self.schedules)
            raise ValueError(f"{self.title} needs a schedule: the options of {names} (e.g. PyramidDrop's layer_list and lambda)")
        schedule = self.schedule_spec(values)
        return RandomParams(schedule_method=schedule.name, schedule=schedule.make_params(values), seed=seed)

    def default_params(self):
        return self.make_params({})  # no default schedule: a config must name the counts it copies

    def record(self, params: RandomParams) -> dict:
        return {**self._schedule(params).record(params.schedule), "seed": params.seed}

    def _schedule(self, params: RandomParams) -> MethodSpec:
        return next(spec for spec in self.schedules if spec.name == params.schedule_method)

    def check(self, params: RandomParams) -> None:
        seed = check_int("seed", params.seed)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self._schedule(params).check(params.schedule)

    def boundaries(self, params: RandomParams, num_layers: int) -> list[Boundary]:
        schedule = self._schedule(params)
        return schedule.check_boundaries(schedule.boundaries(params.schedule, num_layers))

    def check_boundaries(self, boundaries: list[Boundary]) -> list[Boundary]:
        return boundaries  # placed where its schedule's method drops (checked by that method)

    def kept_counts(self, params: RandomParams, num_image_tokens: int) -> list[int]:
        return self._schedule(params).kept_counts(params.schedule, num_image_tokens)

    def scorer(self, params: RandomParams):
        from pdrop_eval.engine.scoring import RandomScorer  # torch: loaded only when a model runs

        return RandomScorer(seed=params.seed)

    def label(self, params: RandomParams, position_mode: str) -> str:
        seed = "" if params.seed == self.defaults["seed"] else f", seed {params.seed}"
        return f"{self.series} ({self._schedule(params).label(params.schedule, position_mode)}{seed})"

    def describe(self, params: RandomParams, position_mode: str) -> str:
        return f"{self.title}(counts of {self._schedule(params).describe(params.schedule, position_mode)}, seed={params.seed})"

    def options(self, params: RandomParams, position_mode: str) -> dict[str, str]:
        return {**self._schedule(params).options(params.schedule, position_mode), "seed": str(params.seed)}


RANDOM = RandomDrop(
    name="random", title="Random drop", kind="random", series="Random",
    keys=tuple(dict.fromkeys(key for spec in SCHEDULES for key in spec.keys)) + ("seed",),
    defaults={"seed": 0}, params_class=RandomParams, alternatives=(RATIO_FORMS,),
    budget_keys=tuple(key for spec in SCHEDULES for key in spec.budget_keys),
    sweep_key="lambda",  # PyramidDrop λ's counts: the control's curve beside PyramidDrop's
)
