"""Tasks built from a task file: rows of data, a user reward function and a held-out split.

``load_task_file(path)`` reads the task file (`task_file`), its data (`data_rows`) and its reward
(`reward_fn`, which runs the user's code) and returns a :class:`DataTask`:

* **Rows and prompts.** Row ``i`` (numbered from 0 in file order) has the prompt
  ``row[prompt]`` (a string). :meth:`DataTask.prompts` returns :class:`RowPrompt` strings that
  carry their row, so :meth:`DataTask.reward` passes each completion the columns of ITS row even
  when several rows share a prompt. A plain string is looked up by text: it must be the prompt
  of exactly one row (else :class:`TaskFileError`: the trainer must pass on the prompts that
  ``prompts()`` returned, as sampling does).
* **Splits.** With ``split: FIELD`` each row's ``FIELD`` is ``"train"`` or ``"eval"``. Otherwise
  rows are ordered by ``sha256(f"{seed}\\0{row as sorted JSON}")`` and the first
  ``floor(eval_fraction * n_rows + 0.5)`` go to ``eval``, with every exact duplicate of them
  (so identical rows never straddle the splits); the rest is ``train``. The split depends only
  on the seed and the rows' content, not on their order, and both splits must be non-empty.
  Rows that share a prompt but differ elsewhere may land in different splits; name a split
  field to control that.
* **Drawing.** ``prompts(split, n, seed)`` draws WITHOUT replacement: a shuffle of the split's
  rows seeded by ``(name, split, seed)``; when ``n`` exceeds the split size it continues with
  a fresh shuffle (seeded by the pass number too), and so on. The first ``k`` of ``n`` prompts
  are the ``k`` prompts of ``prompts(split, k, seed)``.
* **Reward.** The user function, called once per batch with TRL's signature (see `reward_fn`) on
  the completions with trailing whitespace stripped (like every task); any finite float.
* **Evaluation.** The evaluation set (``eval_set(n)``) is the first ``min(n, eval rows)``
  held-out rows in file order, each once, for every run alike; a completion is correct when its
  reward is ``>= correct_threshold`` (default 1.0).
* **Demonstrations** come from the ``answer`` field; without one, :meth:`DataTask.gold` and
  :meth:`DataTask.require_demonstrations` raise :class:`TaskFileError`.
* **Identity.** :meth:`DataTask.fingerprint` is a sha256 of the data's bytes, the reward source
  file's bytes and the settings; ``config()`` is ``{"name", "file" (absolute), "fingerprint"}``
  and pickling rebuilds the task from the file, checking the fingerprint (so a worker never
  trains on edited data under an old task's name).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grape_evo.tasks.base import SPLITS, Task, check_lengths, check_split, sigmoid
from grape_evo.tasks.data_rows import DataRows, TaskFileError, read_rows
from grape_evo.tasks.reward_fn import (
    ARGUMENTS,
    RESERVED_COLUMNS,
    RewardFunction,
    describe_rows,
    load_reward,
)
from grape_evo.tasks.task_file import SplitSettings, TaskFileSettings, read_task_file

FINGERPRINT_FORMAT = 1


class RowPrompt(str):
    """A prompt string that remembers its ``row`` of the task's data (an index from 0)."""

    row: int

    def __new__(cls, text: str, row: int) -> RowPrompt:
        prompt = super().__new__(cls, text)
        prompt.row = row
        return prompt

    def __reduce__(self) -> tuple[type[RowPrompt], tuple[str, int]]:
        return (RowPrompt, (str(self), self.row))


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _row_key(row: dict[str, Any], seed: int) -> str:
    content = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(f"{seed}\0{content}".encode()).hexdigest()


def assign_splits(rows: Sequence[dict[str, Any]], split: SplitSettings, where: str) -> list[str]:
    """The split (``"train"`` or ``"eval"``) of every row (see the module docstring)."""
    if split.field is not None:
        out = []
        for i, row in enumerate(rows):
            value = row.get(split.field)
            if value not in SPLITS:
                raise TaskFileError(
                    f"{where}: split: row {i} has {split.field}={value!r}; expected one of "
                    f"{', '.join(repr(s) for s in SPLITS)}"
                )
            out.append(value)
    else:
        keys = [_row_key(row, split.seed) for row in rows]
        order = sorted(range(len(rows)), key=lambda i: (keys[i], i))
        n_eval = int(split.eval_fraction * len(rows) + 0.5)
        held_out = {keys[i] for i in order[:n_eval]}
        out = ["eval" if key in held_out else "train" for key in keys]
    for name in SPLITS:
        if name not in out:
            how = (
                f"no row has {split.field}={name!r}"
                if split.field is not None
                else f"eval_fraction {split.eval_fraction} of {len(rows)} distinct-content rows"
            )
            raise TaskFileError(f"{where}: split: the {name} split is empty ({how})")
    return out


