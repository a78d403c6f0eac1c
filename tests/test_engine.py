"""The training engine: LR schedules and momentum cycling, the time budget under a fake clock, DDP on CPU
(2 gloo processes against 1 process with twice the accumulation, a resume under DDP, no gloo thread left
at the end, a held run lock stopping both processes), bf16 autocast, the LR range test, wandb offline
logging, fine-tuning from a run, checkpoints free of wrapper prefixes, and every shipped config loading."""
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import checkpoint
import common
import dataloader
import model as model_lib
import optim
import train
from model import build_model
from configurator import UserError, load_config
from conftest import REPO, SMALL, cfg_of, events, run_small, small_flags

# ----------------------------------------------------------------------------- schedules (pure functions)

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


def test_bad_engine_settings_are_user_errors(monkeypatch):
    with pytest.raises(UserError, match="schedule must be one of wsd, cosine, onecycle"):
        cfg_of("--schedule=linear")
    with pytest.raises(UserError, match="optimizer must be one of muon, adamw, sgd"):
        cfg_of("--optimizer=adam")
    with pytest.raises(UserError, match="compile must be bool"):
        cfg_of("--compile=maybe")
    assert cfg_of("--compile=False").compile is False and cfg_of().compile is None
    monkeypatch.setenv("WORLD_SIZE", "2")  # checked before any process group is set up
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match=r"grad_accum=3 must be a multiple of the number of processes \(2\)"):
        train.micro_steps(cfg_of("--grad_accum=3"), common.Env(0, 2, "cpu", "float32"))
    with pytest.raises(UserError, match=r"grad_accum=6 must be a multiple of the number of processes \(4\)"):
        monkeypatch.setenv("WORLD_SIZE", "4")
        train.micro_steps(cfg_of("--grad_accum=6"), common.Env(0, 4, "cpu", "float32"))


def test_every_shipped_config_loads():
    configs = sorted((REPO / "config").glob("*.py"))
    assert {"char_enwik8.py", "wikitext2.py", "plwiki_gpt.py", "quickstart.py"} <= {p.name for p in configs}
    for path in configs:
        load_config(train.TrainConfig(), [str(path)])  # validates too
    enwik8 = load_config(train.TrainConfig(), [str(REPO / "config/char_enwik8.py"), "--lr=0.1"])
    assert (enwik8.dataset, enwik8.schedule, enwik8.optimizer, enwik8.lr) == ("enwik8", "onecycle", "sgd", 0.1)


def test_plwiki_gpt_config_has_seed_001s_parameter_count():
    cfg = load_config(train.TrainConfig(), [str(REPO / "config/plwiki_gpt.py")])
    with torch.device("meta"):  # no memory, no init time
        model = build_model(cfg.model, checkpoint.model_args(cfg, 32000))
    # the seed reports 134,367,744 with its 32k vocabulary; ours has 12 x 3072 more (attention biases)
    assert model.num_params() == 134_367_744 + 12 * 4 * 768


# ----------------------------------------------------------------------------- real tiny runs

def test_time_budget_stops_on_a_fake_clock_with_the_schedule_complete(corpus, tmp_path, monkeypatch, capsys):
    now = [1000.0]
    monkeypatch.setattr(train, "time", types.SimpleNamespace(time=lambda: now[0]))  # moves when a batch is drawn
    draw = dataloader.Batches.next

    def one_second_per_batch(self):
        now[0] += 1.0
        return draw(self)
    monkeypatch.setattr(dataloader.Batches, "next", one_second_per_batch)
    out = tmp_path / "run"
    results = run_small(corpus, out, "--max_iters=100000", "--time_budget=0.5", "--eval_interval=10",
                        "--min_lr=0", "--warmup_iters=0")
    assert results["iters"] == 30  # 30 one-second steps fill the 0.5-minute budget
    train_events = events(out, "train")
    assert train_events[-1]["step"] == 30 and train_events[-1]["elapsed_s"] == pytest.approx(30.0)
    cfg = cfg_of("--lr=3e-3", "--min_lr=0", "--warmup_iters=0", "--max_iters=100000", "--time_budget=0.5")
    assert [e["lr"] for e in train_events] == pytest.approx([optim.get_lr(i, i / 30, cfg) for i in range(30)])
    assert [e["step"] for e in events(out, "eval")] == [0, 10, 20, 30]
    log = capsys.readouterr().out
    assert "step 15 |" in log and "elapsed 0:15 | left 0:15" in log


