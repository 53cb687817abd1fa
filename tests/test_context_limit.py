"""Contexts longer than the model's positions: a GPT-2 with 64 positions and a hand-built 175-token prompt.

Right values: the same model run by plain transformers on the prompt cut by hand to its last tokens.
"""

from __future__ import annotations

import json

import pytest
import torch

N_POSITIONS = 64
N_PROMPT = 175
MAX_NEW = 8


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = None
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=N_POSITIONS, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    out = tmp_path_factory.mktemp("gpt2-64")
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def loaded(gpt2_dir):
    from tunebench.config import ModelConfig
    from tunebench.models.load import load_model

    return load_model(ModelConfig(ref=str(gpt2_dir), chat_template="never"))


def _long_prompt(tok) -> str:
    words = [f"w{i}" for i in range(400)]
    for n in range(50, 400):
        text = " ".join(words[:n])
        if len(tok(text)["input_ids"]) >= N_PROMPT:
            assert len(tok(text)["input_ids"]) == N_PROMPT or n > 50
            return text
    raise AssertionError("could not build the prompt")


def test_eval_cuts_the_prompt_from_the_left_and_counts_it(loaded, tmp_path):
    from tunebench.config import EvalConfig, GenerationConfig
    from tunebench.data.example import Example
    from tunebench.evaluate.run_eval import evaluate
    from tunebench.pipeline import write_evaluation
    from tunebench.rundir import EvalDir

    tok, model = loaded.tokenizer, loaded.model
    prompt = _long_prompt(tok)
    ids = tok(prompt)["input_ids"]
    assert len(ids) > N_POSITIONS
    kept = ids[len(ids) - (N_POSITIONS - MAX_NEW):]  # by hand: the last tokens that leave room for the new ones
    with torch.no_grad():
        out = model.generate(torch.tensor([kept]), attention_mask=torch.ones(1, len(kept), dtype=torch.long),
                             max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, len(kept):], skip_special_tokens=True)

    cfg = EvalConfig(metrics=["exact_match"], bootstrap=20, generation=GenerationConfig(max_new_tokens=MAX_NEW))
    evaluation = evaluate(loaded, [Example("long", prompt, "x", ("x",))], cfg=cfg, system={}, progress=False)
    write_evaluation(EvalDir(tmp_path), evaluation)
    scores = evaluation.scores
    row = json.loads((tmp_path / "predictions.jsonl").read_text())
    assert row["prediction"] == expected.strip()
    assert row["n_cut_tokens"] == len(ids) - len(kept) and row["n_prompt_tokens"] == len(kept)
    assert row["prompt"] == tok.decode(kept)  # the text the model was given
    assert scores["prompts_cut"] == 1


def test_loglikelihood_cuts_the_context_from_the_left(loaded):
    from tunebench.bench.loglik import Request, loglikelihoods, loglikelihoods_naive

    tok, model = loaded.tokenizer, loaded.model
    context, continuation = _long_prompt(tok), " w7 w8"
    whole = tok(context + continuation)["input_ids"]
    n_cont = len(whole) - len(tok(context)["input_ids"])
    kept = whole[len(whole) - (N_POSITIONS + 1):]  # by hand: inputs are all but the last token
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([kept[:-1]])).logits[0].float(), dim=-1)
    targets = kept[len(kept) - n_cont:]
    expected = sum(float(logprobs[len(kept) - n_cont - 1 + i, t]) for i, t in enumerate(targets))
    request = Request(context, (continuation, " w9"))
    assert loglikelihoods(model, tok, [request])[0][0] == pytest.approx(expected, abs=1e-4)
    assert loglikelihoods_naive(model, tok, [request])[0][0] == pytest.approx(expected, abs=1e-4)


def test_training_caps_max_length_at_the_positions(gpt2_dir, tmp_path, data_dir, caplog):
    from train_helpers import make_cfg

    from tunebench.train.loop import train

    cfg = make_cfg(tmp_path, gpt2_dir, max_steps=1)
    cfg.model.chat_template = "never"
    assert cfg.data.max_length > N_POSITIONS
    with caplog.at_level("WARNING"):
        result = train(cfg, data_dir=data_dir, progress=False)
    assert any("positions" in r.getMessage() for r in caplog.records)
    stats = json.loads((result.run_dir / "data_stats.json").read_text())["tokenized"]["train"]
    assert stats["truncated"] > 0 and stats["tokens"]["max_length"] == N_POSITIONS


def test_seq2seq_loglikelihood_cuts_the_encoder_input_from_the_left(tmp_path, tokenizer_dir, caplog):
    """BART has a position table (T5 has none): an over-long context is cut to its last positions, counted."""
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    from tunebench.bench.loglik import Request, loglikelihoods_seq2seq

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = BartForConditionalGeneration(BartConfig(
        vocab_size=len(tok), max_position_embeddings=N_POSITIONS, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id)).eval()
    context, continuation = _long_prompt(tok), " w7 w8"
    source = tok(context)["input_ids"]
    assert len(source) > N_POSITIONS
    head = source[:1] if tok.bos_token_id is not None and source[0] == tok.bos_token_id else []
    kept = head + source[len(source) - (N_POSITIONS - len(head)):]  # by hand: the last positions, BOS kept
    labels = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([kept]), labels=torch.tensor([labels])).logits[0]
    expected = float(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(labels)[:, None]).sum())
    with caplog.at_level("WARNING"):
        got = loglikelihoods_seq2seq(model, tok, [Request(context, (continuation, " w9"))])
    assert got[0][0] == pytest.approx(expected, abs=1e-4)
    assert any("1 of 1 contexts cut" in r.getMessage() for r in caplog.records)
