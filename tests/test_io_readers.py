"""The shared readers in tunebench.io and the token conventions in models/chat: errors name file and line."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tunebench.errors import DataError
from tunebench.io import read_delimited, read_json, read_json_records, read_text
from tunebench.models.chat import encode_prompt, pad_token_id


def test_read_json_names_the_file_the_line_what_and_the_fix(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"x": [1, 2]}))
    assert read_json(good) == {"x": [1, 2]}
    bad = tmp_path / "b.json"
    bad.write_text('{\n  "x": 1,\n}\n')
    with pytest.raises(DataError, match=r"b\.json: invalid JSON at line 3 .*; run it again$"):
        read_json(bad, fix="run it again")
    with pytest.raises(DataError, match=r"c\.json: cannot read the summary \(No such file or directory\); train$"):
        read_json(tmp_path / "c.json", what="the summary", fix="train")


def test_json_records_under_a_named_key_or_the_only_list(tmp_path):
    path = tmp_path / "bbh.json"
    path.write_text(json.dumps({"canary": "x", "examples": [{"input": "a"}, {"input": "b"}]}))
    assert read_json_records(path, "examples") == [{"input": "a"}, {"input": "b"}]
    assert read_json_records(path) == [{"input": "a"}, {"input": "b"}]  # the only list in the object
    with pytest.raises(DataError, match=r"bbh\.json: no top-level key 'rows'"):
        read_json_records(path, "rows")


def test_text_drops_a_bom_and_csv_names_the_bad_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffq,a\n1,2\n\n3,4,5\n".encode())
    assert read_text(path).startswith("q,a")
    with pytest.raises(DataError, match=r"t\.csv:4: expected 2 columns as in the header, found 3"):
        read_delimited(path, ",")
    path.write_bytes(b"q,a\n1,2\n")
    assert read_delimited(path, ",") == [{"q": "1", "a": "2"}]


class _Tok:
    """A tokenizer that splits on spaces and adds <s> with special tokens on."""

    def __init__(self, bos="<s>", pad=None, eos=None):
        self.bos_token, self.pad_token_id, self.eos_token_id = bos, pad, eos

    def __call__(self, text, add_special_tokens=True):
        words = text.split()
        return {"input_ids": ([self.bos_token] if add_special_tokens and self.bos_token else []) + words}


def test_bos_is_added_unless_the_prompt_starts_with_it():
    tok = _Tok()
    assert encode_prompt(tok, "hello there") == ["<s>", "hello", "there"]
    assert encode_prompt(tok, "<s> hello") == ["<s>", "hello"]  # a chat template's own BOS is not doubled
    assert encode_prompt(_Tok(bos=None), "hello") == ["hello"]


def test_pad_falls_back_to_eos_then_the_models_eos_then_zero():
    assert pad_token_id(SimpleNamespace(pad_token_id=3, eos_token_id=2), [7]) == 3
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=2), [7]) == 2
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None), [7, 8]) == 7
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0
