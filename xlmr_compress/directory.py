"""The model-directory layer: what a directory is (its kind, task, precision and pruned shapes, from its markers),
one `load` for every kind, atomic writes, and the compression.json lineage. Nothing else guesses from file names.

| kind         | marker                                                            |
|--------------|-------------------------------------------------------------------|
| torch        | model.safetensors, config.json                                    |
| torch-pruned | config.json holds `xlmr_compress` (per-layer heads, head size, FFN) |
| torch-int8   | config.json holds `xlmr_compress_quantization`                    |
| onnx         | model.onnx (precision fp32 / fp16 / int8 in the graph's metadata) |

Loaders are registered per kind (`register`); the torch kinds are built in, the others live in `formats/` and are
imported only when a directory of their kind is loaded, so onnxruntime stays out of a torch-only process.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

LINEAGE = "compression.json"
SAFETENSORS, ONNX_FILE, ONNX_DATA = "model.safetensors", "model.onnx", "model.onnx_data"
WEIGHT_FILES = (SAFETENSORS, ONNX_FILE, ONNX_DATA, "pytorch_model.bin")
SHAPES_KEY = "xlmr_compress"  # config.json: pruned per-layer shapes
QUANTIZED_KEY = "xlmr_compress_quantization"  # config.json: torch int8 weights
PRECISION_KEY = "xlmr_compress.precision"  # ONNX metadata: fp32, fp16 or int8
KINDS = ("torch", "torch-pruned", "torch-int8", "onnx")
MODEL_TYPES = ("xlm-roberta", "xlm-roberta-xl")  # config.model_type of base/large and of XL/XXL
TASKS = ("sequence-classification", "token-classification", "question-answering")
HEAD_SUFFIX = {
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
}
OUTPUTS = {
    "sequence-classification": ("logits",),
    "token-classification": ("logits",),
    "question-answering": ("start_logits", "end_logits"),
}
FORMAT_MODULES = {"torch-int8": "formats.int8", "onnx": "formats.onnx"}
_LOADERS: dict[str, Callable[..., Any]] = {}


@dataclass(frozen=True)
class ModelInfo:
    """What a model directory holds, read from its markers."""

    path: Path
    kind: str
    task: str | None
    precision: str
    label_names: list[str]
    shapes: dict | None
    config: Any

    @property
    def is_onnx(self) -> bool:
        return self.kind == "onnx"


def task_of(obj: Any) -> str | None:
    """The task head of a config (from `architectures`) or of a model (from its class); None for a bare encoder."""
    config = getattr(obj, "config", obj)
    names = list(getattr(config, "architectures", None) or []) + ([type(obj).__name__] if obj is not config else [])
    for name in names:
        for suffix, task in HEAD_SUFFIX.items():
            if name.endswith(suffix):
                return task
    return None


def check_task(task: str) -> str:
    """Validate a task name."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    return task


def label_names_of(config: Any, task: str | None) -> list[str]:
    """The head's label names in index order ([] for QA or a bare encoder)."""
    if task in (None, "question-answering"):
        return []
    return [config.id2label[i] for i in range(config.num_labels)]


def is_local(name_or_dir: str | Path) -> bool:
    """Whether a model argument names a local path (else it is a hub id)."""
    return Path(name_or_dir).exists() or str(name_or_dir).startswith((".", "/", "~"))


