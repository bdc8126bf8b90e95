"""The measuring harness behind `xlmr-compress bench`: latency percentiles, throughput, peak memory, size on disk and
FLOPs against this machine's measured matmul ceiling, for any set of model directories (torch or ONNX), joined with
accuracy into one table and an accuracy-latency Pareto plot.

Variants are timed round-robin after a warm-up, the first variant of each round rotating, so drift in a shared
machine's load hits all of them alike; every figure is also quoted as a ratio to a baseline variant of the same run.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from . import artifact, modeling
from . import data as data_mod
from .errors import UserError
from .metrics import MAIN_METRIC
from .runtime import Predictor, check_device, evaluate

QUICK_EXAMPLES = 100  # examples evaluated (and sampled for lengths) by --quick
MIB = 2**20


@dataclass
class BenchConfig:
    """What to time (devices, threads, batch sizes, lengths), how long, and against which baseline."""

    devices: list[str] = field(default_factory=lambda: ["cpu"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    seq_lengths: list[int] = field(default_factory=lambda: [128])
    data_lengths: bool = True  # with data: also time batches drawn from its real length distribution
    threads: list[int] | None = None  # CPU threads (default: torch's current count, i.e. OMP_NUM_THREADS)
    warmup: int = 3
    repeats: int = 30
    memory: bool = True  # peak memory of each variant, measured in a fresh child process
    cuda_graphs: bool = False  # replay captured CUDA graphs for fixed-shape torch batches
    baseline: str | None = None  # variant name every ratio refers to (default: the first directory)
    split: str = "test"
    max_length: int = 128
    seed: int = 0
    quick: bool = False  # smoke run: see quick()


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


@dataclass
class BenchResult:
    """Rows per variant and setting, accuracy per variant, the measured ceilings; the table and plot built on them."""

    rows: list[dict]  # one per variant x setting, in setting order
    accuracy: dict[str, dict]  # variant -> runtime.evaluate() result (empty without data)
    ceilings: list[dict]  # device, threads, precision, gflop_per_s
    baseline: str
    metric: str | None  # main metric of the data's task
    task_summary: str = ""

    @property
    def primary(self) -> list[dict]:
        """The rows of the first setting (real lengths when data was given): the accuracy-latency table's rows."""
        first = self.rows[0]["setting"]
        return [r for r in self.rows if r["setting"] == first]

    def summary(self) -> list[dict]:
        """Accuracy-latency table: one row per variant at the primary setting, metrics and ratios to the baseline."""
        base = self.accuracy.get(self.baseline, {}).get("overall", {})
        table = []
        for r in self.primary:
            row = {k: r[k] for k in SUMMARY_COLUMNS if k in r}
            overall = self.accuracy.get(r["variant"], {}).get("overall", {})
            for name, value in overall.items():
                row[name] = value
            if self.metric in overall:
                row[f"{self.metric}_delta"] = overall[self.metric] - base[self.metric]
            table.append(row)
        return table

    def per_language(self) -> list[dict]:
        """The main metric per language (rows) and variant (columns)."""
        languages = sorted({lang for a in self.accuracy.values() for lang in a.get("per_language", {})})
        return [{"language": lang, **{v: a["per_language"].get(lang, {}).get(self.metric)
                                      for v, a in self.accuracy.items()}} for lang in languages]

    def markdown(self) -> str:
        """All tables as Markdown: accuracy-latency (if data), every setting, per language, the ceilings."""
        parts = []
        if self.accuracy:
            parts.append(f"Accuracy and latency at {self.rows[0]['setting']} ({self.task_summary}; ratios and "
                         f"deltas against `{self.baseline}`):\n\n" + markdown_table(self.summary()))
        parts.append("Latency, throughput, memory and FLOPs per setting:\n\n"
                     + markdown_table([{k: r[k] for k in LATENCY_COLUMNS} for r in self.rows]))
        if self.accuracy:
            parts.append(f"{self.metric} per language:\n\n" + markdown_table(self.per_language()))
        parts.append("Matmul ceilings measured in this run (best of the timed square matmuls):\n\n"
                     + markdown_table(self.ceilings))
        return "\n\n".join(parts) + "\n\n" + NOTES

    def write(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """results.md, CSV tables, results.json and (with accuracy) pareto.png, written atomically to out_dir."""
        with artifact.atomic_output(out_dir, overwrite) as tmp:
            (tmp / "results.md").write_text(self.markdown())
            write_csv([{k: r[k] for k in LATENCY_COLUMNS} for r in self.rows], tmp / "latency.csv")
            if self.accuracy:
                write_csv(self.summary(), tmp / "accuracy_latency.csv")
                write_csv(self.per_language(), tmp / "per_language.csv")
                plot_pareto(self.summary(), self.metric, tmp / "pareto.png", self.rows[0]["setting"])
            (tmp / "results.json").write_text(json.dumps(
                {"baseline": self.baseline, "metric": self.metric, "rows": self.rows, "accuracy": self.accuracy,
                 "ceilings": self.ceilings}, indent=2, ensure_ascii=False, default=str) + "\n")
        return Path(out_dir)


LATENCY_COLUMNS = ("variant", "backend", "precision", "setting", "p50_ms", "p90_ms", "p99_ms", "speedup",
                   "seq_per_s", "tokens_per_s", "peak_mib", "model_mib", "memory_ratio", "size_mib", "size_ratio",
                   "gflop_per_seq", "gflop_per_s", "ceiling_pct")
SUMMARY_COLUMNS = ("variant", "backend", "precision", "size_mib", "size_ratio", "p50_ms", "p99_ms", "speedup",
                   "seq_per_s", "model_mib", "memory_ratio", "gflop_per_seq", "ceiling_pct")
NOTES = (
    "Columns: p50/p90/p99 latency per batch; speedup = baseline p50 / p50; seq/s and tokens/s (real, unpadded "
    "tokens) over all timed rounds; peak_mib = peak resident memory of a fresh process that loads the variant and "
    "runs the largest batch (GPU: allocated device memory), model_mib = that peak minus the process before loading; "
    "size on disk counts weight files only; gflop_per_seq = forward FLOPs (2 x multiply-adds of every matmul, "
    "attention included, padding included) per sequence; ceiling_pct = achieved GFLOP/s over this machine's "
    "measured matmul ceiling of the variant's precision."
)


def quick(config: BenchConfig) -> BenchConfig:
    """The one-minute smoke run: 5 rounds, batch 1 at 64 tokens (and real lengths), no memory children."""
    return replace(config, repeats=min(config.repeats, 5), warmup=min(config.warmup, 1), batch_sizes=[1],
                   seq_lengths=[64], memory=False)


def bench(model_dirs: list[str | Path], config: BenchConfig | None = None,
          data: data_mod.TaskData | data_mod.DataConfig | str | None = None) -> BenchResult:
    """Time, size, and (with data) evaluate every model directory, interleaved, on every device and setting."""
    config = config or BenchConfig()
    config = quick(config) if config.quick else config
    check_config(config, model_dirs)
    dirs = [Path(d) for d in model_dirs]
    names = variant_names(dirs)
    baseline = config.baseline or names[0]
    if baseline not in names:
        raise UserError(f"baseline {baseline!r} is not one of the variants ({', '.join(names)}): pass a variant name")
    for device in config.devices:
        check_device(device)
    task_data = load_split(data, config) if data is not None else None
    threads_list = config.threads or [torch.get_num_threads()]
    variants = dict(zip(names, dirs, strict=True))
    sizes = {n: artifact.size_on_disk(d) for n, d in variants.items()}
    configs = {n: modeling.load_config(d) for n, d in variants.items()}
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
                                               features=features[n])
                torch.set_num_threads(threads)
                precision = {n: precision_of(d, predictors[n]) for n, d in variants.items()}
                for setting in settings_of(config, device, threads, task_data is not None):
                    batches = {n: batches_for(setting, p, features.get(n), config) for n, p in predictors.items()}
                    calls = {n: runner(p, batches[n], setting, config.cuda_graphs) for n, p in predictors.items()}
                    log(f"{setting.label}: {config.warmup} warm-up + {config.repeats} timed rounds of {len(calls)} "
                        "variants")
                    times = time_round_robin(calls, config.warmup, config.repeats, device)
                    for n in names:
                        rows.append(latency_row(n, predictors[n], precision[n], setting, times[n], batches[n],
                                                configs[n], sizes[n]))
                        if threads == threads_list[0]:
                            memory_batches.setdefault((n, device), []).append((setting, largest(batches[n])))
                    log(f"{setting.label}: p50 " + ", ".join(f"{r['variant']} {r['p50_ms']:.2f} ms"
                                                             for r in rows[-len(names):]))
                del predictors
        ceilings = measure_ceilings(rows)
    finally:
        torch.set_num_threads(previous_threads)
    if config.memory:
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
    """Short unique names: the directory name, or parent/name where two directories share a name."""
    names = [d.resolve().name for d in dirs]
    names = [f"{d.resolve().parent.name}/{n}" if names.count(n) > 1 else n
             for d, n in zip(dirs, names, strict=True)]
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
    return data_mod.encode(task_data, config.split, predictor.tokenizer, config.max_length,
                           label_names=predictor.label_names or None)


