"""attn_implementation="xlmr_triton" in transformers: same outputs and gradients as sdpa on a padded batch, the
packed (padding-free) encoder, the sdpa fallback, and loading through xlmr_compress.directory.load."""
from __future__ import annotations

import os

import pytest
import torch
from transformers import AttentionInterface, XLMRobertaConfig, XLMRobertaModel
from transformers.masking_utils import AttentionMaskInterface

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: run the kernel interpreted

attention = pytest.importorskip("xlmr_compress.attention")
fa = attention.fa

if not fa.available():
    pytest.skip("the kernel needs triton and CUDA or the interpreter", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def tiny_encoder() -> XLMRobertaModel:
    """hidden 64, 2 layers, 2 heads of 32: the smallest XLM-R with a head size the kernel takes."""
    config = XLMRobertaConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=128, layer_norm_eps=1e-5, type_vocab_size=1,
                              max_position_embeddings=514, pad_token_id=1)
    torch.manual_seed(0)
    return XLMRobertaModel(config).to(DEVICE).eval()


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 120, (3, 24), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 6:] = 0
    ids[mask == 0] = 1
    return ids.to(DEVICE), mask.to(DEVICE)


def outputs_and_grads(model: XLMRobertaModel, implementation: str, ids, mask) -> tuple[torch.Tensor, list]:
    """Hidden states and encoder gradients of a loss over real tokens (padding rows legitimately differ: the kernel
    gives them zero attention output, sdpa lets them attend to the real tokens)."""
    model.set_attn_implementation(implementation)
    model.zero_grad()
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
    hidden.square().mean().backward()  # reaches every layer's q, k and v
    return hidden.detach(), [p.grad.clone() for p in model.encoder.parameters()]


def test_register_is_idempotent() -> None:
    attention.register()
    attention.register()
    assert AttentionInterface._global_mapping[attention.NAME] is attention.xlmr_triton_attention
    assert attention.NAME in AttentionMaskInterface._global_mapping, "without a mask function padding is ignored"


def test_same_outputs_and_gradients_as_sdpa_on_a_padded_batch() -> None:
    model = tiny_encoder()
    ids, mask = padded_batch()
    expected, expected_grads = outputs_and_grads(model, "sdpa", ids, mask)
    hidden, grads = outputs_and_grads(model, attention.NAME, ids, mask)
    torch.testing.assert_close(hidden, expected, atol=1e-4, rtol=1e-4)
    assert len(grads) == len(expected_grads) > 0
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_packed_encoder_matches_padded_sdpa() -> None:
    model = tiny_encoder()
    ids, mask = padded_batch()
    model.set_attn_implementation("sdpa")
    expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
    inputs, indices = attention.pack(ids, mask)
    assert inputs["input_ids"].shape == (1, int(mask.sum()))
    assert inputs["position_ids"][0, :3].tolist() == [2, 3, 4], "XLM-R positions start at padding_idx + 1"
    model.set_attn_implementation(attention.NAME)
    packed = model(**inputs).last_hidden_state
    hidden = fa.pad(packed[0], indices, *ids.shape)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], expected[real], atol=1e-4, rtol=1e-4)


def test_falls_back_to_sdpa_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_encoder()
    ids, mask = padded_batch()
    model.set_attn_implementation("sdpa")
    expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
    model.set_attn_implementation(attention.NAME)
    monkeypatch.setattr(fa, "available", lambda: False)
    with pytest.warns(RuntimeWarning, match="falls back to sdpa: no CUDA device"):
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(hidden, expected)
    inputs, indices = attention.pack(ids, mask)
    with pytest.warns(RuntimeWarning, match="falls back to sdpa"):
        packed = model(**inputs).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(fa.pad(packed[0], indices, *ids.shape)[real], expected[real], atol=1e-5, rtol=1e-5)


def test_modeling_load_uses_the_kernel(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xlmr_compress import directory, tiny

    model_dir = tiny.save_tiny(tmp_path / "tiny", "sequence-classification", 3, num_attention_heads=1)  # head 32
    model, tokenizer = directory.load(model_dir, attn_implementation=attention.NAME)
    assert model.config._attn_implementation == attention.NAME
    calls = []
    monkeypatch.setattr(fa, "flash_attention", lambda *a: calls.append(a) or fa.attention_reference(*a[:5]))
    batch = tokenizer(["a b c", "a"], padding=True, return_tensors="pt")
    model(**batch)
    assert len(calls) == model.config.num_hidden_layers, "every layer's attention should go through the kernel"