def test_onecycle_momentum_cycles_in_the_optimizer(corpus, tmp_path, monkeypatch):
    seen = []
    apply = optim.set_schedule

    def recorded(optimizers, lr, progress, cfg):
        apply(optimizers, lr, progress, cfg)
        seen.append([(g["lr"], g["momentum"]) for o in optimizers for g in o.param_groups])
    monkeypatch.setattr(train, "set_schedule", recorded)
    run_small(corpus, tmp_path / "run", "--optimizer=sgd", "--schedule=onecycle", "--lr=0.1", "--max_iters=20",
              "--eval_interval=20", "--momentum=0.9", "--momentum_min=0.8", "--cycle_rise=0.25")
    assert len(seen) == 20 and all(len(set(groups)) == 1 for groups in seen)  # every group moves together
    lrs, moms = zip(*(groups[0] for groups in seen))
    assert lrs.index(max(lrs)) == moms.index(min(moms)) == 5  # momentum bottoms out at the LR peak
    assert moms[0] == pytest.approx(0.9) and min(moms) == pytest.approx(0.8) and moms[10:] == pytest.approx([0.9] * 10)
    assert lrs[-1] < lrs[0] / 5  # annihilating


def test_bf16_autocast_trains_close_to_float32(corpus, tmp_path):
    a = run_small(corpus, tmp_path / "fp32", "--max_iters=8", "--eval_interval=8", "--dtype=float32")
    b = run_small(corpus, tmp_path / "bf16", "--max_iters=8", "--eval_interval=8", "--dtype=bfloat16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype_resolved"] == "bfloat16"
    la, lb = [e["loss"] for e in events(tmp_path / "fp32", "train")], [e["loss"] for e in events(tmp_path / "bf16", "train")]
    assert all(math.isfinite(x) for x in lb) and lb[-1] < lb[0]
    assert np.allclose(la, lb, atol=0.03), (la, lb)  # bf16 keeps ~3 significant digits: losses of ~4 agree to ~1%
    assert abs(a["val_loss"] - b["val_loss"]) < 0.03


def test_lr_finder_sweeps_stops_on_divergence_and_suggests(corpus, tmp_path, capsys):
    out = tmp_path / "find"
    cfg = cfg_of(*small_flags(corpus, out, "--lr_find=True", "--lr_find_min=1e-5", "--lr_find_max=100",
                           "--lr_find_iters=60", "--grad_clip=0"))
    result = train.lr_find(cfg)
    assert (out / "lr_find.png").stat().st_size > 0 and (out / "lr_find.json").is_file()
    assert result["diverged"] and len(result["lrs"]) < 60  # stopped before the sweep's end
    assert result["losses"][-1] > train.LR_FIND_DIVERGED * min(result["losses"])
    assert 1e-5 <= result["suggested_lr"] <= result["min_loss_lr"] <= result["lrs"][-1]
    ratios = np.diff(np.log(result["lrs"]))
    assert np.allclose(ratios, math.log(100 / 1e-5) / 59)  # exponential sweep
    assert "suggested lr:" in capsys.readouterr().out
    assert not (out / "ckpt.pt").exists()  # a probe, not a run


def test_wandb_offline_run_is_written(corpus, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    run_small(corpus, out, "--max_iters=4", "--eval_interval=2", "--wandb_log=True", "--wandb_run_name=t")
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), list((out / "wandb").iterdir())
    assert (runs[0] / "files").is_dir()


def test_fine_tune_from_a_run_dir_onto_new_data_with_the_same_tokenizer(corpus, tmp_path, capsys):
    base = tmp_path / "base"
    run_small(corpus, base, "--max_iters=30", "--eval_interval=30", dataset="code_b")
    base_ckpt = torch.load(base / "ckpt.pt", weights_only=True)
    tuned = tmp_path / "tuned"
    results = run_small(corpus, tuned, "--max_iters=6", "--eval_interval=3", f"--init_from={base}",
                        "--n_layer=3", "--lr=1e-3", dataset="other_b")
    assert "fine-tuning keeps the checkpoint's shape: n_layer=2" in capsys.readouterr().out
    assert results["iters"] == 6 and results["dataset"] == "other_b"  # a fresh schedule: step 0 to 6
    first_eval = events(tuned, "eval")[0]
    scratch = tmp_path / "scratch"
    run_small(corpus, scratch, "--max_iters=1", "--eval_interval=1", dataset="other_b")
    assert first_eval["val_loss"] < events(scratch, "eval")[0]["val_loss"] - 0.5  # started from trained weights
    ckpt = torch.load(tuned / "last.pt", weights_only=True)
    assert ckpt["optimizer"][-1]["state"][0]["step"] == 6  # a fresh optimizer (the base's had 30 steps)
    assert base_ckpt["optimizer"][-1]["state"][0]["step"] == 30
    with pytest.raises(UserError, match="trained on a byte vocabulary of 256.*has char with"):
        run_small(corpus, tmp_path / "bad", "--max_iters=2", f"--init_from={base}", dataset="code")
    with pytest.raises(UserError, match="init_from=nowhere is neither"):
        run_small(corpus, tmp_path / "bad", "--max_iters=2", "--init_from=nowhere")


