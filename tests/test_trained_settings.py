"""A trained run is scored in the prompt format it was trained with, and trust comes from the user, not a file.

Right values: the exact rendered prompt strings (the plain prompt, or the tokenizer's own `apply_chat_template`),
and a marker file that the model's custom code would create if it ran.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tunebench.config import config_from_dict, dump_config
from tunebench.evaluate.compare import compare_systems
from tunebench.models.export import save_trained
from tunebench.models.load import load_model
from tunebench.models.methods import apply_method
from tunebench.pipeline import evaluate_reference


def _write_run(run_dir, model_dir, template=None, **model_keys):
    """A run dir as `tunebench train` leaves it: config.yaml and an adapter (untrained LoRA: only formats matter)."""
    from tunebench.config import ModelConfig, TrainConfig

    cfg = config_from_dict({"model": {"ref": str(model_dir), **model_keys}, "train": {"method": "lora"},
                            **({"data": {"template": template}} if template else {})})
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    loaded = load_model(ModelConfig(ref=str(model_dir)))
    model = apply_method(loaded.model, TrainConfig.model_validate({"method": "lora", "lora": {"r": 2}}))
    save_trained(model, loaded.tokenizer, run_dir / "adapter", method="lora")
    return run_dir


def _eval_cfg(template=None, **model_keys):
    return config_from_dict({
        **({"model": model_keys} if model_keys else {}),
        "data": {"source": "dialogsum", "splits": {"train": "validation", "validation": None, "test": "test"},
                 "limits": {"train": 4, "test": 2}, **({"template": template} if template else {})},
        "eval": {"metrics": ["rouge"], "bootstrap": 20, "generation": {"max_new_tokens": 2}},
    })


def _rows(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_eval_of_a_run_uses_its_prompt_format_and_stores_the_exact_prompt(tmp_path, tiny_causal_dir, data_dir,
                                                                          caplog):
    from transformers import AutoTokenizer

    from tunebench.data.prepare import build_splits

    run = _write_run(tmp_path / "run", tiny_causal_dir, chat_template="never")
    cfg = _eval_cfg()  # model.chat_template left at auto, model.ref at the default alias: both come from the run
    test = build_splits(cfg.data, data_dir, cfg.seed).test
    scores = evaluate_reference(cfg, data_dir=data_dir, adapter=str(run), split=None, limit=None, shots=0,
                                out_dir=tmp_path / "as-trained")
    assert scores["generation"]["prompt_format"] == "plain"
    assert [r["prompt"] for r in _rows(tmp_path / "as-trained")] == [e.prompt for e in test]

    override = _eval_cfg(chat_template="always")  # asked for explicitly: honoured, with a warning
    with caplog.at_level("WARNING"):
        scores = evaluate_reference(override, data_dir=data_dir, adapter=str(run), split=None, limit=None,
                                    shots=0, out_dir=tmp_path / "chat")
    assert any("chat_template" in r.getMessage() and "never" in r.getMessage() for r in caplog.records)
    assert scores["generation"]["prompt_format"] == "chat"
    tok = AutoTokenizer.from_pretrained(tiny_causal_dir)
    expected = [tok.apply_chat_template([{"role": "user", "content": e.prompt}], tokenize=False,
                                        add_generation_prompt=True) for e in test]
    assert [r["prompt"] for r in _rows(tmp_path / "chat")] == expected

    comparison = compare_systems([tmp_path / "as-trained", tmp_path / "chat"], n_resamples=20)
    from tunebench.pipeline import write_comparison
    from tunebench.rundir import CompareDir

    write_comparison(CompareDir(tmp_path / "cmp"), comparison)
    assert comparison["test_set"]["same_prompts"] is False
    assert comparison["test_set"]["same_prompt_format"] is False
    assert comparison["test_set"]["prompt_formats"]["chat"]["prompt_format"] == "chat"

    from tunebench.report.results import build_results

    assert any("different formats" in w for w in build_results(tmp_path / "cmp")["warnings"])


def test_eval_of_a_run_uses_its_template_unless_the_config_sets_one(tmp_path, tiny_causal_dir, data_dir, caplog):
    from tunebench.data.prepare import build_splits

    trained_with = {"name": "dialogsum", "variant": 2}
    run = _write_run(tmp_path / "run", tiny_causal_dir, template=trained_with, chat_template="never")
    expected = [e.prompt for e in build_splits(_eval_cfg(template=trained_with).data, data_dir, 0).test]
    default = [e.prompt for e in build_splits(_eval_cfg().data, data_dir, 0).test]
    assert expected != default  # the phrasings differ, so the test can tell which one was scored

    evaluate_reference(_eval_cfg(), data_dir=data_dir, adapter=str(run), split=None, limit=None, shots=0,
                       out_dir=tmp_path / "as-trained")
    assert [r["prompt"] for r in _rows(tmp_path / "as-trained")] == expected

    with caplog.at_level("WARNING"):  # set explicitly: honoured, with a warning naming the key and both values
        evaluate_reference(_eval_cfg(template={"name": "dialogsum", "variant": 0}), data_dir=data_dir,
                           adapter=str(run), split=None, limit=None, shots=0, out_dir=tmp_path / "asked")
    assert [r["prompt"] for r in _rows(tmp_path / "asked")] == default
    assert any("data.template" in r.getMessage() and "'variant': 2" in r.getMessage() for r in caplog.records)


CUSTOM_CODE = '''
from pathlib import Path
Path(MARKER).write_text("yes")
from transformers import LlamaConfig, LlamaForCausalLM


class CustomConfig(LlamaConfig):
    model_type = "llama"


class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig
'''


@pytest.mark.parametrize("flag", [False, True])
def test_export_runs_custom_code_only_when_the_user_asks(tmp_path, tiny_causal_dir, flag):
    from tunebench.cli import main

    custom = tmp_path / "custom-model"
    shutil.copytree(tiny_causal_dir, custom)
    marker = tmp_path / "CUSTOM_CODE_RAN"  # transformers imports a copy of the code from its module cache
    (custom / "custom_code.py").write_text(CUSTOM_CODE.replace("MARKER", repr(str(marker))))
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom_code.CustomConfig", "AutoModelForCausalLM": "custom_code.CustomModel"}
    (custom / "config.json").write_text(json.dumps(config))
    run = _write_run(tmp_path / "run", custom)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    stored["model"]["trust_remote_code"] = True  # the file asks for trust; only the user may grant it
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    assert not marker.exists()
    args = ["export", str(run), "--merge", str(tmp_path / "merged")] + (["--trust-remote-code"] if flag else [])
    assert main(args) == 0
    assert marker.exists() is flag
    assert (tmp_path / "merged" / "config.json").is_file()
