"""Shared fixtures: the ../shared data and tokenizer (skipped with a reason when absent), tiny models, and one
e5-small teacher fine-tuned once per session for the slow end-to-end tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    # Triton reads this once, at import, and any test module may import it first: without a GPU, interpret kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# On a GPU, tests check the kernels' answers, not their speed: one tile config each, not minutes of autotuning.
os.environ.setdefault("XLMR_TRITON_AUTOTUNE", "0")

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER_JSON = SHARED / "tokenizers" / "xlm-roberta" / "tokenizer.json"
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: the real data sets are not ours to ship in the repo."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent: the real multilingual data sets live beside the repo, not in it")
    return DATA


@pytest.fixture(scope="session")
def xlmr_tokenizer_file() -> Path:
    """XLM-R's real 250,002-piece tokenizer.json, or skip."""
    if not TOKENIZER_JSON.is_file():
        pytest.skip(f"{TOKENIZER_JSON} is absent: XLM-R's real tokenizer lives beside the repo, not in it")
    return TOKENIZER_JSON


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """A tiny sequence-classification model directory (3 labels L0..L2)."""
    from xlmr_compress.tiny import save_tiny

    return save_tiny(tmp_path / "tiny", "sequence-classification", 3)


@pytest.fixture(scope="session")
def e5_encoder(tmp_path_factory: pytest.TempPathFactory, xlmr_tokenizer_file: Path) -> Path:
    """The pretrained e5-small encoder cut to its first 4 layers (enough to learn, cheap to train)."""
    from xlmr_compress.e5 import E5Config, convert

    config = E5Config(tokenizer_file=str(xlmr_tokenizer_file), num_layers=4)
    return convert(tmp_path_factory.mktemp("e5") / "e5-4", config)


@pytest.fixture(scope="session")
def sib_slice(shared_data: Path):
    """SIB-200 in 4 languages, at most 400 examples per split (seeded, stratified by language)."""
    from xlmr_compress.data import DataConfig, load_data

    data = load_data(DataConfig(str(shared_data / "sib200"), languages=["eng_Latn", "fra_Latn", "deu_Latn",
                                                                          "zho_Hans"], max_per_split=400, seed=0))
    return data


@pytest.fixture(scope="session")
def sib_teacher(tmp_path_factory: pytest.TempPathFactory, e5_encoder: Path, sib_slice) -> Path:
    """A teacher fine-tuned once per session from the 4-layer e5-small on the SIB-200 slice (frozen embeddings)."""
    from xlmr_compress.train import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("teacher") / "sib-teacher"
    config = FinetuneConfig(epochs=6, batch_size=16, learning_rate=3e-4, max_length=64, freeze_embeddings=True,
                            seed=0, logging_steps=1000)
    return finetune(e5_encoder, out, config, sib_slice)


def write_toy_data(folder: Path, n_train: int = 200, seed: int = 0) -> Path:
    """A learnable two-class, two-language CSV data set (train/dev/test) in the tiny tokenizer's words."""
    import csv
    import random

    rng = random.Random(seed)
    words = {"pos": "good happy love great".split(), "neg": "bad sad hate no".split()}
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", 40), ("test", 40)):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "language"])
            for _ in range(n):
                label = rng.choice(["pos", "neg"])
                text = " ".join(rng.choices(words[label] + ["the", "movie", "film"], k=6))
                w.writerow([text, label, rng.choice(["en", "fr"])])
    return folder


@pytest.fixture
def toy_data(tmp_path: Path) -> Path:
    """Directory with train/dev/test CSV files of a learnable toy task."""
    return write_toy_data(tmp_path / "toy")


@pytest.fixture
def tiny_encoder(tmp_path: Path) -> Path:
    """A tiny bare XLM-R encoder directory (no task head), as a pretrained checkpoint is."""
    from transformers import XLMRobertaModel

    from xlmr_compress.tiny import tiny_config, tiny_tokenizer

    tok = tiny_tokenizer()
    out = tmp_path / "encoder"
    XLMRobertaModel(tiny_config(len(tok)), add_pooling_layer=False).save_pretrained(out)
    tok.save_pretrained(out)
    return out
