"""The main job on the embedded default: a teacher fine-tuned from e5-small on multilingual chatterbot topics, then
compressed. Each stage's directory is kept in the work directory, so a later run starts from what exists."""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from importlib import resources
from importlib.resources import as_file, files
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
import yaml

from . import data as data_mod
from .configs import DemoConfig
from .directory import read_lineage
from .errors import UserError
from .metrics import MAIN_METRIC, compute_metrics

TRAIN_EXAMPLES = 3000  # sized, with demo.yaml, so that `make demo` fits 20 minutes on 2 CPU cores, environment included
# The new head learns at 1e-2 while the encoder moves at 1e-4: one rate for both can leave the teacher at the majority
# class, depending on the head's random start (README, "The demo").
TEACHER_CONFIG = dict(epochs=2, batch_size=32, learning_rate=1e-4, head_learning_rate=1e-2, max_length=48,
                      freeze_embeddings=True, seed=0, logging_steps=50, resume=True)
TEACHER_MARGIN = 0.2  # in the main metric, over the majority class: what "clearly beats the baseline" means
RECIPE = files("xlmr_compress.compression") / "demo.yaml"


def stage(workdir: Path, name: str, build: Callable[[Path], object]) -> Path:
    """Run one stage into workdir/name unless a previous run already wrote it."""
    out = workdir / name
    if out.is_dir():
        print(f"[demo] {name}: cached at {out}")
        return out
    print(f"[demo] {name}: building {out}")
    start = time.perf_counter()
    build(out)
    print(f"[demo] {name}: done in {time.perf_counter() - start:.0f} s")
    return out


def majority_baseline(data: data_mod.TaskData, split: str = "test") -> dict:
    """Metrics of always predicting the most frequent training class: the bar a teacher must clearly beat."""
    majority = Counter(data.splits["train"]["label"]).most_common(1)[0][0]
    gold = data_mod.references_of(data, split)
    return compute_metrics(data.task, [majority] * len(gold), gold, data.splits[split]["language"][:], data.label_names)


def check_teacher(teacher: Path, data: data_mod.TaskData, margin: float = TEACHER_MARGIN) -> None:
    """Stop before compressing a teacher that did not clearly beat the majority class on the test split."""
    metric = MAIN_METRIC[data.task]
    got = read_lineage(teacher)["stages"][-1]["measured"]["test"]["overall"][metric]
    baseline = majority_baseline(data)["overall"][metric]
    if got < baseline + margin:
        raise UserError(f"the demo teacher did not learn: test {metric} {got:.4f} against {baseline:.4f} for the "
                        f"majority class (needs +{margin}); delete {teacher} to train it again")


# chatterbot-corpus files name the same topic differently across languages; map each to its English name.
CHATTERBOT_TOPICS = {
    "ia": "ai", "computer": "computers", "coversations": "conversations", "dinero": "money",
    "emociones": "emotion", "emotions": "emotion", "greeting": "greetings", "history_brasil": "history",
    "origen": "botprofile", "perfilbot": "botprofile", "profile": "botprofile", "psicologia": "psychology",
    "sport": "sports",
}
CHATTERBOT_MIN_EXAMPLES = 30
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader is 10x faster when present


def chatterbot(config: data_mod.DataConfig) -> datasets.DatasetDict:
    """The embedded default, registered as the `chatterbot` data source: chatterbot-corpus utterances labelled by
    topic, split 80/10/10 per topic with the config's seed."""
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
    rng = np.random.default_rng(config.seed)
    rows = defaultdict(list)
    for topic in sorted(t for t, examples in by_topic.items() if len(examples) >= CHATTERBOT_MIN_EXAMPLES):
        examples = [by_topic[topic][i] for i in rng.permutation(len(by_topic[topic]))]
        n_eval = round(0.1 * len(examples))
        rows["validation"] += examples[:n_eval]
        rows["test"] += examples[n_eval:2 * n_eval]
        rows["train"] += examples[2 * n_eval:]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows[split])
                                 for split in ("train", "validation", "test")})


def run_demo(config: DemoConfig | None = None) -> Path:
    """Fine-tune a teacher on the embedded default, then `compress` it with the demo recipe; print the report's
    table and where its plot is. Returns the report's path."""
    config = config or DemoConfig()
    workdir = Path(config.workdir).expanduser()
    from .compression import compress
    from .configs import CompressConfig, FinetuneConfig
    from .e5 import convert
    from .train import finetune

    workdir.mkdir(parents=True, exist_ok=True)
    data = data_mod.load_data(data_mod.DataConfig("chatterbot", max_per_split=TRAIN_EXAMPLES))
    print(f"[demo] data: chatterbot-corpus, {len(data.label_names)} topics, "
          f"{len(data.languages('train'))} languages, "
          + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items()))
    encoder = stage(workdir, "e5-small", lambda out: convert(out))
    teacher = stage(workdir, "teacher", lambda out: finetune(encoder, out, FinetuneConfig(**TEACHER_CONFIG), data))
    check_teacher(teacher, data)
    out = workdir / "compress"
    print(f"[demo] compress {teacher} --max-drop {config.max_drop:g} --recipe {RECIPE} --out {out}")
    with as_file(RECIPE) as recipe:
        compress(teacher, out, CompressConfig(max_drop=config.max_drop, recipe=str(recipe), repeats=10), data)
    report = (out / "report.md").read_text(encoding="utf-8")
    print("\n" + report.split(f"\n\n{MAIN_METRIC[data.task]} per language")[0])  # per language: in the file
    print(f"\n[demo] deploy {out / 'best'}; report {out / 'report.md'}, plot {out / 'pareto.png'}")
    return out / "report.md"
