"""bench.py: the training benchmark (every setting timed on one model, MFU against its dtype's peak), the
generation benchmark (rows against the memory-bandwidth limit) and the budget comparison of recipes on a tiny
corpus."""
import json
from pathlib import Path

import pytest
import torch

import bench
import common
import model as model_lib
import optim
import train
from configurator import UserError, load_config
from conftest import cfg_of

pytestmark = pytest.mark.slow  # benchmarks (the budget comparison runs train.py in subprocesses)


def test_bench_times_every_setting_on_one_model():
    import bench
    cfg = model_lib.GPTConfig(**model_lib.RECIPE_ARCH, vocab_size=32, n_layer=1, n_head=2, n_embd=16, block_size=16)
    cfg.pos_emb = "learned"
    settings = [("plain", "float32", False, False), ("bf16", "bfloat16", False, True)]
    rows = bench.bench_model("tiny", cfg, optim.OptimConfig(), 2, 16, "cpu", settings, 2,
                             {"float32": 1e9, "bfloat16": 2e9})
    assert [r["setting"] for r in rows] == ["plain", "bf16"] and rows[0]["vs_plain"] == 1.0
    model = model_lib.GPT(cfg)
    fpt = 6 * (model.num_params() - 16 * 16) + 12 * 1 * 16 * 16  # no FLOPs for the position lookup
    assert bench.flops_per_token(model, cfg, 16) == fpt
    for r, peak in zip(rows, (1e9, 2e9)):
        assert r["tok_s"] == pytest.approx(32 / (r["ms_step"] / 1000))
        assert r["mfu"] == pytest.approx(fpt * r["tok_s"] / peak)  # against the peak of its own dtype
    with pytest.raises(UserError, match="unknown benchmark 'speed'"):
        bench.main(["speed"])
    with pytest.raises(UserError, match="threads must be >= 0 .* got -1 and 3"):
        bench.main(["profile", "--threads=-1"])


def test_profile_splits_the_default_steps_into_their_phases(monkeypatch, capsys):
    """A short run's eager step, then a long run's compiled one on longer windows (the same tokens a step)."""
    cfg = bench.recipe_config(vocab_size=32, n_layer=1, n_head=2, n_embd=16, block_size=16)
    monkeypatch.setattr(bench, "shapes", lambda device: [("tiny", cfg, optim.OptimConfig(), 64, 16)])
    monkeypatch.setattr(bench, "PROFILE_STEPS", 3)
    compile_, compiled = torch.compile, []
    monkeypatch.setattr(bench.torch, "compile", lambda m: compiled.append(m) or compile_(m, backend="eager"))
    monkeypatch.setattr(common, "cpu_kernels_buildable", lambda: True)  # wherever this runs
    bench.main(["profile", "--device=cpu"])
    out = capsys.readouterr().out
    eager, _, long = out.partition("compiled: a run of")
    assert "the default training step: tiny (64 x 16 tokens)" in eager and "eager" in eager
    assert "the default training step: tiny (4 x 256 tokens)" in eager.splitlines()[-1]  # the second heading
    assert len(compiled) == 1 and compiled[0].cfg.block_size == 256
    for section in (eager, long):
        shares = [float(line.split()[-1].rstrip("%")) for line in section.splitlines()
                  if line.split()[:1] and line.split()[0] in ("forward", "backward", "clip", "Muon", "AdamW")]
        assert len(shares) == 5 and all(x >= 0 for x in shares) and 50 < sum(shares) < 150  # medians of parts
    assert out.count("median of 3 steps") == 2 and out.count("aten::mm") >= 2  # and an operator table each
    capsys.readouterr()
    bench.main(["profile", "--device=cpu", "--compile=False"])
    assert "compiled" not in capsys.readouterr().out and len(compiled) == 1


def test_generation_benchmark_rows_measure_against_the_bandwidth_limit():
    """bench.py generate times whole generations; each row's limit is the bandwidth over the bytes one step reads."""
    import bench
    rows = bench.generation_benchmark(shapes=("quickstart",), batches=(1, 2), lengths=(8,), modes=("old", "eager"))
    assert [(r["mode"], r["batch"]) for r in rows] == [("old", 1), ("old", 2), ("eager", 1), ("eager", 2)]
    for r in rows:
        assert r["tok_s"] > 0 and r["limit_tok_s"] == pytest.approx(r["batch"] * r["bandwidth"] / r["bytes_per_step"])
    model = bench.GPT(bench.generation_shapes()["quickstart"])  # untied head, RoPE, no biases
    weights = sum(p.numel() for p in model.parameters()) - model.wte.weight.numel()  # the embedding is a lookup
    cache = 2 * 4 * 3 * 4 * 128 * 32  # keys and values: layers x batch x heads x 128 slots x head size
    assert bench.bytes_per_step(model, 3, 128) == 4 * (weights + cache)


def test_bench_budget_tabulates_every_recipe(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "REPO", str(tmp_path))  # results under tmp_path/out; data linked from the corpus
    (tmp_path / "data").symlink_to(corpus / "data")
    for name in ("train.py", "prepare.py", "model.py", "rnn.py", "configurator.py", "hf.py"):
        (tmp_path / name).symlink_to(Path(train.__file__).parent / name)
    small = ["--n_layer=1", "--n_embd=16", "--n_head=2", "--final_eval_tokens=500"]
    monkeypatch.setitem(bench.RECIPES, "nanogpt", bench.RECIPES["nanogpt"] + small)
    monkeypatch.setitem(bench.RECIPES, "default", bench.RECIPES["default"] + small + ["--block_size=32"])
    bc = load_config(bench.BenchConfig(), ["--dataset=code", "--budget=0.05", "--recipes=nanogpt,default",
                                                "--parallel=True", "--seed=7"])
    runs = bench.bench_budget(bc)
    out = capsys.readouterr().out
    assert "side by side (1 CPU thread(s) each)" in out and "| recipe | params | steps | tokens seen | tokens/s | val loss (min)" in out
    for name in ("nanogpt", "default"):
        (res,) = runs[name]
        assert res["iters"] > 0 and 2.0 <= res["wall_time_s"] < 30 and res["val_tokens_scored"] > 0
        assert f"| {name} | {res['params'] / 1e6:.2f}M | {res['iters']:,} | {res['tokens_seen']:,} |" in out
        config = json.loads((tmp_path / "out" / "bench-budget-code-0.05m" / f"{name}-0" / "config.json").read_text())
        assert config["seed"] == 7  # the first round's seed
    assert (tmp_path / "out" / "bench-budget-code-0.05m" / "table.md").is_file()
    with pytest.raises(UserError, match="budget needs --recipes from nanogpt"):
        bench.bench_budget(load_config(bench.BenchConfig(), ["--recipes=fastest"]))



@pytest.mark.parametrize("name", list(bench.RECIPES))
def test_every_budget_recipe_is_a_valid_training_config(name):
    cfg = cfg_of(*bench.RECIPES[name])  # a key train.py does not know, or a bad value, is a UserError here
    assert cfg.n_layer == 4 and cfg.n_embd == 128  # the one model every recipe trains (auto sizes it at run time)
