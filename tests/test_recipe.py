"""The modern recipe: model options (RMSNorm, QK-norm, ReLU², zero-init, logit soft-capping), the
warmup-stable-decay schedule, Muon for the hidden matrices with AdamW for the rest (test_train.py resumes
it bit-exactly); the bad inputs each option adds; bench.py's budget comparison on a tiny corpus."""
import math
from pathlib import Path

import pytest
import torch

import optim
import bench
import train
from configurator import UserError, load_config
from engine import generate
from model import GPT, GPTConfig, RMSNorm
from conftest import MODERN, TINY_GPT_4H, cfg_of, run_small_log5

# ----------------------------------------------------------------------------- model options

def test_each_option_changes_the_model_as_named():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_GPT_4H, **MODERN))
    assert isinstance(model.ln_f, RMSNorm) and isinstance(model.blocks[0].ln1, RMSNorm)
    assert isinstance(model.blocks[0].attn.q_norm, RMSNorm) and model.blocks[0].attn.q_norm.weight.shape == (8,)
    x = torch.tensor([-2.0, -0.5, 0.0, 1.5])
    assert torch.equal(model.blocks[0].mlp.act(x), torch.tensor([0.0, 0.0, 0.0, 2.25]))  # ReLU squared
    for name, p in model.named_parameters():  # every block starts as the identity, the head as uniform
        if name.endswith("proj.weight") or name == "lm_head.weight":
            assert torch.count_nonzero(p) == 0, name
    idx = torch.randint(0, 50, (2, 16))
    logits, loss = model(idx, idx)
    assert loss.item() == pytest.approx(math.log(50), abs=1e-6)  # zero logits: exactly uniform
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 5.0)  # huge logits, softly capped below 10
    assert 9.0 < model(idx)[0].abs().max() < 10.0
    capped_off = GPT(GPTConfig(**TINY_GPT_4H, **{**MODERN, "logit_softcap": 0.0}))
    capped_off.load_state_dict(model.state_dict())
    assert capped_off(idx)[0].abs().max() > 20.0


def test_gpt2_defaults_are_unchanged_by_the_options():
    base = GPT(GPTConfig(**TINY_GPT_4H))
    assert isinstance(base.ln_f, torch.nn.LayerNorm) and not hasattr(base.blocks[0].attn, "q_norm")
    assert base.lm_head.weight is base.wte.weight and base.blocks[0].mlp.act is torch.nn.functional.gelu
    assert torch.count_nonzero(base.blocks[0].attn.proj.weight) > 0


def test_rmsnorm_is_computed_in_fp32_and_keeps_the_input_dtype():
    norm = RMSNorm(16)
    x = torch.randn(4, 16) * 100
    assert torch.allclose(norm(x), x / x.pow(2).mean(-1, keepdim=True).sqrt(), atol=1e-4)
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_cached_generation_equals_uncached_with_every_option():
    torch.manual_seed(1)
    model = GPT(GPTConfig(**TINY_GPT_4H, **{**MODERN, "zero_init": False})).eval()
    idx = torch.randint(0, 50, (2, 5))
    # greedy tokens must be identical (the logits agree to float32 rounding, see test_model.py)
    assert torch.equal(generate(model, idx, 30, temperature=0), generate(model, idx, 30, temperature=0, cache=False))


@pytest.mark.parametrize("key,value,message", [
    ("norm", "batchnorm", "norm must be one of layernorm, rmsnorm"),
    ("activation", "swish", "activation must be one of gelu"),
    ("logit_softcap", -1.0, "logit_softcap must be >= 0"),
])
def test_bad_model_options_are_user_errors(key, value, message):
    with pytest.raises(UserError, match=message):
        GPTConfig(**TINY_GPT_4H, **{key: value})


# ----------------------------------------------------------------------------- schedule and optimizers

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


def test_onecycle_cycles_muons_momentum_and_adamws_beta1():
    cfg = cfg_of("--optimizer=muon", "--schedule=onecycle", "--cycle_rise=0.4", "--momentum_min=0.8",
                 "--muon_momentum=0.95", "--beta1=0.9")
    model = GPT(GPTConfig(**TINY_GPT_4H))
    muon, adamw = optim.make_optimizers(cfg, model, "cpu")
    optim.set_schedule([muon, adamw], 1e-3, 0.4, cfg)  # the LR peak: momentum at its lowest
    assert muon.param_groups[0]["momentum"] == pytest.approx(0.8) and adamw.param_groups[0]["betas"][0] == pytest.approx(0.8)
    optim.set_schedule([muon, adamw], 1e-3, 0.9, cfg)
    assert muon.param_groups[0]["momentum"] == pytest.approx(0.95) and adamw.param_groups[0]["betas"][0] == pytest.approx(0.9)


