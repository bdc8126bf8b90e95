"""Readers: a file, a directory of split files (or of one sub-directory per language), a `save_to_disk` folder, a
registered data source or a `datasets` hub name, read into the task and its splits, labels still as strings.

CSV, TSV (unquoted, as SIB-200) and JSON lines go through `datasets.load_dataset`; CoNLL (`.iob2`/`.conll`/`.bio`, or
a `.txt` whose lines are `token TAG`), SQuAD-v1 `.json` and `{split}_text.txt` + `{split}_labels.txt` through parsers.
"""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from ..errors import UserError, not_utf8
from .base import SPLITS, UNKNOWN_LANGUAGE, DataConfig, mapped, quiet, schema
from .parsers import READERS, answers_of, is_conll, is_squad, tag_of

SOURCES = "xlmr_compress.data_sources"  # entry-point group of named data sources such as "chatterbot"
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")
CONLL_SUFFIXES = (".iob2", ".conll", ".bio")
Splits = dict[str, datasets.Dataset]


def read(cfg: DataConfig) -> tuple[str, Splits]:
    """The task and the splits of the data cfg.path names: a registered source, a local path, or a hub name."""
    source = None if _looks_local(cfg.path) else _source(cfg.path)
    if source is not None:
        return _read_splits(source(cfg), cfg, cfg.path)
    path = Path(cfg.path).expanduser()
    if path.exists():
        return _read_path(path, cfg)
    if _looks_local(cfg.path):
        raise UserError(f"data path {cfg.path} does not exist: check the path")
    return _read_hub(cfg)


def _source(name: str) -> Callable[[DataConfig], Mapping[str, datasets.Dataset]] | None:
    """The data source a package registers under this name in the `xlmr_compress.data_sources` entry points.

    A source takes the DataConfig and returns datasets per split name, read as a hub data set is.
    """
    found = entry_points(group=SOURCES, name=name)
    return next(iter(found)).load() if found else None


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


# --- files and directories ----------------------------------------------------------------------------------------

def _read_path(path: Path, cfg: DataConfig) -> tuple[str, Splits]:
    """Read a file, a directory of split files, or a directory of language sub-directories of split files."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _read_saved(path, cfg)
    if path.is_file():
        # a lone SQuAD file without a split in its name is an evaluation set, as XQuAD's are
        split = _split_of(path.stem) or ("test" if path.suffix.lower() == ".json" else "train")
        files = [(split, path, _language_of(path), _format_of_file(path))]
    else:
        files = _split_files(path, None)
        if not files:
            files = [f for sub in sorted(p for p in path.iterdir() if p.is_dir()) for f in _split_files(sub, sub.name)]
    if not files:
        plain = sorted(p.name for p in (*path.glob("*.txt"), *path.glob("*/*.txt")) if _is_plain_split_text(p))
        raise UserError(f"no split files recognised in {path}" + (f" ({', '.join(plain)}: plain text, not CoNLL)"
                                                                  if plain else "") +
                        f": name them train/dev/test with one of {', '.join((*TABLE_SUFFIXES, *CONLL_SUFFIXES))}, "
                        "SQuAD .json, CoNLL .txt (`token TAG` lines) or as {split}_text.txt + {split}_labels.txt, "
                        "optionally in one sub-directory per language")
    with quiet():
        tables = _load_tables([file for _, file, _, fmt in files if fmt in TABLE_SUFFIXES])
        tasks, parts = set(), defaultdict(list)
        for split, file, language, fmt in files:
            language = language or UNKNOWN_LANGUAGE
            if fmt in TABLE_SUFFIXES:
                task, ds = _from_columns(tables[file], cfg, language, str(file))
            else:
                task, rows = READERS[fmt](file, language)
                ds = datasets.Dataset(pa.Table.from_pylist(rows, schema=schema(task, "string", False).arrow_schema))
            if not len(ds):
                raise UserError(f"{file} holds no examples: fill it or remove it")
            tasks.add(task)
            parts[split].append(ds)
    if len(tasks) > 1:
        raise UserError(f"{path} mixes tasks ({', '.join(sorted(tasks))}): keep one task's files per data set")
    return tasks.pop(), {split: datasets.concatenate_datasets(sets) for split, sets in parts.items()}


def _read_saved(path: Path, cfg: DataConfig) -> tuple[str, Splits]:
    """A folder written by `datasets`' save_to_disk: a DatasetDict's splits, or one Dataset, whose split its name
    gives (else train, as for a lone file)."""
    with quiet():
        saved = datasets.load_from_disk(str(path))
    if isinstance(saved, datasets.Dataset):
        saved = {_split_of(path.name) or "train": saved}
    return _read_splits(saved, cfg, str(path))


def _split_files(folder: Path, language: str | None) -> list[tuple[str, Path, str | None, str]]:
    """The (split, file, language, format) of the data files directly in a folder."""
    found = []
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        split = _split_of(file.name[: -len("_text.txt")] if file.name.endswith("_text.txt") else file.stem)
        if split is None and file.suffix.lower() == ".json":
            split = "test"  # evaluation sets like XQuAD come as one file per language
        fmt = _format_of(file) if split is not None else None
        if fmt is not None:
            found.append((split, file, language or _language_of(file), fmt))
    return found


def _format_of(file: Path) -> str | None:
    """A data file's format: "text-labels", "conll", "squad" or its table suffix; None when it is not a data file."""
    suffix = file.suffix.lower()
    if file.name.endswith("_text.txt"):
        return "text-labels"
    if suffix in CONLL_SUFFIXES or (suffix == ".txt" and not file.name.endswith("_labels.txt") and is_conll(file)):
        return "conll"
    if suffix == ".json" and is_squad(file):
        return "squad"
    return suffix if suffix in TABLE_SUFFIXES else None


