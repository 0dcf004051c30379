"""Write rows.jsonl: 200 string-transformation problems for the byo_task example.

Each row is ``{"prompt": "OP:word=", "target": ANSWER, "op": OP}`` for a pseudo-word of 3 to 5
lowercase letters (consonant-vowel alternation), with ``OP`` one of

* ``up``: the word in capitals (``"up:bako="`` -> ``"BAKO"``);
* ``rev``: the word reversed (``"rev:bako="`` -> ``"okab"``).

Deterministic (seed 0): ``python make_rows.py`` rewrites the same file. Every character is in
the character tokenizer's alphabet (letters, ``:`` and ``=``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
OPS = {"up": str.upper, "rev": lambda word: word[::-1]}


def make_rows(n: int = 200, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows with distinct (op, word) pairs, deterministic from ``seed``."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    while len(rows) < n:
        length = rng.randint(3, 5)
        word = "".join(rng.choice(VOWELS if i % 2 else CONSONANTS) for i in range(length))
        op = rng.choice(sorted(OPS))
        if (op, word) in seen:
            continue
        seen.add((op, word))
        rows.append({"prompt": f"{op}:{word}=", "target": OPS[op](word), "op": op})
    return rows


def main() -> None:
    out = Path(__file__).with_name("rows.jsonl")
    out.write_text("".join(json.dumps(row) + "\n" for row in make_rows()))


if __name__ == "__main__":
    main()
