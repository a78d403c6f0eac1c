"""model.py: shapes, loss at init, causality, overfitting, the KV cache for every position encoding and
key/value head count (in float32, and in bfloat16 within its rounding); the modern recipe's options (RMSNorm,
QK-norm, ReLU², zero-init, logit soft-capping) and their bad values; a shipped config's parameter count.
Generation is test_generation.py's."""
import math

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import train
from configurator import UserError, load_config
from conftest import MODERN, REPO, TINY_GPT, TINY_GPT_4H, tiny_gpt
from model import (GPT, GPT2_ARCH, RECIPE_ARCH, GPTConfig, KVCache, RMSNorm, build_model, load_model,
                   size_gated_mlp)


def test_shapes_and_parameter_count():
    model = tiny_gpt()
    idx = torch.randint(0, 50, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 50) and loss is None
    C, L, V, T = 32, 2, 50, 16
    per_block = 12 * C * C + 13 * C  # qkv + proj + fc + proj weights and biases, two LayerNorms
    assert model.num_params() == V * C + T * C + L * per_block + 2 * C  # tied head, final LayerNorm


def test_loss_at_init_is_close_to_uniform():
    model = tiny_gpt()
    idx, targets = torch.randint(0, 50, (2, 8, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(50)) < 0.1


def test_causality():
    model = tiny_gpt().eval()
    idx = torch.randint(0, 50, (1, 16))
    changed = idx.clone()
    changed[0, 9] = (idx[0, 9] + 1) % 50
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_overfits_one_batch():
    model = tiny_gpt()
    idx = torch.randint(0, 50, (4, 16))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


@pytest.mark.parametrize("pos_emb,n_kv_head", [("sinusoidal", 2), ("rope", 1)])
def test_other_positions_and_shared_kv_heads_train(pos_emb, n_kv_head):
    model = tiny_gpt(n_head=4, pos_emb=pos_emb, n_kv_head=n_kv_head)
    idx = torch.randint(0, 50, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.5  # from ln(50) = 3.9 towards memorising the batch


# Cached and full logits agree to float32 rounding, not bit for bit: the GEMMs over (B*T, C) and over
# (B*1, C) block their sums differently, and SDPA's causal kernel differs from the one-query call
# (measured: at most 2e-7 on these logits). 1e-6 absolute is the tightest tolerance that holds.
CACHE_ATOL = 1e-6
VARIANTS = [(pe, kv) for pe in ("learned", "sinusoidal", "rope") for kv in (1, 2, 4)]


@pytest.mark.parametrize("pos_emb,n_kv_head", VARIANTS)
def test_cached_steps_equal_the_full_forward(pos_emb, n_kv_head):
    model = tiny_gpt(n_head=4, pos_emb=pos_emb, n_kv_head=n_kv_head).eval()
    idx = torch.randint(0, 50, (2, 16))
    full, _ = model(idx)
    logits, cache = model.step(idx[:, :5])  # prefill 5, then one token at a time
    parts = [logits]
    for t in range(5, 16):
        logits, cache = model.step(idx[:, t:t + 1], cache)
        parts.append(logits)
    logits, cache2 = model.step(idx[:, :9])  # prefill, then a chunk of several tokens (masked)
    logits2, _ = model.step(idx[:, 9:], cache2)
    for cached in (torch.cat(parts, dim=1), torch.cat([logits, logits2], dim=1)):
        torch.testing.assert_close(cached, full, atol=CACHE_ATOL, rtol=0)
    # the cache holds n_kv_head heads per layer, rotated keys for RoPE
    assert cache.k[0].shape == (2, n_kv_head, 16, 8) and cache.pos == 16


def test_x0_mix_starts_from_its_scales_and_caches_like_the_full_forward():
    """Block i's input is resid_scale[i] * x + x0_scale[i] * x0: with the scales at 1 and 0 the model is the one
    without x0_mix (the same weights), with its starting scales it is not, and its cached steps match its full
    forward."""
    mixed = tiny_gpt(n_layer=3, x0_mix=True).eval()
    torch.testing.assert_close(mixed.resid_scale.data, torch.tensor([1.15, 1.10, 1.05]))
    torch.testing.assert_close(mixed.x0_scale.data, torch.tensor([0.20, 0.125, 0.05]))
    plain = tiny_gpt(n_layer=3).eval()
    plain.load_state_dict({k: v for k, v in mixed.state_dict().items() if not k.endswith("_scale")})
    idx = torch.randint(0, 50, (2, 16))
    assert not torch.allclose(mixed(idx)[0], plain(idx)[0], atol=1e-3)
    with torch.no_grad():
        mixed.resid_scale.fill_(1.0), mixed.x0_scale.zero_()
    torch.testing.assert_close(mixed(idx)[0], plain(idx)[0])
    with torch.no_grad():
        mixed.x0_scale[1] = 0.5
    x0 = mixed.drop(mixed.wte(idx) + mixed.wpe.weight[:16])  # by hand: the second block's input gains half of x0
    h = mixed.blocks[0](x0)
    by_hand = mixed.lm_head(mixed.ln_f(mixed.blocks[2](mixed.blocks[1](h + 0.5 * x0))))
    torch.testing.assert_close(mixed(idx)[0], by_hand)
    logits, cache = mixed.step(idx[:, :5])
    parts = [logits] + [mixed.step(idx[:, t:t + 1], cache)[0] for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(parts, dim=1), mixed(idx)[0], atol=CACHE_ATOL, rtol=0)
    loaded = load_model("gpt", {**TINY_GPT, "n_layer": 3, "x0_mix": True}, mixed.state_dict()).eval()
    assert torch.equal(loaded.x0_scale, mixed.x0_scale) and torch.equal(loaded(idx)[0], mixed(idx)[0])


def test_rope_cache_stores_rotated_keys_and_positions_matter():
    model = tiny_gpt(n_head=4, pos_emb="rope").eval()
    idx = torch.randint(0, 50, (1, 6))
    _, cache = model.step(idx)
    attn = model.blocks[0].attn
    x = model.blocks[0].ln1(model.wte(idx))
    k = attn.qkv(x)[..., 32:64].view(1, 6, 4, 8).transpose(1, 2)
    assert not torch.allclose(cache.k[0][:, :, 1:6], k[:, :, 1:], atol=1e-3)  # stored keys are rotated
    assert torch.allclose(cache.k[0][:, :, 0], k[:, :, 0], atol=1e-6)  # ... except position 0 (angle 0)
    # without any position signal a permuted prefix would give the same last logits; with RoPE it does not
    swapped = idx[:, [1, 0, 2, 3, 4, 5]]
    assert not torch.allclose(model(idx)[0][:, -1], model(swapped)[0][:, -1])


def test_new_config_defaults_reproduce_the_gpt2_model():
    torch.manual_seed(0)
    old_style = GPT(GPTConfig(**TINY_GPT))
    model = tiny_gpt(pos_emb="learned", n_kv_head=0)
    assert old_style.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(old_style.state_dict()[k], v) for k, v in model.state_dict().items())
    assert model.blocks[0].attn.qkv.weight.shape == (3 * 32, 32)
    # GQA shrinks the key/value projection; fixed position tables are not parameters
    assert tiny_gpt(n_head=4, n_kv_head=1).blocks[0].attn.qkv.weight.shape == (32 + 2 * 8, 32)
    assert "wpe.weight" not in tiny_gpt(pos_emb="rope").state_dict()
    assert "wpe.weight" not in tiny_gpt(pos_emb="sinusoidal").state_dict()


def test_recipe_arch_sets_the_options_gpt2_arch_does():
    """RECIPE_ARCH (train.py's modern recipe) changes exactly the options GPT2_ARCH names, into a valid config."""
    assert RECIPE_ARCH.keys() == GPT2_ARCH.keys() and RECIPE_ARCH != GPT2_ARCH
    model = tiny_gpt(**RECIPE_ARCH)
    assert all(getattr(model.cfg, k) == v for k, v in RECIPE_ARCH.items()) and "wpe.weight" not in model.state_dict()


def test_a_swiglu_mlp_left_to_mlp_ratio_holds_the_plain_mlps_weights():
    """size_gated_mlp: 2/3 of mlp_ratio * n_embd, up to a multiple of 8; an explicit width is kept."""
    plain = tiny_gpt(**{**RECIPE_ARCH, "activation": "relu2", "n_embd": 48})
    gated = GPT(GPTConfig(**size_gated_mlp({**TINY_GPT, **RECIPE_ARCH, "n_embd": 48})))
    assert gated.blocks[0].mlp.proj.in_features == 128 and gated.blocks[0].mlp.fc.out_features == 256  # 2/3 * 192
    assert abs(gated.num_params() - plain.num_params()) <= 3 * 48 * 8 * 2  # within the rounding of 2 layers
    assert size_gated_mlp({**RECIPE_ARCH, "n_embd": 128})["mlp_hidden"] == 344  # 341.3 rounded up
    assert size_gated_mlp({**RECIPE_ARCH, "n_embd": 768})["mlp_hidden"] == 2048  # Llama's rule at GPT-2's width
    assert size_gated_mlp({**RECIPE_ARCH, "n_embd": 128, "mlp_hidden": 40})["mlp_hidden"] == 40
    assert "mlp_hidden" not in size_gated_mlp({**RECIPE_ARCH, "activation": "relu2", "n_embd": 128})
    assert checkpoint.model_args(train.TrainConfig(), 222)["mlp_hidden"] == 344  # what a default run stores


def test_causal_attention_in_bf16_training_matches_fp32():
    """model.causal_attention: a bf16 CPU step that is differentiated runs the kernel in fp32 (its bf16
    backward is slow) and hands back bf16; outputs and gradients match the fp32 kernel's."""
    from model import causal_attention
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=gen) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    low = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = causal_attention(*low, 0.0, False)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.02, rtol=0.02)
    got.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in low)
    with torch.no_grad():  # generation: the bf16 kernel itself
        assert causal_attention(*low, 0.0, False).dtype == torch.bfloat16


