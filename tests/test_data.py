"""Data readers (every format, every bad input), encode/decode/collator, and counts on the real shared data."""
from __future__ import annotations

import json
import warnings
from importlib.metadata import EntryPoint, EntryPoints, entry_points
from pathlib import Path

import datasets
import numpy as np
import pytest

from xlmr_compress.data import SOURCES, DataConfig, collator, decode, encode, load_data, readers, references_of
from xlmr_compress.errors import UserError
from xlmr_compress.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def csv_splits(root: Path, train: str, dev: str | None = None) -> Path:
    write(root / "train.csv", train)
    if dev is not None:
        write(root / "dev.csv", dev)
    return root


def oracle_logits(labels: list[list[int]], num_labels: int) -> np.ndarray:
    """NER logits that predict each labelled position's gold tag (and tag 0 elsewhere)."""
    width = max(len(row) for row in labels)
    logits = np.zeros((len(labels), width, num_labels))
    for i, row in enumerate(labels):
        for j, label in enumerate(row):
            logits[i, j, max(label, 0)] = 1.0
    return logits


# --- readers -----------------------------------------------------------------------------------------------------

def test_csv_splits_labels_and_languages(tmp_path):
    root = csv_splits(tmp_path, "text,label,language\ngood film,pos,en\nbad film,neg,en\nbon film,pos,fr\n",
                      "text,label,language\nok film,neg,en\n")
    write(root / "test.csv", "text,label,language\nfine,pos,fr\n")
    data = load_data(str(root))
    assert data.task == "sequence-classification"
    assert data.label_names == ["neg", "pos"]
    assert list(data.splits) == ["train", "validation", "test"]
    assert data.splits["train"]["label"][:] == [1, 0, 1]
    assert data.languages("train") == ["en", "fr"]
    assert references_of(data, "validation") == [0]


def test_tsv_is_read_without_quoting(tmp_path):
    write(tmp_path / "train.tsv", 'index_id\tcategory\ttext\n1\tsports\t"A quoted" start\n2\ttravel\tplain\n')
    data = load_data(str(tmp_path))
    assert data.splits["train"]["text"][:] == ['"A quoted" start', "plain"]
    assert data.label_names == ["sports", "travel"]  # the `category` column is the label when `label` is absent
    assert data.languages("train") == ["und"]


