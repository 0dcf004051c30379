"""CharTokenizer / HFTokenizer / tokenizer_for. Expected ids are worked out by hand from the
documented layout: 0 pad, 1 bos, 2 eos, 3 unk, then digits (4..13), a-z (14..39),
A-Z (40..65), space (66), then + - * / = < > ( ) [ ] { } , . ; : ! ? ' " # _ | (67..90)."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_helpers import hf_char_tokenizer

from grape_evo.policy import CharTokenizer, HFTokenizer, tokenizer_for


def test_special_ids_and_vocab_size(tok: CharTokenizer) -> None:
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 4 + 10 + 26 + 26 + 1 + 24


def test_encode_known_ids(tok: CharTokenizer) -> None:
    # '1'=5 '2'=6 '+'=67 '3'=7 '4'=8 '='=71 '6'=10
    assert tok.encode("12+34=46") == [5, 6, 67, 7, 8, 71, 8, 10]
    assert tok.encode("aZ |") == [14, 65, 66, 90]
    assert tok.encode("") == []


@pytest.mark.parametrize(
    "text",
    ["12+34=46", "987-1=986", "Hello, World!", "sort: [3, 1, 2] -> [1, 2, 3]", "a\"b'c#_|{}<>?;"],
)
def test_round_trip(tok: CharTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_whole_alphabet_round_trip(tok: CharTokenizer) -> None:
    ids = tok.encode(tok.alphabet)
    assert ids == list(range(4, tok.vocab_size))
    assert tok.decode(ids) == tok.alphabet


def test_decode_strips_pad_bos_eos(tok: CharTokenizer) -> None:
    assert tok.decode([1, 5, 6, 2, 0, 0]) == "12"
    assert tok.decode([0, 0, 1, 14, 2]) == "a"


def test_unknown_chars(tok: CharTokenizer) -> None:
    assert tok.encode("é\n\t") == [3, 3, 3]
    assert tok.encode("1é2") == [5, 3, 6]
    assert tok.decode([3]) == "<unk>"


def test_special_token_text_is_plain_characters(tok: CharTokenizer) -> None:
    # "<eos>" typed in a prompt is five characters, never the EOS id.
    assert tok.encode("<eos>") == [72, 18, 28, 32, 73]


def test_save_load(tok: CharTokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    loaded = CharTokenizer.load(tmp_path)
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.encode("12+34=46") == tok.encode("12+34=46")
    again = tokenizer_for(tmp_path)
    assert isinstance(again, CharTokenizer)
    assert again.decode(again.encode("x=1")) == "x=1"


def test_tokenizer_for_defaults(tmp_path: Path) -> None:
    assert isinstance(tokenizer_for(None), CharTokenizer)
    assert isinstance(tokenizer_for(tmp_path), CharTokenizer)  # no tokenizer files


def test_tokenizer_for_hf_checkpoint(tok: CharTokenizer, tmp_path: Path) -> None:
    hf_char_tokenizer().save_pretrained(str(tmp_path))
    loaded = tokenizer_for(tmp_path)
    assert isinstance(loaded, HFTokenizer)
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (0, 1, 2)
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.encode("12+34=46") == [5, 6, 67, 7, 8, 71, 8, 10]
    assert loaded.decode([1, 5, 6, 2, 0]) == "12"
