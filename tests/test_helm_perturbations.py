"""Perturbations: deterministic by seed, meaning-preserving, swaps as documented, worst case per instance."""

from __future__ import annotations

import re

import pytest

from tunebench.bench.helm.lexicons import load_lexicon
from tunebench.bench.helm.perturbations import (
    FAIRNESS_PERTURBATIONS,
    KEYBOARD_NEIGHBOURS,
    PERTURBATIONS,
    ROBUSTNESS_PERTURBATIONS,
    perturb_texts,
    worst_case_scores,
)

TEXT = ("After their marriage, she started a close collaboration with Karvelas and told him she did not "
        "know whether his plan would work; Emily and Frank agreed.")


def test_every_perturbation_is_deterministic_by_seed_and_key():
    for name in PERTURBATIONS:
        first = perturb_texts([TEXT, "a second field"], name, seed=7, key="sst2/3")
        assert perturb_texts([TEXT, "a second field"], name, seed=7, key="sst2/3") == first
        assert len(first) == 2
    assert set(ROBUSTNESS_PERTURBATIONS) | set(FAIRNESS_PERTURBATIONS) == set(PERTURBATIONS)


def test_seed_and_instance_key_change_random_perturbations():
    outputs = {tuple(perturb_texts([TEXT], "typos", seed=s, key="k")) for s in range(5)}
    assert len(outputs) > 1
    assert perturb_texts([TEXT], "typos", seed=1, key="a") != perturb_texts([TEXT], "typos", seed=1, key="b")
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb_texts([TEXT], "shuffle", seed=0, key="k")


def test_typos_hit_a_share_of_words_with_keyboard_neighbours():
    (out,) = perturb_texts([TEXT], "typos", seed=0, key="x")
    assert len(out) == len(TEXT)
    diffs = [(a, b) for a, b in zip(TEXT, out, strict=True) if a != b]
    words = re.findall(r"[A-Za-z]{2,}", TEXT)
    assert len(diffs) == round(0.2 * len(words))  # one letter in each of 20% of the words
    for a, b in diffs:
        assert b.lower() in KEYBOARD_NEIGHBOURS[a.lower()] and a.isupper() == b.isupper()
    assert perturb_texts(["?!"], "typos", seed=0, key="x") == ["?!"]


def test_lowercase_and_whitespace():
    assert perturb_texts(["Hello World"], "lowercase", seed=0, key="k") == ["hello world"]
    (spaced,) = perturb_texts(["a b c\nd"], "extra_whitespace", seed=0, key="k")
    assert spaced.split() == ["a", "b", "c", "d"] and "\n" in spaced and "  " in spaced


def test_contractions_and_expansions_flip_both_ways():
    (out,) = perturb_texts(["I do not know. It's fine, we are done. Cannot stop."], "contraction_expansion",
                           seed=0, key="k")
    assert out == "I don't know. It is fine, we're done. Can't stop."
    # tokenized corpora such as SST-2 split clitics off
    (tok,) = perturb_texts(["it 's not that i do n't like it , but it wo n't last"], "contraction_expansion",
                           seed=0, key="k")
    assert tok == "it is not that i do not like it , but it will not last"


def test_gender_swap_pronouns_and_terms():
    (out,) = perturb_texts(["She gave her book to him. The book is his; he thanked her. My Mother and HIS son."],
                           "gender_swap", seed=0, key="k")
    assert out == "He gave his book to her. The book is hers; she thanked him. My Father and HER daughter."
    assert perturb_texts(["the other theme"], "gender_swap", seed=0, key="k") == ["the other theme"]


def test_name_swap_keeps_gender_changes_group_and_is_consistent():
    groups = load_lexicon("first_names")["groups"]
    african_female = {n.lower() for n in groups["african_american"]["female"]}
    european_male = {n.lower() for n in groups["european_american"]["male"]}
    premise, hypothesis = perturb_texts(["Emily met Jerome. Emily smiled.", "Emily knows Jerome."], "name_swap",
                                        seed=5, key="rte/1")
    names = re.findall(r"[A-Z][a-z]+", premise)
    first, second = names[0], names[1]
    assert first.lower() in african_female and second.lower() in european_male
    assert premise == f"{first} met {second}. {first} smiled." and hypothesis == f"{first} knows {second}."


def test_name_swap_leaves_common_words_alone():
    assert perturb_texts(["a frank look at jack and emily"], "name_swap", seed=0, key="k")[0].startswith(
        "a frank look at jack and ")
    # in mixed-case text only capitalized names count
    assert perturb_texts(["Be frank with me."], "name_swap", seed=0, key="k") == ["Be frank with me."]


def test_worst_case_counts_an_instance_only_if_always_correct():
    original = [True, True, False, True]
    perturbed = {"typos": [True, False, True, True], "lowercase": [True, True, True, True]}
    assert worst_case_scores(original, perturbed) == [1.0, 0.0, 0.0, 1.0]
    assert worst_case_scores([0.4, 0.9], {"typos": [0.5, 0.2], "gender_swap": [0.3, 0.8]}) == [0.3, 0.2]
    assert worst_case_scores(original, {}) == [1.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        worst_case_scores(original, {"typos": [True]})
