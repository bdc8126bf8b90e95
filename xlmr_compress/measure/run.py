"""One benchmark run: check the inputs, evaluate each variant (with data), then on every device, thread count and
setting build each variant's batches (fixed shapes or the data's real lengths, optionally as CUDA-graph replays),
time them interleaved, and turn the times into rows with FLOPs, ceilings, memory and ratios to the baseline."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from .. import data as data_mod
from .. import directory
from ..configs import BenchConfig
from ..errors import UserError
from ..metrics import MAIN_METRIC
from ..runtime import Predictor, check_device, evaluate
from .cost import batch_flops, matmul_ceiling
from .memory import MIB, fill_memory
from .report import BenchResult
from .timing import percentiles_ms, time_round_robin

QUICK_EXAMPLES = 100  # examples evaluated (and sampled for lengths) by --quick


@dataclass(frozen=True)
class Setting:
    """One timed configuration; seq_length None means batches drawn from the data set's real lengths."""

    device: str
    threads: int
    batch_size: int
    seq_length: int | None

    @property
    def label(self) -> str:
        tokens = "data lengths" if self.seq_length is None else f"{self.seq_length} tokens"
        threads = f", {self.threads} threads" if self.device == "cpu" else ""
        return f"{self.device}{threads}, batch {self.batch_size}, {tokens}"


def quick(config: BenchConfig) -> BenchConfig:
    """The one-minute smoke run: 5 rounds, batch 1 at 64 tokens (and real lengths), no memory children."""
    return replace(config, repeats=min(config.repeats, 5), warmup=min(config.warmup, 1), batch_sizes=[1],
                   seq_lengths=[64], memory=False)


def run_bench(models: str | Path | list[str | Path], config: BenchConfig | None = None,
              data: data_mod.TaskData | data_mod.DataConfig | str | None = None) -> BenchResult:
    """Time, size, and (with data) evaluate every model directory, interleaved, on every device and setting."""
    config = config or BenchConfig()
    config = quick(config) if config.quick else config
    dirs = [Path(models)] if isinstance(models, (str, Path)) else [Path(d) for d in models]
    check_config(config, dirs)
    names = variant_names(dirs)
    baseline = config.baseline or names[0]
    if baseline not in names:
        raise UserError(f"baseline {baseline!r} is not one of the variants ({', '.join(names)}): pass a variant name")
    variants = dict(zip(names, dirs, strict=True))
    infos = {n: directory.inspect(d) for n, d in variants.items()}
    for device in config.devices:
        check_device(device)
    task_data = load_split(data, config) if data is not None else None
    threads_list = config.threads or [torch.get_num_threads()]
    sizes = {n: directory.size_on_disk(d) for n, d in variants.items()}
    rows: list[dict] = []
    accuracy: dict[str, dict] = {}
    features: dict[str, Any] = {}
    memory_batches: dict[tuple[str, str], list[tuple[Setting, dict]]] = {}
    previous_threads = torch.get_num_threads()
    try:
        for device in config.devices:
            for threads in threads_list:
                log(f"loading {len(dirs)} variants on {device}" + (f" ({threads} threads)" if device == "cpu" else ""))
                predictors = {n: Predictor.load(d, device=device, threads=threads) for n, d in variants.items()}
                if task_data is not None and not features:
                    features = {n: encode_for(p, task_data, config, n) for n, p in predictors.items()}
                if task_data is not None and not accuracy:
                    for n, p in predictors.items():
                        log(f"evaluating {n} on {len(task_data.splits[config.split])} {config.split} examples")
                        accuracy[n] = evaluate(p, task_data, config.split, max_length=config.max_length,
                                               stride=config.stride, features=features[n])
                torch.set_num_threads(threads)
                for setting in settings_of(config, device, threads, task_data is not None):
                    batches = {n: batches_for(setting, p, features.get(n), config) for n, p in predictors.items()}
                    calls = {n: runner(p, batches[n], setting, config.cuda_graphs) for n, p in predictors.items()}
                    log(f"{setting.label}: {config.warmup} warm-up + {config.repeats} timed rounds of {len(calls)} "
                        "variants")
                    times = time_round_robin(calls, config.warmup, config.repeats, device)
                    for n in names:
                        rows.append(latency_row(n, predictors[n].backend, infos[n], setting, times[n], batches[n],
                                                sizes[n]))
                        if threads == threads_list[0]:
                            memory_batches.setdefault((n, device), []).append((setting, largest(batches[n])))
                    log(f"{setting.label}: p50 " + ", ".join(f"{r['variant']} {r['p50_ms']:.2f} ms"
                                                             for r in rows[-len(names):]))
                del predictors
        ceilings = measure_ceilings(rows)
    finally:
        torch.set_num_threads(previous_threads)
    if config.memory:
        log(f"measuring peak memory of {len(memory_batches)} variants, each in a child process")
        fill_memory(rows, memory_batches, variants)
    finish_rows(rows, ceilings, baseline)
    metric = MAIN_METRIC[task_data.task] if task_data is not None else None
    summary = "" if task_data is None else (f"{config.split} split, {len(task_data.splits[config.split])} examples, "
                                            f"{len(task_data.languages(config.split))} languages")
    return BenchResult(rows, accuracy, ceilings, baseline, metric, summary)