def test_jsonl_sentence_pairs_reach_the_tokenizer_as_pairs(tmp_path, tokenizer):
    rows = [{"premise": "the movie", "hypothesis": "a film", "gold": "entailment"},
            {"premise": "hello", "hypothesis": "world", "gold": "neutral"}]
    write(tmp_path / "train.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_data(str(tmp_path), text_column="premise", text_pair_column="hypothesis", label_column="gold")
    assert data.splits["train"]["text_pair"][:] == ["a film", "world"]
    ids = encode(data, "train", tokenizer)["input_ids"][0]
    assert ids.count(tokenizer.sep_token_id) == 3  # <s> A </s></s> B </s>


def test_text_and_label_files_sort_numeric_labels_numerically(tmp_path):
    write(tmp_path / "train_text.txt", "one\ntwo\u2028still two\nthree\nfour")  # no trailing newline, as UMSAB
    write(tmp_path / "train_labels.txt", "2\n10\n0\n2")
    data = load_data(str(tmp_path))
    assert data.label_names == ["0", "2", "10"]
    assert data.splits["train"]["text"][:][1] == "two\u2028still two"
    assert data.splits["train"]["label"][:] == [1, 2, 0, 1]


def test_language_subdirectories_and_language_filter(tmp_path):
    csv_splits(tmp_path / "en", "text,label\ngood,pos\nbad,neg\n", "text,label\nfine,pos\n")
    csv_splits(tmp_path / "fr", "text,label\nbon,pos\nmauvais,neg\n", "text,label\nbien,pos\n")
    write(tmp_path / "README.md", "not data")
    data = load_data(str(tmp_path))
    assert data.languages("train") == ["en", "fr"]
    assert len(data.splits["train"]) == 4
    french = load_data(DataConfig(str(tmp_path), languages=["en"]), languages=["fr"])  # overrides win
    assert french.splits["train"]["text"][:] == ["bon", "mauvais"]
    with pytest.raises(UserError, match="languages present are en, fr"):
        load_data(str(tmp_path), languages=["de"])


UNER = """# sent_id = 1
# text = Og så får Amager endelig sine S-baner.
1\tOg\tO\t-\t-
2\tAmager\tB-LOC\t-\t-
3\tS-baner\tB-ORG\tB-ORG#O\ts

# newdoc id = x
# sent_id = 2
1\tNew\tB-OTH\t-\t-
2\tYork\tI-OTH\t-\t-
3\tTimes\tB-ORG\t-\t-
"""


def test_conll_uner_layout(tmp_path):
    write(tmp_path / "xx_ud-train.iob2", UNER)
    write(tmp_path / "xx_ud-test.iob2", "1\tParis\tB-LOC\t-\t-\n")
    data = load_data(str(tmp_path))
    assert data.task == "token-classification"
    assert data.splits["train"]["tokens"][:] == [["Og", "Amager", "S-baner"], ["New", "York", "Times"]]
    assert references_of(data, "train") == [["O", "B-LOC", "B-ORG"], ["O", "O", "B-ORG"]]  # OTH becomes O
    assert data.label_names == ["O", "B-LOC", "B-ORG"]
    assert list(data.splits) == ["train", "test"]


def test_plain_two_column_conll(tmp_path):
    write(tmp_path / "train.conll", "-DOCSTART- O\n\nJohn B-PER\nlives O\n# O\nin O\nParis B-LOC\n\nMary B-PER\n")
    data = load_data(str(tmp_path / "train.conll"))
    assert data.splits["train"]["tokens"][:] == [["John", "lives", "#", "in", "Paris"], ["Mary"]]
    assert data.label_names == ["O", "B-LOC", "B-PER"]


CONLL_TXT = ("# a comment line\nEU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\n"
             "Peter B-PER\nBlackburn I-PER\nin O\nParis B-LOC\n")


def test_conll_txt_splits_are_recognised_by_content(tmp_path):
    write(tmp_path / "train.txt", CONLL_TXT)
    write(tmp_path / "dev.txt", "-DOCSTART- O\n\nBrussels B-LOC\n")
    write(tmp_path / "test.txt", "1\tParis\tB-LOC\t-\t-\n")
    write(tmp_path / "README.txt", "not data")
    data = load_data(str(tmp_path))
    assert data.task == "token-classification"
    assert list(data.splits) == ["train", "validation", "test"]
    assert data.splits["train"]["tokens"][:] == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn", "in",
                                                                                       "Paris"]]
    assert references_of(data, "validation") == [["B-LOC"]]
    assert data.label_names == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER"]
    assert len(load_data(str(tmp_path / "train.txt")).splits["train"]) == 2


def test_plain_text_split_files_are_refused_by_name(tmp_path):
    plain = write(tmp_path / "train.txt", "I loved this film\nTerrible acting\n")
    with pytest.raises(UserError, match="train.txt is plain text, not CoNLL"):
        load_data(str(plain))
    with pytest.raises(UserError, match=r"no split files recognised in .* \(train.txt: plain text, not CoNLL\)"):
        load_data(str(tmp_path))
    write(tmp_path / "train.csv", "text,label\nI loved this film,pos\n")  # a real split file beside it wins
    assert load_data(str(tmp_path)).splits["train"]["text"][:] == ["I loved this film"]


def test_csv_cells_stay_text(tmp_path):
    write(tmp_path / "train.csv", "text,label\nNA,007\n1.50,10\n,10\n")
    data = load_data(str(tmp_path))
    assert data.splits["train"]["text"][:] == ["NA", "1.50", ""]
    assert data.label_names == ["007", "10"]


def test_a_row_without_label_is_refused(tmp_path):
    write(tmp_path / "train.csv", "text,label\ngood,pos\nbad\n")
    with pytest.raises(UserError, match="row 2 lacks a text or a label"):
        load_data(str(tmp_path))


