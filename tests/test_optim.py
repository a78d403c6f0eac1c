"""optim.py: the LR schedule as a pure function of progress (warmup then cosine, onecycle with its momentum
opposite, invsqrt, step, constant, warmup-stable-decay) and the time budget ending it; Muon for the hidden
matrices with AdamW for the rest, the momentum and beta1 they cycle; the optimizer settings' errors. The
schedule inside a real run is test_train.py's."""
import math

import pytest
import torch

import common
import optim
import train
from configurator import UserError
from conftest import MODERN, TINY_GPT_4H, cfg_of
from model import GPT, GPTConfig


# ----------------------------------------------------------------------------- schedules (pure functions)

def test_lr_schedule_warmup_then_cosine():
    cfg = train.TrainConfig(schedule="cosine", lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=100)
    lrs = [optim.get_lr(it, optim.progress_of(it, 0, cfg), cfg) for it in range(101)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # warmup rises
    assert lrs[0] == pytest.approx(1e-3 / 11)
    assert max(lrs) == lrs[10] == pytest.approx(1e-3)  # the peak is lr, right after warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then never rises
    assert lrs[100] == pytest.approx(1e-4)  # ends exactly at min_lr
    assert optim.get_lr(55, 0.55, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half-way through the decay


def test_progress_is_the_further_of_iterations_and_time_budget():
    cfg = train.TrainConfig(max_iters=1000, time_budget=2.0)
    assert optim.progress_of(100, 0.0, cfg) == pytest.approx(0.1)
    assert optim.progress_of(100, 60.0, cfg) == pytest.approx(0.5)  # one of two minutes
    assert optim.progress_of(10, 120.0, cfg) >= 1.0


def lrs_over(cfg, n=200):
    return [optim.get_lr(it, optim.progress_of(it, 0, cfg), cfg) for it in range(n + 1)]


def test_onecycle_rises_falls_then_annihilates_with_momentum_opposite():
    cfg = cfg_of("--schedule=onecycle", "--optimizer=sgd", "--lr=0.1", "--cycle_div=1000", "--cycle_rise=0.4",
                 "--cycle_final_div=100", "--momentum=0.9", "--momentum_min=0.8", "--max_iters=200")
    lrs = lrs_over(cfg)
    assert lrs[0] == pytest.approx(1e-4)  # seed 004: lr [0.0001, 0.1]
    assert max(lrs) == lrs[80] == pytest.approx(0.1)  # the peak at cycle_rise
    assert all(a < b for a, b in zip(lrs[:80], lrs[1:81]))  # linear rise...
    assert lrs[40] == pytest.approx((1e-4 + 0.1) / 2)
    assert all(a > b for a, b in zip(lrs[80:160], lrs[81:161]))  # ...the mirror fall...
    assert lrs[120] == pytest.approx(lrs[40]) and lrs[160] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs[160:], lrs[161:]))  # ...then annihilation far below the start
    assert lrs[200] == pytest.approx(1e-6)
    moms = [optim.get_momentum(optim.progress_of(it, 0, cfg), cfg) for it in range(201)]
    assert moms[0] == pytest.approx(0.9) and moms[80] == pytest.approx(0.8) == min(moms)
    assert moms[160] == pytest.approx(0.9) and moms[200] == pytest.approx(0.9)
    assert moms[40] == pytest.approx(0.85) and moms[120] == pytest.approx(0.85)
    adam = cfg_of("--optimizer=adamw", "--schedule=onecycle", "--beta1=0.95", "--momentum_min=0.85")  # adamw cycles beta1
    assert optim.get_momentum(0.0, adam) == pytest.approx(0.95)
    assert optim.get_momentum(adam.cycle_rise, adam) == pytest.approx(0.85)
    assert optim.get_momentum(0.5, cfg_of("--optimizer=adamw", "--schedule=cosine", "--beta1=0.93")) == 0.93  # constant elsewhere


