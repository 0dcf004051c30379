"""The task protocol: prompts, gold answers, rubric rewards, evaluation and preferences.

A task works on plain strings and floats only (no models, no tensors):

* ``prompts(split, n, seed)`` draws ``n`` prompts, deterministically from ``(split, seed)``.
  Every prompt belongs to exactly one split, decided by a stable hash of the task's
  ``split_key(prompt)`` (so ``train`` and ``eval`` are disjoint for any seeds; tasks map
  equivalent problems, e.g. ``37+45=`` and ``45+37=``, to the same key so they share a split).
* ``gold(prompt)`` is the correct completion; ``demonstrations`` pairs prompts with it.
* ``reward(prompts, completions)`` is the rubric score in [0, 1], a weighted mean of named
  criteria: the reward training optimises. ``gold_reward`` is the score held-out evaluation
  reports; it is ``reward`` for every task except those whose training reward is a gameable
  proxy of a hidden gold reward (``proxy``). ``is_correct`` is the task's accuracy criterion.
* ``preference(prompt, a, b, rng)`` draws a Bradley-Terry preference from the task's
  ``hidden_score``: ``P(a preferred) = sigmoid(bt_scale * (h(a) - h(b)))``.
* ``has_demonstrations`` says whether ``gold`` exists (a task file may name no answer field);
  ``require_demonstrations()`` raises a clear ValueError when it does not.
* ``fingerprint()`` is a content hash of everything that decides the task (by default of
  ``config()``; tasks built from files also hash the files' bytes): caches key on it.

Completions are compared after stripping trailing whitespace (``completion.rstrip()``), so a
policy may end its output with a newline or spaces at no cost. Leading whitespace counts.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

SPLITS: tuple[str, ...] = ("train", "eval")
"""Valid values of ``split``: ``train`` for training, ``eval`` held out for evaluation."""

ScoreFn = Callable[[str, str], float]


def clip01(x: float) -> float:
    """Clamp ``x`` to [0, 1]; NaN maps to 0."""
    if not x >= 0.0:  # also catches NaN
        return 0.0
    return 1.0 if x > 1.0 else float(x)


def sigmoid(x: float) -> float:
    """Numerically stable logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def check_split(split: str) -> None:
    """Raise ValueError unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")


def check_int(task: str, field: str, value: object, minimum: int = 1) -> int:
    """``value`` when it is an integer (not a bool) >= ``minimum``; else ValueError naming
    the task and the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{task}: {field} must be an integer >= {minimum}, got {value!r}")
    return value


def check_range(task: str, low_field: str, low: int, high_field: str, high: int) -> None:
    """Check that ``low`` and ``high`` are integers >= 1 with ``low <= high``."""
    check_int(task, low_field, low)
    check_int(task, high_field, high)
    if high < low:
        raise ValueError(f"{task}: {high_field} ({high}) must be >= {low_field} ({low})")


@dataclass(frozen=True)
class Criterion:
    """One named rubric criterion: ``score(prompt, completion)`` in [0, 1], with a weight > 0."""

    name: str
    weight: float
    score: ScoreFn