def _format_of_file(path: Path) -> str:
    """The format of a data file named directly, refused with the accepted formats when it has none."""
    fmt = _format_of(path)
    if fmt is not None:
        return fmt
    if path.suffix.lower() == ".txt":
        raise UserError(f"{path} is plain text, not CoNLL (its first lines are not `token TAG`, as `Paris B-LOC`): "
                        "write it as CoNLL, as {split}_text.txt + {split}_labels.txt, or as a CSV/TSV/JSONL table")
    raise UserError(f"{path}: unknown data format {path.suffix.lower()!r}: use "
                    f"{', '.join((*TABLE_SUFFIXES, *CONLL_SUFFIXES))}, CoNLL .txt, SQuAD .json or "
                    "{split}_text.txt + {split}_labels.txt")


def _is_plain_split_text(path: Path) -> bool:
    """True for a .txt named for a split that is neither CoNLL nor part of a text + labels pair."""
    return (_split_of(path.stem) is not None and not path.name.endswith(("_text.txt", "_labels.txt"))
            and not is_conll(path))


# --- tables, hub data sets and registered sources -----------------------------------------------------------------

def _load_tables(files: list[Path]) -> dict[Path, datasets.Dataset]:
    """CSV, TSV and JSON-lines files through `datasets.load_dataset`: CSV/TSV files that share a header in one call,
    every cell read as a string (no number or NA guessing); each JSON-lines file on its own, its types as written."""
    groups: dict[tuple, list[Path]] = defaultdict(list)
    for file in files:
        key = _jsonl_checked(file) if file.suffix.lower() == ".jsonl" else _header(file)
        groups[(file.suffix.lower(), key)].append(file)
    tables = {}
    for (suffix, key), group in groups.items():
        if suffix == ".jsonl":
            builder, options = "json", {}
        else:
            builder, options = "csv", {**_dialect(suffix), "encoding": "utf-8-sig", "keep_default_na": False,
                                       "na_filter": False, "index_col": False,
                                       "features": datasets.Features({c: datasets.Value("string") for c in key})}
        try:
            loaded = datasets.load_dataset(builder, data_files={f"file{i}": str(f) for i, f in enumerate(group)},
                                           **options)
        except Exception as e:  # pandas and pyarrow raise many types for one meaning: the file does not parse
            reason = str(e.__cause__ or e).splitlines()[0] if str(e.__cause__ or e) else type(e).__name__
            more = f" (or one of {len(group) - 1} more {suffix} files)" if len(group) > 1 else ""
            raise UserError(f"{group[0]}{more} cannot be read as {suffix[1:].upper()} ({reason}): fix the file") from e
        # each file keeps only its own table and features: the builder's info lists every file of the group, and
        # datasets deep-copies it on each later map (quadratic in the number of files: 19 s for SIB-200's 93)
        tables.update({f: datasets.Dataset(loaded[f"file{i}"].data,
                                           info=datasets.DatasetInfo(features=loaded[f"file{i}"].features))
                       for i, f in enumerate(group)})
    return tables