def test_invsqrt_step_and_constant_schedules():
    cfg = cfg_of("--schedule=invsqrt", "--lr=1e-3", "--warmup_iters=10")
    lrs = lrs_over(cfg, 400)
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) == max(lrs)  # linear warmup to the peak
    assert lrs[39] == pytest.approx(1e-3 / 2) and lrs[399] == pytest.approx(1e-3 / math.sqrt(40))  # then 1/sqrt
    # the Transformer's formula, d_model^-0.5 * min(s^-0.5, s * w^-1.5), is this with lr = (d_model * w)^-0.5
    vaswani = cfg_of("--schedule=invsqrt", f"--lr={(512 * 4000) ** -0.5}", "--warmup_iters=4000")
    for s in (1, 1000, 4000, 9000):
        assert optim.get_lr(s - 1, 0, vaswani) == pytest.approx(512 ** -0.5 * min(s ** -0.5, s * 4000 ** -1.5))

    cfg = cfg_of("--schedule=step", "--lr=1e-2", "--warmup_iters=0", "--step_every=0.25", "--step_gamma=0.5",
                 "--max_iters=100")
    lrs = lrs_over(cfg, 99)
    assert lrs[0] == lrs[24] == 1e-2 and lrs[25] == lrs[49] == pytest.approx(5e-3)
    assert lrs[50] == pytest.approx(2.5e-3) and lrs[99] == pytest.approx(1.25e-3)

    cfg = cfg_of("--schedule=constant", "--lr=1e-3", "--warmup_iters=4", "--max_iters=50")
    lrs = lrs_over(cfg, 50)
    assert lrs[:4] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4]) and set(lrs[4:]) == {1e-3}


def test_schedules_end_with_the_time_budget():
    """Under a budget the schedule runs on elapsed time: half the budget is half the cosine, whatever the step."""
    cfg = cfg_of("--schedule=cosine", "--lr=1e-3", "--min_lr=0", "--warmup_iters=0", "--max_iters=0", "--time_budget=10")
    assert optim.get_lr(7, optim.progress_of(7, 300.0, cfg), cfg) == pytest.approx(5e-4)
    assert optim.get_lr(9, optim.progress_of(9, 600.0, cfg), cfg) == pytest.approx(0.0)
    one = cfg_of("--schedule=onecycle", "--max_iters=0", "--time_budget=10", "--cycle_rise=0.5")
    assert optim.get_lr(3, optim.progress_of(3, 300.0, one), one) == pytest.approx(one.lr)


def test_wsd_warms_up_holds_then_decays_to_zero_linear_or_sqrt():
    cfg = cfg_of("--schedule=wsd", "--lr=1e-3", "--warmup_iters=10", "--max_iters=100", "--decay_frac=0.4",
                 "--time_budget=0")
    lrs = [optim.get_lr(it, optim.progress_of(it, 0, cfg), cfg) for it in range(101)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10])) and lrs[9] < 1e-3  # warmup
    assert lrs[10:61] == pytest.approx([1e-3] * 51)  # stable until 60% of the run
    assert all(a > b for a, b in zip(lrs[60:], lrs[61:]))  # then decays...
    assert lrs[80] == pytest.approx(5e-4) and lrs[100] == 0.0  # ...linearly, to zero at the end
    sqrt = cfg_of("--schedule=wsd", "--lr=1e-3", "--warmup_iters=10", "--max_iters=100", "--decay_frac=0.4",
                  "--decay_shape=sqrt")
    assert optim.get_lr(80, 0.8, sqrt) == pytest.approx(1e-3 * (1 - math.sqrt(0.5)))  # 1 - sqrt: drops early
    assert optim.get_lr(100, 1.0, sqrt) == 0.0
    budget = cfg_of("--schedule=wsd", "--max_iters=1000000", "--time_budget=1", "--warmup_iters=0")
    assert optim.get_lr(50, optim.progress_of(50, 60.0, budget), budget) == 0.0  # the budget ends the decay



# ----------------------------------------------------------------------------- optimizers

def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig(**TINY_GPT_4H, **MODERN))
    muon, adamw = optim.make_optimizers(cfg_of("--optimizer=muon", "--muon_lr_scale=2.0", "--lr=1e-3"), model, "cpu")
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon == {f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}
    assert {"wte.weight", "lm_head.weight", "ln_f.weight", "blocks.0.attn.q_norm.weight"} <= in_adamw
    assert in_muon.isdisjoint(in_adamw) and len(in_muon | in_adamw) == len(names)
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"  # the same lr gives AdamW's update RMS
    optim.set_schedule([muon, adamw], 1e-3, 0.5, cfg_of("--optimizer=muon", "--muon_lr_scale=2.0"))
    assert muon.param_groups[0]["lr"] == pytest.approx(2e-3) and adamw.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_weight_decay_spares_the_embeddings_and_output_layer_unless_asked():
    model = GPT(GPTConfig(**TINY_GPT_4H, **MODERN, x0_mix=True))  # (its scales: in AdamW, not decayed)
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = {f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}

    def decayed(*argv):
        optimizers = optim.make_optimizers(cfg_of(*argv), model, "cpu")
        return {names[id(p)] for o in optimizers for g in o.param_groups if g["weight_decay"] for p in g["params"]}
    for opt in ("muon", "adamw"):
        assert decayed(f"--optimizer={opt}") == hidden
        assert decayed(f"--optimizer={opt}", "--decay_embeddings=True") == hidden | {"wte.weight", "lm_head.weight"}
    adamw = optim.make_optimizers(cfg_of("--optimizer=muon"), model, "cpu")[1]
    assert {"resid_scale", "x0_scale"} <= {names[id(p)] for g in adamw.param_groups for p in g["params"]}