def test_muon_without_hidden_matrices_is_a_user_error():
    bare = GPT(GPTConfig(**{**TINY_GPT_4H, "n_layer": 0}))  # embeddings and the output layer only
    with pytest.raises(UserError, match="optimizer=muon needs 2-D hidden weight matrices.*--optimizer=adamw"):
        optim.make_optimizers(cfg_of("--optimizer=muon", "--n_layer=0"), bare, "cpu")
    assert len(optim.make_optimizers(cfg_of("--optimizer=adamw"), bare, "cpu")) == 1


@pytest.mark.parametrize("argv,message", [
    (["--decay_frac=0"], r"decay_frac must be in \(0, 1\]"),
    (["--decay_frac=1.5"], r"decay_frac must be in \(0, 1\]"),
    (["--decay_shape=cosine"], "decay_shape must be one of linear, sqrt"),
    (["--optimizer=lion"], "optimizer must be one of muon, adamw, sgd"),
    (["--muon_momentum=1.0"], "muon_momentum in"),
])
def test_bad_recipe_settings_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        cfg_of(*argv)


# ----------------------------------------------------------------------------- real tiny runs

def test_resume_refuses_flags_for_another_architecture_or_optimizer(corpus, tmp_path):
    out = tmp_path / "run"
    run_small_log5(corpus, out, "--max_iters=5", "--eval_interval=5")  # TrainConfig's defaults
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".pt"}
    d = train.TrainConfig()
    other = {"norm": "layernorm" if d.norm == "rmsnorm" else "rmsnorm", "qk_norm": not d.qk_norm,
             "optimizer": "sgd", "activation": "gelu_tanh", "zero_init": not d.zero_init}
    for key, value in other.items():  # (a flag equal to the default cannot be told apart from no flag)
        with pytest.raises(UserError, match=f"resume keeps the model and optimizer of the checkpoint.*{key}"):
            run_small_log5(corpus, out, "--max_iters=10", "--init_from=resume", f"--{key}={value}")
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".pt"}


def test_bench_budget_tabulates_every_recipe(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "REPO", str(tmp_path))  # results under tmp_path/out; data linked from the corpus
    (tmp_path / "data").symlink_to(corpus / "data")
    for name in ("train.py", "prepare.py", "model.py", "rnn.py", "configurator.py", "hf.py"):
        (tmp_path / name).symlink_to(Path(train.__file__).parent / name)
    small = ["--n_layer=1", "--n_embd=16", "--n_head=2", "--final_eval_tokens=500"]
    monkeypatch.setitem(bench.RECIPES, "nanogpt", bench.RECIPES["nanogpt"] + small)
    monkeypatch.setitem(bench.RECIPES, "default", bench.RECIPES["default"] + small + ["--block_size=32"])
    bc = load_config(bench.BenchConfig(), ["--dataset=code", "--budget=0.05", "--recipes=nanogpt,default",
                                                "--parallel=True"])
    runs = bench.bench_budget(bc)
    out = capsys.readouterr().out
    assert "side by side (1 CPU thread(s) each)" in out and "| recipe | steps | tokens seen | tokens/s | val loss (min)" in out
    for name in ("nanogpt", "default"):
        (res,) = runs[name]
        assert res["iters"] > 0 and 2.0 <= res["wall_time_s"] < 30 and res["val_tokens_scored"] > 0
        assert f"| {name} | {res['iters']:,} | {res['tokens_seen']:,} |" in out
    assert (tmp_path / "out" / "bench-budget-code-0.05m" / "table.md").is_file()
    with pytest.raises(UserError, match="budget needs --recipes from nanogpt"):
        bench.bench_budget(load_config(bench.BenchConfig(), ["--recipes=fastest"]))


def test_modern_config_is_the_defaults_and_seed_configs_pin_gpt2():
    repo = Path(train.__file__).parent
    layer = load_config(train.TrainConfig(), [str(repo / "config" / "modern.py")])
    assert layer == load_config(train.TrainConfig(), [])  # config/modern.py restates the defaults, nothing else
    for seed in ("char_enwik8", "wikitext2", "plwiki_gpt"):
        cfg = load_config(train.TrainConfig(), [str(repo / "config" / f"{seed}.py")])
        assert (cfg.pos_emb, cfg.norm, cfg.qk_norm, cfg.activation, cfg.zero_init, cfg.bias) == \
            ("learned", "layernorm", False, "gelu", False, True), seed
        modern = load_config(train.TrainConfig(), [str(repo / "config" / f"{seed}.py"), str(repo / "config" / "modern.py")])
        assert (modern.n_layer, modern.n_embd, modern.dataset) == (cfg.n_layer, cfg.n_embd, cfg.dataset)
        assert (modern.optimizer, modern.schedule, modern.norm) == ("muon", "wsd", "rmsnorm")
