import pytest

from tunebench.config import RunConfig, apply_overrides, config_from_dict, load_config
from tunebench.errors import ConfigError


def test_defaults_validate():
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig)
    assert cfg.model.ref == "smollm2-135m-instruct"
    assert cfg.model.trust_remote_code is False


def test_unknown_key_names_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lora:\n    rank: 8\n")
    with pytest.raises(ConfigError, match=r"c.yaml: train.lora.rank: unknown key"):
        load_config(p)


def test_wrong_type_names_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"train.batch_size"):
        load_config(p)


def test_bad_combination():
    with pytest.raises(ConfigError, match="select_best_by"):
        config_from_dict({"train": {"select_best_by": "rougeL"}})
    with pytest.raises(ConfigError, match="beam search"):
        config_from_dict({"eval": {"generation": {"num_beams": 4, "do_sample": True}}})
    with pytest.raises(ConfigError, match="freeze trains nothing"):
        config_from_dict({"train": {"method": "freeze", "freeze": {"trainable_top_k": 0}}})
    with pytest.raises(ConfigError, match="below 1"):
        config_from_dict({"data": {"splits": {"validation": None, "test": None},
                                   "fractions": {"validation": 0.6, "test": 0.5}}})


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1\n  batch: [\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: invalid YAML"):
        load_config(p)


def test_overrides_parse_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: demo\n")
    cfg = load_config(p, ["train.lr=1e-4", "train.lora.target_modules=[q_proj, v_proj]", "eval.limit=5"])
    assert cfg.train.lr == 1e-4
    assert cfg.train.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.eval.limit == 5
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="train.nope"):
        load_config(p, ["train.nope=1"])