@pytest.mark.parametrize("nesterov", [True, False])
def test_our_muon_steps_as_pytorchs_and_shares_its_state(nesterov, monkeypatch):
    """optim.Muon batches same-shape matrices (two layers here, tall, wide and square ones): the parameters
    and momentum buffers after a few steps equal torch.optim.Muon's, and their state dicts load into each other.
    (Orthogonalizing in bf16 as PyTorch's does, which ours does where the CPU multiplies bf16 natively.)"""
    monkeypatch.setattr(optim, "ns_dtype", lambda device: torch.bfloat16)
    models = [GPT(GPTConfig(**TINY_GPT_4H, **MODERN)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    hidden = [[p for p in m.parameters() if p.dim() == 2][1:-1] for m in models]  # not the embedding or head
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
    ours, theirs = optim.Muon(hidden[0], **kw), torch.optim.Muon(hidden[1], **kw)
    assert len({p.shape for p in hidden[0]}) < len(hidden[0])  # some shapes repeat: batched
    before = [p.clone() for p in hidden[0]]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(*hidden):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        ours.step()
        theirs.step()
    for a, b in zip(*hidden):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours.state[a]["momentum_buffer"], theirs.state[b]["momentum_buffer"])
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(hidden[0], before))  # every matrix moved
    theirs.load_state_dict(ours.state_dict())  # a checkpoint of either loads into the other


