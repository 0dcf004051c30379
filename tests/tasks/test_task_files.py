"""Tasks from task files: loading, rewards with columns, rows, splits, fingerprints, pickling."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import random
import runpy
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
from task_file_helpers import rows, write_rows, write_task

from grape_evo.policy.tokenizer import ALPHABET
from grape_evo.tasks import (
    AdditionTask,
    DataTask,
    RowPrompt,
    TaskFileError,
    build_task,
    get_task,
    is_task_file_ref,
    load_task_file,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "byo_task"


def test_jsonl_task_prompts_rewards_and_evaluation(tmp_path: Path) -> None:
    task = load_task_file(write_task(tmp_path, chat_template=True))
    assert isinstance(task, DataTask)
    assert (task.name, task.max_new_tokens, task.chat_template) == ("t", 8, True)
    assert task.correct_threshold == 1.0
    # 20 rows, eval_fraction 0.25: floor(5 + 0.5) = 5 held-out rows.
    assert len(task.rows_in("eval")) == 5 and len(task.rows_in("train")) == 15
    prompts = task.prompts("train", 4, seed=1)
    assert all(isinstance(p, RowPrompt) and p == f"q{p.row}=" for p in prompts)
    golds = [f"a{p.row}" for p in prompts]
    assert [g for _, g in task.demonstrations("train", 4, seed=1)] == golds
    assert task.reward(prompts, golds) == [1.0] * 4
    assert task.reward(prompts, [g + " \n" for g in golds]) == [1.0] * 4  # trailing space
    assert task.reward(prompts, ["x", golds[1], " " + golds[2], ""]) == [0.0, 1.0, 0.0, 0.0]
    assert task.reward([], []) == []
    # Each held-out row is scored once, however many prompts are asked for.
    seen: list[list[str]] = []

    def half_right(ps: list[str]) -> list[str]:
        seen.append(ps)
        return [f"a{p.row}" if p.row % 2 else "no" for p in ps]

    result = task.evaluate(half_right, n=64)
    eval_rows = sorted(p.row for p in seen[0])
    assert eval_rows == task.rows_in("eval") and result.n == 5
    odd = sum(r % 2 for r in eval_rows)
    assert result.accuracy == pytest.approx(odd / 5) and result.reward == pytest.approx(odd / 5)
    assert task.evaluate(half_right, n=2).n == 2


def test_csv_task_passes_columns_as_strings(tmp_path: Path) -> None:
    data = [{"question": f"len{i}=", "target": str(i), "a": "x" * i} for i in range(1, 13)]
    reward = (
        "def score(prompts, completions, target, **kwargs):\n"
        "    assert all(isinstance(t, str) for t in target)\n"
        "    return [float(len(c) == int(t)) for c, t in zip(completions, target)]\n"
    )
    path = write_task(tmp_path, data, data_name="rows.csv", prompt="question", reward_source=reward)
    task = load_task_file(path)
    prompts = [task.prompts("train", 9, 0)[k] for k in range(3)]
    rows_ = [p.row for p in prompts]
    completions = ["x" * (r + 1) for r in rows_[:2]] + ["x" * (rows_[2] + 2)]
    assert task.reward(prompts, completions) == [1.0, 1.0, 0.0]
    assert task.gold(prompts[0]) == "x" * (rows_[0] + 1)


def test_package_module_reward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "pkg_grape_rewards"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = "def score(completions, target, **kwargs):\n    return [0.25 for _ in completions]\n"
    (package / "scoring.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pkg_grape_rewards", raising=False)
    monkeypatch.delitem(sys.modules, "pkg_grape_rewards.scoring", raising=False)
    path = write_task(tmp_path / "task", reward="pkg_grape_rewards.scoring:score")
    task = load_task_file(path)
    assert task.reward(task.prompts("eval", 3, 0), ["a", "b", "c"]) == [0.25] * 3
    before = task.fingerprint()
    (package / "scoring.py").write_text(source + "# edited\n")
    assert load_task_file(path).fingerprint() != before  # the module's file bytes are hashed
    missing = write_task(tmp_path / "t2", reward="pkg_grape_rewards.nothing_here:score")
    with pytest.raises(TaskFileError, match=r"no module named 'pkg_grape_rewards\.nothing_here'"):
        load_task_file(missing)


def test_columns_are_passed_by_name_like_trl(tmp_path: Path) -> None:
    data = [
        {"prompt": f"p{i}=", "a": "x", "target": i, "op": "up", "completion": "c"} for i in range(8)
    ]
    # TRL passes every column but prompt / completion / completion_ids, by keyword.
    reward = (
        "def score(completions, prompts, target, **kwargs):\n"
        "    assert sorted(kwargs) == ['a', 'op'], sorted(kwargs)\n"
        "    assert all(p == f'p{t}=' for p, t in zip(prompts, target))\n"
        "    return [10.0 * t + (c == kwargs['op'][0]) for c, t in zip(completions, target)]\n"
    )
    task = load_task_file(write_task(tmp_path, data, prompt="prompt", reward_source=reward))
    assert task.columns == ("a", "target", "op")
    prompts = task.prompts("train", 4, 0)
    expected = [10.0 * p.row + 1.0 for p in prompts]
    assert task.reward(prompts, ["up"] * 4) == expected
    assert task.columns_for(prompts[:2]) == {
        "a": ["x", "x"],
        "target": [prompts[0].row, prompts[1].row],
        "op": ["up", "up"],
    }


def test_rows_with_duplicate_prompts_get_their_own_columns(tmp_path: Path) -> None:
    data = [{"q": "same=", "a": t, "target": t, "s": "train"} for t in ("A", "B", "C")]
    data += [{"q": f"u{i}=", "a": "x", "target": "x", "s": "eval"} for i in range(3)]
    task = load_task_file(write_task(tmp_path, data, split="s"))
    prompts = task.prompts("train", 3, seed=0)
    assert sorted(p.row for p in prompts) == [0, 1, 2] and set(prompts) == {"same="}
    rewards = task.reward(prompts, ["B"] * 3)
    assert rewards == [1.0 if p.row == 1 else 0.0 for p in prompts]
    assert [task.gold(p) for p in prompts] == ["ABC"[p.row] for p in prompts]
    # A RowPrompt survives pickling (workers) and string lists (sampling copies the list).
    assert [p.row for p in pickle.loads(pickle.dumps(list(prompts)))] == [p.row for p in prompts]
    # A plain string finds its row when exactly one row has that prompt.
    assert task.reward(["u1="], ["x"]) == [1.0]
    assert task.split_of("u1=") == "eval"
    with pytest.raises(TaskFileError, match=r"task.yaml: prompt 'same=' is shared by rows 0-2"):
        task.reward(["same="], ["A"])
    with pytest.raises(TaskFileError, match=r"prompt 'nope=' is not a row of rows.jsonl"):
        task.reward(["nope="], ["A"])


def _reference_eval_rows(data: list[dict], fraction: float, seed: int) -> set[int]:
    """The documented rule: smallest round(f*n) keys sha256(f"{seed}\\0{sorted JSON row}")."""
    keys = [
        hashlib.sha256(
            f"{seed}\0{json.dumps(r, sort_keys=True, ensure_ascii=False)}".encode()
        ).hexdigest()
        for r in data
    ]
    chosen = set(sorted(keys)[: math.floor(fraction * len(data) + 0.5)])
    return {i for i, k in enumerate(keys) if k in chosen}


def test_split_is_disjoint_and_depends_only_on_seed_and_content(tmp_path: Path) -> None:
    data = rows(40)
    task = load_task_file(write_task(tmp_path / "a", data))
    train, held = task.rows_in("train"), task.rows_in("eval")
    assert len(held) == 10 and not set(train) & set(held)
    assert set(train) | set(held) == set(range(40))
    assert set(held) == _reference_eval_rows(data, 0.25, 0)
    assert set(task.prompts("train", 200, 5)) <= {f"q{i}=" for i in train}
    assert set(task.prompts("eval", 200, 5)) == {f"q{i}=" for i in held}
    # Same content in another order: the same rows are held out.
    shuffled = list(data)
    random.Random(1).shuffle(shuffled)
    other = load_task_file(write_task(tmp_path / "b", shuffled))
    assert {shuffled[i]["q"] for i in other.rows_in("eval")} == {data[i]["q"] for i in held}
    # Another seed holds out other rows.
    reseeded = load_task_file(write_task(tmp_path / "c", data, split={"seed": 1}))
    assert set(reseeded.rows_in("eval")) != set(held)
    assert len(reseeded.rows_in("eval")) == 4  # default eval_fraction 0.1 of 40


def test_identical_rows_share_a_split(tmp_path: Path) -> None:
    data = rows(30)
    data += [dict(data[i]) for i in range(0, 30, 3)]  # rows 30..39 copy rows 0, 3, ..., 27
    task = load_task_file(write_task(tmp_path, data, split={"eval_fraction": 0.5, "seed": 2}))
    held = set(task.rows_in("eval"))
    assert 0 < len(held & set(range(0, 30, 3))) < 10  # copies on both sides of the split
    for k, i in enumerate(range(0, 30, 3)):
        assert (i in held) == (30 + k in held)


def test_prompts_draw_without_replacement_then_cycle(tmp_path: Path) -> None:
    data = [{**r, "s": "train" if i < 5 else "eval"} for i, r in enumerate(rows(8))]
    task = load_task_file(write_task(tmp_path, data, split="s"))
    first = task.prompts("train", 5, seed=4)
    assert sorted(first) == [f"q{i}=" for i in range(5)]
    twelve = task.prompts("train", 12, seed=4)
    assert twelve[:5] == first and sorted(twelve[5:10]) == sorted(first)
    assert sorted(Counter(twelve).values()) == [2, 2, 2, 3, 3]
    assert twelve == task.prompts("train", 12, seed=4)
    assert task.prompts("train", 0, 0) == []
    orders = {tuple(task.prompts("train", 5, seed=s)) for s in range(6)}
    assert len(orders) > 1
    with pytest.raises(ValueError, match="'train'"):
        task.prompts("test", 3, 0)


def test_correctness_threshold_preferences_and_breakdown(tmp_path: Path) -> None:
    reward = "def score(completions, **kw):\n    return [len(c) / 4 for c in completions]\n"
    task = load_task_file(write_task(tmp_path, reward_source=reward, correct_threshold=0.5))
    p = task.prompts("eval", 1, 0)[0]
    assert task.is_correct(p, "ab") and not task.is_correct(p, "a")
    assert task.hidden_score(p, "abc") == 0.75
    assert task.breakdown([p, p], ["a", "abcd"]) == {"reward": [0.25, 1.0]}
    assert task.preference_probability(p, "abcd", "") == pytest.approx(1 / (1 + math.exp(-10)))
    result = task.evaluate(lambda ps: ["ab" if i % 2 else "" for i in range(len(ps))], n=4)
    assert (result.accuracy, result.reward) == (0.5, pytest.approx(0.25))


def test_fingerprint_tracks_data_reward_and_settings(tmp_path: Path) -> None:
    path = write_task(tmp_path / "t")
    base = load_task_file(path).fingerprint()
    assert len(base) == 64 and load_task_file(path).fingerprint() == base
    path.write_text("# a comment\n" + path.read_text())
    assert load_task_file(path).fingerprint() == base  # same settings
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "t", moved)
    assert load_task_file(moved / "task.yaml").fingerprint() == base
    data = rows()
    data[7]["a"] = "changed"
    write_rows(moved / "rows.jsonl", data)
    assert load_task_file(moved / "task.yaml").fingerprint() != base
    reward = path.parent / "reward.py"
    reward.write_text(reward.read_text() + "\n# edited\n")
    assert load_task_file(path).fingerprint() != base
    assert load_task_file(write_task(tmp_path / "v")).fingerprint() == base
    assert load_task_file(write_task(tmp_path / "u", max_new_tokens=9)).fingerprint() != base


def test_builtin_fingerprint_hashes_config() -> None:
    text = '{"digits":3,"name":"addition"}'
    assert AdditionTask(3).fingerprint() == hashlib.sha256(text.encode()).hexdigest()
    assert AdditionTask(3).fingerprint() != AdditionTask(2).fingerprint()


def test_builtin_tasks_have_demonstrations_unless_they_say_otherwise() -> None:
    assert AdditionTask().has_demonstrations and not AdditionTask().chat_template
    AdditionTask().require_demonstrations()

    class NoGold(AdditionTask):
        has_demonstrations = False

    with pytest.raises(ValueError, match="task 'addition' has no gold completions"):
        NoGold().demonstrations("train", 2, 0)


def test_pickle_and_config_rebuild_the_task(tmp_path: Path) -> None:
    path = write_task(tmp_path)
    task = load_task_file(path)
    config = task.config()
    assert config == {"name": "t", "file": str(path.resolve()), "fingerprint": task.fingerprint()}
    for copy in (pickle.loads(pickle.dumps(task)), build_task(config)):
        assert isinstance(copy, DataTask) and copy.config() == config
        prompts = copy.prompts("train", 6, 2)
        assert prompts == task.prompts("train", 6, 2)
        assert copy.reward(prompts, [f"a{p.row}" for p in prompts]) == [1.0] * 6
    blob = pickle.dumps(task)
    write_rows(path.parent / "rows.jsonl", rows(21))
    with pytest.raises(TaskFileError, match=r"task\.yaml: changed since the task was built"):
        pickle.loads(blob)
    with pytest.raises(TaskFileError, match="changed since"):
        build_task(config)


def test_build_task_accepts_names_mappings_and_paths(tmp_path: Path) -> None:
    path = write_task(tmp_path)
    assert build_task("addition").config() == {"name": "addition", "digits": 2}
    assert build_task({"name": "addition", "digits": 3}).config() == AdditionTask(3).config()
    assert build_task(str(path)).name == "t" and build_task(path).name == "t"
    assert build_task({"file": str(path)}).name == "t"
    assert is_task_file_ref("x/T.YML") and not is_task_file_ref("addition")
    with pytest.raises(ValueError, match="names task 't', not 'u'"):
        build_task({"name": "u", "file": str(path)})
    with pytest.raises(ValueError, match="needs 'name'"):
        build_task({"digits": 3})
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        build_task("nope")
    with pytest.raises(TaskFileError, match="no such task file"):
        build_task(tmp_path / "missing.yaml")
    assert get_task("addition").fingerprint() == build_task("addition").fingerprint()


def test_datasets_folder(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.Dataset.from_list(rows(12)).save_to_disk(str(folder))
    task = load_task_file(write_task(tmp_path, data_name="rows.jsonl", data="ds"))
    prompts = task.prompts("train", 3, 0)
    assert task.reward(prompts, [f"a{p.row}" for p in prompts]) == [1.0] * 3
    assert task.rows_in("eval") == sorted(_reference_eval_rows(rows(12), 0.25, 0))
    before = task.fingerprint()
    datasets.Dataset.from_list(rows(13)).save_to_disk(str(folder))
    assert load_task_file(tmp_path / "task.yaml").fingerprint() != before
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows(4))}).save_to_disk(
        str(tmp_path / "dd")
    )
    path = write_task(tmp_path, data="dd")
    with pytest.raises(TaskFileError, match=r"holds the splits \['train'\]; point data at one"):
        load_task_file(path)


def test_example_task_loads_and_fits_the_char_alphabet() -> None:
    task = load_task_file(EXAMPLE / "task.yaml")
    assert task.name == "byo_words" and len(task.rows) == 200
    assert set(task.alphabet) <= set(ALPHABET)
    assert (len(task.rows_in("train")), len(task.rows_in("eval"))) == (160, 40)
    assert max(len(r["target"]) for r in task.rows) <= task.max_new_tokens - 1
    prompts = task.prompts("train", 50, 0)
    assert task.reward(prompts, [task.gold(p) for p in prompts]) == [1.0] * 50
    up, rev = (RowPrompt(r["prompt"], i) for i, r in enumerate(task.rows[:2]))
    assert (str(up), str(rev)) == ("up:vobi=", "rev:vini=")
    # "VOBX": 3 of max(4, 4) positions right -> 0.5 * 3/4; "ini": 3 of 4 -> 0.375 too.
    assert task.reward([up, rev, up], ["VOBX", "ini", ""]) == [0.375, 0.375, 0.0]
    made = runpy.run_path(str(EXAMPLE / "make_rows.py"))["make_rows"]()
    lines = (EXAMPLE / "rows.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == made
