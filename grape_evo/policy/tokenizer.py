"""Tokenizers for policies: a fixed character-level vocabulary, or a local HF checkpoint's own.

Both expose the same small API, `TextTokenizer`: ``encode(text) -> list[int]`` (no special
tokens added), ``decode(ids) -> str`` (pad/bos/eos stripped), and the properties
``vocab_size``, ``pad_id``, ``bos_id``, ``eos_id``, plus ``save(dir)``.

Character vocabulary (ids are part of saved checkpoints; do not reorder):

====  ========  ==============================================================
id    token     meaning
====  ========  ==============================================================
0     ``<pad>``  padding (left of prompts, right of finished completions)
1     ``<bos>``  start of every prompt
2     ``<eos>``  end of a completion (kept as the completion's last token)
3     ``<unk>``  any character outside the alphabet
4..   alphabet  ``0-9``, ``a-z``, ``A-Z``, space, then ``+-*/=<>()[]{},.;:!?'"#_|``
====  ========  ==============================================================

Special tokens live only in the vocabulary (not as "added tokens"), so the literal text
``"<eos>"`` encodes as five characters, never as the special id.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
PUNCTUATION = "+-*/=<>()[]{},.;:!?'\"#_|"
ALPHABET: str = string.digits + string.ascii_lowercase + string.ascii_uppercase + " " + PUNCTUATION

_CHAR_MARKER = "char_tokenizer.json"
_BACKEND_FILE = "tokenizer.json"
_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@runtime_checkable
class TextTokenizer(Protocol):
    """The tokenizer API that the policy, sampler and tasks rely on."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def save(self, directory: str | Path) -> None: ...


class CharTokenizer:
    """Character-level tokenizer over `ALPHABET`, backed by a `tokenizers.Tokenizer`.

    A WordLevel model over single characters, with a pre-tokenizer that isolates every
    character (so each character is one token) and a `Fuse` decoder (tokens are concatenated
    without separators). Unknown characters map to ``<unk>`` (id 3).
    """

    def __init__(self, alphabet: str = ALPHABET) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("alphabet has duplicate characters")
        self._alphabet = alphabet
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
        for ch in alphabet:
            vocab[ch] = len(vocab)
        backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        self._backend = backend
        self._strip = frozenset((self.pad_id, self.bos_id, self.eos_id))

    @property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (e.g. to wrap in `PreTrainedTokenizerFast`)."""
        return self._backend

    @property
    def alphabet(self) -> str:
        return self._alphabet

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self._alphabet)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return 3

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of `text`, one per character; no special tokens added."""
        return list(self._backend.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` for many texts at once (parallel in the Rust backend)."""
        encs = self._backend.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encs]

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` with pad/bos/eos removed (wherever they are); ``<unk>`` stays visible."""
        kept = [int(i) for i in ids if int(i) not in self._strip]
        return self._backend.decode(kept, skip_special_tokens=False)

    def save(self, directory: str | Path) -> None:
        """Write ``char_tokenizer.json`` (alphabet) and ``tokenizer.json`` (backend) to a dir."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"type": "CharTokenizer", "alphabet": self._alphabet, "specials": SPECIAL_TOKENS}
        (path / _CHAR_MARKER).write_text(json.dumps(meta, indent=2))
        self._backend.save(str(path / _BACKEND_FILE))

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        """Rebuild a tokenizer written by `save`."""
        meta = json.loads((Path(directory) / _CHAR_MARKER).read_text())
        if meta.get("type") != "CharTokenizer":
            raise ValueError(f"{directory} does not hold a CharTokenizer")
        return cls(alphabet=meta["alphabet"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class HFTokenizer:
    """Adapter from a `transformers` tokenizer to the `TextTokenizer` API.

    Missing specials fall back to EOS: ``bos_id`` is the tokenizer's BOS, else EOS; ``pad_id``
    is its PAD, else EOS (pad positions are always masked, so sharing the id is harmless).
    """

    def __init__(self, tokenizer: Any) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the checkpoint's tokenizer has no eos token; cannot end completions")
        self._tok = tokenizer

    @property
    def hf_tokenizer(self) -> Any:
        return self._tok

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def pad_id(self) -> int:
        pid = self._tok.pad_token_id
        return int(pid) if pid is not None else self.eos_id

    @property
    def bos_id(self) -> int:
        bid = self._tok.bos_token_id
        return int(bid) if bid is not None else self.eos_id

    @property
    def eos_id(self) -> int:
        return int(self._tok.eos_token_id)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=True))

    def save(self, directory: str | Path) -> None:
        self._tok.save_pretrained(str(directory))

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self._tok).__name__}, vocab_size={self.vocab_size})"


def tokenizer_for(path: str | Path | None) -> CharTokenizer | HFTokenizer:
    """The tokenizer for a policy directory or local HF checkpoint.

    - ``None``, or a directory without tokenizer files: a fresh `CharTokenizer`.
    - A directory written by `CharTokenizer.save` (e.g. a saved `Policy`): that `CharTokenizer`.
    - A directory with HF tokenizer files: ``AutoTokenizer.from_pretrained(path,
      local_files_only=True)`` wrapped in `HFTokenizer`. Nothing is ever downloaded.
    """
    if path is None:
        return CharTokenizer()
    directory = Path(path)
    if (directory / _CHAR_MARKER).is_file():
        return CharTokenizer.load(directory)
    if directory.is_dir() and any((directory / f).is_file() for f in _HF_TOKENIZER_FILES):
        from transformers import AutoTokenizer

        return HFTokenizer(AutoTokenizer.from_pretrained(str(directory), local_files_only=True))
    return CharTokenizer()