def test_char_vocabularies_must_match_exactly(corpus, tmp_path):
    """Same tokenizer kind and size but other characters: the ids mean different things, so it is refused."""
    meta = json.loads((corpus / "data" / "code" / "meta.json").read_text())
    ckpt = {"meta": {**meta, "vocab": meta["vocab"][::-1]}}
    with pytest.raises(UserError, match="listing different tokens"):
        checkpoint.check_same_tokenizer(ckpt, meta, "data/code")
    checkpoint.check_same_tokenizer({"meta": meta}, meta, "data/code")


def test_compiled_model_checkpoints_have_no_wrapper_prefix(corpus, tmp_path, monkeypatch):
    compile_ = torch.compile
    monkeypatch.setattr(train.torch, "compile", lambda m: compile_(m, backend="eager"))  # dynamo's wrapper, no codegen
    out = tmp_path / "run"
    run_small(corpus, out, "--max_iters=2", "--eval_interval=2", "--compile=True")
    keys = set(torch.load(out / "ckpt.pt", weights_only=True)["model"])
    fresh = build_model("gpt", checkpoint.model_args(cfg_of(*SMALL), 94))
    assert keys == set(fresh.state_dict()) and not any(k.startswith(("_orig_mod.", "module.")) for k in keys)


# ----------------------------------------------------------------------------- DDP on the CPU (gloo)

def torchrun(nproc, args, script="train.py", ok=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                        str(script), *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=240)
    assert (r.returncode == 0) == ok, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout if ok else r.stderr


# train.py's main, then the names of the gloo threads still running in this process
THREADS_LEFT = """import glob, os, sys
sys.path.insert(0, os.getcwd())
import train
from configurator import cli
cli(train.main)
names = [open(f).read().strip() for f in glob.glob("/proc/self/task/*/comm")]
print(f"rank {os.environ['RANK']}: gloo threads left {sorted(n for n in names if 'gloo' in n)}", flush=True)
"""


def test_ddp_two_processes_match_one_with_twice_the_accumulation_and_resume(corpus, tmp_path):
    """2 gloo processes with grad_accum=2 draw exactly the windows of 1 process with grad_accum=2 (process r
    takes micro-batch r of each step) and both sum g0/2 + g1/2, so the curves agree: in our runs bit for bit
    over 30 steps. The 1e-4 bound leaves room for summation-order differences (thread counts, backends)
    while any real mismatch exceeds it: the very same windows cut into 4 micro-batches of 4 instead of 2
    of 8 already move the loss by 2e-3 (bf16); other windows, a missed all-reduce or a wrong loss scale
    by far more. The DDP run stops at step 4 and resumes to 8 under DDP, so resume is covered too.
    When train() returns, no gloo thread is left in either process: one still running could free a tensor of
    the last collective while the interpreter exits, which aborts the process (issue 12's rare SIGABRT)."""
    common = ["--grad_accum=2", "--schedule=constant", "--eval_interval=4", "--dropout=0.0"]
    one = tmp_path / "one"
    run_small(corpus, one, "--max_iters=8", *common)
    ddp = tmp_path / "ddp"
    (tmp_path / "threads_left.py").write_text(THREADS_LEFT)
    log = torchrun(2, small_flags(corpus, ddp, "--max_iters=4", *common), script=tmp_path / "threads_left.py")
    assert "x2 processes" in log and log.count("step 4 |") == 1  # only rank 0 prints
    if sys.platform.startswith("linux"):  # (/proc)
        assert "rank 0: gloo threads left []" in log and "rank 1: gloo threads left []" in log, log[-1500:]
    torchrun(2, small_flags(corpus, ddp, "--max_iters=8", "--init_from=resume", *common))
    a, b = [e["loss"] for e in events(one, "train")], [e["loss"] for e in events(ddp, "train")]
    assert len(a) == len(b) == 8
    assert np.allclose(a, b, rtol=0, atol=1e-4), (a, b)
    assert [e["step"] for e in events(ddp, "eval")] == [0, 4, 4, 8]  # (the resumed run re-evaluates step 4)
    assert events(ddp, "train")[-1]["tokens"] == events(one, "train")[-1]["tokens"] == 8 * 2 * 8 * 32
    keys = torch.load(ddp / "last.pt", weights_only=True)["model"].keys()
    assert not any(k.startswith("module.") for k in keys)


def test_ddp_a_held_run_lock_stops_every_process(corpus, tmp_path):
    """Rank 0 alone takes the run lock, before the processes connect: held by another run, rank 0's one line
    ends the launch (torchrun stops rank 1) instead of rank 1 waiting for it forever, and nothing is written."""
    out = tmp_path / "ddp"
    with checkpoint.RunLock(out):
        err = torchrun(2, small_flags(corpus, out, "--max_iters=4"), ok=False)
        assert f"error: {out} is in use by another training run (pid {os.getpid()} on " in err
        assert [p.name for p in out.iterdir()] == ["run.lock"]


# ----------------------------------------------------------------------------- bench.py

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
