"""Every task-file error is one TaskFileError line naming the file, the field, the row and why."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from task_file_helpers import rows, write_task

from grape_evo.tasks import TaskFileError, load_task_file
from grape_evo.tasks.reward_fn import describe_rows


def raises_line(path: Path, pattern: str) -> Any:
    """pytest.raises for a one-line TaskFileError that starts with ``path`` and matches."""
    return pytest.raises(TaskFileError, match=rf"^{re.escape(str(path))}: {pattern}")


def check_one_line(info: pytest.ExceptionInfo[TaskFileError]) -> None:
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)


SETTINGS_ERRORS = [
    (
        {"promt": "q"},
        r"unknown key 'promt'; valid keys: answer, chat_template, correct_threshold, data, "
        r"max_new_tokens, name, prompt, reward, split$",
    ),
    ({"reward": None}, r"missing required key 'reward'$"),
    ({"max_new_tokens": 0}, r"max_new_tokens: must be an integer >= 1, got 0$"),
    ({"max_new_tokens": True}, r"max_new_tokens: must be an integer >= 1, got True$"),
    ({"name": "my task"}, r"name: must be letters, digits, '_', '.' or '-', got 'my task'$"),
    ({"prompt": ""}, r"prompt: must be a non-empty string, got ''$"),
    ({"chat_template": "yes"}, r"chat_template: must be true or false, got 'yes'$"),
    ({"correct_threshold": float("nan")}, r"correct_threshold: must be a finite number, got nan"),
    ({"split": {"eval_fraction": 1.5}}, r"split.eval_fraction: must be a number in \(0, 1\)"),
    ({"split": {"frac": 0.1}}, r"split: unknown key 'frac'; valid keys: eval_fraction, seed$"),
    ({"split": {"seed": "x"}}, r"split.seed: must be an integer, got 'x'$"),
    ({"split": 3}, r"split: must be a mapping \{eval_fraction, seed\} or a field name, got 3$"),
    (
        {"split": {"eval_fraction": 0.01}},
        r"split: the eval split is empty \(eval_fraction 0.01 of 20 distinct-content rows\)$",
    ),
    ({"split": "q"}, r"split: row 0 has q='q0='; expected one of 'train', 'eval'$"),
    ({"data": "nothing.jsonl"}, r"data: no such file or folder: .*nothing.jsonl$"),
    (
        {"prompt": "question"},
        r"prompt: row 0 of rows.jsonl has no field 'question' \(its fields: q, a, target\)$",
    ),
    ({"answer": "ans"}, r"answer: row 0 of rows.jsonl has no field 'ans'"),
    ({"reward": "reward.py"}, r"reward: expected 'file.py:function' or 'package.module:function'"),
    ({"reward": "reward.py:"}, r"reward: expected 'file.py:function'"),
    ({"reward": "bad name:score"}, r"reward: expected 'file.py:function'"),
    ({"reward": "missing.py:score"}, r"reward: no such file: .*missing.py$"),
    ({"reward": "reward.py:nope"}, r"reward: reward.py has no function 'nope'$"),
    (
        {"reward": "reward:score"},
        r"reward: no module named 'reward' \(it must be importable: installed, or on "
        r"PYTHONPATH\); for the file, write reward.py:FUNCTION$",
    ),
]


@pytest.mark.parametrize(("settings", "pattern"), SETTINGS_ERRORS)
def test_settings_errors(tmp_path: Path, settings: dict[str, Any], pattern: str) -> None:
    path = write_task(tmp_path, **settings)
    with raises_line(path, pattern) as info:
        load_task_file(path)
    check_one_line(info)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (None, r"no such task file$"),
        ("name: [unclosed\nprompt: q\n", r"invalid YAML at line 2: expected ',' or '\]', but "),
        ("- name\n- data\n", r"expected a mapping of settings, got list$"),
        ("", r"expected a mapping of settings, got an empty file$"),
    ],
)
def test_task_file_errors(tmp_path: Path, text: str | None, pattern: str) -> None:
    path = tmp_path / "task.yaml"
    if text is not None:
        path.write_text(text)
    with raises_line(path, pattern) as info:
        load_task_file(path)
    check_one_line(info)


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("rows.jsonl", "", r"data: rows.jsonl has no rows$"),
        ("rows.jsonl", '{"q": "a=", "a": "b"}\n\n{"q": oops}\n', r"data: rows.jsonl line 3: "),
        ("rows.jsonl", '{"q": "a=", "a": "b"}\n[1, 2]\n', r"data: .* line 2: expected a JSON "),
        ("rows.csv", "q,a,target\n", r"data: rows.csv has no rows$"),
        ("rows.csv", "q,a,t\nx=,y,z\np=,a,b,c\n", r"data: rows.csv row 1 \(line 3\): 4 fields, "),
        ("rows.csv", "q,a,q\nx=,y,z\n", r"data: rows.csv: the header has duplicate column 'q'$"),
        ("rows.txt", "q\n", r"data: rows.txt: expected a .jsonl or .csv file or a folder "),
        ("rows.jsonl", b'{"q": "\xff"}', r"data: rows.jsonl is not UTF-8 text \(byte 7: "),
        (
            "rows.jsonl",
            '{"q": "a=", "a": "b"}\n{"q": 4, "a": "b"}\n',
            r"prompt: row 1 of rows.jsonl: field 'q' must be a string, got int$",
        ),
        (
            "rows.jsonl",
            '{"q": "a=", "a": "b"}\n{"q": "c=", "a": "d"}\n{"a": "e"}\n',
            r"prompt: row 2 of rows.jsonl has no field 'q' \(its fields: a\)$",
        ),
        (
            "rows.jsonl",
            '{"q": "a=", "a": "b"}\n{"q": "c=", "a": null}\n',
            r"answer: row 1 of rows.jsonl: field 'a' must be a string, got NoneType$",
        ),
        (
            "rows.jsonl",
            '{"q": "a=", "a": "b", "completions": 1}\n{"q": "c=", "a": "d"}\n',
            r"data: column 'completions' clashes with the reward's 'completions' argument",
        ),
    ],
)
def test_data_errors(tmp_path: Path, name: str, content: str | bytes, pattern: str) -> None:
    path = write_task(tmp_path, data=name)
    data = tmp_path / name
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    with raises_line(path, pattern) as info:
        load_task_file(path)
    check_one_line(info)


def test_data_folder_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    path = write_task(tmp_path, data="ds")
    with raises_line(path, r"data: .*ds is a folder but not one saved by datasets' save_to_disk"):
        load_task_file(path)
    (folder / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with raises_line(path, r"data: .*ds is a folder saved by HF datasets, which needs the "):
        load_task_file(path)


def test_reward_file_errors(tmp_path: Path) -> None:
    path = write_task(tmp_path / "a", reward_source="x = 1 / 0\n")
    with raises_line(path, r"reward: running reward.py raised ZeroDivisionError: division by "):
        load_task_file(path)
    path = write_task(tmp_path / "b", reward_source="score = 3\n")
    with raises_line(path, r"reward: reward.py:score is a int, not a function$"):
        load_task_file(path)


def task_returning(tmp_path: Path, body: str) -> Any:
    """A task whose reward is ``def score(completions, **kw): <body>``, rows split by field."""
    source = "import math\n\ndef score(completions, **kw):\n    " + body + "\n"
    data = [{**r, "s": "train" if i < 12 else "eval"} for i, r in enumerate(rows(16))]
    path = write_task(tmp_path, data, reward_source=source, split="s")
    return path, load_task_file(path)


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("raise ValueError('bad value\\nmore')", r"raised ValueError: bad value on rows 3-5, 9$"),
        ("return [1.0]", r"returned 1 rewards for 4 completions \(on rows 3-5, 9\)$"),
        ("return [1.0, None, 1.0, 1.0]", r"returned None \(NoneType\) for row 4, expected a "),
        ("return [1.0, 1.0, 'x', 1.0]", r"returned 'x' \(str\) for row 5, expected a number$"),
        ("return [1.0, 1.0, 1.0, math.nan]", r"returned nan for row 9; rewards must be finite$"),
        ("return [-math.inf] * 4", r"returned -inf for row 3; rewards must be finite$"),
        ("return {'a': 1}", r"returned dict, expected a list of 4 numbers$"),
        ("return '1111'", r"returned str, expected a list of 4 numbers$"),
        ("return (c for c in completions)", r"returned generator, expected a list of 4 "),
    ],
)
def test_reward_call_errors(tmp_path: Path, body: str, pattern: str) -> None:
    path, task = task_returning(tmp_path, body)
    with raises_line(path, "reward reward.py:score " + pattern) as info:
        task.reward(["q3=", "q4=", "q5=", "q9="], ["a", "b", "c", "d"])
    check_one_line(info)


def test_numpy_and_torch_rewards_are_accepted(tmp_path: Path) -> None:
    _, task = task_returning(tmp_path / "np", "return __import__('numpy').float32([0.5, 2])")
    assert task.reward(["q1=", "q2="], ["a", "b"]) == [0.5, 2.0]
    _, task = task_returning(tmp_path / "pt", "return __import__('torch').tensor([1.5, -1])")
    assert task.reward(["q1=", "q2="], ["a", "b"]) == [1.5, -1.0]


def test_no_answer_means_no_demonstrations(tmp_path: Path) -> None:
    path = write_task(tmp_path, answer=None)
    task = load_task_file(path)
    assert not task.has_demonstrations and task.completion_alphabet == ""
    pattern = r"answer: not set, so the task has no demonstrations for an SFT warm start"
    for call in (
        task.require_demonstrations,
        lambda: task.gold("q1="),
        lambda: task.demonstrations("train", 2, 0),
    ):
        with raises_line(path, pattern):
            call()
    assert task.reward(["q1="], ["a1"]) == [1.0]  # rewards need no answer


def test_describe_rows_by_hand() -> None:
    assert describe_rows([7]) == "row 7"
    assert describe_rows([9, 3, 4, 5, 4]) == "rows 3-5, 9"
    assert describe_rows(list(range(0, 16, 2))) == "rows 0, 2, 4, 6, 8, 10, ... (8 rows)"
