"""Metrics against hand-computed values: macro-F1, seqeval-style entity F1, SQuAD EM/F1, per-language breakdown."""
from __future__ import annotations

import pytest

from xlmr_compress.metrics import MAIN_METRIC, compute_metrics, entities, normalize_answer
from xlmr_compress.directory import TASKS


def test_accuracy_and_macro_f1_on_a_small_confusion():
    # per class F1 = 2TP / (predicted + actual): class 0: 4/5, class 1: 2/4, class 2: 2/3
    overall = compute_metrics("sequence-classification", [0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2])["overall"]
    assert overall["accuracy"] == pytest.approx(4 / 6)
    assert overall["macro_f1"] == pytest.approx((4 / 5 + 2 / 4 + 2 / 3) / 3)


def test_macro_f1_counts_a_label_only_predicted():
    # sklearn's average="macro" takes the union of labels: class 1 (never true) scores 0
    overall = compute_metrics("sequence-classification", [0, 1], [0, 0])["overall"]
    assert overall["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


def test_entities_follow_seqeval_default_mode():
    assert entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    assert entities(["I-ORG", "I-ORG", "O"]) == {("ORG", 0, 1)}  # I- without B- starts an entity
    assert entities(["B-PER", "I-LOC", "B-PER", "B-PER"]) == {("PER", 0, 0), ("LOC", 1, 1), ("PER", 2, 2),
                                                               ("PER", 3, 3)}


@pytest.mark.parametrize("tags", [
    ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"],  # IOB2
    ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC"],  # IOB1: B- only between two entities of one type
    ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC"],  # IOBES
    ["B-PER", "L-PER", "O", "U-LOC", "B-LOC", "L-LOC"],  # BILOU
])
def test_entities_read_every_tag_scheme_alike(tags):
    assert entities(tags) == {("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 5)}


def test_bare_types_are_io_tags_and_a_closed_entity_does_not_continue():
    assert entities(["PER", "PER", "O", "LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    assert entities(["B-X", "E-X", "E-X"]) == {("X", 0, 1), ("X", 2, 2)}


def test_entity_f1_in_bilou():
    references = [["U-PER", "O", "B-LOC", "L-LOC"]]
    overall = compute_metrics("token-classification", [["U-PER", "O", "U-LOC", "O"]], references)["overall"]
    assert overall["precision"] == pytest.approx(1 / 2) and overall["recall"] == pytest.approx(1 / 2)


def test_entity_f1_with_a_partial_span_miss():
    references = [["B-PER", "I-PER", "O", "B-LOC"], ["I-ORG", "I-ORG"]]
    predictions = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "I-ORG"]]  # the PER span is cut short: no credit
    overall = compute_metrics("token-classification", predictions, references)["overall"]
    assert overall["precision"] == pytest.approx(2 / 3)
    assert overall["recall"] == pytest.approx(2 / 3)
    assert overall["f1"] == pytest.approx(2 / 3)


def test_entity_f1_maps_tag_indices_through_label_names():
    names = ["O", "B-PER", "I-PER"]
    overall = compute_metrics("token-classification", [[1, 0, 0]], [[1, 2, 0]], label_names=names)["overall"]
    assert overall["f1"] == 0.0 and overall["precision"] == 0.0 and overall["recall"] == 0.0


def test_squad_normalisation():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("Theory") == "theory"  # only whole-word articles go


def test_qa_exact_match_and_f1_take_the_best_gold():
    predictions = ["the cat", "cat sat on mat", "dog"]
    references = [["A cat!", "dog"], ["the cat sat", "mat"], ["bird"]]
    overall = compute_metrics("question-answering", predictions, references)["overall"]
    assert overall["exact_match"] == pytest.approx(1 / 3)
    # second: 2 shared tokens of 4 predicted and 2 gold -> P 1/2, R 1 -> F1 2/3 (beats "mat": 2/5)
    assert overall["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_per_language_breakdown():
    result = compute_metrics("sequence-classification", [0, 1, 1, 0], [0, 1, 0, 0], ["en", "fr", "fr", "en"])
    assert result["overall"]["accuracy"] == pytest.approx(3 / 4)
    assert set(result["per_language"]) == {"en", "fr"}
    assert result["per_language"]["en"]["accuracy"] == 1.0
    assert result["per_language"]["fr"]["accuracy"] == pytest.approx(1 / 2)
    assert result["per_language"]["fr"]["examples"] == 2
    assert compute_metrics("sequence-classification", [0], [0])["per_language"] == {}


def test_main_metric_is_reported_for_every_task():
    samples = {"sequence-classification": ([0], [0]), "token-classification": ([["B-PER"]], [["B-PER"]]),
               "question-answering": (["x"], [["x"]])}
    assert set(MAIN_METRIC) == set(TASKS)
    for task, (predictions, references) in samples.items():
        assert compute_metrics(task, predictions, references)["overall"][MAIN_METRIC[task]] == 1.0


def test_length_mismatch_is_refused():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        compute_metrics("sequence-classification", [0, 1], [0])