def test_bad_attention_configs_are_user_errors():
    with pytest.raises(UserError, match="n_kv_head=3 must divide n_head=4"):
        tiny_gpt(n_head=4, n_kv_head=3)
    with pytest.raises(UserError, match="pos_emb must be one of learned, sinusoidal, rope"):
        tiny_gpt(pos_emb="alibi")
    with pytest.raises(UserError, match="even head size"):
        tiny_gpt(n_head=4, n_embd=36, pos_emb="rope")


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="longer than block_size"):
        tiny_gpt()(torch.zeros(1, 17, dtype=torch.long))


def test_kv_cache_writes_in_place():
    cache = KVCache(n_layer=1, capacity=8)
    k1, v1 = cache.update(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), torch.arange(3))
    storage = cache.k[0].data_ptr()
    k2, v2 = cache.update(0, torch.full((1, 2, 1, 4), 2.0), torch.full((1, 2, 1, 4), 2.0), torch.tensor([3]))
    assert k1.shape == k2.shape == (1, 2, 8, 4)  # static: the whole buffer, every step
    assert cache.k[0].data_ptr() == storage  # no reallocation
    assert torch.equal(k2[0, 0, :, 0], torch.tensor([1.0, 1.0, 1.0, 2.0, 0, 0, 0, 0]))  # unwritten slots are 0