def test_muon_orthogonalizes_in_bf16_only_where_the_cpu_has_it(monkeypatch):
    """Newton-Schulz runs in bf16 where the CPU multiplies bf16 natively, in fp32 where it would emulate it
    (many times slower there); both give the same update but for bf16's rounding."""
    cpu = torch.device("cpu")
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: native)
        assert optim.ns_dtype(cpu) == dtype
    g = torch.randn(3, 48, 16, generator=torch.Generator().manual_seed(0))
    group = torch.optim.Muon([torch.nn.Parameter(torch.zeros(2, 2))]).param_groups[0]  # PyTorch's defaults
    fp32, bf16 = (optim.newton_schulz(g, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                  for dtype in (torch.float32, torch.bfloat16))
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    torch.testing.assert_close(fp32, bf16.float(), atol=0.05, rtol=0)  # the same orthogonalization...
    assert (fp32 - bf16.float()).abs().max() > 1e-4  # ...not computed in the same dtype
    sv = torch.linalg.svdvals(fp32)  # Muon's quintic leaves singular values near 1 (in about 0.7 to 1.2)
    assert sv.min() > 0.6 and sv.max() < 1.25


def test_normuon_evens_out_the_neurons_and_keeps_the_updates_norm():
    """With normuon, Muon's first update of a tall matrix has every row (neuron) at one norm, and the
    whole update the norm of the plain Muon update; the running square is kept per matrix in its state."""
    deltas = {}
    for normuon in (False, True):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(48, 16))
        before = p.detach().clone()
        muon = optim.Muon([p], lr=0.02, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
        muon.param_groups[0]["normuon"] = normuon
        p.grad = torch.randn(48, 16, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 3, 48)[:, None]
        muon.step()
        deltas[normuon] = p.detach() - before
        assert ("neuron_sq" in muon.state[p]) == normuon
    rows = deltas[True].norm(dim=1)
    assert rows.std() / rows.mean() < 1e-3 < deltas[False].norm(dim=1).std() / deltas[False].norm(dim=1).mean()
    torch.testing.assert_close(deltas[True].norm(), deltas[False].norm(), rtol=1e-4, atol=0)
    model = GPT(GPTConfig(**TINY_GPT_4H, **MODERN))  # the recipe turns it on; a config can turn it off
    assert optim.make_optimizers(cfg_of(), model, "cpu")[0].param_groups[0]["normuon"]
    assert not optim.make_optimizers(cfg_of("--normuon=False"), model, "cpu")[0].param_groups[0]["normuon"]


def test_onecycle_cycles_muons_momentum_and_adamws_beta1():
    cfg = cfg_of("--optimizer=muon", "--schedule=onecycle", "--cycle_rise=0.4", "--momentum_min=0.8",
                 "--muon_momentum=0.95", "--beta1=0.9")
    model = GPT(GPTConfig(**TINY_GPT_4H))
    muon, adamw = optim.make_optimizers(cfg, model, "cpu")
    optim.set_schedule([muon, adamw], 1e-3, 0.4, cfg)  # the LR peak: momentum at its lowest
    assert muon.param_groups[0]["momentum"] == pytest.approx(0.8) and adamw.param_groups[0]["betas"][0] == pytest.approx(0.8)
    optim.set_schedule([muon, adamw], 1e-3, 0.9, cfg)
    assert muon.param_groups[0]["momentum"] == pytest.approx(0.95) and adamw.param_groups[0]["betas"][0] == pytest.approx(0.9)


@pytest.mark.parametrize("opt", ["muon", "adamw"])
def test_cosine_weight_decay_fades_to_zero_and_resumes_from_its_top(opt):
    model = GPT(GPTConfig(**TINY_GPT_4H, **MODERN))
    cfg = cfg_of(f"--optimizer={opt}", "--wd_schedule=cosine", "--weight_decay=0.4")

    def decays(optimizers):  # each group's weight decay now, in order
        return [g["weight_decay"] for o in optimizers for g in o.param_groups]
    optimizers = optim.make_optimizers(cfg, model, "cpu")
    top = decays(optimizers)
    assert 0.4 in top and 0.0 in top  # the hidden matrices decay, the rest do not
    for progress, share in [(0.0, 1.0), (0.5, 0.5), (0.25, 0.5 + 0.5 * math.cos(math.pi / 4)), (1.0, 0.0), (1.3, 0.0)]:
        optim.set_schedule(optimizers, 1e-3, progress, cfg)
        assert decays(optimizers) == pytest.approx([w * share for w in top])
    optim.set_schedule(optimizers, 1e-3, 0.5, cfg)
    resumed = optim.make_optimizers(cfg, model, "cpu")  # a resumed run: the state saved half-way through
    for o, saved in zip(resumed, optimizers):
        o.load_state_dict(saved.state_dict())
    optim.set_schedule(resumed, 1e-3, 0.75, cfg)  # from the top, not from the half already in effect
    assert decays(resumed) == pytest.approx([w * (0.5 + 0.5 * math.cos(0.75 * math.pi)) for w in top])
    optim.set_schedule(optimizers, 1e-3, 0.5, cfg_of(f"--optimizer={opt}", "--weight_decay=0.4"))  # constant
    assert decays(optimizers) == top


def test_muon_without_hidden_matrices_is_a_user_error():
    bare = GPT(GPTConfig(**{**TINY_GPT_4H, "n_layer": 0}))  # embeddings and the output layer only
    with pytest.raises(UserError, match="optimizer=muon needs 2-D hidden weight matrices.*--optimizer=adamw"):
        optim.make_optimizers(cfg_of("--optimizer=muon", "--n_layer=0"), bare, "cpu")
    assert len(optim.make_optimizers(cfg_of("--optimizer=adamw"), bare, "cpu")) == 1


@pytest.mark.parametrize("argv,message", [
    (["--decay_frac=0"], r"decay_frac must be in \(0, 1\]"),
    (["--decay_frac=1.5"], r"decay_frac must be in \(0, 1\]"),
    (["--decay_shape=cosine"], "decay_shape must be one of linear, sqrt"),
    (["--wd_schedule=linear"], "wd_schedule must be one of constant, cosine, not 'linear'"),
    (["--optimizer=lion"], "optimizer must be one of muon, adamw, sgd"),
    (["--muon_momentum=1.0"], "muon_momentum in"),
    (["--max_iters=-1", "--time_budget=1"], r"max_iters and time_budget must be >= 0 .* not -1 and 1"),
    (["--time_budget=-2"], r"max_iters and time_budget must be >= 0 .* not 2000 and -2"),
])
def test_bad_recipe_settings_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        cfg_of(*argv)