def check_config(config: BenchConfig, model_dirs: list) -> None:
    """Refuse empty or out-of-range settings before any model is loaded."""
    if not model_dirs:
        raise UserError("no model directories given: pass at least one")
    if not config.devices or not config.batch_sizes or config.repeats < 1 or config.warmup < 0:
        raise UserError("bench needs at least one device, one batch size, repeats >= 1 and warmup >= 0")
    if any(b < 1 for b in config.batch_sizes) or any(not 2 < s <= data_mod.MAX_LENGTH for s in config.seq_lengths):
        raise UserError(f"batch sizes must be >= 1 and sequence lengths in 3..{data_mod.MAX_LENGTH}: "
                        f"got {config.batch_sizes} and {config.seq_lengths}")
    if config.threads and any(t < 1 for t in config.threads):
        raise UserError(f"thread counts must be >= 1: got {config.threads}")


def variant_names(dirs: list[Path]) -> list[str]:
    """Short unique names: the directory name as given (a symbolic link names its target), or parent/name where two
    directories share a name."""
    paths = [Path(os.path.abspath(d)) for d in dirs]
    names = [p.name for p in paths]
    names = [f"{p.parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]
    if len(set(names)) < len(names):
        raise UserError(f"the same model directory is given twice ({', '.join(names)}): give each variant once")
    return names


def load_split(data: data_mod.TaskData | data_mod.DataConfig | str, config: BenchConfig) -> data_mod.TaskData:
    """The task data reduced to the evaluated split (QUICK_EXAMPLES of it, seeded, with --quick)."""
    task_data = data if isinstance(data, data_mod.TaskData) else data_mod.load_data(data)
    split = task_data.split(config.split)
    if config.quick and len(split) > QUICK_EXAMPLES:
        split = split.shuffle(seed=config.seed).select(range(QUICK_EXAMPLES))
    return data_mod.TaskData(task_data.task, task_data.label_names, datasets.DatasetDict({config.split: split}))


def encode_for(predictor: Predictor, task_data: data_mod.TaskData, config: BenchConfig, name: str) -> Any:
    """The split encoded with the variant's own tokenizer and label order; refuses a task or label mismatch."""
    if task_data.task != predictor.task:
        raise UserError(f"variant {name} has a {predictor.task} head but the data is for {task_data.task}: "
                        "benchmark it on data of its task")
    return data_mod.encode(task_data, config.split, predictor.tokenizer, config.max_length, config.stride,
                           label_names=predictor.label_names or None)


def settings_of(config: BenchConfig, device: str, threads: int, with_data: bool) -> list[Setting]:
    """Every batch size with the data's real lengths first (when given), then each fixed length."""
    lengths: list[int | None] = ([None] if with_data and config.data_lengths else []) + list(config.seq_lengths)
    if not lengths:
        raise UserError("nothing to time: give --seq-lengths, or --data with --data-lengths")
    return [Setting(device, threads, b, s) for b in config.batch_sizes for s in lengths]


# --- input batches ----------------------------------------------------------------------------------------------


def synthetic_batch(tokenizer: Any, batch_size: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """An unpadded batch of random ordinary tokens framed by <s> ... </s> (latency depends on shape, not on ids)."""
    rng = np.random.default_rng(seed)
    ordinary = np.setdiff1d(np.arange(len(tokenizer)), tokenizer.all_special_ids)
    ids = rng.choice(ordinary, (batch_size, length))
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    return {"input_ids": ids.astype(np.int64), "attention_mask": np.ones_like(ids, dtype=np.int64)}


def data_batches(predictor: Predictor, features: Any, batch_size: int, count: int, seed: int = 0) -> list[dict]:
    """`count` batches of examples drawn at random (same draw for every variant), padded as evaluation pads them."""
    rng = np.random.default_rng(seed)
    collate = data_mod.collator(predictor.task, predictor.tokenizer)
    inputs = features.select_columns(["input_ids", "attention_mask"])
    batches = []
    for _ in range(count):
        batch = collate([inputs[int(i)] for i in rng.integers(0, len(features), batch_size)])
        batches.append({k: batch[k].numpy().astype(np.int64) for k in ("input_ids", "attention_mask")})
    return batches


def batches_for(setting: Setting, predictor: Predictor, features: Any, config: BenchConfig) -> list[dict]:
    """The batches one variant runs in a setting: one per round (real lengths) or one fixed-shape batch."""
    if setting.seq_length is None:
        return data_batches(predictor, features, setting.batch_size, config.warmup + config.repeats, config.seed)
    return [synthetic_batch(predictor.tokenizer, setting.batch_size, setting.seq_length, config.seed)]


def largest(batches: list[dict]) -> dict:
    """The batch with the most (padded) tokens: the one that sets peak memory."""
    return max(batches, key=lambda b: b["input_ids"].size)


def runner(predictor: Predictor, batches: list[dict], setting: Setting, cuda_graphs: bool) -> Callable[[int], Any]:
    """A callable running round r's batch; a CUDA-graph replay for fixed-shape torch batches when asked."""
    if cuda_graphs and setting.device.startswith("cuda") and predictor.backend == "torch" and len(batches) == 1:
        return cuda_graph_runner(predictor, batches[0], setting.device)
    return lambda r: predictor(batches[r % len(batches)])


def cuda_graph_runner(predictor: Predictor, batch: dict, device: str) -> Callable[[int], Any]:
    """Capture the model's forward on static inputs once; each call replays it and copies the outputs to the host."""
    static = {k: torch.as_tensor(v).to(device) for k, v in batch.items()}
    model = predictor.model
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm-up outside the graph (allocator, lazy initialisation)
            model(**static)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = model(**static)
    names = [k for k in ("logits", "start_logits", "end_logits") if k in out]
    return lambda r: (graph.replay(), [out[n].float().cpu() for n in names])


# --- rows -------------------------------------------------------------------------------------------------------


def latency_row(name: str, backend: str, info: directory.ModelInfo, setting: Setting, times: np.ndarray,
                batches: list[dict], size: int) -> dict:
    """Latency percentiles, throughput and FLOPs of one variant in one setting (ratios are added later)."""
    rounds = batches[-len(times):] if len(batches) > 1 else batches * len(times)  # the timed rounds' batches
    total = float(times.sum())
    sequences = sum(b["input_ids"].shape[0] for b in rounds)
    flops = sum(batch_flops(info.config, b) for b in rounds)
    return {
        "variant": name, "backend": backend, "precision": info.precision, "setting": setting.label,
        "device": setting.device, "threads": setting.threads, "batch": setting.batch_size,
        "tokens": setting.seq_length or "data", **percentiles_ms(times),
        "seq_per_s": sequences / total, "tokens_per_s": sum(int(b["attention_mask"].sum()) for b in rounds) / total,
        "peak_mib": None, "model_mib": None, "size_mib": size / MIB,
        "gflop_per_seq": flops / sequences / 1e9, "gflop_per_s": flops / total / 1e9,
    }


def finish_rows(rows: list[dict], ceilings: list[dict], baseline: str) -> None:
    """Ratios to the baseline row of the same setting, and the share of the matching matmul ceiling."""
    base = {r["setting"]: r for r in rows if r["variant"] == baseline}
    peak = {(c["device"], c["threads"], c["precision"]): c["gflop_per_s"] for c in ceilings}
    for r in rows:
        b = base[r["setting"]]
        r["speedup"] = b["p50_ms"] / r["p50_ms"]
        r["size_ratio"] = r["size_mib"] / b["size_mib"] if b["size_mib"] else None
        r["memory_ratio"] = r["model_mib"] / b["model_mib"] if r["model_mib"] and b["model_mib"] else None
        r["ceiling_gflop_per_s"] = peak[(r["device"], r["threads"], r["precision"])]
        r["ceiling_pct"] = 100 * r["gflop_per_s"] / r["ceiling_gflop_per_s"]


def measure_ceilings(rows: list[dict]) -> list[dict]:
    """The matmul ceiling of every (device, threads, precision) the rows ran at."""
    keys = sorted({(r["device"], r["threads"], r["precision"]) for r in rows})
    ceilings = []
    for device, threads, precision in keys:
        log(f"measuring the {precision} matmul ceiling on {device}")
        ceilings.append({"device": device, "threads": threads, "precision": precision,
                         "gflop_per_s": matmul_ceiling(device, threads, precision)})
    return ceilings


def log(message: str) -> None:
    """Progress on stdout while a long benchmark runs."""
    print(f"[bench] {message}", flush=True)
