"""`tunebench data preview`: rendered pairs and token statistics per split, on the real DialogSum copy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tunebench.config import config_from_dict
from tunebench.data.preview import collect_preview, preview
from tunebench.models.chat import format_prompt


@dataclass
class _Loaded:
    """Stands in for tunebench.models.load.LoadedModel: what preview uses of it."""

    tokenizer: Any
    family: str = "causal"

    def format_prompt(self, prompt: str) -> str:
        return format_prompt(self.tokenizer, prompt, use_chat=True)


@pytest.fixture(scope="module")
def cfg():
    return config_from_dict({"data": {"splits": {"train": "validation"}, "limits": {"test": 20}, "max_length": 256}})


def test_preview_without_model_shows_plain_prompts(cfg, data_dir):
    text = preview(cfg, data_dir, n=2)
    assert "train 4" in text and "test 20 (source split 'test')" in text and "carved from train (0.1)" in text
    assert text.count("PROMPT:") == 6 and "--- [1] test_0 ---" in text
    assert "REFERENCES (3):" in text
    assert "tokens:" not in text and "<|im_start|>" not in text


def test_preview_with_model_shows_chat_text_and_token_stats(cfg, data_dir, tokenizer_dir):
    from transformers import AutoTokenizer

    model = _Loaded(AutoTokenizer.from_pretrained(tokenizer_dir))
    data = collect_preview(cfg, data_dir, n=1, model=model)
    test = data["splits"]["test"]
    assert test["size"] == 20 and test["examples"][0]["prompt"].startswith("<|im_start|>system")
    tok = test["tokens"]["tokens"]
    assert tok["count"] == 20 and tok["min"] <= tok["median"] <= tok["p95"] <= tok["max"]
    assert tok["over_max"] == test["tokens"]["truncated"] > 0  # max_length 256 is below DialogSum's median
    text = preview(cfg, data_dir, n=1, model=model)
    assert "over max_length 256" in text and "<|im_start|>assistant" in text
