"""xc.pipeline and predict: outputs for every task, torch vs ONNX, transformers' own pipeline, character offsets on
tiny and real text, truncation, and predict's input order, formats and length-sorted batches."""
from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

import xlmr_compress as xc
from xlmr_compress.onnx_export import export
from xlmr_compress.inference.pipeline import Pipeline, PipelineConfig
from xlmr_compress.tiny import save_tiny, tiny_tokenizer
from xlmr_compress.runtime import Predictor

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
TEXTS = ["hello world", "the big city of paris is very new and old and good", "ok", "john and mary love london",
         "la ville de berlin est grande, et madrid aussi ! " * 3, "no"]


def assert_close(a: object, b: object, tol: float = 1e-5) -> None:
    """Equal structures, floats within tol (padding changes the last bits of a score)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=tol)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (a, b)
        for x, y in zip(a, b, strict=True):
            assert_close(x, y, tol)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (a, b)
        for key in a:
            assert_close(a[key], b[key], tol)
    else:
        assert a == b


def with_tags(model_dir: Path, tags: list[str] = TAGS) -> Path:
    """Give a tiny NER directory IOB2 label names (save_tiny names them L0..Ln)."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config["id2label"] = {str(i): t for i, t in enumerate(tags)}
    config["label2id"] = {t: i for i, t in enumerate(tags)}
    path.write_text(json.dumps(config))
    return model_dir


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny torch directories of the three tasks, and an ONNX export of each."""
    root = tmp_path_factory.mktemp("inference")
    out = {"sequence-classification": save_tiny(root / "cls", "sequence-classification", 3),
           "token-classification": with_tags(save_tiny(root / "ner", "token-classification", len(TAGS))),
           "question-answering": save_tiny(root / "qa", "question-answering")}
    for task in list(out):
        out[f"{task}-onnx"] = export(out[task], root / f"{task}-onnx")
    return out


def fake_predictor(task: str, logits_of, tags: list[str] = TAGS) -> Predictor:
    """A predictor over the tiny tokenizer whose per-token logits come from `logits_of(token_id)`."""
    def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        per_token = np.asarray([[logits_of(int(t)) for t in row] for row in batch["input_ids"]], dtype=np.float32)
        if task == "question-answering":
            return {"start_logits": per_token[..., 0], "end_logits": per_token[..., 1]}
        return {"logits": per_token}

    return Predictor(run, tiny_tokenizer(), task, tags if task == "token-classification" else [], "fake")


def test_classification_follows_transformers_conventions(dirs: dict[str, Path]) -> None:
    p = xc.pipeline(dirs["sequence-classification"])
    one = p("hello world")
    assert isinstance(one, list) and len(one) == 1 and set(one[0]) == {"label", "score"}
    assert one[0]["label"] in {"L0", "L1", "L2"} and 0 < one[0]["score"] <= 1
    many = p(TEXTS)
    assert len(many) == len(TEXTS) and all(set(r) == {"label", "score"} for r in many)
    assert_close(many[0], one[0])
    ranked = p("hello world", top_k=3)
    assert sorted(r["label"] for r in ranked) == ["L0", "L1", "L2"]
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    assert sum(r["score"] for r in ranked) == pytest.approx(1.0, abs=1e-5)
    assert_close(ranked[0], one[0])
    pairs = p([("the movie", "a film"), ["good", "bad"], {"text": "ok", "text_pair": "no"}], top_k=2)
    assert len(pairs) == 3 and all(len(r) == 2 for r in pairs)
    assert p([]) == []


@pytest.mark.parametrize("bad", [3, [1], [["a", "b", "c"]], None])
def test_classification_refuses_wrong_types(dirs: dict[str, Path], bad: object) -> None:
    with pytest.raises(xc.UserError, match="input"):
        xc.pipeline(dirs["sequence-classification"])(bad)


def test_entities_and_answers_slice_the_input(dirs: dict[str, Path]) -> None:
    ner = xc.pipeline(dirs["token-classification"])
    found = ner(TEXTS)
    assert len(found) == len(TEXTS) and sum(map(len, found)) > 0  # a random head tags most words
    for text, entities in zip(TEXTS, found, strict=True):
        for e in entities:
            assert set(e) == {"entity_group", "score", "word", "start", "end"}
            assert e["entity_group"] in {"PER", "LOC", "ORG"} and 0 < e["score"] <= 1
            assert text[e["start"]:e["end"]] == e["word"] and e["word"] == e["word"].strip()
    assert_close(ner(TEXTS[1]), found[1])

    qa = xc.pipeline(dirs["question-answering"], max_length=32, stride=8)
    context = " ".join(TEXTS)
    answer = qa(question="where is paris?", context=context)
    assert set(answer) == {"answer", "score", "start", "end"}
    assert answer["answer"] and context[answer["start"]:answer["end"]] == answer["answer"]
    listed = qa([{"question": "who?", "context": c} for c in TEXTS])
    assert len(listed) == len(TEXTS)
    assert all(c[a["start"]:a["end"]] == a["answer"] for c, a in zip(TEXTS, listed, strict=True))
    assert_close(qa(question=["who?"], context=[TEXTS[0]]), [qa(question="who?", context=TEXTS[0])])


def test_entity_groups_from_known_tags() -> None:
    """Words of paris/london tagged B-LOC, john/mary B-PER, `new` I-LOC: groups, offsets and scores by hand."""
    tok = tiny_tokenizer()
    wanted = {tok.convert_tokens_to_ids("▁" + w): TAGS.index(t) for w, t in
              [("paris", "B-LOC"), ("new", "I-LOC"), ("london", "B-LOC"), ("john", "B-PER"), ("mary", "B-PER")]}
    pipe = Pipeline(fake_predictor("token-classification", lambda t: np.eye(len(TAGS))[wanted.get(t, 0)] * 5))
    text = "Hello  paris new, and john met mary in london."
    entities = pipe(text)
    assert [(e["entity_group"], e["word"]) for e in entities] == [
        ("LOC", "paris new"), ("PER", "john"), ("PER", "mary"), ("LOC", "london")]
    assert all(text[e["start"]:e["end"]] == e["word"] for e in entities)
    assert entities[0]["start"] == text.index("paris")
    assert entities[0]["score"] == pytest.approx(np.exp(5) / (np.exp(5) + len(TAGS) - 1), rel=1e-5)


def test_answer_over_windows_from_known_logits() -> None:
    """The answer sits in the last window of a long context; its offsets exclude the piece's leading space."""
    tok = tiny_tokenizer()
    paris, london = tok.convert_tokens_to_ids("▁paris"), tok.convert_tokens_to_ids("▁london")
    logits = {paris: (8.0, 0.0), london: (0.0, 8.0)}
    pipe = Pipeline(fake_predictor("question-answering", lambda t: logits.get(t, (0.0, 0.0))),
                    PipelineConfig(max_length=24, stride=4, batch_size=2))
    context = "the city is big and old. " * 10 + "from paris to london by train."
    answer = pipe(question="where?", context=context)
    assert answer["answer"] == "paris to london" == context[answer["start"]:answer["end"]]


