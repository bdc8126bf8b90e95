"""Text in, predictions out: a callable with transformers' pipeline conventions over every model directory kind."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Regex, pre_tokenizers

from ..configs import PipelineConfig
from .. import directory, metrics, runtime
from ..data import MAX_LENGTH
from ..data.decode import best_span
from ..errors import UserError

PADDING_SLACK = 1.3  # a length-sorted batch may compute at most 30% padding beyond its real tokens
CLASSIFY, NER, QA = "sequence-classification", "token-classification", "question-answering"
# NER words: split at spaces and punctuation (as UNER's tokens are), and one word per Han or kana character
WORDS = pre_tokenizers.Sequence([
    pre_tokenizers.BertPreTokenizer(),
    pre_tokenizers.Split(Regex(r"[\p{Han}\p{Hiragana}\p{Katakana}]"), "isolated"),
])


def pipeline(model_dir: str | Path, device: str = "cpu", threads: int | None = None, batch_size: int = 32,
             **options: Any) -> Pipeline:
    """A pipeline over a torch, pruned, torch int8 or ONNX directory (options: the other PipelineConfig fields)."""
    return Pipeline.load(model_dir, PipelineConfig(device=device, threads=threads, batch_size=batch_size, **options))


class Pipeline:
    """Classify texts and pairs, tag entities with character offsets, or answer questions over long contexts."""

    def __init__(self, predictor: runtime.Predictor, config: PipelineConfig | None = None,
                 model_info: directory.ModelInfo | None = None) -> None:
        self.predictor, self.config, self.model_info = predictor, config or PipelineConfig(), model_info
        self.task, self.label_names, self.tokenizer = predictor.task, predictor.label_names, predictor.tokenizer
        self.max_length = min(self.config.max_length or self.tokenizer.model_max_length, MAX_LENGTH)
        check_config(self.config, self.max_length, self.task)

    @classmethod
    def load(cls, model_dir: str | Path, config: PipelineConfig | None = None) -> Pipeline:
        """Load a model directory of any kind through runtime.Predictor."""
        config = config or PipelineConfig()
        info = directory.inspect(model_dir)
        return cls(runtime.Predictor.load(model_dir, device=config.device, threads=config.threads, info=info,
                                          pack=config.pack), config, info)

    def __call__(self, inputs: Any = None, *, question: Any = None, context: Any = None,
                 top_k: int | None = None) -> Any:
        """Predictions shaped as transformers' pipelines shape them (one input: its result; a list: a list)."""
        items, single = self.prepare(inputs, question, context)
        results = self.run(items, top_k)
        if single and not (self.task == CLASSIFY and top_k is None):
            return results[0]
        return results

    def prepare(self, inputs: Any = None, question: Any = None, context: Any = None) -> tuple[list, bool]:
        """Validated items (text, (text, pair) or (question, context)) and whether one input was given."""
        if self.task == QA:
            if inputs is None:
                if question is None or context is None:
                    raise UserError("a QA pipeline needs question= and context= (or {'question', 'context'} dicts)")
                if isinstance(question, str) and isinstance(context, str):
                    return [_qa_item({"question": question, "context": context})], True
                if not (_is_list(question) and _is_list(context) and len(question) == len(context)):
                    raise UserError("question and context must be two strings or two lists of the same length")
                return [_qa_item({"question": q, "context": c}) for q, c in zip(question, context, strict=True)], False
            if isinstance(inputs, dict):
                return [_qa_item(inputs)], True
            return [_qa_item(x) for x in _as_list(inputs)], False
        if question is not None or context is not None:
            raise UserError(f"question=/context= are for QA models, and this model does {self.task}: pass texts")
        convert = _text_item if self.task == NER else _pair_item
        if isinstance(inputs, (str, dict)):
            return [convert(inputs)], True
        return [convert(x) for x in _as_list(inputs)], False

    def run(self, items: Sequence, top_k: int | None = None) -> list:
        """One result per prepared item, in order: {label, score} (a list of them with top_k), entities, answers."""
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise UserError(f"top_k must be a positive integer, not {top_k!r}")
        if top_k is not None and self.task != CLASSIFY:
            raise UserError(f"top_k applies to classification, and this model does {self.task}: drop top_k")
        if not items:
            return []
        if self.task == CLASSIFY:
            return self._classify(items, top_k)
        if self.task == NER:
            return self._entities(items)
        return self._answers(items)

    def info(self) -> dict:
        """What the model is: task, labels, directory kind, precision and the sequence limit."""
        kind, precision = (self.model_info.kind, self.model_info.precision) if self.model_info else (None, None)
        return {"task": self.task, "labels": self.label_names, "kind": kind, "precision": precision,
                "backend": self.predictor.backend, "packed": self.predictor.packed, "max_length": self.max_length}

    # --- tasks ------------------------------------------------------------------------------------------------

    def _classify(self, items: Sequence[tuple[str, str | None]], top_k: int | None) -> list:
        ids: list[list[int]] = [[] for _ in items]
        truncated = 0
        for paired in (False, True):
            index = [i for i, (_, pair) in enumerate(items) if (pair is not None) == paired]
            if index:
                texts = [items[i][0] for i in index]
                enc = self.tokenizer(texts, [items[i][1] for i in index] if paired else None, truncation=True,
                                     max_length=self.max_length)
                truncated += _overflowing(enc)
                for i, row in zip(index, enc["input_ids"], strict=True):
                    ids[i] = row
        self._warn_truncated(truncated, len(items))
        results = []
        for out in self.forward(ids):
            logits = out["logits"]
            scores = 1 / (1 + np.exp(-logits)) if len(logits) == 1 else _softmax(logits)
            ranked = [{"label": self.label_names[j], "score": float(scores[j])} for j in np.argsort(-scores,
                                                                                                     kind="stable")]
            results.append(ranked[0] if top_k is None else ranked[:top_k])
        return results

    def _entities(self, texts: Sequence[str]) -> list[list[dict]]:
        """Entities over words, in any tag scheme `metrics.entities` reads; each word is tagged by its first
        sub-token, as the model was trained."""
        words = [WORDS.pre_tokenize_str(text) for text in texts]
        enc = self.tokenizer([[w for w, _ in ws] for ws in words], is_split_into_words=True, truncation=True,
                             max_length=self.max_length)
        self._warn_truncated(_overflowing(enc), len(texts))
        results = []
        for i, (text, out) in enumerate(zip(texts, self.forward(enc["input_ids"]), strict=True)):
            probs = _softmax(out["logits"])
            tags, scores = ["O"] * len(words[i]), np.zeros(len(words[i]))
            for j, w in reversed(list(enumerate(enc.word_ids(i)))):
                if w is not None:
                    tags[w], scores[w] = self.label_names[int(probs[j].argmax())], float(probs[j].max())
            entities = []
            for kind, first, last in sorted(metrics.entities(tags), key=lambda span: span[1]):
                start, end = words[i][first][1][0], words[i][last][1][1]
                entities.append({"entity_group": kind, "score": float(scores[first:last + 1].mean()),
                                 "word": text[start:end], "start": start, "end": end})
            results.append(entities)
        return results

    def _answers(self, items: Sequence[tuple[str, str]]) -> list[dict]:
        """The best span over all stride windows of each context: softmax start x end probability."""
        questions = [self._fit_question(q.lstrip()) for q, _ in items]
        contexts = [c for _, c in items]
        enc = self.tokenizer(questions, contexts, truncation="only_second", max_length=self.max_length,
                             stride=self.config.stride, return_overflowing_tokens=True, return_offsets_mapping=True)
        best: list[dict] = [{"answer": "", "score": 0.0, "start": 0, "end": 0} for _ in items]
        best_score = np.full(len(items), -np.inf)
        for w, (example, out) in enumerate(zip(enc["overflow_to_sample_mapping"], self.forward(enc["input_ids"]),
                                               strict=True)):
            in_context = np.asarray([s == 1 for s in enc.sequence_ids(w)])
            if not in_context.any():
                continue
            s, e, log_p = best_span(_log_softmax(out["start_logits"], in_context),
                                    _log_softmax(out["end_logits"], in_context), in_context)
            if log_p > best_score[example]:
                best_score[example] = log_p
                context = contexts[example]
                start, end = enc["offset_mapping"][w][s][0], enc["offset_mapping"][w][e][1]
                while start < end and context[start].isspace():  # a word-initial piece's offsets include the space
                    start += 1
                while end > start and context[end - 1].isspace():
                    end -= 1
                best[example] = {"answer": context[start:end], "score": float(np.exp(log_p)), "start": start,
                                 "end": end}
        return best

    def _fit_question(self, question: str) -> str:
        """The question cut to the tokens that leave room for a context window beside it."""
        room = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True) - self.config.stride - 1
        enc = self.tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= room:
            return question
        warnings.warn(f"a question of {len(enc['input_ids'])} tokens was cut to {room} to leave room for its context: "
                      "raise max_length or lower stride", stacklevel=2)
        return question[:enc["offset_mapping"][room - 1][1]]

    # --- batching ---------------------------------------------------------------------------------------------

    def forward(self, ids: Sequence[Sequence[int]]) -> list[dict[str, np.ndarray]]:
        """The model's outputs for each token-id sequence (unpadded), run in batches of similar length."""
        lengths = np.asarray([len(x) for x in ids])
        order = np.argsort(lengths, kind="stable") if self.config.sort_by_length else np.arange(len(ids))
        results: list[dict[str, np.ndarray]] = [{} for _ in ids]
        pad = self.tokenizer.pad_token_id
        # a packed batch computes only its real tokens outside attention, so only the batch size cuts it
        slack = np.inf if self.predictor.packed else PADDING_SLACK
        batches = length_batches(order, lengths, self.config.batch_size, slack) if self.config.sort_by_length else \
            [order[first:first + self.config.batch_size] for first in range(0, len(order), self.config.batch_size)]
        for index in batches:
            index = np.asarray(index)
            width = int(lengths[index].max())
            input_ids = np.full((len(index), width), pad, dtype=np.int64)
            mask = np.zeros((len(index), width), dtype=np.int64)
            for row, i in enumerate(index):
                input_ids[row, :lengths[i]], mask[row, :lengths[i]] = ids[i], 1
            out = self.predictor({"input_ids": input_ids, "attention_mask": mask})
            for row, i in enumerate(index):
                results[i] = {name: value[row] if self.task == CLASSIFY else value[row, :lengths[i]]
                              for name, value in out.items()}
        return results

    def _warn_truncated(self, truncated: int, total: int) -> None:
        if truncated:
            warnings.warn(f"{truncated} of {total} texts are longer than {self.max_length} tokens and were truncated: "
                          "raise max_length (at most 512) or split the texts", stacklevel=2)


