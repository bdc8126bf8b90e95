"""Task data: read local files, the embedded chatterbot corpus or `datasets` names; tokenise, pad and decode."""
from __future__ import annotations

import csv
import json
import re
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import yaml
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

from .errors import UserError
from .modeling import check_task

SPLITS = {"train": "train", "dev": "validation", "val": "validation", "valid": "validation",
          "validation": "validation", "test": "test"}
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")
CONLL_SUFFIXES = (".iob2", ".conll", ".bio")
MAX_LENGTH = 512  # XLM-R's position table holds 512 tokens after the padding offset
MAX_ANSWER_TOKENS = 30
MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "start_positions", "end_positions")
UNKNOWN_LANGUAGE = "und"
TAG = re.compile(r"^(O|[BIES]-.+)$")

# chatterbot-corpus files name the same topic differently across languages; map each to its English name.
CHATTERBOT_TOPICS = {
    "ia": "ai", "computer": "computers", "coversations": "conversations", "dinero": "money",
    "emociones": "emotion", "emotions": "emotion", "greeting": "greetings", "history_brasil": "history",
    "origen": "botprofile", "perfilbot": "botprofile", "profile": "botprofile", "psicologia": "psychology",
    "sport": "sports",
}
CHATTERBOT_MIN_EXAMPLES = 30
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader is 10x faster when present


@dataclass
class DataConfig:
    """Where the data is and how to read it."""

    path: str  # a file, a directory, "chatterbot" (embedded default), or a `datasets` hub name
    task: str | None = None  # inferred from the format when None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    language_column: str | None = "language"
    languages: list[str] | None = None  # keep only these languages
    max_per_split: int | None = None  # deterministic subsample per split, stratified by language
    dataset_config: str | None = None  # `datasets` config name
    seed: int = 0


@dataclass
class TaskData:
    """A task's examples per split, with the label names the integer labels index."""

    task: str
    label_names: list[str]  # classes, or IOB2 tags ("O" first) for NER; [] for QA
    splits: datasets.DatasetDict  # keys among "train", "validation", "test"

    def languages(self, split: str) -> list[str]:
        """The sorted languages present in a split."""
        # `ds[name][:]` is a list; iterating datasets' lazy Column object goes row by row (seconds on 20k rows)
        return sorted(set(self.split(split)["language"][:]))

    def split(self, name: str) -> datasets.Dataset:
        """One split, with a clear error when it is absent."""
        if name not in self.splits:
            raise UserError(f"the data has no {name!r} split (it has {', '.join(self.splits)}): "
                            f"add a {name} file or choose another split")
        return self.splits[name]


# --- reading ---------------------------------------------------------------------------------------------------

def load_data(config: DataConfig | str, **overrides: Any) -> TaskData:
    """Read a data set into TaskData: examples per split with integer labels and a language per example."""
    cfg = replace(DataConfig(path=config) if isinstance(config, str) else config, **overrides)
    if cfg.task is not None:
        check_task(cfg.task)
    if cfg.path == "chatterbot":
        task, rows = "sequence-classification", _chatterbot(cfg.seed)
    elif Path(cfg.path).expanduser().exists():
        task, rows = _read_path(Path(cfg.path).expanduser(), cfg)
    elif _looks_local(cfg.path):
        raise UserError(f"data path {cfg.path} does not exist: check the path")
    else:
        task, rows = _read_hub(cfg)
    if cfg.task is not None and cfg.task != task:
        raise UserError(f"{cfg.path} holds {task} data but the task is {cfg.task}: drop --task or pick other data")
    rows = _filter_languages(rows, cfg.languages, cfg.path)
    label_names = _label_names(task, rows)
    splits = datasets.DatasetDict({
        split: subsample(_dataset(task, _index_labels(task, split_rows, label_names)), cfg.max_per_split, cfg.seed)
        for split, split_rows in sorted(rows.items(), key=lambda item: list(SPLITS.values()).index(item[0]))
    })
    return TaskData(task, label_names, splits)


def references_of(data: TaskData, split: str) -> list:
    """The gold per example: class index, tag strings per word (NER), or the list of answer texts (QA)."""
    ds = data.split(split)
    if data.task == "sequence-classification":
        return ds["label"][:]
    if data.task == "token-classification":
        return [[data.label_names[t] for t in tags] for tags in ds["tags"][:]]
    return [answers["text"] for answers in ds["answers"][:]]