@dataclass(frozen=True)
class Rubric:
    """A weighted set of criteria; the score is the weighted mean ``sum w*s / sum w``.

    Criterion scores are clamped to [0, 1] (NaN counts as 0), so the rubric score is always in
    [0, 1]. The rubric applies no normalisation to completions; :class:`Task` strips trailing
    whitespace before calling it.
    """

    criteria: tuple[Criterion, ...]

    def __post_init__(self) -> None:
        if not self.criteria:
            raise ValueError("a rubric needs at least one criterion")
        seen: set[str] = set()
        for c in self.criteria:
            if not isinstance(c, Criterion):
                raise TypeError(f"rubric criteria must be Criterion, got {type(c).__name__}")
            if not (isinstance(c.weight, int | float) and math.isfinite(c.weight) and c.weight > 0):
                raise ValueError(f"criterion '{c.name}': weight must be > 0, got {c.weight!r}")
            if c.name in seen:
                raise ValueError(f"duplicate criterion name '{c.name}' in rubric")
            seen.add(c.name)

    @property
    def names(self) -> tuple[str, ...]:
        """Criterion names, in order."""
        return tuple(c.name for c in self.criteria)

    @property
    def total_weight(self) -> float:
        """Sum of the criteria weights."""
        return float(sum(c.weight for c in self.criteria))

    def score(self, prompt: str, completion: str) -> float:
        """Weighted mean of the (clamped) criterion scores, in [0, 1]."""
        total = sum(c.weight * clip01(c.score(prompt, completion)) for c in self.criteria)
        return clip01(total / self.total_weight)

    def breakdown(
        self, prompts: Sequence[str], completions: Sequence[str]
    ) -> dict[str, list[float]]:
        """Per-criterion (clamped) scores: ``{name: [score for each pair]}``."""
        check_lengths(prompts, completions)
        return {
            c.name: [clip01(c.score(p, x)) for p, x in zip(prompts, completions, strict=True)]
            for c in self.criteria
        }


@dataclass(frozen=True)
class EvalResult:
    """Held-out evaluation: mean reward, accuracy (fraction correct) and number of prompts."""

    reward: float
    accuracy: float
    n: int


class PreferencePair(NamedTuple):
    """One offline preference example: ``chosen`` was preferred over ``rejected``."""

    prompt: str
    chosen: str
    rejected: str


def check_lengths(prompts: Sequence[str], completions: Sequence[str]) -> None:
    """Raise ValueError unless there is one completion per prompt."""
    if len(prompts) != len(completions):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(completions)} completions; they must match"
        )


