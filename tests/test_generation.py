"""engine.py: sampling filters and draws, generation (greedy, seeded, streamed, sliding past block_size,
cached = uncached, with every option of the modern recipe too), the compiled one-token step and int8 weights;
on a GPU, the CUDA-graph step. engine.Session on trained runs is test_sample.py's."""
import pytest
import torch

import engine
from engine import Int8Linear, compile_step, draw, filter_logits, for_generation, generate, pick, quantize_int8, stream
from conftest import MODERN, TINY_GPT_4H, tiny_gpt
from model import GPT, GPTConfig


def test_filters_never_keep_a_filtered_token():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.07, 0.03]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False, False]]
    # nucleus: 0.5 + 0.25 = 0.75 < 0.8, so the third token is needed too
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False, False]]
    g = torch.Generator().manual_seed(0)
    draws = draw(filter_logits(logits, top_p=0.8).softmax(-1).expand(2000, 5), generator=g)
    assert set(draws.flatten().tolist()) == {0, 1, 2}


def test_draw_samples_the_given_probabilities():
    """Frequencies of 200k draws match the probabilities within 5 standard errors (a false alarm has
    probability ~1e-6 per token; the seed fixes it anyway), zero-probability tokens never come up (first,
    in the middle, last), and a row of one token always gives it."""
    p = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    n = 200_000
    got = draw(p.expand(n, -1), torch.Generator().manual_seed(0)).flatten()
    freq = torch.bincount(got, minlength=len(p)).double() / n
    assert freq[p == 0].sum() == 0
    se = (p.double() * (1 - p.double()) / n).sqrt()
    assert ((freq - p).abs() <= 5 * se + 1e-12).all(), (freq, p)
    one = torch.zeros(3, 50_257)
    one[:, 50_256] = 1.0
    assert draw(one).flatten().tolist() == [50_256] * 3


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_generate_greedy_is_deterministic_and_slides_past_block_size(pos_emb):
    model = tiny_gpt(pos_emb=pos_emb, n_head=4, n_kv_head=2).eval()
    prompt = torch.randint(0, 50, (2, 4))
    a = generate(model, prompt, 40, temperature=0)  # 44 tokens > block_size 16
    b = generate(model, prompt, 40, temperature=0)
    assert a.shape == (2, 44) and torch.equal(a, b) and torch.equal(a[:, :4], prompt)
    # the cached path slides its window exactly like the uncached one, which crops to block_size
    assert torch.equal(generate(model, prompt, 40, temperature=0, cache=False), a)
    # and each greedy token is the argmax of a plain forward over the last block_size tokens
    for t in range(4, 44):
        logits, _ = model(a[:, max(0, t - 16):t])
        assert torch.equal(logits[:, -1].argmax(-1), a[:, t])


@pytest.mark.parametrize("pos_emb,slide", [("learned", 1), ("sinusoidal", 1), ("rope", 1), ("rope", 5), ("learned", 16)])
def test_cached_steps_see_the_logits_of_the_full_context_across_slides(pos_emb, slide, monkeypatch):
    """Every step's logits, cached or recomputed from the window, agree to float32 rounding, also after
    the window has slid past block_size (the tokens alone can agree by chance); slide=1 is nanoGPT's crop."""
    model = tiny_gpt(pos_emb=pos_emb, n_head=4, n_kv_head=2).eval()
    prompt = torch.randint(0, 50, (2, 3))
    seen = {True: [], False: []}
    for cache in (True, False):
        monkeypatch.setattr(engine, "pick", lambda logits, *a, _c=cache, **k: seen[_c].append(logits) or
                            logits.argmax(-1, keepdim=True))
        out = torch.cat(list(stream(model, prompt, 40, cache=cache, slide=slide)), dim=1)  # 43 tokens > block_size 16
    assert len(seen[True]) == 40
    for cached, full in zip(seen[True], seen[False]):
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
    if slide == 1:  # each prediction sees the last block_size tokens, as a plain forward of them does
        full_idx = torch.cat([prompt, out], dim=1)
        last, _ = model(full_idx[:, -17:-1])
        torch.testing.assert_close(seen[True][-1], last[:, -1], atol=1e-5, rtol=0)


def test_slide_must_fit_the_context():
    model = tiny_gpt().eval()
    for slide in (0, 17):
        with pytest.raises(ValueError, match="slide"):
            generate(model, torch.zeros(1, 2, dtype=torch.long), 3, slide=slide)


def test_sampled_generation_is_the_same_cached_or_not():
    model = tiny_gpt(pos_emb="sinusoidal").eval()
    prompt = torch.randint(0, 50, (3, 3))
    runs = [generate(model, prompt, 30, temperature=1.0, top_p=0.9, cache=c,
                     generator=torch.Generator().manual_seed(5)) for c in (True, False)]
    assert torch.equal(*runs)


def test_stream_yields_one_step_at_a_time_and_can_stop_early():
    model = tiny_gpt().eval()
    prompt = torch.randint(0, 50, (2, 3))
    steps = []
    for nxt in stream(model, prompt, 100, temperature=0):
        steps.append(nxt)
        if len(steps) == 5:
            break
    assert [s.shape for s in steps] == [(2, 1)] * 5
    assert torch.equal(torch.cat([prompt, *steps], 1), generate(model, prompt, 5, temperature=0))
    assert generate(model, prompt, 0).shape == (2, 3)


