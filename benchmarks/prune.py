"""Figures for pruning and vocabulary trimming, written to benchmarks/RESULTS.md.

    python -m benchmarks.prune vocab                    # xlm-roberta-base shape trimmed to UMSAB train text
    python -m benchmarks.prune heads --teacher DIR      # 30% heads + 40% FFN off a fine-tuned teacher, recovered

vocab: a randomly initialised model of xlm-roberta-base's shape with XLM-R's real tokenizer is trimmed to the
UMSAB training text; reports kept vocabulary, bytes on disk before and after, the share of UMSAB test tokens the
trimmed vocabulary covers, and the largest logit difference on every test text made only of kept pieces.
heads: prunes the teacher with Taylor importance on its training data, recovers by fine-tuning, and measures
test macro-F1 (teacher, pruned, recovered) and CPU latency of teacher and pruned model, timed interleaved.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import XLMRobertaTokenizerFast

from benchmarks import SHARED
from benchmarks.models import random_base
from benchmarks.results import update_section
from xlmr_compress import (
    DataConfig,
    PruneConfig,
    TaskData,
    TrimConfig,
    evaluate,
    load,
    load_data,
    percentiles_ms,
    prune,
    read_lineage,
    time_round_robin,
    trim_vocab,
)


def max_logit_diff(a_dir: Path, b_dir: Path, texts: list[str], batch_size: int = 32) -> float:
    """Largest |logit difference| of two models (each with its own tokenizer) over texts, in length-sorted batches."""
    (a, a_tok), (b, b_tok) = load(a_dir), load(b_dir)
    texts = sorted(texts, key=len)
    worst = 0.0
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            out = [m(**t(chunk, padding=True, truncation=True, max_length=512, return_tensors="pt")).logits
                   for m, t in ((a, a_tok), (b, b_tok))]
            worst = max(worst, (out[0] - out[1]).abs().max().item())
    return worst


def vocab_figure(work: Path, quick: bool) -> str:
    """Trim a base-size XLM-R to UMSAB train text; sizes, coverage and logit parity on kept test texts."""
    base = work / "xlmr-base-random"
    if not base.is_dir():
        random_base(base, num_labels=3)
    data = load_data(DataConfig(str(SHARED / "data" / "umsab_sentiment"), max_per_split=400 if quick else None))
    trimmed = trim_vocab(base, work / "xlmr-base-umsab", TrimConfig(splits=["train"], overwrite=True), data=data)
    m = read_lineage(trimmed)["stages"][-1]["measured"]

    original_tok, trimmed_tok = XLMRobertaTokenizerFast(tokenizer_file=str(base / "tokenizer.json")), \
        XLMRobertaTokenizerFast(tokenizer_file=str(trimmed / "tokenizer.json"))
    kept = set(trimmed_tok.get_vocab())
    texts = [t for t in data.split("test")["text"] if t]
    only_kept = [t for t in texts if set(original_tok.tokenize(t)) <= kept]
    same_pieces = all(trimmed_tok.tokenize(t) == original_tok.tokenize(t) for t in only_kept)
    diff = max_logit_diff(base, trimmed, only_kept)
    smaller = 1 - m["bytes_after"] / m["bytes_before"]
    return "\n".join([
        (f"Model: xlm-roberta-base shape (12 x 768, FFN 3072), random weights, fp32, XLM-R's real tokenizer; "
         f"trimmed to the UMSAB train text ({len(data.splits['train'])} tweets, 8 languages)."),
        "",
        "| figure | value |", "|---|---|",
        f"| vocabulary kept | {m['vocabulary_after']:,} of {m['vocabulary_before']:,} pieces |",
        f"| model.safetensors before | {m['bytes_before']:,} bytes |",
        f"| model.safetensors after | {m['bytes_after']:,} bytes ({smaller:.1%} smaller) |",
        f"| coverage of UMSAB test tokens | {m['coverage']['test']:.2%} "
        f"(validation {m['coverage']['validation']:.2%}) |",
        f"| test texts made only of kept pieces | {len(only_kept):,} of {len(texts):,} |",
        f"| ... same pieces as the original tokenizer | {'all' if same_pieces else 'NOT all'} |",
        f"| ... max abs logit difference vs the original | {diff:.2e} |",
    ])


def latency_ms(models: dict[str, torch.nn.Module], batch: int, length: int, repeats: int) -> dict[str, float]:
    """Median forward time in ms of each model on one fixed-shape batch, the models timed interleaved."""
    ids = torch.randint(5, min(1000, *(m.config.vocab_size for m in models.values())), (batch, length))
    mask = torch.ones_like(ids)
    calls = {name: (lambda _, m=m: m(input_ids=ids, attention_mask=mask)) for name, m in models.items()}
    with torch.inference_mode():
        times = time_round_robin(calls, warmup=2, repeats=repeats)
    return {name: percentiles_ms(t)["p50_ms"] for name, t in times.items()}


def test_macro_f1(model_dir: Path, data: TaskData, recorded: bool) -> float:
    """Test macro-F1: the one the stage that wrote the directory recorded on this data, else evaluated now."""
    stages = read_lineage(model_dir)["stages"]
    if recorded and stages and "test" in stages[-1]["measured"]:
        return stages[-1]["measured"]["test"]["overall"]["macro_f1"]
    return evaluate(model_dir, data, "test", max_length=96)["overall"]["macro_f1"]


def heads_figure(work: Path, teacher: Path, data_path: str, quick: bool, epochs: float, threads: int) -> str:
    """Prune 30% heads + 40% FFN neurons with recovery; macro-F1 kept and CPU latency ratio in one run."""
    data = load_data(DataConfig(data_path, max_per_split=200 if quick else None))
    for split, n in (("train", 4000), ("validation", 1000)):  # the teacher's seeded subsets (benchmarks/teacher.py)
        if n < len(data.splits[split]):
            data.splits[split] = data.splits[split].shuffle(seed=0).select(range(n))
    common = {"heads": 0.3, "ffn": 0.4, "importance": "taylor", "batch_size": 32, "max_length": 96, "overwrite": True}
    pruned = prune(teacher, work / "pruned", PruneConfig(**common), data=data)
    recovered = prune(teacher, work / "recovered", PruneConfig(**common, recover=True, recover_epochs=epochs,
                                                               recover_learning_rate=1e-4), data=data)
    # the teacher (full test split) and the recovered model were evaluated when written, with max_length 96 too
    f1 = {"teacher": test_macro_f1(teacher, data, recorded=not quick),
          "pruned": test_macro_f1(pruned, data, recorded=False),
          "recovered": test_macro_f1(recovered, data, recorded=True)}

    torch.set_num_threads(threads)
    (t_model, _), (p_model, _) = load(teacher), load(recovered)
    shapes = json.loads((recovered / "config.json").read_text())["xlmr_compress"]
    rows = []
    for batch, length in ((1, 128), (32, 64)):
        ms = latency_ms({"teacher": t_model, "pruned": p_model}, batch, length, 5 if quick else 20)
        rows.append(f"| {batch} x {length} | {ms['teacher']:.1f} | {ms['pruned']:.1f} | "
                    f"{ms['pruned'] / ms['teacher']:.2f} |")
    encoder = [sum(p.numel() for p in m.base_model.encoder.parameters()) for m in (t_model, p_model)]
    parameters = [sum(p.numel() for p in m.parameters()) for m in (t_model, p_model)]
    return "\n".join([
        (f"Teacher: `{teacher}`; data: `{data_path}` ({len(data.splits['train'])} train, {len(data.splits['test'])} "
         f"test). Pruned with Taylor importance (Michel et al.) on 32 x 32 train examples, 30% of heads and 40% of "
         f"FFN neurons per layer; recovery: distillation from the unpruned teacher (logits + hidden states), "
         f"{epochs} epoch(s), lr 1e-4, frozen embeddings."),
        "",
        (f"Kept per layer: heads {shapes['heads']}, FFN {shapes['ffn']}. Encoder parameters {encoder[0]:,} -> "
         f"{encoder[1]:,}; all parameters {parameters[0]:,} -> {parameters[1]:,}."),
        "",
        "| model | test macro-F1 | share of teacher |", "|---|---|---|",
        *[f"| {name} | {v:.4f} | {v / f1['teacher']:.1%} |" for name, v in f1.items()],
        "",
        f"CPU latency (torch eager fp32, {threads} threads, median of {5 if quick else 20} interleaved rounds):",
        "",
        "| batch x tokens | teacher ms | pruned ms | ratio |", "|---|---|---|---|", *rows,
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("figure", choices=["vocab", "heads"])
    ap.add_argument("--work", default="runs/prune-bench", help="where the model directories go")
    ap.add_argument("--teacher", default="runs/teacher-sib200", help="fine-tuned teacher directory (heads)")
    ap.add_argument("--data", default=str(SHARED / "data" / "sib200"), help="the teacher's task data (heads)")
    ap.add_argument("--epochs", type=float, default=1.0, help="recovery epochs (heads)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for the latency figure (heads)")
    ap.add_argument("--quick", action="store_true", help="small subsets: check the script, do not publish")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.figure == "vocab":
        body = vocab_figure(work, a.quick)
        title = "Vocabulary trimming: xlm-roberta-base shape, UMSAB"
    else:
        body = heads_figure(work, Path(a.teacher), a.data, a.quick, a.epochs, a.threads)
        title = "Head + FFN pruning with recovery"
    print(body)
    if not a.quick:
        update_section(f"prune-{a.figure}", title, body)


if __name__ == "__main__":
    main()