def _looks_local(path: str) -> bool:
    """True for strings that can only mean a file path (a hub name is 'name' or 'owner/name')."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or Path(path).suffix.lower() in (
        *TABLE_SUFFIXES, *CONLL_SUFFIXES, ".json", ".txt")


def _split_of(name: str) -> str | None:
    """The split a file name says (train / dev|val|validation / test), or None."""
    words = [SPLITS[w] for w in re.split(r"[^a-z]+", name.lower()) if w in SPLITS]
    return words[-1] if words else None


def _language_of(path: Path) -> str | None:
    """The language a dotted file name gives, as in xquad.<lang>.json."""
    parts = path.name.split(".")
    return parts[-2] if len(parts) > 2 and parts[-2].lower() not in SPLITS else None


def _read_path(path: Path, cfg: DataConfig) -> tuple[str, dict[str, list[dict]]]:
    """Read a file, a directory of split files, or a directory of language sub-directories of split files."""
    if path.is_file():
        # a lone SQuAD file without a split in its name is an evaluation set, as XQuAD's are
        split = _split_of(path.stem) or ("test" if path.suffix.lower() == ".json" else "train")
        files = [(split, path, _language_of(path))]
    else:
        files = _split_files(path, None)
        if not files:
            files = [f for sub in sorted(p for p in path.iterdir() if p.is_dir()) for f in _split_files(sub, sub.name)]
    if not files:
        raise UserError(f"no split files recognised in {path}: name them train/dev/test with one of "
                        f"{', '.join((*TABLE_SUFFIXES, *CONLL_SUFFIXES, '.json'))} or as {{split}}_text.txt + "
                        f"{{split}}_labels.txt, optionally in one sub-directory per language")
    tasks, rows = set(), defaultdict(list)
    for split, file, language in files:
        task, file_rows = _read_file(file, cfg, language or UNKNOWN_LANGUAGE)
        if not file_rows:
            raise UserError(f"{file} holds no examples: fill it or remove it")
        tasks.add(task)
        rows[split].extend(file_rows)
    if len(tasks) > 1:
        raise UserError(f"{path} mixes tasks ({', '.join(sorted(tasks))}): keep one task's files per data set")
    return tasks.pop(), dict(rows)


def _split_files(folder: Path, language: str | None) -> list[tuple[str, Path, str | None]]:
    """The (split, file, language) triples of the data files directly in a folder."""
    found = []
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        suffix = file.suffix.lower()
        if file.name.endswith("_text.txt"):
            split = _split_of(file.name[: -len("_text.txt")])
        elif suffix in TABLE_SUFFIXES + CONLL_SUFFIXES:
            split = _split_of(file.stem)
        elif suffix == ".json" and _is_squad(file):
            split = _split_of(file.stem) or "test"  # evaluation sets like XQuAD come as one file per language
        else:
            continue
        if split is not None:
            found.append((split, file, language or _language_of(file)))
    return found


def _read_file(path: Path, cfg: DataConfig, language: str) -> tuple[str, list[dict]]:
    """Read one data file into (task, examples) by its format."""
    suffix = path.suffix.lower()
    if path.name.endswith("_text.txt"):
        return "sequence-classification", _read_text_labels(path, language)
    if suffix in CONLL_SUFFIXES:
        return "token-classification", _read_conll(path, language)
    if suffix == ".json":
        return "question-answering", _read_squad(path, language)
    if suffix in TABLE_SUFFIXES:
        return _from_columns(_read_table(path), cfg, language, str(path))
    raise UserError(f"{path}: unknown data format {suffix!r}: use {', '.join((*TABLE_SUFFIXES, *CONLL_SUFFIXES))}, "
                    f"SQuAD .json or {{split}}_text.txt + {{split}}_labels.txt")


def _read_table(path: Path) -> list[dict]:
    """Rows of a CSV, TSV (unquoted, as SIB-200) or JSON-lines file."""
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".jsonl":
            return [json.loads(line) for line in f if line.strip()]
        if path.suffix.lower() == ".tsv":
            return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return list(csv.DictReader(f))


def _read_text_labels(text_path: Path, language: str) -> list[dict]:
    """Examples from a {split}_text.txt file and its line-aligned {split}_labels.txt (UMSAB layout)."""
    labels_path = text_path.with_name(text_path.name.replace("_text.txt", "_labels.txt"))
    if not labels_path.is_file():
        raise UserError(f"{text_path} has no matching {labels_path.name}: add the labels file")
    texts, labels = (_lines(p) for p in (text_path, labels_path))
    if len(texts) != len(labels):
        raise UserError(f"{text_path} has {len(texts)} lines but {labels_path.name} has {len(labels)}: "
                        "they must be line-aligned")
    return [{"text": t, "label": label.strip(), "language": language} for t, label in zip(texts, labels, strict=True)]


def _lines(path: Path) -> list[str]:
    """Lines split on newlines only (texts may hold other Unicode line separators); no trailing empty line."""
    lines = path.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _read_conll(path: Path, language: str) -> list[dict]:
    """Sentences of an IOB2 CoNLL file: UNER's tab-separated `index token tag ...` or plain `token ... tag`."""
    sentences, tokens, tags = [], [], []
    for line in [*_lines(path), ""]:
        fields = line.split("\t") if "\t" in line else line.split()
        if not fields or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append({"tokens": tokens, "tags": tags, "language": language})
            tokens, tags = [], []
        elif "\t" in line and len(fields) >= 3 and fields[0].isdigit():
            tokens.append(fields[1])
            tags.append(_tag(fields[2]))
        elif line.startswith("#") and not (len(fields) == 2 and TAG.match(fields[1])):
            continue  # a comment (`# text = ...`), not the token "#" with its tag
        elif len(fields) >= 2:
            tokens.append(fields[0])
            tags.append(_tag(fields[-1]))
        else:
            raise UserError(f"{path}: line {line!r} has no tag column: use `token tag` or UNER's "
                            "`index token tag` columns")
    return sentences