def test_reading_shows_no_progress_bars(tmp_path, capfd):
    write(tmp_path / "train.csv", "text,label,language\na b,x,en\nc d,y,fr\n")
    load_data(str(tmp_path), languages=["en", "fr"])
    assert capfd.readouterr().err == ""


def squad(contexts: list[tuple[str, list[tuple[str, str, str]]]]) -> str:
    """SQuAD-v1 JSON from (context, [(id, question, answer)]) with answer_start found in the context."""
    return json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": c, "qas": [{"id": i, "question": q, "answers": [{"text": a, "answer_start": c.index(a)}]}
                               for i, q, a in qas]} for c, qas in contexts]}]})


def test_squad_files_give_language_and_test_split(tmp_path):
    write(tmp_path / "xquad.de.json", squad([("Berlin ist groß.", [("q1", "Was?", "Berlin")])]))
    write(tmp_path / "xquad.en.json", squad([("Berlin is big.", [("q1", "What?", "Berlin")])]))
    write(tmp_path / "config.json", '{"not": "squad"}')
    data = load_data(str(tmp_path))
    assert data.task == "question-answering"
    assert list(data.splits) == ["test"]
    assert data.languages("test") == ["de", "en"]
    assert data.label_names == []
    assert references_of(data, "test") == [["Berlin"], ["Berlin"]]


def test_jsonl_question_answering_in_either_answer_layout(tmp_path):
    rows = [{"id": 1, "question": "who?", "context": "john is here", "language": "en",
             "answers": [{"text": "john", "answer_start": 0}]},
            {"id": 2, "question": "where?", "context": "john is here", "language": "en",
             "answers": {"text": ["here"], "answer_start": [8]}}]
    write(tmp_path / "test.jsonl", "\n".join(json.dumps(r) for r in rows))
    data = load_data(str(tmp_path))
    assert data.task == "question-answering"
    assert data.splits["test"]["id"][:] == ["1", "2"]
    assert data.splits["test"]["answers"][:] == [{"text": ["john"], "answer_start": [0]},
                                                 {"text": ["here"], "answer_start": [8]}]


def test_single_file_split_comes_from_its_name(tmp_path):
    dev = write(tmp_path / "my-dev.csv", "text,label\na,x\n")
    other = write(tmp_path / "data.csv", "text,label\na,x\n")
    assert list(load_data(str(dev)).splits) == ["validation"]
    assert list(load_data(str(other)).splits) == ["train"]


def test_max_per_split_is_seeded_and_keeps_language_shares(tmp_path):
    rows = [f"t{i},{i % 2},{'en' if i < 60 else 'fr'}" for i in range(80)]
    write(tmp_path / "train.csv", "text,label,language\n" + "\n".join(rows) + "\n")
    first = load_data(str(tmp_path), max_per_split=20, seed=1)
    again = load_data(str(tmp_path), max_per_split=20, seed=1)
    other = load_data(str(tmp_path), max_per_split=20, seed=2)
    languages = first.splits["train"]["language"][:]
    assert len(languages) == 20 and languages.count("en") == 15 and languages.count("fr") == 5
    assert first.splits["train"]["text"][:] == again.splits["train"]["text"][:]
    assert first.splits["train"]["text"][:] != other.splits["train"]["text"][:]


# --- bad input ---------------------------------------------------------------------------------------------------

def test_jsonl_that_does_not_parse(tmp_path):
    write(tmp_path / "train.jsonl", '{"text": "a", "label": "x"}\n{"text": \n')
    with pytest.raises(UserError, match="train.jsonl cannot be read as JSONL"):
        load_data(str(tmp_path))


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_data(str(tmp_path / "nowhere" / "train.csv"))


def test_directory_without_split_files(tmp_path):
    write(tmp_path / "notes.txt", "hello")
    with pytest.raises(UserError, match="no split files recognised"):
        load_data(str(tmp_path))


def test_empty_file(tmp_path):
    write(tmp_path / "train.csv", "text,label\n")
    with pytest.raises(UserError, match="holds no examples"):
        load_data(str(tmp_path))


def test_absent_label_column_names_the_columns(tmp_path):
    write(tmp_path / "train.csv", "sentence,target\nhello,x\n")
    with pytest.raises(UserError, match="label column 'label' not found; the columns are sentence, target"):
        load_data(str(tmp_path))


