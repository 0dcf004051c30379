"""A preference task scored by a hidden Bradley-Terry reward over simple text features.

Prompt format: ``f"topic:{word}="`` where ``word`` is one of ``n_topics`` three-letter
consonant-vowel-consonant pseudo-words (e.g. ``"topic:bak="``), generated from ``topic_seed``.
Topics, not prompts, are split between ``train`` and ``eval``. Completions are free text.

The hidden score is the weighted mean of five features (weights in brackets), computed on the
completion with trailing whitespace stripped; the rubric is exactly these criteria, so the
rubric reward *is* the hidden score:

* ``length`` (1.0): ``max(0, 1 - |len - 8| / 8)`` (target length 8 characters);
* ``topic`` (1.0): fraction of the completion's characters that occur in the topic word;
* ``exclaim`` (0.5): ends with ``"!"``;
* ``no_repeat`` (0.5): non-empty and no character three times in a row;
* ``vowels`` (1.0): ``max(0, 1 - |v - 0.4| / 0.4)`` with ``v`` the fraction of characters in
  ``aeiou`` (0 for the empty string).

Preferences are Bradley-Terry draws with ``bt_scale = 10``:
``P(a preferred over b) = sigmoid(10 * (h(a) - h(b)))``, so a 0.1 score gap wins ~73% of the time.
``gold(prompt)`` is the word mirrored and cycled to 7 letters plus ``"!"`` (``bak`` ->
``"bakabak!"``), which scores ``(1 + 7/8 + 0.5 + 0.5 + 0.9375) / 4 = 0.953125`` for every
generated topic. ``is_correct`` means hidden score >= 0.8.
"""

from __future__ import annotations

import random
import re
import string
from typing import Any

from grape_evo.tasks.base import Criterion, Rubric, Task
from grape_evo.tasks.registry import register_task

CONSONANTS = "bcdfghjklmnpqrstvwxz"
VOWELS = "aeiou"
TARGET_LENGTH = 8
TARGET_VOWEL_RATIO = 0.4
CORRECT_THRESHOLD = 0.8
_PROMPT = re.compile(r"^topic:([a-z]+)=$")
_TRIPLE = re.compile(r"(.)\1\1", re.DOTALL)


def topic_of(prompt: str) -> str:
    """The topic word of a ``"topic:WORD="`` prompt."""
    m = _PROMPT.match(prompt)
    if m is None:
        raise ValueError(f"not a preference prompt (expected 'topic:WORD='): {prompt!r}")
    return m.group(1)


def make_topics(n: int, seed: int) -> tuple[str, ...]:
    """``n`` distinct consonant-vowel-consonant pseudo-words, deterministic from ``seed``."""
    max_n = len(CONSONANTS) * len(VOWELS) * len(CONSONANTS)
    if not 1 <= n <= max_n:
        raise ValueError(f"preference: n_topics must be in [1, {max_n}], got {n}")
    rng = random.Random(f"preference-topics|{seed}")
    topics: list[str] = []
    seen: set[str] = set()
    while len(topics) < n:
        word = rng.choice(CONSONANTS) + rng.choice(VOWELS) + rng.choice(CONSONANTS)
        if word not in seen:
            seen.add(word)
            topics.append(word)
    return tuple(topics)


def length_score(prompt: str, completion: str) -> float:
    """``max(0, 1 - |len - 8| / 8)``."""
    return max(0.0, 1.0 - abs(len(completion) - TARGET_LENGTH) / TARGET_LENGTH)


def topic_score(prompt: str, completion: str) -> float:
    """Fraction of characters that occur in the topic word (0 for the empty string)."""
    if not completion:
        return 0.0
    letters = set(topic_of(prompt))
    return sum(1 for ch in completion if ch in letters) / len(completion)


def exclaim_score(prompt: str, completion: str) -> float:
    """1.0 when the completion ends with ``"!"``."""
    return float(completion.endswith("!"))


def no_repeat_score(prompt: str, completion: str) -> float:
    """1.0 when non-empty and no character appears three times in a row."""
    return float(bool(completion) and _TRIPLE.search(completion) is None)


def vowel_score(prompt: str, completion: str) -> float:
    """``max(0, 1 - |v - 0.4| / 0.4)`` for the vowel fraction ``v`` (0 for the empty string)."""
    if not completion:
        return 0.0
    ratio = sum(1 for ch in completion if ch in VOWELS) / len(completion)
    return max(0.0, 1.0 - abs(ratio - TARGET_VOWEL_RATIO) / TARGET_VOWEL_RATIO)


PREFERENCE_RUBRIC = Rubric(
    (
        Criterion("length", 1.0, length_score),
        Criterion("topic", 1.0, topic_score),
        Criterion("exclaim", 0.5, exclaim_score),
        Criterion("no_repeat", 0.5, no_repeat_score),
        Criterion("vowels", 1.0, vowel_score),
    )
)


@register_task("preference")
class PreferenceTask(Task):
    """Free-text completions judged by a hidden Bradley-Terry reward (see module docstring)."""

    name = "preference"
    bt_scale = 10.0
    alphabet = string.ascii_lowercase + ":=!"
    completion_alphabet = string.ascii_lowercase + "!"
    reward_kind = "hidden Bradley-Terry score (dense)"
    summary = "free text on a topic word, judged by a hidden score: 'topic:bak=' -> 'bakabak!'"
    answer_tokens = (TARGET_LENGTH, TARGET_LENGTH)

    def __init__(self, n_topics: int = 200, topic_seed: int = 0) -> None:
        self.n_topics = n_topics
        self.topic_seed = topic_seed
        self.topics = make_topics(n_topics, topic_seed)
        self.max_new_tokens = 12
        self.rubric = PREFERENCE_RUBRIC

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "n_topics": self.n_topics, "topic_seed": self.topic_seed}

    def sample_prompt(self, rng: random.Random) -> str:
        return f"topic:{rng.choice(self.topics)}="

    def split_key(self, prompt: str) -> str:
        return topic_of(prompt)

    def gold(self, prompt: str) -> str:
        word = topic_of(prompt)
        cycle = word + word[-2:0:-1]
        body = (cycle * (TARGET_LENGTH // len(cycle) + 1))[: TARGET_LENGTH - 1]
        return body + "!"

    def is_correct(self, prompt: str, completion: str) -> bool:
        return self.hidden_score(prompt, completion) >= CORRECT_THRESHOLD

    def sample_completion(self, prompt: str, rng: random.Random) -> str:
        """Half the time a corrupted gold answer, else random text biased to the topic letters."""
        if rng.random() < 0.5:
            return super().sample_completion(prompt, rng)
        pool = topic_of(prompt) * 3 + self.completion_alphabet
        return "".join(rng.choice(pool) for _ in range(rng.randint(0, self.max_new_tokens)))