def exact_rubric(answer: Callable[[str], str]) -> Rubric:
    """The 0/1 rubric of one criterion, ``exact``: 1.0 when the completion equals
    ``answer(prompt)``, else 0.0 (no partial credit)."""
    return Rubric(
        (Criterion("exact", 1.0, lambda prompt, completion: float(completion == answer(prompt))),)
    )


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is stable across processes (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


class Task(abc.ABC):
    """Base class of all tasks.

    Subclasses set ``name``, ``max_new_tokens``, ``rubric`` and ``answer_tokens`` (and usually
    ``alphabet``, ``completion_alphabet``, ``reward_kind``, ``summary`` and
    ``warm_start_steps``), and implement :meth:`sample_prompt` and :meth:`gold`. They may
    override :meth:`split_key`, :meth:`is_correct`, :meth:`hidden_score`, :meth:`gold_reward`
    and :meth:`sample_completion`.
    """

    name: str
    max_new_tokens: int
    rubric: Rubric
    answer_tokens: tuple[int, int]
    """``(min, max)`` length of the gold completions in tokens of the character tokenizer
    (one per character, end-of-sequence token not counted)."""
    reward_kind: str = "rubric"
    """What the training reward is, for listings: e.g. ``"0/1 exact"``, ``"rubric (dense)"``."""
    summary: str = ""
    """One line for listings: what the task asks, with an example."""
    warm_start_steps: int = 600
    """Suggested SFT warm-start budget (steps of batch 64 at the default warm-start learning
    rate, on the ``tiny`` policy): a hint for the trainer's ``warm_start_steps``. Tasks with 0/1
    rewards set it where the warm start is right often enough for RL to get a signal and far
    from solved (measured figures in the task's module docstring)."""
    bt_scale: float = 10.0
    """Bradley-Terry temperature: ``P(a > b) = sigmoid(bt_scale * (h(a) - h(b)))``."""
    alphabet: str = ""
    """Every character that appears in this task's prompts and gold completions."""
    completion_alphabet: str = ""
    """Characters used to corrupt gold answers in :meth:`sample_completion`."""
    max_sampling_attempts: int = 1_000_000
    eval_set_patience: int = 20_000
    has_demonstrations: bool = True
    """Whether :meth:`gold` exists (every built-in task; task files with an ``answer`` field)."""
    chat_template: bool = False
    """Whether prompts are wrapped in the tokenizer's chat template before encoding."""

    # ----------------------------------------------------------------- to implement
    @abc.abstractmethod
    def sample_prompt(self, rng: random.Random) -> str:
        """Draw one prompt from the whole problem space (either split)."""

    @abc.abstractmethod
    def gold(self, prompt: str) -> str:
        """The correct completion for ``prompt``."""

    # ----------------------------------------------------------------- description
    def config(self) -> dict[str, Any]:
        """``{"name": ..., **constructor parameters}``: enough to rebuild the task (and to hash)."""
        return {"name": self.name}

    def fingerprint(self) -> str:
        """sha256 (hex) of everything that decides the task; by default of :meth:`config`."""
        text = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"

    # ----------------------------------------------------------------- prompts and splits
    def split_key(self, prompt: str) -> str:
        """The string whose hash decides the split; equivalent problems should share a key."""
        return prompt

    def split_of(self, prompt: str) -> str:
        """``"train"`` or ``"eval"``: the split this prompt belongs to (by hash parity)."""
        return SPLITS[stable_hash(f"{self.name}|{self.split_key(prompt)}") % 2]

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        """``n`` prompts of ``split`` (drawn with replacement), deterministic from (split, seed)."""
        check_split(split)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"{self.name}|{split}|{seed}")
        out: list[str] = []
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > self.max_sampling_attempts:
                raise RuntimeError(f"{self!r}: could not draw {n} prompts from split '{split}'")
            prompt = self.sample_prompt(rng)
            if self.split_of(prompt) == split:
                out.append(prompt)
        return out

    def require_demonstrations(self) -> None:
        """Raise ValueError unless :attr:`has_demonstrations` (call before an SFT warm start)."""
        if not self.has_demonstrations:
            raise ValueError(f"task '{self.name}' has no gold completions for an SFT warm start")

    def demonstrations(self, split: str, n: int, seed: int) -> list[tuple[str, str]]:
        """``(prompt, gold(prompt))`` pairs for supervised warm starts."""
        self.require_demonstrations()
        return [(p, self.gold(p)) for p in self.prompts(split, n, seed)]

    # ----------------------------------------------------------------- scoring
    @staticmethod
    def normalize(completion: str) -> str:
        """Completions are compared after stripping trailing whitespace."""
        return completion.rstrip()

    def reward(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Rubric score of each (prompt, completion), in [0, 1]; never raises on completions."""
        check_lengths(prompts, completions)
        return [
            self.rubric.score(p, self.normalize(c))
            for p, c in zip(prompts, completions, strict=True)
        ]

    def breakdown(
        self, prompts: Sequence[str], completions: Sequence[str]
    ) -> dict[str, list[float]]:
        """Per-criterion scores on normalised completions (see :meth:`Rubric.breakdown`)."""
        return self.rubric.breakdown(prompts, [self.normalize(c) for c in completions])

    def gold_reward(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The held-out score :meth:`evaluate` reports, in [0, 1]: :meth:`reward` itself, except
        for tasks whose training reward is a proxy of a hidden gold reward."""
        return self.reward(prompts, completions)

    def is_correct(self, prompt: str, completion: str) -> bool:
        """Accuracy criterion; by default an exact match with the gold answer."""
        return self.normalize(completion) == self.gold(prompt)

    def correct_flags(
        self, prompts: Sequence[str], completions: Sequence[str], rewards: Sequence[float]
    ) -> list[bool]:
        """:meth:`is_correct` of each pair; ``rewards`` (their :meth:`gold_reward`) lets a task
        whose accuracy is a reward threshold avoid scoring twice."""
        return [self.is_correct(p, c) for p, c in zip(prompts, completions, strict=True)]

    def hidden_score(self, prompt: str, completion: str) -> float:
        """Score behind :meth:`preference`; by default the rubric reward (in [0, 1])."""
        return self.rubric.score(prompt, self.normalize(completion))

    def preference_probability(self, prompt: str, completion_a: str, completion_b: str) -> float:
        """Bradley-Terry ``P(a preferred over b) = sigmoid(bt_scale * (h(a) - h(b)))``."""
        diff = self.hidden_score(prompt, completion_a) - self.hidden_score(prompt, completion_b)
        return sigmoid(self.bt_scale * diff)

    def preference(
        self, prompt: str, completion_a: str, completion_b: str, rng: random.Random
    ) -> bool:
        """Draw one noisy preference: True when ``completion_a`` is preferred."""
        return rng.random() < self.preference_probability(prompt, completion_a, completion_b)

    # ----------------------------------------------------------------- offline preference data
    def sample_completion(self, prompt: str, rng: random.Random) -> str:
        """A plausible completion of varying quality: the gold answer with 0..len random edits.

        Edits are substitutions, insertions and deletions with characters of
        ``completion_alphabet``.
        """
        chars = list(self.gold(prompt))
        alphabet = self.completion_alphabet or self.alphabet
        for _ in range(rng.randint(0, max(1, len(chars)))):
            op = rng.randrange(3)
            if op == 0 and chars:
                chars[rng.randrange(len(chars))] = rng.choice(alphabet)
            elif op == 1 or not chars:
                chars.insert(rng.randrange(len(chars) + 1), rng.choice(alphabet))
            else:
                del chars[rng.randrange(len(chars))]
        return "".join(chars)

    def preference_pairs(self, split: str, n: int, seed: int) -> list[PreferencePair]:
        """``n`` offline preference pairs (for DPO-style objectives), deterministic from seed.

        For each prompt, two different completions are drawn with :meth:`sample_completion`
        and labelled with one Bradley-Terry draw of :meth:`preference` (so labels are noisy,
        as with human raters).
        """
        rng = random.Random(f"{self.name}|pairs|{split}|{seed}")
        pairs: list[PreferencePair] = []
        for prompt in self.prompts(split, n, seed):
            a = self.sample_completion(prompt, rng)
            b = self.sample_completion(prompt, rng)
            for _ in range(100):
                if self.normalize(a) != self.normalize(b):
                    break
                b = self.sample_completion(prompt, rng)
            if self.preference(prompt, a, b, rng):
                pairs.append(PreferencePair(prompt, a, b))
            else:
                pairs.append(PreferencePair(prompt, b, a))
        return pairs

    # ----------------------------------------------------------------- evaluation
    def eval_set(self, n: int) -> list[str]:
        """The fixed held-out evaluation set: ``n`` distinct ``eval`` prompts in an order fixed
        by the task alone, so every run of the task, whatever its seed, is scored on the same
        prompts; the whole held-out split when it holds fewer (drawing stops after
        ``eval_set_patience`` draws in a row find no new held-out prompt)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rng = random.Random(f"{self.name}|eval set")
        chosen: dict[str, None] = {}
        misses = 0
        while len(chosen) < n and misses < self.eval_set_patience:
            prompt = self.sample_prompt(rng)
            if prompt not in chosen and self.split_of(prompt) == "eval":
                chosen[prompt] = None
                misses = 0
            else:
                misses += 1
        return list(chosen)

    def evaluate(self, generate: Callable[[list[str]], list[str]], n: int = 64) -> EvalResult:
        """Mean :meth:`gold_reward` and accuracy on the evaluation set :meth:`eval_set` ``(n)``.

        ``generate`` is called once with the list of prompts and must return one completion
        per prompt.
        """
        prompts = self.eval_set(n)
        completions = list(generate(list(prompts)))
        if len(completions) != len(prompts):
            raise ValueError(
                f"generate returned {len(completions)} completions for {len(prompts)} prompts"
            )
        rewards = self.gold_reward(prompts, completions)
        correct = self.correct_flags(prompts, completions, rewards)
        return EvalResult(
            reward=sum(rewards) / len(rewards), accuracy=sum(correct) / len(correct), n=len(prompts)
        )