def _columns(rows: Sequence[dict[str, Any]], where: str) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    for name in names:
        if name in ARGUMENTS:
            raise TaskFileError(
                f"{where}: data: column {name!r} clashes with the reward's {name!r} argument; "
                "rename it"
            )
    return tuple(name for name in names if name not in RESERVED_COLUMNS)


def _check_field(
    rows: Sequence[dict[str, Any]], field: str, role: str, where: str, data: str
) -> None:
    for i, row in enumerate(rows):
        if field not in row:
            fields = ", ".join(map(str, row)) or "none"
            raise TaskFileError(
                f"{where}: {role}: row {i} of {data} has no field {field!r} (its fields: {fields})"
            )
        value = row[field]
        if not isinstance(value, str):
            raise TaskFileError(
                f"{where}: {role}: row {i} of {data}: field {field!r} must be a string, "
                f"got {type(value).__name__}"
            )


class DataTask(Task):
    """A task whose prompts, answers and reward come from a task file (see module docstring)."""

    def __init__(self, settings: TaskFileSettings, data: DataRows, reward: RewardFunction) -> None:
        where, data_name = settings.label, settings.data.name
        rows = data.rows
        _check_field(rows, settings.prompt, "prompt", where, data_name)
        if settings.answer is not None:
            _check_field(rows, settings.answer, "answer", where, data_name)
        self.settings = settings
        self.name = settings.name
        self.max_new_tokens = settings.max_new_tokens
        self.chat_template = settings.chat_template
        self.has_demonstrations = settings.answer is not None
        self.correct_threshold = settings.correct_threshold
        self.path = settings.path
        self.rows = rows
        self.columns = _columns(rows, where)
        self._reward_fn = reward
        self._prompts = [RowPrompt(row[settings.prompt], i) for i, row in enumerate(rows)]
        self._by_text: dict[str, list[int]] = {}
        for i, prompt in enumerate(self._prompts):
            self._by_text.setdefault(str(prompt), []).append(i)
        self._split_of_row = assign_splits(rows, settings.split, where)
        self._split_rows = {
            name: [i for i, s in enumerate(self._split_of_row) if s == name] for name in SPLITS
        }
        answers = [row[settings.answer] for row in rows] if settings.answer is not None else []
        self.completion_alphabet = "".join(sorted(set("".join(answers))))
        self.alphabet = "".join(sorted(set("".join(self._prompts) + self.completion_alphabet)))
        blob = {
            "format": FINGERPRINT_FORMAT,
            "settings": settings.written,
            "data": data.digest,
            "reward": reward.digest,
        }
        text = json.dumps(blob, sort_keys=True, separators=(",", ":"))
        self._fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()

    # ----------------------------------------------------------------- identity
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "file": str(self.path), "fingerprint": self._fingerprint}

    def fingerprint(self) -> str:
        return self._fingerprint

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (load_task_file, (str(self.path), self._fingerprint))

    # ----------------------------------------------------------------- rows
    def rows_in(self, split: str) -> list[int]:
        """Indices of the rows of ``split``, ascending."""
        check_split(split)
        return list(self._split_rows[split])

    def rows_of(self, prompts: Sequence[str]) -> list[int]:
        """The data row of each prompt: a :class:`RowPrompt`'s own row, else the one row with
        that prompt text (:class:`TaskFileError` when none or several rows have it)."""
        out: list[int] = []
        for prompt in prompts:
            row = getattr(prompt, "row", None)
            if isinstance(row, int) and 0 <= row < len(self.rows) and self._prompts[row] == prompt:
                out.append(row)
                continue
            matches = self._by_text.get(str(prompt), [])
            if len(matches) != 1:
                where = f"{self.settings.label}: prompt {_short(str(prompt))}"
                if not matches:
                    raise TaskFileError(f"{where} is not a row of {self.settings.data.name}")
                raise TaskFileError(
                    f"{where} is shared by {describe_rows(matches)}; pass the prompts that "
                    "prompts() returned (they carry their row)"
                )
            out.append(matches[0])
        return out

    def columns_for(self, prompts: Sequence[str]) -> dict[str, list[Any]]:
        """Every reward column (see `reward_fn`), as a list aligned with ``prompts``."""
        rows = self.rows_of(prompts)
        return {name: [self.rows[r].get(name) for r in rows] for name in self.columns}

    # ----------------------------------------------------------------- prompts and splits
    def sample_prompt(self, rng: random.Random) -> str:
        return self._prompts[rng.randrange(len(self._prompts))]

    def split_of(self, prompt: str) -> str:
        return self._split_of_row[self.rows_of([prompt])[0]]

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        """``n`` prompts of ``split`` drawn without replacement, pass after pass (see module)."""
        check_split(split)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        pool = self._split_rows[split]
        picks: list[int] = []
        epoch = 0
        while len(picks) < n:
            order = list(pool)
            random.Random(f"{self.name}|{split}|{seed}|{epoch}").shuffle(order)
            picks.extend(order[: n - len(picks)])
            epoch += 1
        return [self._prompts[i] for i in picks]

    def eval_set(self, n: int) -> list[str]:
        """The first ``n`` held-out rows in file order (all of them when fewer): each held-out
        row is scored at most once, by every run alike."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return [self._prompts[i] for i in self._split_rows["eval"][:n]]

    # ----------------------------------------------------------------- answers
    def require_demonstrations(self) -> None:
        if not self.has_demonstrations:
            raise TaskFileError(
                f"{self.settings.label}: answer: not set, so the task has no demonstrations "
                "for an SFT warm start; name the field holding gold completions or skip the "
                "warm start (warm-start steps 0)"
            )

    def gold(self, prompt: str) -> str:
        self.require_demonstrations()
        return self.rows[self.rows_of([prompt])[0]][self.settings.answer]

    # ----------------------------------------------------------------- scoring
    def reward(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The user reward of each (prompt, completion), completions with trailing whitespace
        stripped; any finite float. Raises :class:`TaskFileError` when the reward fails."""
        check_lengths(prompts, completions)
        rows = self.rows_of(prompts)
        if not rows:
            return []
        return self._reward_fn(
            [str(self._prompts[r]) for r in rows],
            [self.normalize(c) for c in completions],
            {name: [self.rows[r].get(name) for r in rows] for name in self.columns},
            rows,
        )

    def breakdown(
        self, prompts: Sequence[str], completions: Sequence[str]
    ) -> dict[str, list[float]]:
        """``{"reward": rewards}``: the user reward is the only criterion."""
        return {"reward": self.reward(prompts, completions)}

    def is_correct(self, prompt: str, completion: str) -> bool:
        return self.reward([prompt], [completion])[0] >= self.correct_threshold

    def correct_flags(
        self, prompts: Sequence[str], completions: Sequence[str], rewards: Sequence[float]
    ) -> list[bool]:
        return [r >= self.correct_threshold for r in rewards]

    def hidden_score(self, prompt: str, completion: str) -> float:
        return self.reward([prompt], [completion])[0]

    def preference_probability(self, prompt: str, completion_a: str, completion_b: str) -> float:
        reward_a, reward_b = self.reward([prompt, prompt], [completion_a, completion_b])
        return sigmoid(self.bt_scale * (reward_a - reward_b))


def load_task_file(path: str | Path, fingerprint: str | None = None) -> DataTask:
    """The :class:`DataTask` of the task file at ``path`` (runs the reward file's code).

    With ``fingerprint`` (from a task's ``config()``), raise :class:`TaskFileError` unless the
    task built now has the same one, i.e. its data, reward source and settings are unchanged.
    """
    settings = read_task_file(path)
    data = read_rows(settings.data, f"{settings.label}: data")
    reward = load_reward(settings.reward, settings.path.parent, settings.label)
    task = DataTask(settings, data, reward)
    if fingerprint is not None and task.fingerprint() != fingerprint:
        raise TaskFileError(
            f"{settings.label}: changed since the task was built (fingerprint "
            f"{fingerprint[:12]}... is now {task.fingerprint()[:12]}...): its data, reward file "
            "or settings were edited"
        )
    return task
