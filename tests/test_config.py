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


def test_unreadable_or_non_mapping_configs_and_specs_name_the_file(tmp_path):
    from tunebench.bench.spec import load_spec
    from tunebench.bench.templates import SpecError

    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: the config is not valid UTF-8"):
        load_config(latin1)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list.yaml: the config must be a mapping of keys, not list"):
        load_config(listing)
    with pytest.raises(SpecError, match=r"list.yaml: the task spec must be a mapping of keys, not list"):
        load_spec(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == load_config(None)  # an empty config is all defaults, an empty spec is not
    with pytest.raises(SpecError, match=r"empty.yaml: the task spec must be a mapping of keys, not NoneType"):
        load_spec(empty)


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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.metrics=[rouge,bertscore]", "eval.metrics: unknown metric 'bertscore'; known metrics: rouge, "),
        ("eval.metrics=[rouge2,blue]", "eval.metrics: unknown metric 'blue'; did you mean 'bleu'? known metrics: "),
        ("eval.metrics=[acc]", "eval.metrics: unknown metric 'acc'; known metrics: rouge, "),  # a multiple-choice metric
        ("train.gen_eval.metric=rougel", "train.gen_eval.metric: unknown metric 'rougel'; did you mean 'rougeL'?"),
        ("train.gen_eval.metric=rouge", "train.gen_eval.metric: unknown metric 'rouge'; did you mean 'rougeL'?"),
        ("bench.tasks=[mmlu,nonexistent]", "bench.tasks: unknown task 'nonexistent'; known tasks: bbh, cb, "),
        ("bench.tasks=[sst3:x]", "bench.tasks: unknown task 'sst3'; did you mean 'sst2'?"),
        ("data.template.name=dialogsun", "data.template.name: unknown template 'dialogsun'; did you mean 'dialogsum'?"),
        ("eval.bleu_tokenize=13A", "eval.bleu_tokenize: unknown tokenizer '13A'; did you mean '13a'?"),
        ("eval.rouge_tokenize=chars", "eval.rouge_tokenize: unknown tokenizer 'chars'; known tokenizers: rouge_score,"),
    ],
)
def test_unknown_registry_names_exit_2_naming_key_value_and_known_names(override, message, tmp_path, capsys):
    from tunebench.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("name: x\n", encoding="utf-8")
    assert main(["config", "show", str(path), "--set", override]) == 2
    err = capsys.readouterr().err
    assert f"--set: {message}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_registry_names_that_exist_load():
    cfg = load_config(None, ["eval.metrics=[rouge,chrf,macro_f1,f1]", "train.gen_eval.metric=bleu",
                             "bench.tasks=[mmlu:anatomy,bbh:navigate,my/task.yaml]", "data.template.name=nli",
                             "eval.language=zh", "eval.bleu_tokenize=char", "eval.rouge_tokenize=unicode"])
    assert cfg.eval.metric_settings().rouge_tokenizer() == "unicode" and cfg.eval.metric_settings().bleu_tokenize == "char"
    custom = load_config(None, ["data.template.name=nosuch", "data.template.prompt='{{ a }}'",
                                "data.template.completion='{{ b }}'"])
    assert custom.data.template.prompt == "{{ a }}"  # a custom template's name is only a label