def test_absent_text_column(tmp_path):
    write(tmp_path / "train.csv", "body,label\nhello,x\n")
    with pytest.raises(UserError, match="text column 'text' not found"):
        load_data(str(tmp_path))


def test_labels_unseen_in_train(tmp_path):
    csv_splits(tmp_path, "text,label\na,x\nb,y\n", "text,label\nc,z\nd,x\n")
    with pytest.raises(UserError, match="labels z of the validation split never occur in train"):
        load_data(str(tmp_path))


def test_unknown_task_and_task_mismatch(tmp_path):
    csv_splits(tmp_path, "text,label\na,pos\n", "text,label\nb,pos\n")
    with pytest.raises(UserError, match="unknown task"):
        load_data(str(tmp_path), task="summarisation")
    with pytest.raises(UserError, match="QA column 'id' not found"):
        load_data(str(tmp_path), task="question-answering")
    conll = write(tmp_path / "ner" / "train.conll", "Paris B-LOC\n")
    with pytest.raises(UserError, match="holds token-classification data but the task is sequence-classification"):
        load_data(str(conll), task="sequence-classification")


def test_misaligned_text_and_label_files(tmp_path):
    write(tmp_path / "train_text.txt", "a\nb\n")
    write(tmp_path / "train_labels.txt", "0\n")
    with pytest.raises(UserError, match="2 lines but train_labels.txt has 1"):
        load_data(str(tmp_path))


BOM = "\ufeff"


@pytest.mark.parametrize("name, text", [
    ("train.csv", "text,label\nhello,x\nworld,y\n"),
    ("train.tsv", "text\tlabel\nhello\tx\nworld\ty\n"),
    ("train.jsonl", '{"text": "hello", "label": "x"}\n{"text": "world", "label": "y"}\n'),
    ("train_text.txt", "hello\nworld\n"),
])
def test_a_byte_order_mark_is_not_part_of_the_data(tmp_path, name, text):
    write(tmp_path / name, BOM + text)
    if name.endswith("_text.txt"):
        write(tmp_path / "train_labels.txt", BOM + "x\ny\n")
    data = load_data(str(tmp_path))
    assert data.splits["train"]["text"][:] == ["hello", "world"] and data.label_names == ["x", "y"]


def test_a_conll_file_with_a_byte_order_mark(tmp_path):
    write(tmp_path / "train.txt", BOM + CONLL_TXT)
    assert load_data(str(tmp_path)).splits["train"]["tokens"][0][0] == "EU"


@pytest.mark.parametrize("name", ["train.csv", "train.tsv", "train.jsonl", "train.conll", "train_text.txt"])
def test_a_file_in_another_encoding_is_refused_in_one_line(tmp_path, name):
    text = {"train.csv": "text,label\ncafé,x\n", "train.tsv": "text\tlabel\ncafé\tx\n", "train.conll": "Café B-LOC\n",
            "train.jsonl": '{"text": "café", "label": "x"}\n', "train_text.txt": "café\n"}[name]
    write(tmp_path / "train_labels.txt", "x\n")
    (tmp_path / name).write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError, match=rf"{name} is not UTF-8 text .*: convert it") as e:
        load_data(str(tmp_path))
    assert "\n" not in str(e.value)


def test_conll_in_iobes_and_bilou_is_recognised_and_keeps_its_tags(tmp_path):
    write(tmp_path / "train.txt", "Angela U-PER\nvisited O\nNew B-LOC\nYork L-LOC\n\nRio S-LOC\nde B-LOC\nX E-LOC\n")
    data = load_data(str(tmp_path))
    assert data.task == "token-classification"
    assert references_of(data, "train") == [["U-PER", "O", "B-LOC", "L-LOC"], ["S-LOC", "B-LOC", "E-LOC"]]


def test_integer_ner_tags_without_names_are_refused(tmp_path):
    write(tmp_path / "train.jsonl", '{"tokens": ["Paris", "is"], "ner_tags": [1, 0]}\n')
    with pytest.raises(UserError, match="tag column 'ner_tags' holds int64 numbers without tag names"):
        load_data(str(tmp_path))