def settings_of(config: BenchConfig, device: str, threads: int, with_data: bool) -> list[Setting]:
    """Every batch size with the data's real lengths first (when given), then each fixed length."""
    lengths: list[int | None] = ([None] if with_data and config.data_lengths else []) + list(config.seq_lengths)
    if not lengths:
        raise UserError("nothing to time: give --seq-lengths, or --data with --data-lengths")
    return [Setting(device, threads, b, s) for b in config.batch_sizes for s in lengths]


def precision_of(model_dir: Path, predictor: Predictor) -> str:
    """int8, fp16, bf16 or fp32: what the weights of an ONNX graph or a torch model are stored in."""
    if predictor.backend == "onnx":
        import onnx

        graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
        types = {init.data_type for init in graph.initializer}
        if types & {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}:
            return "int8"
        return "fp16" if onnx.TensorProto.FLOAT16 in types else "fp32"
    if any("quantized" in type(m).__module__ for m in predictor.model.modules()):
        return "int8"
    dtype = next((p.dtype for p in predictor.model.parameters() if p.is_floating_point()), torch.float32)
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")


# --- inputs and timing ------------------------------------------------------------------------------------------


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


def time_round_robin(calls: dict[str, Callable[[int], Any]], warmup: int, repeats: int,
                     device: str = "cpu") -> dict[str, np.ndarray]:
    """Seconds per call of each variant: warm-up, then `repeats` rounds calling each once, rotating the first."""
    for call in calls.values():
        for r in range(warmup):
            call(r)
    names = list(calls)
    times = {n: np.empty(repeats) for n in names}
    for r in range(repeats):
        shift = r % len(names)
        for n in names[shift:] + names[:shift]:
            times[n][r] = timed(calls[n], warmup + r, device)
    return times