def _tag(tag: str) -> str:
    """A tag in the 7-tag PER/ORG/LOC scheme: UNER's OTH is outside it, so it becomes O."""
    return "O" if tag in ("B-OTH", "I-OTH") else tag


def _is_squad(path: Path) -> bool:
    """True when a .json file looks like SQuAD (a top-level "data" list)."""
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")).get("data"), list)
    except (ValueError, AttributeError):
        return False


def _read_squad(path: Path, language: str) -> list[dict]:
    """Questions of a SQuAD-v1 JSON file, one example each."""
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
        return [
            {"id": str(qa["id"]), "question": qa["question"], "context": paragraph["context"],
             "answers": _answers(qa["answers"]), "language": language}
            for article in articles for paragraph in article["paragraphs"] for qa in paragraph["qas"]
        ]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not SQuAD-v1 JSON ({type(e).__name__}: {e}): expected "
                        '{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}') from e


def _answers(answers: list[dict] | dict) -> dict:
    """Answers as columns {"text": [...], "answer_start": [...]}, from SQuAD's list of {"text", "answer_start"}."""
    if isinstance(answers, dict):
        return {"text": list(answers["text"]), "answer_start": [int(a) for a in answers["answer_start"]]}
    return {"text": [a["text"] for a in answers], "answer_start": [int(a["answer_start"]) for a in answers]}


def _from_columns(rows: list[dict], cfg: DataConfig, language: str, where: str) -> tuple[str, list[dict]]:
    """Examples of any task from generic rows (CSV/TSV/JSONL or `datasets`), picking the configured columns."""
    if not rows:
        return cfg.task or "sequence-classification", []
    columns = list(rows[0])
    task = cfg.task or ("question-answering" if {"question", "context"} <= set(columns)
                        else "token-classification" if "tokens" in columns else "sequence-classification")
    lang = cfg.language_column if cfg.language_column in columns else None

    def language_of(row: dict) -> str:
        return str(row[lang]) if lang and row[lang] is not None else language

    if task == "question-answering":
        for name in ("id", "question", "context", "answers"):
            _column(columns, name, (), "QA", where)
        return task, [{"id": str(r["id"]), "question": r["question"], "context": r["context"],
                       "answers": _answers(r["answers"]), "language": language_of(r)} for r in rows]
    if task == "token-classification":
        tokens = _column(columns, cfg.text_column, ("tokens", "words"), "tokens", where)
        tags = _column(columns, cfg.label_column, ("tags", "ner_tags"), "tags", where)
        return task, [{"tokens": list(r[tokens]), "tags": [_tag(str(t)) for t in r[tags]],
                       "language": language_of(r)} for r in rows]
    text = _column(columns, cfg.text_column, ("sentence",) if cfg.text_column == "text" else (), "text", where)
    label = _column(columns, cfg.label_column, ("labels", "category") if cfg.label_column == "label" else (),
                    "label", where)
    pair = cfg.text_pair_column and _column(columns, cfg.text_pair_column, (), "text pair", where)
    examples = []
    for i, r in enumerate(rows):
        if r[text] is None or r[label] is None or (pair and r[pair] is None):
            raise UserError(f"{where}: row {i + 1} lacks a text or a label: fix the file")
        examples.append({"text": r[text], **({"text_pair": r[pair]} if pair else {}), "label": str(r[label]),
                         "language": language_of(r)})
    return task, examples