def test_unknown_key_suggests_close_names_or_lists_the_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("evl: {}\ntrain:\n  methd: lora\n  lora: {rank: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "evl: unknown key; did you mean 'eval'?" in msg
    assert "train.methd: unknown key; did you mean 'method'?" in msg
    assert "train.lora.rank: unknown key; known keys: r, alpha, dropout, target_modules" in msg


def test_did_you_mean_is_case_insensitive_and_empty_when_nothing_is_close():
    from tunebench.errors import did_you_mean

    assert did_you_mean("SST", ["sst2", "rte", "mmlu"]) == "; did you mean 'sst2'?"
    assert did_you_mean("glue", ["sst2", "rte", "mmlu"]) == ""


def test_set_takes_comma_lists_for_list_keys_and_errors_name_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\n")
    cfg = load_config(path, ["eval.metrics=rouge,exact_match", "eval.shots=0,3"])
    assert cfg.eval.metrics == ["rouge", "exact_match"]
    assert cfg.eval.shots == [0, 3]
    assert load_config(path, ["model.system_prompt=Be brief, please."]).model.system_prompt == "Be brief, please."
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.lora.rnk=3"])
    assert err.value.exit_code == 2
    assert str(err.value).startswith("--set: train.lora.rnk: unknown key")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.batch_size=lots"])
    assert str(err.value).startswith("--set: train.batch_size:")


def test_builtin_template_brings_its_metrics_and_generation_length(tmp_path):
    from tunebench.data.templates import BUILTIN_TEMPLATES

    path = tmp_path / "c.yaml"
    path.write_text("data: {template: {name: sentiment}}\n")
    cfg = load_config(path)
    assert cfg.eval.metrics == ["accuracy", "macro_f1"] == list(BUILTIN_TEMPLATES["sentiment"].metrics)
    assert cfg.eval.generation.max_new_tokens == 8 == BUILTIN_TEMPLATES["sentiment"].max_new_tokens
    path.write_text("data: {template: {name: sentiment}}\neval: {metrics: [exact_match], generation: "
                    "{max_new_tokens: 3}}\n")
    cfg = load_config(path)  # what the config says wins
    assert cfg.eval.metrics == ["exact_match"] and cfg.eval.generation.max_new_tokens == 3
    custom = "data: {template: {prompt: '{{ text }}', completion: '{{ summary }}'}}\n"
    path.write_text(custom)
    assert load_config(path).eval.metrics == ["rouge", "bleu"]  # a custom template keeps the general defaults...
    for completion in ("'{{ label }}'", "'{{label}}'", "' {{- label -}} '"):
        path.write_text(f"data: {{template: {{prompt: '{{{{ text }}}}', completion: {completion}}}}}\n")
        cfg = load_config(path)  # ... unless its completion is the label: a classification task (issue 15)
        assert cfg.eval.metrics == ["accuracy", "macro_f1"] and cfg.eval.generation.max_new_tokens == 8, completion
    path.write_text("data: {template: {prompt: '{{ text }}', completion: 'Label: {{ label }}'}}\n")
    assert load_config(path).eval.metrics == ["rouge", "bleu"]  # more than the label: not taken for one
    path.write_text("data: {template: {prompt: '{{ text }}', completion: '{{ label }}'}}\neval: {metrics: [bleu]}\n")
    assert load_config(path).eval.metrics == ["bleu"]


def test_relative_source_resolves_beside_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "mine.csv").write_text("text,label\na,b\n")
    (folder / "c.yaml").write_text("data: {source: data/mine.csv}\n")
    monkeypatch.chdir(tmp_path)  # not the config's folder
    assert load_config("project/c.yaml").data.source == str((folder / "data" / "mine.csv").resolve())
    (folder / "c.yaml").write_text("data: {source: dialogsum/dialogsum.test.jsonl}\n")
    assert load_config("project/c.yaml").data.source == "dialogsum/dialogsum.test.jsonl"  # left to the data dir


def test_config_schema_table_and_json_carry_every_default():
    from tunebench.config import config_schema, schema_rows, schema_table

    rows = {key: (kind, default) for key, kind, default, _ in schema_rows()}
    assert rows["eval.metrics"] == ("list[str]", "[rouge, bleu]")
    assert rows["train.lora.r"] == ("int", "16")
    assert rows["train.scheduler"] == ("'linear' | 'cosine' | 'constant'", "linear")
    # every leaf key of the config, found independently from a dump of the defaults
    def leaves(tree, prefix=""):
        for k, v in tree.items():
            if isinstance(v, dict) and f"{prefix}{k}" not in ("data.field_map", "bench.limits"):  # mappings: one key
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"
    assert list(rows) == list(leaves(RunConfig().model_dump()))
    assert "eval.shots" in schema_table() and "Train only the top k transformer blocks" in schema_table()
    schema = config_schema()
    assert schema["$defs"]["EvalConfig"]["properties"]["metrics"]["default"] == ["rouge", "bleu"]
    assert schema["$defs"]["EvalConfig"]["properties"]["shots"]["default"] == [0]


