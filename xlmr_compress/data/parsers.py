"""Formats without a `datasets` builder, parsed by hand into example rows: CoNLL, SQuAD-v1 JSON, and the UMSAB
layout of `{split}_text.txt` with a line-aligned `{split}_labels.txt`."""
from __future__ import annotations

import json
import re
from itertools import islice
from pathlib import Path

from ..errors import UserError, not_utf8

TAG = re.compile(r"^(O|[BIESLU]-.+)$")  # IOB1/IOB2, IOBES and BILOU tags
CONLL_SNIFF_LINES = 20  # a .txt is CoNLL when its first token lines all end in a tag


def is_conll(path: Path) -> bool:
    """True when a text file's first token lines are `token ... TAG` (or UNER's `index<TAB>token<TAB>tag ...`)."""
    tagged = 0
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        for line in islice(f, 1000):  # room for long comment headers
            line = line.rstrip("\r\n")
            fields = line.split("\t") if "\t" in line else line.split()
            if not fields or line.startswith("-DOCSTART-") or _is_comment(line, fields):
                continue
            tag = fields[2] if _is_indexed(line, fields) else fields[-1] if len(fields) >= 2 else ""
            if not TAG.match(tag):
                return False
            tagged += 1
            if tagged == CONLL_SNIFF_LINES:
                break
    return tagged > 0


def _is_indexed(line: str, fields: list[str]) -> bool:
    """True for UNER's tab-separated `index token tag ...` lines."""
    return "\t" in line and len(fields) >= 3 and fields[0].isdigit()


def _is_comment(line: str, fields: list[str]) -> bool:
    """True for a comment (`# text = ...`), not the token "#" with its tag."""
    return line.startswith("#") and not (len(fields) == 2 and TAG.match(fields[1]))


def read_text(path: Path) -> str:
    """A UTF-8 file's text, without a byte-order mark; another encoding is refused in one line."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None


def _lines(path: Path) -> list[str]:
    """Lines split on newlines only (texts may hold other Unicode line separators); no trailing empty line."""
    lines = read_text(path).replace("\r\n", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _read_text_labels(text_path: Path, language: str) -> tuple[str, list[dict]]:
    """Examples from a {split}_text.txt file and its line-aligned {split}_labels.txt (UMSAB layout)."""
    labels_path = text_path.with_name(text_path.name.replace("_text.txt", "_labels.txt"))
    if not labels_path.is_file():
        raise UserError(f"{text_path} has no matching {labels_path.name}: add the labels file")
    texts, labels = (_lines(p) for p in (text_path, labels_path))
    if len(texts) != len(labels):
        raise UserError(f"{text_path} has {len(texts)} lines but {labels_path.name} has {len(labels)}: "
                        "they must be line-aligned")
    return "sequence-classification", [{"text": t, "label": label.strip(), "language": language}
                                       for t, label in zip(texts, labels, strict=True)]


def _read_conll(path: Path, language: str) -> tuple[str, list[dict]]:
    """Sentences of a CoNLL file, tags in any scheme `metrics.entities` reads: UNER's tab-separated
    `index token tag ...` or plain `token ... tag`."""
    sentences, tokens, tags = [], [], []
    for line in [*_lines(path), ""]:
        fields = line.split("\t") if "\t" in line else line.split()
        if not fields or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append({"tokens": tokens, "tags": tags, "language": language})
            tokens, tags = [], []
        elif _is_indexed(line, fields):
            tokens.append(fields[1])
            tags.append(tag_of(fields[2]))
        elif _is_comment(line, fields):
            continue
        elif len(fields) >= 2:
            tokens.append(fields[0])
            tags.append(tag_of(fields[-1]))
        else:
            raise UserError(f"{path}: line {line!r} has no tag column: use `token tag` or UNER's "
                            "`index token tag` columns")
    return "token-classification", sentences


def tag_of(tag: str) -> str:
    """A tag in UNER's PER/ORG/LOC scheme: its OTH is outside it, so it becomes O."""
    return "O" if tag.split("-", 1)[-1] == "OTH" else tag


def is_squad(path: Path) -> bool:
    """True when a .json file looks like SQuAD (a top-level "data" list)."""
    try:
        return isinstance(json.loads(read_text(path)).get("data"), list)
    except (ValueError, AttributeError):
        return False


def _read_squad(path: Path, language: str) -> tuple[str, list[dict]]:
    """Questions of a SQuAD-v1 JSON file, one example each."""
    try:
        articles = json.loads(read_text(path))["data"]
        return "question-answering", [
            {"id": str(qa["id"]), "question": qa["question"], "context": paragraph["context"],
             "answers": answers_of(qa["answers"]), "language": language}
            for article in articles for paragraph in article["paragraphs"] for qa in paragraph["qas"]
        ]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not SQuAD-v1 JSON ({type(e).__name__}: {e}): expected "
                        '{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}') from e


READERS = {"text-labels": _read_text_labels, "conll": _read_conll, "squad": _read_squad}


def answers_of(answers: list[dict] | dict) -> dict:
    """Answers as columns {"text": [...], "answer_start": [...]}, from SQuAD's list of {"text", "answer_start"}."""
    if isinstance(answers, dict):
        return {"text": list(answers["text"]), "answer_start": [int(a) for a in answers["answer_start"]]}
    return {"text": [a["text"] for a in answers], "answer_start": [int(a["answer_start"]) for a in answers]}
