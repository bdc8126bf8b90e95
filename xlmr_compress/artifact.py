"""The model-directory contract: atomic writes, compression.json lineage, size accounting."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

LINEAGE = "compression.json"
WEIGHT_FILES = ("model.safetensors", "model.onnx", "model.onnx_data", "pytorch_model.bin")


def version() -> str:
    """The installed xlmr-compress version, recorded in every lineage entry."""
    from importlib.metadata import PackageNotFoundError, version as _version

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


def record_stage(
    out_dir: str | Path,
    stage: str,
    options: dict,
    parent: str | Path | None = None,
    metrics: dict | None = None,
    model: Any = None,
) -> dict:
    """Append one stage to the lineage inherited from `parent` and write it to out_dir/compression.json."""
    lineage = read_lineage(parent) if parent is not None and Path(parent).is_dir() else {"stages": []}
    measured: dict[str, Any] = {"bytes_on_disk": size_on_disk(out_dir)}
    if model is not None:
        measured["parameters"] = count_parameters(model)
    measured.update(metrics or {})
    lineage["stages"].append(
        {
            "stage": stage,
            "options": _jsonable(options),
            "parent": str(Path(parent).resolve()) if parent is not None and Path(parent).exists() else parent,
            "version": version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "measured": _jsonable(measured),
        }
    )
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