@pytest.mark.parametrize("overrides, message", [
    (["model.device=cpu", "eval.precision=fp16"],
     "--set: eval.precision: 'fp16' does not run on model.device 'cpu' (fp16 runs on cuda;"),
    (["model.device=cuda", "eval.precision=int8"],
     "--set: eval.precision: 'int8' does not run on model.device 'cuda' (int8 runs on cpu;"),
    (["eval.metrics=rouge", "eval.parity.metric=accuracy"],
     "--set: eval.parity.metric: 'accuracy' is not among eval.metrics (rouge1, rouge2, rougeL, rougeLsum)"),
])
def test_eval_precision_combinations_are_refused_at_load(tmp_path, capsys, overrides, message):
    from tunebench.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    assert main(["config", "show", str(cfg), *[a for o in overrides for a in ("--set", o)]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_eval_precision_combinations_that_run_still_load():
    # the README's precision section: fp16 on a GPU, int8 on a CPU; an `auto` device is decided at run time
    assert load_config(None, ["model.device=cuda", "eval.precision=fp16"]).eval.precision == "fp16"
    assert load_config(None, ["model.device=cpu", "eval.precision=int8"]).eval.precision == "int8"
    assert load_config(None, ["model.device=auto", "eval.precision=fp16"]).model.device == "auto"
    cfg = load_config(None, ["eval.metrics=rouge,accuracy", "eval.parity.metric=accuracy"])
    assert cfg.eval.parity.metric == "accuracy"
    assert load_config(None, ["eval.parity.metric=rouge1"]).eval.parity.metric == "rouge1"  # rouge = rouge1, ...


def test_set_indexes_a_list_of_sections(tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text(
        "data:\n  tasks:\n  - {name: emotion, source: emotion, template: {name: emotion}}\n"
        "  - {name: dialogsum, source: dialogsum}\n")
    cfg = load_config(path, ["data.tasks.1.weight=2", "data.tasks.0.metrics=accuracy,macro_f1"])
    assert [t.weight for t in cfg.data.tasks] == [load_config(path).data.tasks[0].weight, 2.0]
    assert cfg.data.tasks[0].metrics == ["accuracy", "macro_f1"]
    for override, message in (("data.tasks.2.weight=2", "--set data.tasks.2.weight: data.tasks has 2 entries "
                                                        "(indexes 0 to 1)"),
                              ("data.tasks.x.weight=2", "--set data.tasks.x.weight: data.tasks is a list: index it "
                                                        "with a number")):
        with pytest.raises(ConfigError) as err:
            load_config(path, [override])
        assert str(err.value).startswith(message)
    single = tmp_path / "single.yaml"
    single.write_text("name: x\n")
    with pytest.raises(ConfigError) as err:  # was: "'tasks' is not a section"
        load_config(single, ["data.tasks.0.weight=2"])
    assert str(err.value) == "--set data.tasks.0.weight: data.tasks has no entries"


def test_a_section_check_that_a_set_key_fails_names_the_set_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain: {batch_size: 2}\n")
    with pytest.raises(ConfigError) as err:  # the train section's check, failed by the --set key alone
        load_config(path, ["train.select_best_by=rougeL"])
    assert str(err.value).startswith("--set: train.select_best_by: select_best_by 'rougeL' needs gen_eval.every")
    assert str(path) not in str(err.value)
    with pytest.raises(ConfigError) as err:  # the same check failed by the file names the file
        path.write_text("name: x\ntrain: {select_best_by: rougeL}\n")
        load_config(path, [])
    assert str(err.value).startswith(f"{path}: train: select_best_by 'rougeL'")