def _column(columns: list[str], wanted: str, fallbacks: tuple[str, ...], what: str, where: str) -> str:
    """The column to read: the configured name, else the first usual name for it that is present."""
    for name in (wanted, *fallbacks):
        if name in columns:
            return name
    raise UserError(f"{where}: {what} column {wanted!r} not found; the columns are {', '.join(columns)}: "
                    f"pass the right column name")


def _read_hub(cfg: DataConfig) -> tuple[str, dict[str, list[dict]]]:
    """Load a `datasets` hub name (needs network) and read its train/validation/test splits."""
    try:
        hub = datasets.load_dataset(cfg.path, cfg.dataset_config)
    except Exception as e:  # datasets raises many types (offline, unknown name, bad config); all mean the same here
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{cfg.path!r} is not a local path and datasets.load_dataset failed ({reason}): "
                        "check the path, or the dataset name, its config and network access") from e
    tasks, rows = set(), {}
    for name, ds in hub.items():
        if name.lower() in SPLITS:
            task, rows[SPLITS[name.lower()]] = _from_columns(_hub_rows(ds), cfg,
                                                             UNKNOWN_LANGUAGE, f"{cfg.path}[{name}]")
            tasks.add(task)
    if not rows:
        raise UserError(f"{cfg.path!r} has no train/validation/test split (it has {', '.join(hub)}): "
                        "choose another data set")
    return tasks.pop(), rows


def _hub_rows(ds: datasets.Dataset) -> list[dict]:
    """Rows of a hub split with ClassLabel integers replaced by their names, as files give labels."""
    rows = ds.to_list()
    for name, feature in ds.features.items():
        names = getattr(feature, "names", None)
        inner = getattr(getattr(feature, "feature", None), "names", None)
        for row in rows if names or inner else []:
            row[name] = names[row[name]] if names else [inner[i] for i in row[name]]
    return rows


def _chatterbot(seed: int) -> dict[str, list[dict]]:
    """The embedded default: chatterbot-corpus utterances labelled by topic, split 80/10/10 per topic."""
    try:
        root = resources.files("chatterbot_corpus") / "data"
    except ModuleNotFoundError as e:
        raise UserError("the chatterbot corpus is not installed: pip install chatterbot-corpus==1.3.3") from e
    seen, by_topic = set(), defaultdict(list)
    for lang_dir in sorted(root.iterdir(), key=lambda p: p.name):
        for file in sorted((f for f in lang_dir.iterdir() if f.name.endswith(".yml")), key=lambda p: p.name):
            stem = file.name[: -len(".yml")].lower()
            topic = CHATTERBOT_TOPICS.get(stem, stem)
            corpus = yaml.load(file.read_text(encoding="utf-8"), Loader=YAML_LOADER)
            for utterance in (u for conversation in corpus.get("conversations") or [] for u in conversation):
                text = utterance.strip() if isinstance(utterance, str) else ""
                if text and (text, topic) not in seen:
                    seen.add((text, topic))
                    by_topic[topic].append({"text": text, "label": topic, "language": lang_dir.name})
    rng = np.random.default_rng(seed)
    rows = defaultdict(list)
    for topic in sorted(t for t, examples in by_topic.items() if len(examples) >= CHATTERBOT_MIN_EXAMPLES):
        examples = [by_topic[topic][i] for i in rng.permutation(len(by_topic[topic]))]
        n_eval = round(0.1 * len(examples))
        rows["validation"] += examples[:n_eval]
        rows["test"] += examples[n_eval:2 * n_eval]
        rows["train"] += examples[2 * n_eval:]
    return {split: rows[split] for split in ("train", "validation", "test")}