def test_a_list_label_is_refused_as_multi_label(tmp_path):
    write(tmp_path / "train.jsonl", '{"text": "a", "label": ["x", "y"]}\n')
    with pytest.raises(UserError, match="multi-label classification is not supported"):
        load_data(str(tmp_path))


def test_float_labels_are_classes_only_when_whole(tmp_path):
    write(tmp_path / "train.jsonl", '{"text": "a", "label": 1.0}\n{"text": "b", "label": 0.0}\n')
    assert load_data(str(tmp_path)).label_names == ["0", "1"]
    write(tmp_path / "train.jsonl", '{"text": "a", "label": 0.5}\n')
    with pytest.raises(UserError, match="label 0.5 is not a class.*regression is not supported"):
        load_data(str(tmp_path))


def test_an_empty_jsonl_file(tmp_path):
    write(tmp_path / "train.jsonl", "\n")
    with pytest.raises(UserError, match="train.jsonl holds no examples"):
        load_data(str(tmp_path))


def test_the_data_fingerprint_follows_the_examples(tmp_path):
    csv_splits(tmp_path / "a", "text,label\na,x\nb,y\n")
    csv_splits(tmp_path / "b", "text,label\na,x\nb,x\n")
    first, again, other = (load_data(str(tmp_path / d)) for d in ("a", "a", "b"))
    assert first.fingerprint() == again.fingerprint() != other.fingerprint()


def test_a_save_to_disk_folder_is_read_as_a_hub_data_set(tmp_path):
    names = datasets.ClassLabel(names=["neg", "pos"])
    features = datasets.Features({"sentence": datasets.Value("string"), "label": names})
    saved = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["bad", "good"], "label": [0, 1]}, features=features),
        "validation": datasets.Dataset.from_dict({"sentence": ["fine"], "label": [1]}, features=features)})
    saved.save_to_disk(str(tmp_path / "dict"))
    data = load_data(str(tmp_path / "dict"))
    assert list(data.splits) == ["train", "validation"] and data.label_names == ["neg", "pos"]
    assert data.splits["train"]["text"][:] == ["bad", "good"]
    saved["validation"].save_to_disk(str(tmp_path / "test"))
    assert list(load_data(str(tmp_path / "test")).splits) == ["test"]


def test_unknown_hub_name_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not a local path and datasets.load_dataset failed"):
        load_data("nobody-xyz/no-such-dataset")


# --- encode / decode / collator ----------------------------------------------------------------------------------

def test_long_texts_are_truncated_with_one_warning(tmp_path, tokenizer):
    csv_splits(tmp_path, "text,label\n" + "hello world " * 400 + ",a\nshort one,b\n" + "the " * 600 + ",a\n")
    data = load_data(str(tmp_path))
    with pytest.warns(UserWarning, match="2 of 3 train examples are longer than 512 tokens"):
        features = encode(data, "train", tokenizer, max_length=512)
    assert features["length"] == [512, len(features["input_ids"][1]), 512]
    assert features["labels"] == [0, 1, 0]
    with pytest.raises(UserError, match="at most 512 tokens"):
        encode(data, "train", tokenizer, max_length=513)