def length_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int,
                   slack: float = PADDING_SLACK) -> list[list[int]]:
    """Runs of the length-sorted order, at most batch_size long, cut early once padding would exceed `slack` times
    the real tokens: a padded batch of mixed lengths computes its longest text's width for every row."""
    batches: list[list[int]] = [[]]
    real = 0
    for i in order:
        batch = batches[-1]
        if batch and (len(batch) == batch_size or lengths[i] * (len(batch) + 1) > slack * (real + lengths[i])):
            batches.append([])
            real = 0
        batches[-1].append(int(i))
        real += int(lengths[i])
    return [b for b in batches if b]


def check_config(config: PipelineConfig, max_length: int, task: str) -> None:
    """Refuse batch sizes, lengths and strides that cannot work, before any text is read."""
    if config.batch_size < 1:
        raise UserError(f"batch_size {config.batch_size} must be at least 1")
    if not 0 < max_length <= MAX_LENGTH:
        raise UserError(f"max_length {max_length} is out of range: XLM-R takes 1 to {MAX_LENGTH} tokens")
    if task == QA and not 0 <= config.stride < max_length // 2:
        raise UserError(f"stride {config.stride} must be at least 0 and below half of max_length {max_length}: "
                        "lower stride")
    if config.threads is not None and config.threads < 1:
        raise UserError(f"threads {config.threads} must be at least 1 (or left unset)")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _log_softmax(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Log-probabilities over the kept positions (-inf elsewhere)."""
    x = np.where(keep, x[:len(keep)], -np.inf)
    top = x.max()
    return x - top - np.log(np.exp(x - top).sum())


def _overflowing(enc: Any) -> int:
    """How many inputs the fast tokenizer cut at max_length."""
    return sum(bool(e.overflowing) for e in enc.encodings)


def _is_list(x: Any) -> bool:
    return isinstance(x, (list, tuple))


def _as_list(inputs: Any) -> list:
    if not _is_list(inputs):
        raise UserError(f"inputs must be a string or a list of strings, not {type(inputs).__name__}")
    return list(inputs)


def _text_item(x: Any) -> str:
    if not isinstance(x, str):
        raise UserError(f"each input must be a string, not {type(x).__name__}")
    return x


def _pair_item(x: Any) -> tuple[str, str | None]:
    """A text or a (text, text_pair) pair: a 2-item list or tuple, or transformers' {"text", "text_pair"} dict."""
    if isinstance(x, dict) and set(x) <= {"text", "text_pair"} and "text" in x:
        x = (x["text"], x["text_pair"]) if x.get("text_pair") is not None else x["text"]
    if isinstance(x, str):
        return x, None
    if _is_list(x) and len(x) == 2 and all(isinstance(t, str) for t in x):
        return x[0], x[1]
    raise UserError(f"each input must be a string or a pair of strings [text, text_pair], not {_describe(x)}")


def _qa_item(x: Any) -> tuple[str, str]:
    if not (isinstance(x, dict) and isinstance(x.get("question"), str) and isinstance(x.get("context"), str)):
        raise UserError(f'each QA input must be {{"question": str, "context": str}}, not {_describe(x)}')
    return x["question"], x["context"]


def _describe(x: Any) -> str:
    return f"a list of {len(x)}" if _is_list(x) else type(x).__name__