def test_truncation_warns_once_and_still_answers(dirs: dict[str, Path]) -> None:
    p = xc.pipeline(dirs["sequence-classification"], max_length=16)
    with pytest.warns(UserWarning, match="1 of 2 texts are longer than 16 tokens") as caught:
        out = p(["hello world", "the city " * 40])
    assert len(out) == 2 and len(caught) == 1


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "question-answering"])
def test_torch_and_onnx_directories_agree(dirs: dict[str, Path], task: str) -> None:
    torch_pipe, onnx_pipe = xc.pipeline(dirs[task]), xc.pipeline(dirs[f"{task}-onnx"])
    assert torch_pipe.info()["kind"] == "torch" and onnx_pipe.info()["kind"] == "onnx"
    if task == "question-answering":
        a = [torch_pipe(question="who?", context=t) for t in TEXTS]
        b = [onnx_pipe(question="who?", context=t) for t in TEXTS]
        assert [(x["start"], x["end"]) for x in a] == [(x["start"], x["end"]) for x in b]
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-4)
    elif task == "token-classification":
        a, b = torch_pipe(TEXTS), onnx_pipe(TEXTS)
        assert [[(e["entity_group"], e["start"], e["end"]) for e in s] for s in a] == \
            [[(e["entity_group"], e["start"], e["end"]) for e in s] for s in b]
    else:
        a, b = torch_pipe(TEXTS, top_k=3), onnx_pipe(TEXTS, top_k=3)
        assert [[r["label"] for r in x] for x in a] == [[r["label"] for r in x] for x in b]
        assert np.abs(np.array([[r["score"] for r in x] for x in a])
                      - np.array([[r["score"] for r in x] for x in b])).max() < 1e-4