def load_config(name_or_dir: str | Path) -> Any:
    """config.json of a local directory (with a one-line error) or of a hub id."""
    from transformers import AutoConfig

    path = Path(name_or_dir)
    if is_local(name_or_dir):
        if not path.is_dir():
            raise UserError(f"model directory {path} does not exist: check the path")
        cfg = path / "config.json"
        if not cfg.is_file():
            raise UserError(f"{path} has no config.json: it is not a model directory (give the directory a stage "
                            "wrote)")
        try:
            json.loads(cfg.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{cfg} is unreadable ({e}): restore the file or re-export the model") from None
    try:
        return AutoConfig.from_pretrained(str(name_or_dir))
    except OSError as e:
        raise UserError(f"cannot load '{name_or_dir}': not a local directory, and the hub says: "
                        f"{str(e).splitlines()[0]}") from None


def load_tokenizer(name_or_dir: str | Path) -> Any:
    """The fast tokenizer of a model, built from tokenizer.json so that it reproduces the file exactly."""
    from transformers import XLMRobertaTokenizerFast

    path = Path(name_or_dir)
    if path.is_dir():
        file = path / "tokenizer.json"
        if not file.is_file():
            raise UserError(f"{path} has no tokenizer.json: save the fast tokenizer with the model "
                            "(tokenizer.save_pretrained)")
        cfg = path / "tokenizer_config.json"
        max_length = json.loads(cfg.read_text()).get("model_max_length", 512) if cfg.is_file() else 512
        return XLMRobertaTokenizerFast(tokenizer_file=str(file), model_max_length=min(int(max_length), 512))
    try:
        return XLMRobertaTokenizerFast.from_pretrained(str(name_or_dir))
    except OSError as e:
        raise UserError(f"cannot load the tokenizer of {name_or_dir!r}: {str(e).splitlines()[0]}") from None


def inspect(name_or_dir: str | Path) -> ModelInfo:
    """Kind, task, precision, labels and pruned shapes of a model directory (or hub id), from its markers."""
    path = Path(name_or_dir)
    config = load_config(name_or_dir)
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        raise UserError(f"{name_or_dir} is a {getattr(config, 'model_type', 'unknown')!r} model, not XLM-R: "
                        "xlmr-compress reads XLM-R's layout and SentencePiece tokenizer; give an XLM-RoBERTa model")
    task = task_of(config)
    shapes = getattr(config, SHAPES_KEY, None)
    if is_local(name_or_dir) and (path / ONNX_FILE).is_file() and not (path / SAFETENSORS).is_file():
        kind, precision = "onnx", onnx_precision(path)
    elif getattr(config, QUANTIZED_KEY, None):
        kind, precision = "torch-int8", "int8"
    else:
        if is_local(name_or_dir):
            _check_torch_weights(path)
        kind = "torch-pruned" if shapes else "torch"
        dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
        precision = {"float16": "fp16", "bfloat16": "bf16"}.get(dtype.removeprefix("torch."), "fp32")
    return ModelInfo(path, kind, task, precision, label_names_of(config, task), shapes, config)


def fingerprint(name_or_dir: str | Path) -> str:
    """What tells one version of a model from another cheaply: its config.json and its weight files' sizes and
    modification times (a hub id stands for itself)."""
    path = Path(name_or_dir)
    if not path.is_dir():
        return str(name_or_dir)
    digest = hashlib.sha256((path / "config.json").read_bytes() if (path / "config.json").is_file() else b"")
    for file in sorted(path.glob("model*")):
        stat = file.stat()
        digest.update(f"{file.name} {stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def onnx_precision(path: Path) -> str:
    """The precision export/quantize recorded in the graph's metadata (fp32 for graphs we did not write)."""
    import onnx

    try:
        proto = onnx.load(str(path / ONNX_FILE), load_external_data=False)
    except Exception as e:  # noqa: BLE001  protobuf's DecodeError and onnx's errors share no base but Exception
        raise UserError(f"cannot load {path / ONNX_FILE}, not a readable ONNX graph ({str(e).splitlines()[0][:160]}): "
                        "re-export the model") from None
    return {p.key: p.value for p in proto.metadata_props}.get(PRECISION_KEY, "fp32")


def _check_torch_weights(path: Path) -> None:
    if (path / SAFETENSORS).is_file() or (path / "model.safetensors.index.json").is_file():
        return
    if (path / "pytorch_model.bin").is_file():
        raise UserError(f"{path} has only pickled weights (pytorch_model.bin), which are never unpickled here: "
                        "re-save them as safetensors (model.save_pretrained(dir, safe_serialization=True))")
    raise UserError(f"{path} has no weights (model.safetensors or model.onnx): copy the weights in or give the "
                    "directory a stage wrote")


def register(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the loader of a directory kind: `loader(info, task, **options) -> model`."""
    def decorate(loader: Callable[..., Any]) -> Callable[..., Any]:
        _LOADERS[kind] = loader
        return loader
    return decorate


def load(name_or_dir: str | Path, task: str | None = None, *, label_names: list[str] | None = None,
         info: ModelInfo | None = None, **options: Any) -> tuple[Any, Any]:
    """Model (eval mode) and tokenizer of any directory kind or hub id, every mismatch a one-line error.

    A bare encoder gets a new `task` head with `label_names`. Torch kinds return a transformers model; ONNX returns an
    `formats.onnx.OnnxModel` (an ONNX Runtime session with the same config). Options go to the kind's loader
    (`attn_implementation` for torch, `device`/`threads`/`provider` for ONNX). `info`: the directory's inspect(),
    when the caller already has it."""
    info = info or inspect(name_or_dir)
    task = check_head(info, task, label_names)
    if info.kind in FORMAT_MODULES and info.kind not in _LOADERS:
        importlib.import_module(f".{FORMAT_MODULES[info.kind]}", __package__)
    tokenizer = load_tokenizer(name_or_dir)
    model = _LOADERS[info.kind](info, task, label_names=None if info.task else label_names, **options)
    check_vocab(model, tokenizer, name_or_dir)
    return model, tokenizer


def check_head(info: ModelInfo, task: str | None, label_names: list[str] | None = None) -> str:
    """The task a model is loaded for: its head's, refused in one line when it does not fit the task or labels."""
    name = info.path
    task = task or info.task
    if task is None:
        raise UserError(f"{name} is a bare encoder with no task head: fine-tune it first (xlmr-compress finetune) "
                        "and give the fine-tuned directory")
    check_task(task)
    if info.task and info.task != task:
        raise UserError(f"{name} has a {info.task} head, not {task}: give it {info.task} data, "
                        "or fine-tune a new head")
    if info.task and label_names is not None and task != "question-answering" and \
            not same_labels(label_names, info.label_names):
        raise UserError(f"the data's labels {list(label_names)[:8]} do not match the model's head "
                        f"{info.label_names[:8]}: {label_fix(info.label_names)}")
    if info.task is None and task != "question-answering" and not label_names:
        raise UserError(f"{name} has no {task} head yet: give the label names (the data set provides them)")
    return task


def same_labels(data: list[str], head: list[str]) -> bool:
    """Whether a head predicts the data's labels: the same names, or transformers' default LABEL_i for labels
    that are the integers 0..n-1 (what a head trained on integer labels is saved with)."""
    return list(data) == list(head) or (list(data) == [str(i) for i in range(len(head))]
                                        and list(head) == [f"LABEL_{i}" for i in range(len(head))])


def label_fix(head: list[str]) -> str:
    """What to do when the data's labels are not the head's: name a head saved with the default names."""
    if list(head) == [f"LABEL_{i}" for i in range(len(head))]:
        return ("the head has transformers' default names: write the class names into its config.json id2label and "
                "label2id, in the order it was trained on")
    return "evaluate on the data the model was trained for, or fine-tune a new head"


def check_vocab(model: Any, tokenizer: Any, where: Any = "model") -> None:
    """Refuse a tokenizer whose ids run past the model's embedding table."""
    rows = model.config.vocab_size if not hasattr(model, "get_input_embeddings") else \
        model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(f"{where}: the tokenizer has {len(tokenizer)} tokens but the embedding has {rows} rows: "
                        "the tokenizer does not belong to this model (save the model's own tokenizer with it)")


def auto_class(task: str) -> Any:
    """The transformers Auto class of a task head."""
    import transformers

    return getattr(transformers, {"sequence-classification": "AutoModelForSequenceClassification",
                                  "token-classification": "AutoModelForTokenClassification",
                                  "question-answering": "AutoModelForQuestionAnswering"}[task])


@register("torch")
def _load_torch(info: ModelInfo, task: str, label_names: list[str] | None = None,
                attn_implementation: str | None = None) -> Any:
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        if attn_implementation == "xlmr_triton":
            from .attention import register as register_triton

            register_triton()
        kwargs["attn_implementation"] = attn_implementation
    if label_names:
        kwargs.update(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                      label2id={n: i for i, n in enumerate(label_names)})
    return auto_class(task).from_pretrained(str(info.path), **kwargs).eval()


@register("torch-pruned")
def _load_pruned(info: ModelInfo, task: str, label_names: list[str] | None = None,
                 attn_implementation: str | None = None) -> Any:
    """Rebuild the pruned shapes that stock from_pretrained cannot express, then load the safetensors strictly."""
    from safetensors.torch import load_file

    from .surgery import resize_layers

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = auto_class(task).from_config(info.config, **kwargs)
    resize_layers(model, info.shapes)
    missing, unexpected = model.load_state_dict(load_file(str(info.path / SAFETENSORS)), strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise UserError(f"{info.path}: weights do not match the pruned shapes in config.json "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]}): re-run the pruning stage")
    return model.eval()


# --- writing: atomic output directories and the compression.json lineage ----------------------------------------

def version() -> str:
    """The installed xlmr-compress version, recorded in every lineage entry."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("xlmr-compress")
    except PackageNotFoundError:
        return "0+unknown"


def check_output(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output path that would clobber something, before any long work starts."""
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is a file: choose a directory path for --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output directory {out} already exists and is not empty: remove it or pass --overwrite")
    return out


@contextmanager
def atomic_output(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `out_dir`; rename it to `out_dir` only if the block succeeds."""
    out = check_output(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def save_model(model: Any, tokenizer: Any, out_dir: str | Path) -> None:
    """Write torch weights as safetensors, the config and the fast tokenizer: a self-contained directory."""
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def read_lineage(model_dir: str | Path) -> dict:
    """The compression.json of a directory, or an empty lineage for a model we did not write."""
    path = Path(model_dir) / LINEAGE
    if not path.is_file():
        return {"stages": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}): restore it or delete it") from None


def size_on_disk(model_dir: str | Path) -> int:
    """Bytes of the weight files (safetensors, ONNX graph and external data) of a model directory."""
    d = Path(model_dir)
    return sum((d / f).stat().st_size for f in WEIGHT_FILES if (d / f).is_file())


def count_parameters(model: Any) -> int:
    """Number of parameters of a torch model."""
    return sum(p.numel() for p in model.parameters())


def record_stage(out_dir: str | Path, stage: str, options: dict, parent: str | Path | None = None,
                 metrics: dict | None = None, model: Any = None) -> dict:
    """Append one stage to the lineage inherited from `parent` and write it to out_dir/compression.json."""
    lineage = read_lineage(parent) if parent is not None and Path(parent).is_dir() else {"stages": []}
    measured: dict[str, Any] = {"bytes_on_disk": size_on_disk(out_dir)}
    if model is not None:
        measured["parameters"] = count_parameters(model)
    measured.update(metrics or {})
    lineage["stages"].append({
        "stage": stage,
        "options": _jsonable(options),
        "parent": str(Path(parent).resolve()) if parent is not None and Path(parent).exists() else parent,
        "version": version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "measured": _jsonable(measured),
    })
    (Path(out_dir) / LINEAGE).write_text(json.dumps(lineage, indent=2, ensure_ascii=False) + "\n")
    return lineage


def _jsonable(obj: Any) -> Any:
    """Options and metrics as plain JSON values (paths and dataclass-ish objects become strings)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)