def test_same_seed_same_samples():
    model = tiny_gpt().eval()
    prompt = torch.zeros(3, 1, dtype=torch.long)
    runs = [generate(model, prompt, 20, temperature=1.0, top_k=10,
                     generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_top_k_and_top_p_never_emit_a_filtered_token():
    # a constructed distribution: 0.4, 0.25, 0.2, 0.15 on tokens 0..3, nothing elsewhere
    logits = torch.full((1, 50), float("-inf"))
    logits[0, :4] = torch.log(torch.tensor([0.4, 0.25, 0.2, 0.15]))
    g = torch.Generator().manual_seed(0)
    def draws(**kw):
        return {pick(logits, 1.5, generator=g, **kw).item() for _ in range(400)}
    assert draws() == {0, 1, 2, 3}  # unfiltered, at temperature 1.5 all four come up in 400 draws
    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.5) == {0, 1}  # tempered: 0.35 < 0.5 <= 0.35 + 0.25
    assert draws(top_k=3, top_p=0.99) == {0, 1, 2}
    assert draws(top_p=0.3) == {0}


# ----------------------------------------------------------------------------- fast generation (#14)

def test_compiled_step_compiles_once_as_the_position_advances_and_slides():
    """The static KV cache keeps every shape fixed: one compilation serves every position, the decode
    steps after a slide too (the window is refilled in the same cache), and it generates what eager does."""
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    model = tiny_gpt(n_head=4, pos_emb="rope", n_kv_head=2).eval()
    prompt = torch.randint(0, 50, (2, 4))
    want = generate(model, prompt, 30, temperature=0)  # 34 tokens > block_size 16: slides
    counter = CompileCounter()
    compile_step(model, "cpu", backend=counter)  # the CPU path (its Inductor settings unused by the counter)
    assert torch.equal(generate(model, prompt, 30, temperature=0), want)
    assert counter.frame_count == 1
    assert torch.equal(generate(model, prompt, 30, temperature=0), want) and counter.frame_count == 1
    one = prompt[:, :1]  # a one-token prompt: its prefill is a one-token step too, yet the graph is the same
    assert torch.equal(generate(model, one, 30, temperature=0), generate(model, one, 30, temperature=0, cache=False))
    assert counter.frame_count == 1


def test_int8_weights_stay_close_and_generate():
    """Weight-only int8 (one absmax scale per output row): each weight moves by at most half a step
    (scale / 2), so the logits move by a small fraction of their scale; generation runs on it."""
    model = tiny_gpt(n_head=4, pos_emb="rope", tie_weights=True).eval()
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        want, _ = model(idx)
        lin = model.blocks[0].mlp.fc
        q = Int8Linear(lin, torch.float32)
        assert q.weight.dtype == torch.int8 and q.scale.shape == (lin.out_features,)
        assert (q.weight.float() * q.scale[:, None] - lin.weight).abs().max() <= q.scale.max() / 2 + 1e-7
        quantize_int8(model, torch.float32)
        got, _ = model(idx)  # 24 rows: a prefill, weights dequantized once
        few, _ = model(idx[:1, :8])  # 8 rows: the int8 kernel
    torch.testing.assert_close(few, got[:1, :8], atol=1e-4, rtol=1e-4)  # the two int8 paths agree
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert model.wte.weight.dtype == torch.float32  # the tied embedding stays a float lookup table
    torch.testing.assert_close(got, want, atol=0.05 * want.abs().max().item(), rtol=0)
    assert generate(model, idx[:, :3], 20, temperature=0).shape == (2, 23)


def test_int8_bf16_rows_of_any_width():
    """bf16 activations, several rows, an input width that is no multiple of 32 (a SwiGLU MLP's 88):
    torch's CPU int8 kernel crashes there, so Int8Linear dequantizes instead; both widths agree with it."""
    for width in (88, 96):
        lin = torch.nn.Linear(width, 40, bias=False)
        q = Int8Linear(lin, torch.bfloat16)
        x = torch.randn(8, width).bfloat16()
        want = x.float() @ (q.weight.float() * q.scale.float()[:, None]).t()
        torch.testing.assert_close(q(x).float(), want, atol=0.05 * want.abs().max().item(), rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_generates_what_eager_does():
    """On a GPU: the compiled step that engine.py makes there (CUDA graphs, static cache buffers) gives the
    eager tokens, greedy and sampled (the sampler's draw on the device), across slides. fp32, where the
    two paths differ by rounding only (~1e-6): only two choices that close could come out differently."""
    model = for_generation(tiny_gpt(n_head=4, pos_emb="rope", n_kv_head=2).cuda().eval(), "cuda", "float32")
    prompt = torch.randint(0, 50, (2, 1), device="cuda")
    kw = [dict(temperature=0), dict(temperature=1.0, top_k=10, generator=torch.Generator("cuda").manual_seed(3))]
    want = [generate(model, prompt, 40, **k) for k in kw]  # 41 tokens > block_size 16: slides
    compile_step(model, "cuda")
    kw[1]["generator"].manual_seed(3)
    assert [torch.equal(generate(model, prompt, 40, **k), w) for k, w in zip(kw, want)] == [True, True]


# ----------------------------------------------------------------------------- the modern recipe's options

def test_cached_generation_equals_uncached_with_every_option():
    torch.manual_seed(1)
    model = GPT(GPTConfig(**TINY_GPT_4H, **{**MODERN, "zero_init": False})).eval()
    idx = torch.randint(0, 50, (2, 5))
    # greedy tokens must be identical (the logits agree to float32 rounding, see test_model.py)
    assert torch.equal(generate(model, idx, 30, temperature=0), generate(model, idx, 30, temperature=0, cache=False))
