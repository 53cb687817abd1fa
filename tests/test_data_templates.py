"""Templates: built-ins, variant choice by seed, the sandbox, and errors that name template, field and record."""

from __future__ import annotations

import pytest

from tunebench.config import TemplateConfig
from tunebench.data.sources import Record
from tunebench.data.templates import (
    BUILTIN_TEMPLATES,
    PromptTemplate,
    describe_templates,
    list_templates,
    load_template,
)
from tunebench.errors import ConfigError, DataError


def _rec(i: int = 0, **fields) -> Record:
    return Record(id=f"r{i}", fields=fields or {"dialogue": f"#Person1#: hi {i}", "summary": f"greeting {i}"},
                  origin="mem.jsonl")


def test_builtin_dialogsum_renders_fields():
    prompt, completion = load_template(TemplateConfig()).render(_rec())
    assert "#Person1#: hi 0" in prompt and prompt.startswith("Summarize")
    assert completion == "greeting 0"


STRUCTURED_FIELDS = {"conll2003": {"tokens": ["<tokens>"], "labels": ["B-PER"]}}
"""Templates whose fields are not plain strings: a sample record for each."""


def test_every_builtin_renders_with_its_declared_fields():
    names = {name for name, _ in list_templates()}
    assert {"dialogsum", "sentiment", "nli", "translation", "qa_extractive", "qa_abstractive", "ner",
            "conll2003", "emotion", "alpaca"} <= names
    assert "Fields: dialogue, summary; 6 phrasings" in dict(list_templates())["dialogsum"]
    for info in describe_templates():
        fields = STRUCTURED_FIELDS.get(info["name"]) or {f: f"<{f}>" for f in info["fields"]}
        for v in range(info["variants"]):
            tpl = load_template(TemplateConfig(name=info["name"], variant=v))
            prompt, completion = tpl.render(Record("x", fields))
            used = [f for f in info["fields"] if f"<{f}>" in prompt + completion]
            assert used, (info["name"], v)
            assert completion  # the target never renders empty


def test_dialogsum_has_several_phrasings_and_index_picks_one():
    assert len(BUILTIN_TEMPLATES["dialogsum"].prompts) >= 4
    prompts = {load_template(TemplateConfig(variant=v)).render(_rec())[0] for v in range(4)}
    assert len(prompts) == 4
    with pytest.raises(ConfigError, match=r"data\.template\.variant: 99 is out of range"):
        load_template(TemplateConfig(variant=99))


def test_random_variant_depends_on_seed_and_id_only():
    tpl = load_template(TemplateConfig(variant="random"))
    records = [_rec(i) for i in range(60)]
    a = [tpl.variant_index(r.id, seed=1) for r in records]
    assert a == [tpl.variant_index(r.id, seed=1) for r in reversed(records)][::-1]  # order-independent
    assert len(set(a)) == len(BUILTIN_TEMPLATES["dialogsum"].prompts)  # every phrasing gets used
    assert a != [tpl.variant_index(r.id, seed=2) for r in records]
    first = tpl.render(records[0], seed=1)[0]
    assert first == BUILTIN_TEMPLATES["dialogsum"].prompts[a[0]].replace("{{ dialogue }}", "#Person1#: hi 0")


def test_custom_template_and_references():
    tpl = load_template(TemplateConfig(prompt="Q: {{ q | upper }}\n", completion="{{ a }}"))
    ex = tpl.to_example(Record("7", {"q": "why", "a": "because"}), seed=0)
    assert (ex.id, ex.prompt, ex.completion, ex.references) == ("7", "Q: WHY", "because", ("because",))
    ex = tpl.to_example(Record("8", {"q": "q", "a": "a1"}, references=("a1", "a2")))
    assert ex.references == ("a1", "a2")


def test_missing_field_names_template_field_and_record():
    tpl = load_template(TemplateConfig())
    with pytest.raises(DataError) as err:
        tpl.render(Record("dev_42", {"text": "no dialogue here", "summary": "s"}, origin="x.jsonl"))
    msg = str(err.value)
    assert "template 'dialogsum'" in msg and "field 'dialogue'" in msg and "'dev_42'" in msg
    assert "data.field_map" in msg


def test_default_filter_allows_optional_fields():
    tpl = load_template(TemplateConfig(prompt="{{ x | default('none') }} {{ y }}", completion="{{ y }}"))
    assert tpl.render(Record("1", {"y": "Y"})) == ("none Y", "Y")