def test_cached_decode_in_bfloat16_matches_the_full_forward_within_bf16_rounding():
    """Weights cast to bf16 (as engine.for_generation does): the cached steps and the full forward round at
    different places (attention over the cache's slots vs a causal product), so they agree to bf16's precision,
    not bit for bit: bf16 keeps 8 significant bits (steps of 2^-8 = 0.4% of a value), and a few such roundings
    through the layers stay well under 5% of the logits' scale."""
    model = tiny_gpt(n_head=4, pos_emb="rope", qk_norm=True, norm="rmsnorm").eval()
    for p in model.parameters():
        p.data = p.data.bfloat16()
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        full, _ = model(idx)
        logits, cache = model.step(idx[:, :5])
        parts = [logits] + [model.step(idx[:, t:t + 1], cache)[0] for t in range(5, 16)]
    cached = torch.cat(parts, dim=1).float()
    scale = full.float().abs().max().item()
    torch.testing.assert_close(cached, full.float(), atol=0.05 * scale, rtol=0)


# ----------------------------------------------------------------------------- the modern recipe's options

def test_each_option_changes_the_model_as_named():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_GPT_4H, **MODERN))
    assert isinstance(model.ln_f, RMSNorm) and isinstance(model.blocks[0].ln1, RMSNorm)
    assert isinstance(model.blocks[0].attn.q_norm, RMSNorm) and model.blocks[0].attn.q_norm.weight.shape == (8,)
    x = torch.tensor([-2.0, -0.5, 0.0, 1.5])
    mlp = model.blocks[0].mlp  # SwiGLU: silu(gate) * up, the gate and the up projection from one matrix
    assert mlp.gated and mlp.fc.out_features == 2 * mlp.proj.in_features and torch.equal(mlp.act(x), F.silu(x))
    relu2 = GPT(GPTConfig(**TINY_GPT_4H, **{**MODERN, "activation": "relu2"})).blocks[0].mlp
    assert not relu2.gated and torch.equal(relu2.act(x), torch.tensor([0.0, 0.0, 0.0, 2.25]))  # ReLU squared
    for name, p in model.named_parameters():  # every block starts as the identity, the head as uniform
        if name.endswith("proj.weight") or name == "lm_head.weight":
            assert torch.count_nonzero(p) == 0, name
    idx = torch.randint(0, 50, (2, 16))
    logits, loss = model(idx, idx)
    assert loss.item() == pytest.approx(math.log(50), abs=1e-6)  # zero logits: exactly uniform