def test_short_texts_do_not_warn(tmp_path, tokenizer):
    data = load_data(str(csv_splits(tmp_path, "text,label\nhello,a\n")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode(data, "train", tokenizer)


def test_classification_labels_follow_the_model_order(tmp_path, tokenizer):
    data = load_data(str(csv_splits(tmp_path, "text,label\na,neg\nb,pos\n", "text,label\nc,pos\n")))
    features = encode(data, "train", tokenizer, label_names=["pos", "neg", "neutral"])
    assert features["labels"] == [1, 0]
    logits = np.eye(3)[[1, 0, 2]]  # the model predicts neg, pos, neutral
    assert decode(data, "train", features, {"logits": logits}, label_names=["pos", "neg", "neutral"]) == [0, 1, -1]
    with pytest.raises(UserError, match="labels pos that the model does not know"):
        encode(data, "train", tokenizer, label_names=["neg"])


def test_ner_labels_on_first_subtoken_and_decode_round_trip(tmp_path, tokenizer):
    write(tmp_path / "train.conll", "hello O\nparisian B-LOC\nmadrid B-LOC\n\njohn B-PER\nsmith I-PER\n")
    data = load_data(str(tmp_path))
    features = encode(data, "train", tokenizer)
    first = features[0]
    words = first["word_ids"]
    pieces = [words.count(w) for w in range(3)]
    assert pieces[1] > 1  # "parisian" is split into several pieces by the tiny vocabulary
    tagged = [(w, label) for w, label in zip(words, first["labels"], strict=True) if label != -100]
    assert tagged == [(0, 0), (1, 1), (2, 1)]  # one label per word, on its first piece
    predictions = decode(data, "train", features, {"logits": oracle_logits(features["labels"], 4)})
    assert predictions == references_of(data, "train")
    cut = encode(data, "train", tokenizer, max_length=4)  # words that do not fit are predicted "O"
    assert decode(data, "train", cut, {"logits": oracle_logits(cut["labels"], 4)})[0][2] == "O"


def test_qa_windows_positions_and_decode(tmp_path, tokenizer):
    context = "the city of paris is very big and the river is new. " * 6 + "john is in london today."
    write(tmp_path / "train.json", squad([(context, [("q1", "where is john?", "london"),
                                                    ("q2", "what is big?", "the city of paris")])]))
    data = load_data(str(tmp_path))
    assert list(data.splits) == ["train"]
    features = encode(data, "train", tokenizer, max_length=48, stride=16)
    assert len(features) > 2 and set(features["example_index"]) == {0, 1}
    n, width = len(features), max(features["length"])
    start, end = np.full((n, width), -5.0), np.full((n, width), -5.0)
    for i, (s, e) in enumerate(zip(features["start_positions"], features["end_positions"], strict=True)):
        offsets = features["offset_mapping"][i]
        if s == 0:
            assert e == 0  # the window lacks the answer: the target is CLS
            continue
        answer = data.splits["train"]["answers"][features["example_index"][i]]["text"][0]
        assert context[offsets[s][0]:offsets[e][1]].strip() == answer
        start[i, s], end[i, e] = 5.0, 5.0
    assert decode(data, "train", features, {"start_logits": start, "end_logits": end}) == ["london",
                                                                                          "the city of paris"]
    with pytest.raises(UserError, match="raise max_length or lower stride"):
        encode(data, "train", tokenizer, max_length=16, stride=8)


def test_collator_pads_and_drops_bookkeeping(tmp_path, tokenizer):
    write(tmp_path / "train.conll", "hello O\nparis B-LOC\n\njohn B-PER\nsmith I-PER\nlives O\nin O\nlondon B-LOC\n")
    data = load_data(str(tmp_path))
    features = encode(data, "train", tokenizer)
    batch = collator(data.task, tokenizer)([features[0], features[1]])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == (2, max(features["length"]))
    assert batch["labels"][0, -1].item() == -100 and batch["input_ids"][0, -1].item() == tokenizer.pad_token_id


# --- real data (../shared) ---------------------------------------------------------------------------------------

def test_sib200_counts(shared_data):
    data = load_data(str(shared_data / "sib200"))
    assert data.label_names == sorted((shared_data / "sib200" / "labels.txt").read_text().split())
    assert len(data.languages("train")) == 31
    for split, size in {"train": 701, "validation": 99, "test": 204}.items():
        languages = data.splits[split]["language"][:]
        assert all(languages.count(lang) == size for lang in set(languages))
    train = data.splits["train"][:]
    english = [label for label, lang in zip(train["label"], train["language"], strict=True) if lang == "eng_Latn"]
    counts = dict(zip(data.label_names, np.bincount(english), strict=False))
    assert counts["science/technology"] == 176 and counts["geography"] == 58


def test_umsab_counts(shared_data):
    data = load_data(str(shared_data / "umsab_sentiment"))
    assert data.label_names == ["0", "1", "2"]
    assert len(data.languages("test")) == 8
    for split, size in {"train": 1839, "validation": 324, "test": 870}.items():
        labels = np.asarray(data.splits[split]["label"][:])
        assert len(labels) == 8 * size and np.bincount(labels).tolist() == [8 * size // 3] * 3


UNER_SENTENCES = {  # SOURCE.md: sentences per folder and split
    "English-EWT": (None, 2001, 2077), "Portuguese-Bosque": (7018, 1172, 1167), "Chinese-GSDSIMP": (3997, 500, 500),
    "Danish-DDT": (4383, 564, 565), "Swedish-Talbanken": (4303, 504, 1219), "Serbian-SET": (3328, 536, 520),
    "Slovak-SNK": (8483, 1060, 1061),
}


def test_uner_counts(shared_data):
    data = load_data(str(shared_data / "uner"))
    assert data.label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    for index, split in enumerate(("train", "validation", "test")):
        languages = data.splits[split]["language"][:]
        for folder, sizes in UNER_SENTENCES.items():
            assert languages.count(folder) == (sizes[index] or 0), (folder, split)
    assert sum(len(tokens) for tokens in data.splits["validation"]["tokens"][:]) == 111114  # SOURCE.md token counts


def test_xquad_counts(shared_data):
    data = load_data(str(shared_data / "xquad"))
    languages = data.splits["test"]["language"][:]
    assert list(data.splits) == ["test"] and len(set(languages)) == 12
    assert all(languages.count(lang) == 1190 for lang in set(languages))
    one = data.splits["test"][0]
    start, text = one["answers"]["answer_start"][0], one["answers"]["text"][0]
    assert one["context"][start:start + len(text)] == text


# --- the embedded default ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chatterbot():
    return load_data("chatterbot")


def test_chatterbot_classes_languages_and_split(chatterbot):
    assert len(chatterbot.label_names) >= 20
    labels = np.concatenate([chatterbot.splits[s]["label"][:] for s in ("train", "validation", "test")])
    assert np.bincount(labels).min() >= 30
    assert {"english", "spanish", "japanese"} <= set(chatterbot.languages("train"))
    assert {"ai", "money", "emotion", "psychology"} <= set(chatterbot.label_names)  # merged across languages
    assert "dinero" not in chatterbot.label_names and "ia" not in chatterbot.label_names
    sizes = {s: len(ds) for s, ds in chatterbot.splits.items()}
    assert abs(sizes["validation"] / len(labels) - 0.1) < 0.01 and abs(sizes["test"] / len(labels) - 0.1) < 0.01
    pairs = [(t, lab) for s in chatterbot.splits.values() for t, lab in zip(s["text"][:], s["label"][:], strict=True)]
    assert len(pairs) == len(set(pairs))


def test_chatterbot_split_is_deterministic(chatterbot):
    again = load_data("chatterbot")
    assert again.label_names == chatterbot.label_names
    assert again.splits["test"]["text"][:] == chatterbot.splits["test"]["text"][:]


# --- registered data sources -------------------------------------------------------------------------------------

def toy_source(config: DataConfig) -> datasets.DatasetDict:
    """A registered source: ClassLabel integers and a language column, as a `datasets` hub set gives them."""
    features = datasets.Features({"sentence": datasets.Value("string"), "language": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["travel", "sports"])})
    rows = {"sentence": ["go", "run", f"seed {config.seed}"], "language": ["en", "fr", "en"], "label": [0, 1, 1]}
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features),
                                 "unsupervised": datasets.Dataset.from_dict(rows, features=features)})


def test_registered_source_is_read_as_a_hub_data_set(monkeypatch):
    registered = EntryPoints([EntryPoint("toy-source", f"{__name__}:toy_source", SOURCES)])
    monkeypatch.setattr(readers, "entry_points", lambda group, name: registered.select(group=group, name=name))
    data = load_data("toy-source", seed=5)
    assert list(data.splits) == ["train"]
    assert data.splits["train"]["text"][:] == ["go", "run", "seed 5"]
    assert data.label_names == ["sports", "travel"]
    assert references_of(data, "train") == [1, 0, 0]
    assert data.languages("train") == ["en", "fr"]


def test_chatterbot_is_an_installed_entry_point():
    (source,) = entry_points(group=SOURCES, name="chatterbot")
    assert source.value == "xlmr_compress.demo:chatterbot"