@pytest.mark.parametrize(
    "prompt",
    [
        "{{ dialogue.__class__ }}",
        "{{ dialogue.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__.__base__ }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_sandbox_blocks_dunder_access(prompt):
    tpl = load_template(TemplateConfig(prompt=prompt, completion="{{ summary }}"))
    with pytest.raises(DataError, match="record .r0.: not allowed in the sandbox .*unsafe"):
        tpl.render(_rec())


def test_sandbox_blocks_mutation_and_files():
    tpl = load_template(TemplateConfig(prompt="{{ items.append(1) }}", completion="x"))
    with pytest.raises(DataError, match="sandbox"):
        tpl.render(Record("1", {"items": [0]}))
    for tag in ("{% include '/etc/passwd' %}", "{% import 'x.j2' as x %}", "{% extends name %}"):
        with pytest.raises(ConfigError, match="cannot read files"):
            load_template(TemplateConfig(prompt=tag, completion="x"))
    tpl = load_template(TemplateConfig(prompt="{{ n + 1 }}", completion="x"))
    with pytest.raises(DataError, match="template 'custom' prompt, record '1'"):
        tpl.render(Record("1", {"n": "text"}))


def test_syntax_error_is_config_error():
    with pytest.raises(ConfigError, match=r"template 'custom' prompt, line 1"):
        load_template(TemplateConfig(prompt="{{ oops", completion="x"))


def test_unknown_builtin_lists_choices():
    with pytest.raises(ConfigError, match="unknown template 'poetry'.*dialogsum"):
        load_template(TemplateConfig(name="poetry"))


def test_ner_completion_joins_lists():
    tpl = PromptTemplate("ner", BUILTIN_TEMPLATES["ner"].prompts, BUILTIN_TEMPLATES["ner"].completion)
    assert tpl.render(Record("1", {"text": "t", "entities": ["PER: Ann", "LOC: Oslo"]}))[1] == "PER: Ann\nLOC: Oslo"
    assert tpl.render(Record("1", {"text": "t", "entities": "PER: Ann"}))[1] == "PER: Ann"


def test_every_builtin_brings_metrics_and_a_generation_length():
    for name, spec in BUILTIN_TEMPLATES.items():
        assert spec.metrics and spec.max_new_tokens, name
    assert BUILTIN_TEMPLATES["translation"].metrics == ("bleu", "chrf")
    assert BUILTIN_TEMPLATES["emotion"].metrics == ("accuracy", "macro_f1")
    assert BUILTIN_TEMPLATES["alpaca"].metrics == ("rougeL",)
    for name in ("conll2003", "emotion", "alpaca"):
        assert len(BUILTIN_TEMPLATES[name].prompts) >= 4, name


def test_conll2003_completion_is_the_entity_list_and_reference_the_tags():
    import json

    rec = Record("train_1", {"tokens": ["Nadim", "Ladki", "in", "Rome"], "labels": ["B-PER", "I-PER", "O", "B-LOC"]},
                 origin="conll.jsonl", row=2)
    ex = load_template(TemplateConfig(name="conll2003", variant=1)).to_example(rec)
    assert ex.completion == "person: Nadim Ladki; location: Rome"
    assert "Sentence: Nadim Ladki in Rome" in ex.prompt
    assert json.loads(ex.references[0]) == {"tokens": rec.fields["tokens"], "labels": rec.fields["labels"]}


def test_conll2003_label_outside_tag_set_names_file_and_row():
    rec = Record("test_4", {"tokens": ["a", "car"], "labels": ["O", "B-VEHICLE"]}, origin="conll/test.jsonl", row=5)
    with pytest.raises(DataError, match=r"conll/test\.jsonl \(row 5\), record 'test_4': label 'B-VEHICLE' at token 2"):
        load_template(TemplateConfig(name="conll2003")).to_example(rec)


def test_alpaca_input_is_optional():
    tpl = load_template(TemplateConfig(name="alpaca", variant=1))
    with_input, _ = tpl.render(Record("a", {"instruction": "Add.", "input": "2 and 3", "output": "5"}))
    without, completion = tpl.render(Record("b", {"instruction": "Say hi.", "input": "", "output": "hi"}))
    assert "### Input:\n2 and 3" in with_input and "Input" not in without and completion == "hi"
