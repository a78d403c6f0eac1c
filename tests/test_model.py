"""model.py: shapes, loss at init, causality, overfitting, the KV cache, sampling filters."""
import math

import pytest
import torch

from model import GPT, GPTConfig, filter_logits, generate

TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **kw}))


def test_shapes_and_parameter_count():
    model = tiny()
    idx = torch.randint(0, 50, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 50) and loss is None
    C, L, V, T = 32, 2, 50, 16
    per_block = 12 * C * C + 13 * C  # qkv + proj + fc + proj weights and biases, two LayerNorms
    assert model.num_params() == V * C + T * C + L * per_block + 2 * C  # tied head, final LayerNorm


def test_loss_at_init_is_close_to_uniform():
    model = tiny()
    idx, targets = torch.randint(0, 50, (2, 8, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(50)) < 0.1


def test_causality():
    model = tiny().eval()
    idx = torch.randint(0, 50, (1, 16))
    changed = idx.clone()
    changed[0, 9] = (idx[0, 9] + 1) % 50
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_overfits_one_batch():
    model = tiny()
    idx = torch.randint(0, 50, (4, 16))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_cached_steps_equal_the_full_forward():
    model = tiny().eval()
    idx = torch.randint(0, 50, (2, 16))
    full, _ = model(idx)
    logits, cache = model.step(idx[:, :5])
    parts = [logits]
    for t in range(5, 16):
        logits, cache = model.step(idx[:, t:t + 1], cache)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="longer than block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_filters_never_keep_a_filtered_token():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.07, 0.03]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False, False]]
    # nucleus: 0.5 + 0.25 = 0.75 < 0.8, so the third token is needed too
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False, False]]
    g = torch.Generator().manual_seed(0)
    draws = torch.multinomial(filter_logits(logits, top_p=0.8).softmax(-1).expand(2000, 5), 1, generator=g)
    assert set(draws.flatten().tolist()) == {0, 1, 2}


def test_generate_greedy_is_deterministic_and_slides_past_block_size():
    model = tiny().eval()
    prompt = torch.randint(0, 50, (2, 4))
    a = generate(model, prompt, 40, temperature=0)  # 44 tokens > block_size 16
    b = generate(model, prompt, 40, temperature=0)
    assert a.shape == (2, 44) and torch.equal(a, b) and torch.equal(a[:, :4], prompt)
    # greedy with the cache picks what the uncached model picks at every position it can see whole
    for t in range(4, 16):
        logits, _ = model(a[:, :t])
        assert torch.equal(logits[:, -1].argmax(-1), a[:, t])


def test_same_seed_same_samples():
    model = tiny().eval()
    prompt = torch.zeros(3, 1, dtype=torch.long)
    runs = [generate(model, prompt, 20, temperature=1.0, top_k=10,
                     generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