def timed(call: Callable[[int], Any], r: int, device: str) -> float:
    """Seconds of one call; on CUDA between events after synchronising (the call copies its outputs to the host)."""
    if device.startswith("cuda"):
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call(r)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    call(r)
    return time.perf_counter() - start_s


# --- FLOPs and the machine's ceiling ----------------------------------------------------------------------------


def flops_per_sequence(config: Any, length: int) -> float:
    """Forward FLOPs of one sequence of `length` tokens: 2 x multiply-adds of every matmul, attention included,
    with per-layer heads and FFN widths of a pruned model (the embedding lookup does no matmul)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    shapes = getattr(config, modeling.SHAPES_KEY, None) or {}
    head_size = shapes.get("head_size", hidden // config.num_attention_heads)
    heads = shapes.get("heads", [config.num_attention_heads] * layers)
    ffn = shapes.get("ffn", [config.intermediate_size] * layers)
    macs = 0
    for h, width in zip(heads, ffn, strict=True):
        attention = h * head_size
        macs += 4 * length * hidden * attention  # query, key, value and output projections
        macs += 2 * length * length * attention  # scores and the weighted sum of values
        macs += 2 * length * hidden * width  # FFN in and out
    task = modeling.task_of(config)
    if task == "sequence-classification":  # dense + out_proj on the first token
        macs += hidden * hidden + hidden * config.num_labels
    else:
        macs += length * hidden * (2 if task == "question-answering" else config.num_labels)
    return 2.0 * macs


def batch_flops(config: Any, batch: dict) -> float:
    """FLOPs the model executes on a padded batch (padding positions are computed too)."""
    rows, width = batch["input_ids"].shape
    return rows * flops_per_sequence(config, width)


def matmul_ceiling(device: str = "cpu", threads: int | None = None, precision: str = "fp32",
                   repeats: int = 30) -> float:
    """This machine's matmul peak in GFLOP/s (GOP/s for int8): best of `repeats` square matmuls after a warm-up.
    fp32/fp16/bf16 with torch; int8 with ONNX Runtime's MatMulInteger, the kernel its int8 graphs run."""
    size = 4096 if device.startswith("cuda") else 1024
    if threads:
        torch.set_num_threads(threads)
    if precision == "int8":
        call = _ort_int8_matmul(size, device, threads)
    else:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))

        def call(_: int) -> torch.Tensor:
            return torch.mm(a, b)
    for _ in range(2):
        timed(call, 0, device)
    return 2 * size**3 / min(timed(call, 0, device) for _ in range(repeats)) / 1e9