def test_gpt2_defaults_are_unchanged_by_the_options():
    base = GPT(GPTConfig(**TINY_GPT_4H))
    assert isinstance(base.ln_f, torch.nn.LayerNorm) and not hasattr(base.blocks[0].attn, "q_norm")
    assert base.lm_head.weight is base.wte.weight and base.blocks[0].mlp.act is torch.nn.functional.gelu
    assert torch.count_nonzero(base.blocks[0].attn.proj.weight) > 0


def test_qk_gain_starts_the_query_and_key_gains_and_scales_the_attention_logits_by_its_square():
    """The gains start at qk_gain; with both at 2 every attention logit is 4 times GPT's of gains 1, which a
    gain of 4 on the queries alone also gives (the same weights otherwise, the blocks not left as identities)."""
    sharp = GPT(GPTConfig(**TINY_GPT_4H, **MODERN, qk_gain=2.0))
    gains = {n: p for n, p in sharp.named_parameters() if n.endswith(("q_norm.weight", "k_norm.weight"))}
    assert len(gains) == 2 * TINY_GPT_4H["n_layer"]
    assert all(torch.equal(p, torch.full_like(p, 2.0)) for p in gains.values())
    with torch.no_grad():
        for p in sharp.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)
    base = GPT(GPTConfig(**TINY_GPT_4H, **MODERN))
    base.load_state_dict({k: (torch.ones_like(v) if k in gains else v) for k, v in sharp.state_dict().items()})
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        logits = {m: m(idx)[0] for m in (base, sharp)}
        assert not torch.allclose(logits[base], logits[sharp], atol=1e-3)
        for name in gains:
            base.get_parameter(name).fill_(4.0 if "q_norm" in name else 1.0)
        torch.testing.assert_close(base(idx)[0], logits[sharp])


def test_rmsnorm_is_computed_in_fp32_and_keeps_the_input_dtype():
    norm = RMSNorm(16)
    x = torch.randn(4, 16) * 100
    assert torch.allclose(norm(x), x / x.pow(2).mean(-1, keepdim=True).sqrt(), atol=1e-4)
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_attention_dropout_follows_dropout_unless_given():
    """attn_dropout alone drops attention weights (training forwards differ, evaluation ones do not); at 0 the
    attention is exact while dropout still drops the residual branches; left out, it is dropout."""
    x = torch.randint(TINY_GPT_4H["vocab_size"], (2, 12))

    def forwards(**drop):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**{**TINY_GPT_4H, **drop}))  # (TINY_GPT_4H: dropout 0)
        model.train()
        a, b = model(x)[0], model(x)[0]
        model.eval()
        return model, torch.equal(a, b), torch.equal(model(x)[0], model(x)[0])

    model, same, evaluated = forwards(attn_dropout=0.5)
    assert not same and evaluated and all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    model, same, _ = forwards(attn_dropout=0.0)
    assert same
    model, same, _ = forwards(dropout=0.5, attn_dropout=0.0)
    assert not same and {b.attn.dropout for b in model.blocks} == {0.0}
    model, _, _ = forwards(dropout=0.5)
    assert {b.attn.dropout for b in model.blocks} == {0.5}


@pytest.mark.parametrize("key,value,message", [
    ("norm", "batchnorm", "norm must be one of layernorm, rmsnorm"),
    ("activation", "swish", "activation must be one of gelu"),
    ("dropout", 1.0, "dropout and attn_dropout must be in"),
    ("attn_dropout", -0.1, "dropout and attn_dropout must be in"),
    ("qk_gain", 0.0, "qk_gain must be > 0"),
    ("qk_gain", 1.5, "qk_gain=1.5 starts QK-norm's gains, but qk_norm is off"),
])
def test_bad_model_options_are_user_errors(key, value, message):
    with pytest.raises(UserError, match=message):
        GPTConfig(**{**TINY_GPT_4H, key: value})



# ----------------------------------------------------------------------------- shipped configs

def test_plwiki_gpt_config_has_seed_001s_parameter_count():
    cfg = load_config(train.TrainConfig(), [str(REPO / "config/plwiki_gpt.py")])
    with torch.device("meta"):  # no memory, no init time
        model = build_model(cfg.model, checkpoint.model_args(cfg, 32000))
    # the seed reports 134,367,744 with its 32k vocabulary; ours has 12 x 3072 more (attention biases)
    assert model.num_params() == 134_367_744 + 12 * 4 * 768
