"""data.tasks and data.mixture: a single task stays a list of one; bad mixtures are exit-2 errors naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tunebench.config import RunConfig, config_from_dict, load_config
from tunebench.data.tasks import build_task_set, mixture_for, task_configs
from tunebench.errors import ConfigError

TWO_TASKS = [
    {"name": "emotion", "source": "emotion", "template": {"name": "emotion"}, "splits": {"validation": "validation"},
     "limits": {"train": 30, "validation": 5, "test": 6}},
    {"name": "multi30k_en_de", "source": "multi30k", "format": "parallel", "template": {"name": "translation"},
     "splits": {"validation": "val", "test": "test_2016_flickr"}, "limits": {"train": 10, "validation": 5, "test": 4},
     "generation": {"max_new_tokens": 40}, "weight": 3},
]


def _data(tasks=TWO_TASKS, **mixture) -> dict:
    return {"data": {"tasks": tasks, **({"mixture": mixture} if mixture else {})}}


def test_single_task_config_is_a_list_of_one():
    cfg = RunConfig()
    (task,) = task_configs(cfg.data, cfg.eval)
    assert task.name == "dialogsum" and task.source == "dialogsum" and task.metrics == ["rouge", "bleu"]
    assert not cfg.data.multitask


def test_tasks_take_template_metrics_unless_given(data_dir):
    cfg = config_from_dict(_data())
    assert cfg.data.multitask
    tasks = build_task_set(cfg.data, cfg.eval, data_dir, cfg.seed)
    assert tasks.names == ["emotion", "multi30k_en_de"]
    assert [t.metrics for t in tasks.tasks] == [["accuracy", "macro_f1"], ["bleu", "chrf"]]
    assert [len(t.splits.train) for t in tasks.tasks] == [30, 10]
    assert len(tasks.train) == 40 and len(tasks.validation) == 10
    assert tasks.train[30].completion == tasks.task("multi30k_en_de").splits.train[0].completion
    assert set(tasks.stats()["tasks"]) == {"emotion", "multi30k_en_de"}


def test_mixture_from_config_uses_strategy_and_weights():
    cfg = config_from_dict(_data(strategy="weights", examples_per_epoch=40))
    m = mixture_for(cfg.data, ["emotion", "multi30k_en_de"], [30, 10])
    assert m.counts == (10, 30)  # weights 1 : 3
    single = RunConfig()
    assert mixture_for(single.data, ["dialogsum"], [7]).epoch_indices(1, 2) == list(range(7))


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (_data([TWO_TASKS[0], {**TWO_TASKS[1], "name": "emotion"}]),
         "data.tasks.1.name: task name 'emotion' is used twice"),
        (_data([{"name": "csv", "source": "x.csv", "template": {"prompt": "{{ a }}", "completion": "{{ b }}"}}]),
         "data.tasks.0.metrics: task 'csv' has no metric"),
        (_data([{**TWO_TASKS[0], "weight": -1}, TWO_TASKS[1]]), "data.tasks.0.weight: -1.0 is negative"),
        (_data([{**TWO_TASKS[0], "weight": 0}, {**TWO_TASKS[1], "weight": 0}]), "data.tasks.*.weight: every weight is 0"),
        (_data(strategy="temperature", temperature=0), "data.mixture.temperature: 0.0 must be a number > 0"),
        (_data(strategy="temperature"), "data.mixture.temperature: the 'temperature' strategy needs"),
        (_data(strategy="capped"), "data.mixture.cap: the 'capped' strategy needs a cap"),
        (_data(strategy="uniformish"), "data.mixture.strategy: unknown strategy 'uniformish'"),
        ({"data": {"source": "emotion", "tasks": TWO_TASKS}}, "data.source: with data.tasks, give source inside"),
    ],
)
def test_bad_task_configs_name_the_key(tree, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(tree, "mix.yaml")
    assert str(err.value).startswith(f"mix.yaml: {message}"), str(err.value)
    assert err.value.exit_code == 2


def test_bad_mixture_exits_2_from_the_cli(tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(_data([TWO_TASKS[0], {**TWO_TASKS[1], "name": "emotion"}])))
    proc = subprocess.run([sys.executable, "-m", "tunebench", "config", "show", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "data.tasks.1.name: task name 'emotion' is used twice" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(ConfigError):
        load_config(path)


def test_preview_shows_each_task_and_the_composition(data_dir):
    from tunebench.data.preview import preview

    text = preview(config_from_dict(_data(strategy="weights", examples_per_epoch=40)), data_dir, n=1)
    assert "##### task emotion" in text and "##### task multi30k_en_de" in text
    assert "source: multi30k   template: translation" in text
    assert "mixture: weights, 40 examples per epoch" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("multi30k_en_de"))
    assert line.split()[1:3] == ["10", "30"]  # size 10, 30 per epoch (weight 3 of 4)