# --- labels, languages, subsampling -----------------------------------------------------------------------------

def _filter_languages(rows: dict[str, list[dict]], languages: list[str] | None, where: str) -> dict[str, list[dict]]:
    """Keep only the wanted languages; drop splits left empty; refuse a filter that matches nothing."""
    if languages is not None:
        present = sorted({r["language"] for split_rows in rows.values() for r in split_rows})
        rows = {split: [r for r in split_rows if r["language"] in languages] for split, split_rows in rows.items()}
        rows = {split: split_rows for split, split_rows in rows.items() if split_rows}
        if not rows:
            raise UserError(f"no example of {where} is in languages {', '.join(languages)}: "
                            f"the languages present are {', '.join(present)}")
    for split, split_rows in rows.items():
        if not split_rows:
            raise UserError(f"the {split} split of {where} is empty: add examples or remove it")
    return rows


def _label_names(task: str, rows: dict[str, list[dict]]) -> list[str]:
    """Sorted train labels (numerically when all are numbers); NER tags with "O" first; [] for QA.

    Evaluation-only data (no train split) takes its labels from all splits; otherwise dev/test labels must be known.
    """
    if task == "question-answering":
        return []
    key = "label" if task == "sequence-classification" else "tags"

    def labels_of(split_rows: list[dict]) -> set[str]:
        return {r[key] for r in split_rows} if key == "label" else {t for r in split_rows for t in r[key]}

    known = labels_of(rows["train"] if "train" in rows else [r for s in rows.values() for r in s])
    for split, split_rows in rows.items():
        unseen = labels_of(split_rows) - known
        if unseen:
            raise UserError(f"labels {', '.join(sorted(unseen))} of the {split} split never occur in train: "
                            "fix the labels or add training examples for them")
    if task == "token-classification":
        return ["O", *sorted(known - {"O"}, key=lambda t: (t[2:], t[:2]))]
    numeric = all(re.fullmatch(r"-?\d+", label) for label in known)
    return sorted(known, key=int) if numeric else sorted(known)


def _index_labels(task: str, rows: list[dict], label_names: list[str]) -> list[dict]:
    """Replace label strings by their index into label_names."""
    index = {name: i for i, name in enumerate(label_names)}
    if task == "sequence-classification":
        return [{**r, "label": index[r["label"]]} for r in rows]
    if task == "token-classification":
        return [{**r, "tags": [index[t] for t in r["tags"]]} for r in rows]
    return rows


def _dataset(task: str, rows: list[dict]) -> datasets.Dataset:
    """A split as a Dataset, built through Arrow directly (5x faster than Dataset.from_list's per-row encoding)."""
    features = _features(task, rows)
    return datasets.Dataset(pa.Table.from_pylist(rows, schema=features.arrow_schema))


def _features(task: str, rows: list[dict]) -> datasets.Features:
    """The column types of a split (explicit, so an all-empty column still gets its type)."""
    string, integer = datasets.Value("string"), datasets.Value("int64")
    if task == "question-answering":
        return datasets.Features({"id": string, "question": string, "context": string, "language": string,
                                  "answers": {"text": datasets.List(string), "answer_start": datasets.List(integer)}})
    if task == "token-classification":
        return datasets.Features({"tokens": datasets.List(string), "tags": datasets.List(integer), "language": string})
    pair = {"text_pair": string} if "text_pair" in rows[0] else {}
    return datasets.Features({"text": string, **pair, "label": integer, "language": string})


