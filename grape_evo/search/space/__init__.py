"""Search spaces: a YAML file that says which objectives to try, on what, with which budget.

The file format (DESIGN.md section 5; the keys are a **contract**)::

    name: quickstart
    tasks: [addition]                 # task names, or {name: addition, digits: 3}
    policy: {preset: tiny}            # PolicyConfig fields
    budget: {steps: 150, seeds: 2, eval_every: 25}
    base: grpo                        # a preset name or an inline objective mapping
    axes:                             # dotted paths into the objective spec (or optim.lr)
      advantage.name: {choices: [group_zscore, group_mean, rloo, rank]}
      surrogate.name: {choices: [reinforce, ppo_clip, gspo, cispo]}
      surrogate.clip_high: {low: 0.1, high: 0.4, when: {surrogate.name: [ppo_clip, gspo]}}
      kl.coef: {low: 1.0e-4, high: 0.1, log: true}
    baselines: [ppo, grpo, dpo]
    search: {sampler: evolution, trials: 24, pruner: median, objectives: [final_reward]}

Loading is strict: every mistake is a :class:`SpaceError` whose message starts with the file
(``<string>`` for in-memory data) and names the key. :func:`load_space` also checks that every
point the space can produce is a valid :class:`~grape_evo.objective.ObjectiveSpec`
(:meth:`SearchSpace.validate_points`), so a campaign never discovers an invalid candidate
halfway through.

One job per module: :mod:`.values` (the frozen value objects), :mod:`.paths` (the axis paths,
read from the registries), :mod:`.translation` (point <-> objective), :mod:`.loader` (the
hardened YAML reader), :mod:`.parser` and :mod:`.axis_parser` (document -> space, every form
of every key), :mod:`.reader` (typed fields with located errors), :mod:`.errors`.
"""

from grape_evo.search.space.errors import SpaceError
from grape_evo.search.space.loader import MAX_FILE_BYTES, MAX_NODES, load_space, load_yaml_text
from grape_evo.search.space.parser import parse_space
from grape_evo.search.space.paths import axis_paths
from grape_evo.search.space.reader import LIMITS
from grape_evo.search.space.translation import MAX_VALIDATED_POINTS
from grape_evo.search.space.values import (
    OBJECTIVES,
    PRUNERS,
    SAMPLERS,
    Axis,
    Budget,
    SearchSettings,
    SearchSpace,
    TaskRef,
)

__all__ = [
    "LIMITS",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "MAX_VALIDATED_POINTS",
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "Axis",
    "Budget",
    "SearchSettings",
    "SearchSpace",
    "SpaceError",
    "TaskRef",
    "axis_paths",
    "load_space",
    "load_yaml_text",
    "parse_space",
]
