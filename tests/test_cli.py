"""The command line: errors are one line with the right exit code, configs and examples validate."""

import subprocess
import sys
from pathlib import Path

import pytest

from tunebench.cli import main
from tunebench.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")) + [REPO / "tunebench/configs/demo.yaml"],
                         ids=lambda p: p.name)
def test_example_configs_validate(path):
    load_config(path)


def test_config_error_exit_code_2_without_traceback(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  methd: lora\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "train.methd: unknown key" in err
    assert "Traceback" not in err


def test_set_override_reaches_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    assert main(["config", "show", str(cfg), "--set", "train.lora.r=4"]) == 0
    assert "r: 4" in capsys.readouterr().out
    assert main(["config", "show", str(cfg), "--set", "train.lora.r=zero"]) == 2


def test_missing_config_file_is_one_sentence(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read the config" in capsys.readouterr().err


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys; from tunebench.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_entry():
    out = subprocess.run([sys.executable, "-m", "tunebench", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "tunebench" in out.stdout


def test_config_schema_lists_descriptions(capsys):
    assert main(["config", "schema"]) == 0
    assert "Train only the top k transformer blocks" in capsys.readouterr().out