def _jsonl_checked(path: Path) -> Path:
    """A JSON-lines file that holds a record and is UTF-8, else a one-line refusal (pyarrow's errors say neither)."""
    try:
        with path.open(encoding="utf-8") as f:
            if not any(line.strip() for line in f):
                raise UserError(f"{path} holds no examples: fill it or remove it")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    return path


def _dialect(suffix: str) -> dict[str, Any]:
    """CSV reading options: TSV files are tab-separated and unquoted (SIB-200's texts hold bare quotes)."""
    return {"sep": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {"sep": ","}


def _header(path: Path) -> tuple[str, ...]:
    """The column names of a CSV/TSV file; refuses a file without a data row (`datasets` cannot load it)."""
    dialect = _dialect(path.suffix.lower())
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=dialect["sep"], quoting=dialect.get("quoting", csv.QUOTE_MINIMAL))
        try:  # the whole file: a byte that is not UTF-8 fails here, in one line, and not deep in pandas
            header = next(reader, None)
            if header is None or next((row for row in reader if row), None) is None:
                raise UserError(f"{path} holds no examples: fill it or remove it")
            for _ in reader:
                pass
        except UnicodeDecodeError as e:
            raise not_utf8(path, e) from None
    return tuple(header)


def _read_hub(cfg: DataConfig) -> tuple[str, Splits]:
    """Load a `datasets` hub name (needs network) and read its train/validation/test splits."""
    try:
        hub = datasets.load_dataset(cfg.path, cfg.dataset_config)
    except Exception as e:  # datasets raises many types (offline, unknown name, bad config); all mean the same here
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{cfg.path!r} is not a local path and datasets.load_dataset failed ({reason}): "
                        "check the path, or the dataset name, its config and network access") from e
    return _read_splits(hub, cfg, cfg.path)


def _read_splits(splits: Mapping[str, datasets.Dataset], cfg: DataConfig, where: str) -> tuple[str, Splits]:
    """The train/validation/test splits of a hub data set or a registered source, columns picked by cfg."""
    tasks, found = set(), {}
    for name, ds in splits.items():
        if name.lower() in SPLITS:
            task, found[SPLITS[name.lower()]] = _from_columns(ds, cfg, UNKNOWN_LANGUAGE, f"{where}[{name}]")
            tasks.add(task)
    if not found:
        raise UserError(f"{where!r} has no train/validation/test split (it has {', '.join(splits)}): "
                        "choose another data set")
    return tasks.pop(), found


