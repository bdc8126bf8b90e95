"""Load any XLM-R directory or hub id for a task, rebuild pruned shapes, and build tiny models for tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PretrainedConfig,
    PreTrainedModel,
    XLMRobertaConfig,
    XLMRobertaTokenizerFast,
)

from .errors import UserError

TASKS = ("sequence-classification", "token-classification", "question-answering")
AUTO_CLASSES = {
    "sequence-classification": AutoModelForSequenceClassification,
    "token-classification": AutoModelForTokenClassification,
    "question-answering": AutoModelForQuestionAnswering,
}
HEAD_SUFFIX = {
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
}
SHAPES_KEY = "xlmr_compress"
QUANTIZED_KEY = "xlmr_compress_quantization"  # torch int8 checkpoints (quantize/torch.py rebuilds them)


def task_of(config: PretrainedConfig) -> str | None:
    """The task head a checkpoint was saved with, from config.architectures (None for a bare encoder)."""
    for arch in getattr(config, "architectures", None) or []:
        for suffix, task in HEAD_SUFFIX.items():
            if arch.endswith(suffix):
                return task
    return None


def check_task(task: str) -> str:
    """Validate a task name."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    return task


def load_config(name_or_dir: str | Path) -> PretrainedConfig:
    """Read config.json of a local directory (with a one-line error) or of a hub id."""
    path = Path(name_or_dir)
    if path.exists() or str(name_or_dir).startswith((".", "/", "~")):
        if not path.is_dir():
            raise UserError(f"model directory {path} does not exist: check the path")
        cfg = path / "config.json"
        if not cfg.is_file():
            raise UserError(f"{path} has no config.json: it is not a model directory "
                            "(give the directory a stage wrote)")
        try:
            json.loads(cfg.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{cfg} is unreadable ({e}): restore the file or re-export the model") from None
    try:
        return AutoConfig.from_pretrained(str(name_or_dir))
    except OSError as e:
        raise UserError(f"cannot load {name_or_dir!r}: not a local directory, and the hub says: "
                        f"{str(e).splitlines()[0]}") from None


def load_tokenizer(name_or_dir: str | Path) -> XLMRobertaTokenizerFast:
    """The fast tokenizer of a model, built from tokenizer.json so it reproduces the file exactly."""
    path = Path(name_or_dir)
    if path.is_dir():
        file = path / "tokenizer.json"
        if not file.is_file():
            raise UserError(f"{path} has no tokenizer.json: save the fast tokenizer with the model "
                            "(tokenizer.save_pretrained)")
        kwargs = {}
        cfg = path / "tokenizer_config.json"
        if cfg.is_file():
            kwargs["model_max_length"] = json.loads(cfg.read_text()).get("model_max_length", 512)
        kwargs["model_max_length"] = min(int(kwargs.get("model_max_length", 512)), 512)
        return XLMRobertaTokenizerFast(tokenizer_file=str(file), **kwargs)
    try:
        return XLMRobertaTokenizerFast.from_pretrained(str(name_or_dir))
    except OSError as e:
        raise UserError(f"cannot load the tokenizer of {name_or_dir!r}: {str(e).splitlines()[0]}") from None


def load(
    name_or_dir: str | Path,
    task: str | None = None,
    *,
    label_names: list[str] | None = None,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, XLMRobertaTokenizerFast]:
    """Model (eval mode) and tokenizer for a task, with every mismatch reported as a one-line error."""
    config = load_config(name_or_dir)
    saved_task = task_of(config)
    task = task or saved_task
    if task is None:
        raise UserError(f"{name_or_dir} is a bare encoder with no task head: pass task= (--task) and labels to add one")
    check_task(task)
    if saved_task and saved_task != task:
        raise UserError(f"{name_or_dir} has a {saved_task} head, not {task}: pass --task {saved_task} "
                        "or fine-tune a new head")
    path = Path(name_or_dir)
    if path.is_dir():
        _check_weights(path)
    if attn_implementation == "xlmr_triton":
        from . import attention  # noqa: F401  registers the Triton kernel with transformers

    tokenizer = load_tokenizer(name_or_dir)
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if saved_task is None and task != "question-answering":
        if not label_names:
            raise UserError(f"{name_or_dir} has no {task} head yet: give the label names (the data set provides them)")
        kwargs.update(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                      label2id={n: i for i, n in enumerate(label_names)})
    elif label_names is not None and task != "question-answering":
        saved = [config.id2label[i] for i in range(config.num_labels)]
        if list(label_names) != saved:
            raise UserError(f"the data's labels {list(label_names)[:8]} do not match the model's head {saved[:8]}: "
                            "evaluate on the data the model was trained for, or fine-tune a new head")

    shapes = getattr(config, SHAPES_KEY, None)
    if getattr(config, QUANTIZED_KEY, None):
        from .quantize.torch import load_int8

        model = load_int8(path, config, task)
    elif shapes:
        model = _load_pruned(path, config, task, kwargs)
    else:
        model = AUTO_CLASSES[task].from_pretrained(str(name_or_dir), **kwargs)
    check_vocab(model, tokenizer, name_or_dir)
    return model.eval(), tokenizer


def check_vocab(model: PreTrainedModel, tokenizer: Any, where: Any = "model") -> None:
    """Refuse a tokenizer whose ids run past the model's embedding table."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(f"{where}: the tokenizer has {len(tokenizer)} tokens but the embedding has {rows} rows: "
                        "the tokenizer does not belong to this model (save the model's own tokenizer with it)")


def _check_weights(path: Path) -> None:
    if (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file():
        return
    if (path / "model.onnx").is_file():
        raise UserError(f"{path} holds an ONNX model: load it with xlmr_compress.runtime.Predictor, not as torch")
    if (path / "pytorch_model.bin").is_file():
        raise UserError(f"{path} has only pickled weights (pytorch_model.bin), which are never unpickled here: "
                        "re-save them as safetensors (model.save_pretrained(dir, safe_serialization=True))")
    raise UserError(f"{path} has no weights (model.safetensors): copy the weights in "
                    "or give the directory a stage wrote")


def layer_shapes(model: PreTrainedModel) -> dict:
    """Per-layer heads, head size and FFN width of a model, as recorded in config.json after pruning."""
    layers = model.base_model.encoder.layer
    head_size = layers[0].attention.self.attention_head_size
    return {
        "head_size": head_size,
        "heads": [layer.attention.self.query.out_features // head_size for layer in layers],
        "ffn": [layer.intermediate.dense.out_features for layer in layers],
    }


def resize_layers(model: PreTrainedModel, shapes: dict) -> None:
    """Give each encoder layer the recorded number of heads and FFN width (fresh weights, to be loaded)."""
    hidden, head_size = model.config.hidden_size, shapes["head_size"]
    for layer, heads, ffn in zip(model.base_model.encoder.layer, shapes["heads"], shapes["ffn"], strict=False):
        att = layer.attention.self
        width = heads * head_size
        att.query, att.key, att.value = (nn.Linear(hidden, width) for _ in range(3))
        att.num_attention_heads, att.attention_head_size, att.all_head_size = heads, head_size, width
        layer.attention.output.dense = nn.Linear(width, hidden)
        layer.intermediate.dense = nn.Linear(hidden, ffn)
        layer.output.dense = nn.Linear(ffn, hidden)


def _load_pruned(path: Path, config: PretrainedConfig, task: str, kwargs: dict) -> PreTrainedModel:
    """Rebuild the pruned shapes stock from_pretrained cannot express, then load the safetensors strictly."""
    from safetensors.torch import load_file

    model = AUTO_CLASSES[task].from_config(config, **{k: v for k, v in kwargs.items() if k == "attn_implementation"})
    resize_layers(model, getattr(config, SHAPES_KEY))
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match the pruned shapes in config.json "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]}): re-run the pruning stage")
    return model


# --- tiny, realistic models for tests -------------------------------------------------------------------------

TINY_WORDS = (
    "the a of and to in is was for on that with as by at from it an be this are or his her they we you not but "
    "de la le et les des en un une est que pour dans der die und das ist nicht el los las y es por con il di che "
    "hello world good bad happy sad movie film music sport game team city river house paris london berlin madrid "
    "john mary apple google news today great love hate ok yes no very much more new old big small"
).split()


def tiny_tokenizer() -> XLMRobertaTokenizerFast:
    """A small Unigram (SentencePiece-style) tokenizer with XLM-R's special-token layout, for unit tests."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    chars = sorted(set("".join(TINY_WORDS)) | set("0123456789.,!?'-"))
    pieces = [(s, 0.0) for s in specials] + [("▁" + w, -5.0 - i / 100) for i, w in enumerate(TINY_WORDS)]
    pieces += [("▁", -8.0)] + [(c, -10.0) for c in chars] + [("▁" + c, -10.5) for c in chars] + [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=512)


def tiny_config(vocab_size: int, **overrides: Any) -> XLMRobertaConfig:
    """A 2-layer, 32-wide XLM-R config with the real checkpoints' conventions (eps, type vocab, positions, pad id)."""
    base = dict(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return XLMRobertaConfig(**{**base, **overrides})


def tiny_model(
    task: str = "sequence-classification", num_labels: int = 3, vocab_size: int | None = None, seed: int = 0,
    **config_overrides: Any,
) -> PreTrainedModel:
    """A randomly initialised tiny XLM-R with a task head, for unit tests."""
    check_task(task)
    vocab_size = vocab_size or len(tiny_tokenizer())
    labels = {} if task == "question-answering" else {
        "id2label": {i: f"L{i}" for i in range(num_labels)}, "label2id": {f"L{i}": i for i in range(num_labels)}}
    config = tiny_config(vocab_size, num_labels=2 if task == "question-answering" else num_labels,
                         **labels, **config_overrides)
    torch.manual_seed(seed)
    return AUTO_CLASSES[task].from_config(config).eval()


def save_tiny(out_dir: str | Path, task: str = "sequence-classification", num_labels: int = 3, seed: int = 0,
              **config_overrides: Any) -> Path:
    """Write a tiny model directory (weights, config, tokenizer) for tests."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(task, num_labels, len(tokenizer), seed, **config_overrides)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