@pytest.mark.parametrize("kind", ["sequence-classification", "token-classification", "question-answering",
                                  "torch-int8", "pruned"])
def test_packed_batches_give_the_padded_outputs(dirs: dict[str, Path], kind: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch packed into one row of real tokens gives every head the outputs of the padded batch."""
    from xlmr_compress import attention

    model = dirs.get(kind)
    if kind == "torch-int8":
        model = xc.quantize(dirs["sequence-classification"], tmp_path / "int8", xc.QuantizeConfig(mode="torch-int8"))
    elif kind == "pruned":  # heads of uneven count per layer
        model = xc.prune(dirs["token-classification"], tmp_path / "pruned", xc.PruneConfig(keep_heads=[3, 1]))
    calls = []
    packed_forward = attention.packed_forward
    monkeypatch.setattr(attention, "packed_forward", lambda *a: calls.append(a[1].shape) or packed_forward(*a))
    padded, packed = xc.pipeline(model, pack=False), xc.pipeline(model)
    assert packed.predictor.packed and not padded.predictor.packed
    ids = [padded.tokenizer(t)["input_ids"] for t in TEXTS]
    want = padded.forward(ids)
    assert not calls
    got = packed.forward(ids)
    assert calls == [(len(TEXTS), max(map(len, ids)))], "one packed call for the whole batch"
    # dynamic int8 scales activations by each matrix's range, which padding rows widen: only quantization noise
    tol = 2e-3 if kind == "torch-int8" else 1e-5
    for a, b in zip(want, got, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(b[name], a[name], atol=tol, rtol=1e-4)


def test_same_labels_and_scores_as_transformers_pipeline(dirs: dict[str, Path]) -> None:
    import transformers

    ours = xc.pipeline(dirs["sequence-classification"], batch_size=4)
    theirs = transformers.pipeline("text-classification", model=str(dirs["sequence-classification"]), device="cpu")
    assert_close(ours(TEXTS), theirs(TEXTS))
    assert_close(ours(TEXTS[1], top_k=3), theirs(TEXTS[1], top_k=3))
    pair = {"text": "the movie", "text_pair": "a good film"}
    assert_close(ours([pair]), theirs([pair]))


def test_batches_are_sorted_by_length_and_results_keep_input_order(dirs: dict[str, Path]) -> None:
    widths: list[int] = []
    pipe = xc.pipeline(dirs["sequence-classification"], batch_size=4)
    run = pipe.predictor.run
    pipe.predictor.run = lambda batch: (widths.append(batch["input_ids"].shape[1]), run(batch))[1]
    texts = [" ".join(["word"] * n) for n in random.Random(0).sample(range(1, 60), 20)]
    sorted_out = pipe(texts, top_k=3)
    assert widths == sorted(widths) and len(widths) >= 5  # at most 4 texts a batch; padding may cut more
    unsorted = xc.pipeline(dirs["sequence-classification"], batch_size=4, sort_by_length=False)
    assert_close(sorted_out, unsorted(texts, top_k=3))
    assert_close(sorted_out, [pipe(t, top_k=3) for t in texts])


def test_predict_reads_txt_jsonl_csv_and_writes_jsonl_in_order(dirs: dict[str, Path], tmp_path: Path) -> None:
    model = dirs["sequence-classification"]
    expected = xc.pipeline(model)(TEXTS)
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(TEXTS) + "\n")
    out = xc.predict(model, tmp_path / "out.jsonl", xc.PredictConfig(input=str(txt), chunk_size=4, batch_size=2))
    assert_close([json.loads(line) for line in out.read_text().splitlines()], expected)
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"sentence": t, "hyp": "ok"}) + "\n" for t in TEXTS))
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("sentence,hyp\n" + "".join(f'"{t}",ok\n' for t in TEXTS))
    pairs = xc.pipeline(model)([[t, "ok"] for t in TEXTS], top_k=2)
    for source in (jsonl, csv_file):
        out = xc.predict(model, tmp_path / f"{source.suffix[1:]}.jsonl", xc.PredictConfig(
            input=str(source), text_column="sentence", text_pair_column="hyp", top_k=2))
        assert_close([json.loads(line) for line in out.read_text().splitlines()], pairs)


def test_predict_qa_and_ner_jsonl(dirs: dict[str, Path], tmp_path: Path) -> None:
    source = tmp_path / "qa.jsonl"
    source.write_text("".join(json.dumps({"question": "who?", "context": t}) + "\n" for t in TEXTS))
    out = xc.predict(dirs["question-answering"], tmp_path / "qa-out.jsonl", xc.PredictConfig(input=str(source)))
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answers) == len(TEXTS) and all(t[a["start"]:a["end"]] == a["answer"]
                                              for t, a in zip(TEXTS, answers, strict=True))
    source = tmp_path / "ner.jsonl"
    source.write_text("".join(json.dumps(t) + "\n" for t in TEXTS))
    out = xc.predict(dirs["token-classification"], tmp_path / "ner-out.jsonl", xc.PredictConfig(input=str(source)))
    assert_close([json.loads(line) for line in out.read_text().splitlines()],
                 xc.pipeline(dirs["token-classification"])(TEXTS))


def test_predict_streams_stdin_to_stdout_without_a_bar_off_a_tty(dirs: dict[str, Path], monkeypatch,
                                                                 capsys) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello world\n\nok"))
    assert xc.predict(dirs["sequence-classification"], "-") is None
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert len(lines) == 3 and all(set(r) == {"label", "score"} for r in lines)
    assert "text/s" not in captured.err and "predict" not in captured.err


def test_predict_shows_a_bar_with_the_rate_on_a_tty(dirs: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS))
    xc.predict(dirs["sequence-classification"], tmp_path / "out.jsonl", xc.PredictConfig(input=str(source)))
    assert f"{len(TEXTS)}/{len(TEXTS)}" in terminal.getvalue() and "text/s" in terminal.getvalue()


def test_predict_refuses_bad_input_before_loading(tmp_path: Path, dirs: dict[str, Path]) -> None:
    model = dirs["sequence-classification"]
    with pytest.raises(xc.UserError, match="is not a file"):
        xc.predict(model, tmp_path / "o.jsonl", xc.PredictConfig(input=str(tmp_path / "missing.txt")))
    odd = tmp_path / "in.dat"
    odd.write_text("x\n")
    with pytest.raises(xc.UserError, match="--format"):
        xc.predict(model, tmp_path / "o.jsonl", xc.PredictConfig(input=str(odd)))
    existing = tmp_path / "exists.jsonl"
    existing.write_text("")
    with pytest.raises(xc.UserError, match="--overwrite"):
        xc.predict(model, existing, xc.PredictConfig(input=str(odd), format="txt"))
    broken = tmp_path / "in.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(xc.UserError, match="line 2"):
        xc.predict(model, tmp_path / "o.jsonl", xc.PredictConfig(input=str(broken)))
    assert not (tmp_path / "o.jsonl").exists()
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"sentence": "ok"}\n')
    with pytest.raises(xc.UserError, match="--text-column"):
        xc.predict(model, tmp_path / "o.jsonl", xc.PredictConfig(input=str(wrong)))


def test_predict_reads_utf8_with_a_byte_order_mark_and_refuses_other_encodings(tmp_path: Path,
                                                                              dirs: dict[str, Path]) -> None:
    model = dirs["sequence-classification"]
    marked = tmp_path / "bom.txt"
    marked.write_text("\ufeff" + "\n".join(TEXTS) + "\n", encoding="utf-8")
    out = xc.predict(model, tmp_path / "bom.jsonl", xc.PredictConfig(input=str(marked)))
    assert_close([json.loads(line) for line in out.read_text().splitlines()], xc.pipeline(model)(TEXTS))
    for suffix in (".txt", ".csv"):
        latin = tmp_path / f"latin{suffix}"
        latin.write_bytes(("text\n" if suffix == ".csv" else "").encode() + "café crème\n".encode("latin-1"))
        with pytest.raises(xc.UserError, match=rf"latin{suffix} is not UTF-8 text .*iconv") as e:
            xc.predict(model, tmp_path / "o.jsonl", xc.PredictConfig(input=str(latin)))
        assert "\n" not in str(e.value) and not (tmp_path / "o.jsonl").exists()


def test_entity_groups_in_bilou_tags() -> None:
    tags = ["O", "U-PER", "B-LOC", "L-LOC"]
    tok = tiny_tokenizer()
    wanted = {tok.convert_tokens_to_ids("▁" + w): tags.index(t) for w, t in
              [("john", "U-PER"), ("paris", "B-LOC"), ("new", "L-LOC")]}
    pipe = Pipeline(fake_predictor("token-classification", lambda t: np.eye(len(tags))[wanted.get(t, 0)] * 5, tags))
    assert [(e["entity_group"], e["word"]) for e in pipe("john saw paris new")] == [("PER", "john"),
                                                                                    ("LOC", "paris new")]


@pytest.mark.slow
def test_offsets_on_a_real_uner_sentence_and_xquad_context(shared_data: Path, xlmr_tokenizer_file: Path,
                                                            tmp_path: Path) -> None:
    """XLM-R's real tokenizer: entities on an English UNER sentence and an answer over an XQuAD context (several
    windows) come back with offsets that slice the input to the reported word and answer."""
    from transformers import XLMRobertaTokenizerFast

    from xlmr_compress.tiny import tiny_model

    tok = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file))
    words = []
    for line in (shared_data / "uner" / "English-EWT" / "en_ewt-ud-test.iob2").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[0].isdigit():
            words.append((fields[1], fields[2]))
        elif words and any(tag != "O" for _, tag in words):
            break
        else:
            words = []
    sentence = " ".join(w for w, _ in words)
    squad = json.loads((shared_data / "xquad" / "xquad.de.json").read_text())
    paragraph = squad["data"][0]["paragraphs"][0]
    for task, name in (("token-classification", "ner"), ("question-answering", "qa")):
        model = tiny_model(task, len(TAGS), vocab_size=len(tok))
        if task == "token-classification":
            model.config.id2label, model.config.label2id = dict(enumerate(TAGS)), {t: i for i, t in enumerate(TAGS)}
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    entities = xc.pipeline(tmp_path / "ner")(sentence)
    assert entities and all(sentence[e["start"]:e["end"]] == e["word"] for e in entities)
    qa = xc.pipeline(tmp_path / "qa", max_length=96, stride=24)
    context = paragraph["context"]
    assert len(tok(paragraph["qas"][0]["question"], context)["input_ids"]) > 96  # so it is windowed
    answer = qa(question=paragraph["qas"][0]["question"], context=context)
    assert answer["answer"] and context[answer["start"]:answer["end"]] == answer["answer"]


def test_length_batches_bound_padding_and_keep_every_text() -> None:
    from xlmr_compress.inference.pipeline import PADDING_SLACK, length_batches

    lengths = np.asarray([5, 80, 6, 7, 40, 41, 8, 90, 5, 42])
    order = np.argsort(lengths, kind="stable")
    batches = length_batches(order, lengths, batch_size=3)
    assert [i for b in batches for i in b] == order.tolist()
    for batch in batches:
        assert 1 <= len(batch) <= 3
        assert lengths[batch].max() * len(batch) <= PADDING_SLACK * lengths[batch].sum()
    assert len(length_batches(order, np.full(10, 7), batch_size=4)) == 3  # equal lengths: only the size cuts
    assert length_batches(order, lengths, 4, slack=np.inf) == [order[i:i + 4].tolist() for i in (0, 4, 8)]