def _ort_int8_matmul(size: int, device: str, threads: int | None) -> Callable[[int], Any]:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from .runtime import onnx_providers

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-128, 128, (size, size), dtype=np.int8), "B")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "matmul_int8",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])], [weight])
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
                                   .SerializeToString(), options, providers=onnx_providers(device))
    a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return lambda _: session.run(None, {"A": a})


def measure_ceilings(rows: list[dict]) -> list[dict]:
    """The matmul ceiling of every (device, threads, precision) the rows ran at."""
    keys = sorted({(r["device"], r["threads"], r["precision"]) for r in rows})
    ceilings = []
    for device, threads, precision in keys:
        log(f"measuring the {precision} matmul ceiling on {device}")
        ceilings.append({"device": device, "threads": threads, "precision": precision,
                         "gflop_per_s": matmul_ceiling(device, threads, precision)})
    return ceilings


# --- memory (in a child process) --------------------------------------------------------------------------------


def peak_memory(model_dir: str | Path, device: str, threads: int, batches: list[dict]) -> tuple[float, list[float]]:
    """(MiB before loading, peak MiB after each batch) of a fresh Python process that loads the variant and runs the
    batches in the given order (smallest first: the CPU figure is a high-water mark)."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "batches.npz"
        np.savez(inputs, **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        code = "import sys; from xlmr_compress.bench import _peak_memory_child as f; f(*sys.argv[1:])"
        proc = subprocess.run([sys.executable, "-c", code, str(model_dir), device, str(threads), str(inputs)],
                              capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(f"the memory measurement of {model_dir} failed:\n{proc.stderr[-3000:]}")
    base, peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    return base, peaks


def _peak_memory_child(model_dir: str, device: str, threads: str, inputs: str) -> None:
    """The child's side of peak_memory: prints [base, [peaks]] as the last line of its output."""
    import onnxruntime  # noqa: F401  the runtimes belong to the process's base, not to the variant

    arrays = np.load(inputs)
    batches = [{k: arrays[f"{i}/{k}"] for k in ("input_ids", "attention_mask")} for i in range(len(arrays.files) // 2)]
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.init()
        free, total = torch.cuda.mem_get_info(device)
    base = (total - free) / MIB if cuda else _resident_mib("VmRSS")
    if not cuda:
        Path("/proc/self/clear_refs").write_text("5")  # restart the high-water mark from here (Linux >= 4.0)
    predictor = Predictor.load(model_dir, device=device, threads=int(threads))
    peaks = []
    for batch in batches:
        if cuda and predictor.backend == "torch":
            torch.cuda.reset_peak_memory_stats(device)
        predictor(batch)
        if cuda and predictor.backend == "torch":
            peaks.append(base + torch.cuda.max_memory_allocated(device) / MIB)
        elif cuda:  # ONNX Runtime's arena only grows: device memory in use is its high-water mark
            free, total = torch.cuda.mem_get_info(device)
            peaks.append((total - free) / MIB)
        else:
            peaks.append(_resident_mib("VmHWM"))
    print(json.dumps([base, peaks]))


def _resident_mib(field: str) -> float:
    """VmRSS (resident now) or VmHWM (high-water mark) of this process, in MiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


def fill_memory(rows: list[dict], batches: dict[tuple[str, str], list[tuple[Setting, dict]]],
                dirs: dict[str, Path]) -> None:
    """Peak and variant memory of each row: one child process per variant and device (first thread count), run
    concurrently after all timing is done (a process's own peak does not depend on its neighbours)."""
    ordered = {key: sorted(entries, key=lambda e: e[1]["input_ids"].size) for key, entries in batches.items()}
    log(f"measuring peak memory of {len(ordered)} variants, each in a child process")
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        results = {(name, device): pool.submit(peak_memory, dirs[name], device, entries[0][0].threads,
                                               [b for _, b in entries])
                   for (name, device), entries in ordered.items()}
    for (name, device), entries in ordered.items():
        base, peaks = results[name, device].result()
        peak_of = {(s.batch_size, s.seq_length or "data"): peak
                   for (s, _), peak in zip(entries, peaks, strict=True)}
        for row in rows:  # every thread count gets the figure measured at the first
            peak = peak_of.get((row["batch"], row["tokens"]))
            if row["variant"] == name and row["device"] == device and peak is not None:
                row["peak_mib"], row["model_mib"] = peak, peak - base


# --- rows, ratios, tables, plot ---------------------------------------------------------------------------------


def latency_row(name: str, predictor: Predictor, precision: str, setting: Setting, times: np.ndarray,
                batches: list[dict], config: Any, size: int) -> dict:
    """Latency percentiles, throughput and FLOPs of one variant in one setting (ratios are added later)."""
    rounds = batches[-len(times):] if len(batches) > 1 else batches * len(times)  # the timed rounds' batches
    total = float(times.sum())
    sequences = sum(b["input_ids"].shape[0] for b in rounds)
    flops = sum(batch_flops(config, b) for b in rounds)
    return {
        "variant": name, "backend": predictor.backend, "precision": precision, "setting": setting.label,
        "device": setting.device, "threads": setting.threads, "batch": setting.batch_size,
        "tokens": setting.seq_length or "data",
        "p50_ms": float(np.percentile(times, 50) * 1e3), "p90_ms": float(np.percentile(times, 90) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
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


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, metric) points that no other point beats (no slower and no worse), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    for i in order:
        if not front or points[i][1] > points[front[-1]][1]:
            front.append(i)
    return front


def plot_pareto(rows: list[dict], metric: str, path: str | Path, setting: str = "") -> Path:
    """PNG: latency p50 on x, the metric on y, marker area proportional to size on disk, the frontier drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["p50_ms"] for r in rows]
    y = [r[metric] for r in rows]
    largest_size = max(r["size_mib"] for r in rows) or 1.0
    area = [30 + 1500 * r["size_mib"] / largest_size for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter(x, y, s=area, alpha=0.5, edgecolors="black")
    for r, xi, yi in zip(rows, x, y, strict=True):
        ax.annotate(f"{r['variant']}\n{r['size_mib']:.0f} MiB", (xi, yi), textcoords="offset points", xytext=(6, 6),
                    fontsize=8)
    front = pareto_front(list(zip(x, y, strict=True)))
    ax.step([x[i] for i in front], [y[i] for i in front], where="post", color="tab:red", label="Pareto frontier")
    if max(x) > 10 * min(x):
        ax.set_xscale("log")
    ax.set_xlabel(f"latency p50 (ms per batch){', ' + setting if setting else ''}")
    ax.set_ylabel(metric)
    ax.set_title("accuracy against latency (marker area: size on disk)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of dict rows (columns from the first row), numbers rounded for reading."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "–"
    if not isinstance(value, float):
        return str(value)
    if column.endswith(("speedup", "ratio")):
        return f"{value:.2f}x"
    if column.endswith("_delta"):
        return f"{value:+.4f}"
    if column.endswith(("_pct", "_mib", "_per_s")):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"
    if column.endswith("_ms") or column.startswith("gflop"):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value:.4f}"


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Rows as CSV (columns from the first row), full precision."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def log(message: str) -> None:
    """Progress on stdout while a long benchmark runs."""
    print(f"[bench] {message}", flush=True)