def subsample(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    """A seeded subsample of n examples that keeps each language's share; original order kept."""
    if n is None or len(ds) <= n:
        return ds
    rng = np.random.default_rng(seed)
    languages = np.asarray(ds["language"][:])
    rank = np.empty(len(ds))
    for language in np.unique(languages):
        members = np.flatnonzero(languages == language)
        rank[members] = (rng.permutation(len(members)) + rng.random()) / len(members)
    return ds.select(np.sort(np.argsort(rank, kind="stable")[:n]))


# --- tokenisation -----------------------------------------------------------------------------------------------

def encode(data: TaskData, split: str, tokenizer: Any, max_length: int = 128, stride: int = 32,
           label_names: list[str] | None = None) -> datasets.Dataset:
    """Tokenise a split into model features, plus `length` (for length-grouped batches) and what decode needs.

    label_names: the model's label order, when it differs from the data's.
    """
    if not 0 < max_length <= MAX_LENGTH:
        raise UserError(f"max_length {max_length} is out of range: XLM-R takes at most {MAX_LENGTH} tokens")
    ds = data.split(split)
    remap = _label_map(data.label_names, label_names)
    if data.task == "sequence-classification":
        columns, truncated = _encode_classification(ds[:], tokenizer, max_length, remap)
    elif data.task == "token-classification":
        columns, truncated = _encode_tokens(ds[:], tokenizer, max_length, remap)
    else:
        columns, truncated = _encode_qa(ds[:], tokenizer, max_length, stride)
    if truncated:
        warnings.warn(f"{truncated} of {len(ds)} {split} examples are longer than {max_length} tokens and were "
                      "truncated: raise max_length to keep them whole", stacklevel=2)
    columns["length"] = [len(ids) for ids in columns["input_ids"]]
    return datasets.Dataset.from_dict(columns)


def _label_map(data_labels: list[str], model_labels: list[str] | None) -> np.ndarray:
    """Index map from the data's label order to the model's; refuses labels the model lacks."""
    if model_labels is None:
        return np.arange(len(data_labels))
    missing = sorted(set(data_labels) - set(model_labels))
    if missing:
        raise UserError(f"the data has labels {', '.join(missing)} that the model does not know "
                        f"({', '.join(model_labels)}): fine-tune a model on this label set")
    return np.asarray([list(model_labels).index(name) for name in data_labels], dtype=np.int64)


def _truncated(enc: Any) -> int:
    """How many inputs the fast tokenizer cut at max_length (their cut-off tokens land in `overflowing`)."""
    return sum(bool(e.overflowing) for e in enc.encodings)


def _encode_classification(examples: dict, tokenizer: Any, max_length: int, remap: np.ndarray) -> tuple[dict, int]:
    enc = tokenizer(examples["text"], examples.get("text_pair"), truncation=True, max_length=max_length)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": remap[np.asarray(examples["label"], dtype=np.int64)].tolist()}, _truncated(enc)


def _encode_tokens(examples: dict, tokenizer: Any, max_length: int, remap: np.ndarray) -> tuple[dict, int]:
    """NER features: each word's tag on its first sub-token, -100 (ignored by the loss) elsewhere."""
    enc = tokenizer(examples["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
    labels, word_ids = [], []
    for i, tags in enumerate(examples["tags"]):
        words = [-1 if w is None else w for w in enc.word_ids(i)]
        labels.append([int(remap[tags[w]]) if w >= 0 and (j == 0 or words[j - 1] != w) else -100
                       for j, w in enumerate(words)])
        word_ids.append(words)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels,
            "word_ids": word_ids}, _truncated(enc)


def _encode_qa(examples: dict, tokenizer: Any, max_length: int, stride: int) -> tuple[dict, int]:
    """QA features: a long context becomes overlapping windows, each with its example's index and the character
    offsets of its context tokens (None elsewhere); the target is the answer's token span, or CLS (0) when the
    window does not hold the whole answer."""
    questions = [q.lstrip() for q in examples["question"]]
    longest = max(len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"])
    room = max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
    if room <= stride:  # the tokenizer would panic instead of raising
        raise UserError(f"max_length {max_length} leaves {room} context tokens beside the longest question "
                        f"({longest} tokens), not more than stride {stride}: raise max_length or lower stride")
    enc = tokenizer(questions, examples["context"], truncation="only_second", max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    columns = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "start_positions": [],
               "end_positions": [], "offset_mapping": [], "example_index": enc["overflow_to_sample_mapping"]}
    for i, example in enumerate(enc["overflow_to_sample_mapping"]):
        offsets = [list(o) if s == 1 else None
                   for o, s in zip(enc["offset_mapping"][i], enc.sequence_ids(i), strict=True)]
        context = [j for j, o in enumerate(offsets) if o is not None]
        answers = examples["answers"][example]
        start = end = 0
        if answers["text"] and context:
            first = answers["answer_start"][0]
            last = first + len(answers["text"][0])
            if offsets[context[0]][0] <= first and offsets[context[-1]][1] >= last:
                inside = [j for j in context if offsets[j][0] < last and offsets[j][1] > first]
                start, end = inside[0], inside[-1]
        columns["start_positions"].append(start)
        columns["end_positions"].append(end)
        columns["offset_mapping"].append(offsets)
    return columns, 0


def decode(data: TaskData, split: str, features: datasets.Dataset, outputs: dict[str, np.ndarray],
           label_names: list[str] | None = None) -> list:
    """Per-example predictions from model outputs over `features`: class index (into the data's labels), tag
    strings per word (NER: each word's first sub-token), or answer text (QA: best span over all windows).

    label_names: the model's label order, when encode was given one.
    """
    if data.task == "sequence-classification":
        predicted = np.asarray(outputs["logits"]).argmax(-1)
        if label_names is None:
            return predicted.tolist()
        to_data = np.full(len(label_names), -1)  # -1: a class the model knows but the data does not use
        to_data[_label_map(data.label_names, label_names)] = np.arange(len(data.label_names))
        return to_data[predicted].tolist()
    if data.task == "token-classification":
        return _decode_tokens(data.split(split), features, np.asarray(outputs["logits"]).argmax(-1),
                              label_names or data.label_names)
    return _decode_qa(data.split(split), features, np.asarray(outputs["start_logits"]),
                      np.asarray(outputs["end_logits"]))


def _decode_tokens(ds: datasets.Dataset, features: datasets.Dataset, predicted: np.ndarray,
                   label_names: list[str]) -> list[list[str]]:
    """Each word takes its first sub-token's tag; words cut off by truncation get "O"."""
    results = []
    for tokens, words, row in zip(ds["tokens"][:], features["word_ids"][:], predicted, strict=False):
        tags = ["O"] * len(tokens)
        for j, w in reversed(list(enumerate(words))):
            if w >= 0:
                tags[w] = label_names[row[j]]
        results.append(tags)
    return results


def _decode_qa(ds: datasets.Dataset, features: datasets.Dataset, start_logits: np.ndarray,
               end_logits: np.ndarray) -> list[str]:
    """The highest-scoring valid span (in context, start <= end, at most MAX_ANSWER_TOKENS) of each example."""
    contexts = ds["context"][:]
    best: list[tuple[float, str]] = [(-np.inf, "")] * len(ds)
    for i, (example, offsets) in enumerate(zip(features["example_index"][:], features["offset_mapping"][:],
                                               strict=True)):
        n = len(offsets)
        in_context = np.asarray([o is not None for o in offsets])
        span = np.triu(np.ones((n, n), dtype=bool)) & ~np.triu(np.ones((n, n), dtype=bool), MAX_ANSWER_TOKENS)
        scores = np.where(span & in_context[:, None] & in_context[None, :],
                          start_logits[i, :n, None] + end_logits[i, None, :n], -np.inf)
        s, e = np.unravel_index(np.argmax(scores), scores.shape)
        if scores[s, e] > best[example][0]:
            # XLM-R's offsets of a word-initial piece include the space before it
            best[example] = (float(scores[s, e]), contexts[example][offsets[s][0]:offsets[e][1]].strip())
    return [text for _, text in best]


class _Collator:
    """Pads a batch after dropping the columns the model cannot take (bookkeeping kept for decode, `length`)."""

    def __init__(self, pad: Callable[[list[dict]], dict]) -> None:
        self.pad = pad

    def __call__(self, features: list[dict]) -> dict:
        return self.pad([{k: v for k, v in f.items() if k in MODEL_INPUTS} for f in features])


def collator(task: str, tokenizer: Any, pad_to_multiple_of: int | None = None) -> Callable[[list[dict]], dict]:
    """Dynamic padding for a task's features (NER labels padded with -100)."""
    check_task(task)
    pad = (DataCollatorForTokenClassification if task == "token-classification" else DataCollatorWithPadding)
    return _Collator(pad(tokenizer, pad_to_multiple_of=pad_to_multiple_of))