def _from_columns(ds: datasets.Dataset, cfg: DataConfig, language: str, where: str) -> tuple[str, datasets.Dataset]:
    """Examples of any task from a table (CSV/TSV/JSONL or `datasets`), picking the configured columns; ClassLabel
    integers become their names and every label a string, as files give them."""
    columns = ds.column_names
    task = cfg.task or ("question-answering" if {"question", "context"} <= set(columns)
                        else "token-classification" if "tokens" in columns else "sequence-classification")
    lang = cfg.language_column if cfg.language_column in columns else None
    lang_text = _as_text(ds.features[lang]) if lang else str

    def languages(batch: Mapping, indices: list[int]) -> list[str]:
        return [lang_text(v) if v is not None else language for v in batch[lang]] if lang else [language] * len(indices)

    if task == "question-answering":
        for name in ("id", "question", "context", "answers"):
            _column(columns, name, (), "QA", where)

        def convert(batch: Mapping, indices: list[int]) -> dict:
            return {"id": [str(i) for i in batch["id"]], "question": batch["question"], "context": batch["context"],
                    "answers": [answers_of(a) for a in batch["answers"]], "language": languages(batch, indices)}
        pair = False
    elif task == "token-classification":
        tokens = _column(columns, cfg.text_column, ("tokens", "words"), "tokens", where)
        tags = _column(columns, cfg.label_column, ("tags", "ner_tags"), "tags", where)
        tag_text = _tag_text(getattr(ds.features[tags], "feature", None), tags, where)

        def convert(batch: Mapping, indices: list[int]) -> dict:
            return {"tokens": [list(t) for t in batch[tokens]],
                    "tags": [[tag_of(tag_text(t)) for t in row] for row in batch[tags]],
                    "language": languages(batch, indices)}
        pair = False
    else:
        text = _column(columns, cfg.text_column, ("sentence",) if cfg.text_column == "text" else (), "text", where)
        label = _column(columns, cfg.label_column, ("labels", "category") if cfg.label_column == "label" else (),
                        "label", where)
        pair = cfg.text_pair_column and _column(columns, cfg.text_pair_column, (), "text pair", where)
        label_text = _label_text(ds.features[label], label, where)

        def convert(batch: Mapping, indices: list[int]) -> dict:
            for i, row in enumerate(indices):
                if batch[text][i] is None or batch[label][i] in (None, "") or (pair and batch[pair][i] is None):
                    raise UserError(f"{where}: row {row + 1} lacks a text or a label: fix the file")
            return {"text": batch[text], **({"text_pair": batch[pair]} if pair else {}),
                    "label": [label_text(v) for v in batch[label]], "language": languages(batch, indices)}
    return task, mapped(ds, convert, with_indices=True, remove_columns=columns,
                        features=schema(task, "string", bool(pair)))


def _as_text(feature: Any) -> Callable[[Any], str]:
    """How a column's values become the strings files give: ClassLabel integers name their class."""
    names = getattr(feature, "names", None)
    return names.__getitem__ if names else str


def _label_text(feature: Any, column: str, where: str) -> Callable[[Any], str]:
    """How one class label per example becomes a string; lists (multi-label) and fractions (regression) are
    refused, and whole floats such as 1.0 are the integer classes JSON writers make of them."""
    if not isinstance(feature, (datasets.Value, datasets.ClassLabel)):
        raise UserError(f"{where}: label column {column!r} holds {feature}, not one class per example: multi-label "
                        "classification is not supported; give each example one label")
    if isinstance(feature, datasets.Value) and feature.dtype.startswith("float"):
        def whole(value: float) -> str:
            if not float(value).is_integer():
                raise UserError(f"{where}: label {value} is not a class: give class names or integers "
                                "(regression is not supported)")
            return str(int(value))
        return whole
    return _as_text(feature)


def _tag_text(feature: Any, column: str, where: str) -> Callable[[Any], str]:
    """How NER tags become strings; integer tags without names (a JSON file's `ner_tags`) cannot say which is O."""
    if isinstance(feature, datasets.Value) and not feature.dtype.startswith(("string", "large_string")):
        raise UserError(f"{where}: tag column {column!r} holds {feature.dtype} numbers without tag names: write the "
                        "tags as strings (O, B-PER, I-PER, ...)")
    return _as_text(feature)


def _column(columns: list[str], wanted: str, fallbacks: tuple[str, ...], what: str, where: str) -> str:
    """The column to read: the configured name, else the first usual name for it that is present."""
    for name in (wanted, *fallbacks):
        if name in columns:
            return name
    raise UserError(f"{where}: {what} column {wanted!r} not found; the columns are {', '.join(columns)}: "
                    f"pass the right column name")
