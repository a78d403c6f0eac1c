"""train.py, the training loop: a complete run and the files it writes, the best checkpoint kept, faithful
resume (bit-identical losses), the time budget on a fake clock, onecycle momentum moving in the optimizer,
bf16 autocast, the LR range test, wandb offline logging, DDP on the CPU (2 gloo processes against 1 process
with twice the accumulation, a resume under DDP, no gloo thread left at the end, a held run lock stopping
both processes); TrainConfig's validation and every shipped config. Signals, kills, a second run, nan losses
and full disks are test_train_faults.py's."""
import json
import math
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import common
import dataloader
import optim
import train
from configurator import UserError, load_config
from conftest import REPO, cfg_of, events, run_small, run_small_log5, small_flags
from model import GPT2_ARCH, RECIPE_ARCH


# ----------------------------------------------------------------------------- configuration

def test_config_validation_messages():
    with pytest.raises(UserError, match="n_embd=30 must be a multiple of n_head=4"):
        load_config(train.TrainConfig(), ["--n_embd=30"])
    with pytest.raises(UserError, match="model must be gpt, lstm or gru"):
        load_config(train.TrainConfig(), ["--model=transformer"])


def test_options_the_chosen_model_lacks_are_noted_as_ignored(tmp_path, capsys):
    rnn_rope = tmp_path / "rnn_rope.py"
    rnn_rope.write_text("model = 'lstm'\npos_emb = 'rope'\n")
    for argv, note in [(["--model=lstm", "--x0_mix=True", "--n_head=8"], "model=lstm ignores n_head, x0_mix (options "
                                                                          "of a GPT only)"),
                       (["--n_hidden=64"], "model=gpt ignores n_hidden (options of an LSTM/GRU only)"),
                       ([str(rnn_rope)], "model=lstm ignores pos_emb (options of a GPT only)")]:
        cfg_of(*argv)
        assert capsys.readouterr().out == f"note: {note}\n"
    # a config layered on a GPT's keeps the GPT's keys unremarked, and a fine-tune's shape is its checkpoint's
    config = REPO / "config"
    for argv in ([config / "quickstart.py", config / "quickstart_lstm.py"],
                 [config / "plwiki_gpt.py", config / "plwiki_lstm.py"],
                 ["--init_from=out/x", "--n_hidden=64"], ["--n_head=8"]):
        cfg_of(*map(str, argv))
        assert capsys.readouterr().out == ""


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
        assert all(getattr(modern, k) == v for k, v in RECIPE_ARCH.items()), seed  # the whole recipe, over GPT-2's



# ----------------------------------------------------------------------------- a real tiny run

def losses(out):
    return [e["loss"] for e in map(json.loads, open(Path(out) / "metrics.jsonl")) if e["event"] == "train"]


def test_train_writes_a_complete_run(corpus, tmp_path):
    out = tmp_path / "run"
    results = run_small_log5(corpus, out, "--max_iters=40", "--eval_interval=20")
    for name in ("ckpt.pt", "last.pt", "config.json", "metrics.jsonl", "results.json", "results.md",
                 "learning_curves.png", "model_summary.txt"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved == results
    assert results["tokens_seen"] == 40 * 8 * 32 and results["iters"] == 40
    assert results["test_loss"] < math.log(results_vocab(corpus))  # learned something
    assert results["test_bpb"] == pytest.approx(results["test_loss"] / math.log(2), rel=0.01)  # ~ASCII: 1 byte/char
    events = [json.loads(line) for line in open(out / "metrics.jsonl")]
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 20, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert {"step", "tokens", "loss", "lr", "tokens_per_s", "elapsed_s"} <= set(events[1])


def results_vocab(corpus):
    return json.loads((corpus / "data" / "code" / "meta.json").read_text())["vocab_size"]


def test_best_checkpoint_is_only_replaced_by_a_better_one(corpus, tmp_path):
    out = tmp_path / "run"
    run_small_log5(corpus, out, "--max_iters=20", "--eval_interval=10", "--lr=0.5", "--warmup_iters=0")  # diverges
    best = torch.load(out / "ckpt.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)
    evals = [e for e in map(json.loads, open(out / "metrics.jsonl")) if e["event"] == "eval"]
    assert best["best_val"] == min(e["val_loss"] for e in evals)
    assert last["iter"] == 20 and best["iter"] == min(evals, key=lambda e: e["val_loss"])["step"]


GPT2_ADAMW = ["--optimizer=adamw", "--schedule=cosine", *(f"--{k}={v}" for k, v in GPT2_ARCH.items())]


@pytest.mark.parametrize("recipe", [[], GPT2_ADAMW], ids=["defaults-muon", "gpt2-adamw"])
def test_resume_continues_the_identical_trajectory(corpus, tmp_path, monkeypatch, recipe):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_small_log5(corpus, straight, "--max_iters=30", "--eval_interval=15", "--dropout=0.1", *recipe)

    draw = dataloader.Batches.next
    calls = []

    def interrupted(self):  # Ctrl-C while step 15 runs: the run saves and stops after it
        calls.append(1)
        if len(calls) == 15:
            signal.raise_signal(signal.SIGINT)
        return draw(self)
    monkeypatch.setattr(dataloader.Batches, "next", interrupted)
    first = run_small_log5(corpus, split, "--max_iters=30", "--eval_interval=15", "--dropout=0.1", *recipe)
    assert first["iters"] == 15
    monkeypatch.undo()
    saved = torch.load(split / "last.pt", weights_only=True)["optimizer"]
    assert len(saved) == (1 if recipe else 2) and all(o["state"] for o in saved)  # Muon's and AdamW's states
    run_small_log5(corpus, split, "--max_iters=30", "--eval_interval=15", "--dropout=0.1", "--init_from=resume", *recipe)
    assert losses(split) == losses(straight)  # bit-identical: same batches, dropout masks, optimizer state
    assert len(losses(straight)) == 6 and losses(straight)[-1] < losses(straight)[0] - 0.5



# ----------------------------------------------------------------------------- the loop's parts in real tiny runs

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_ddp_a_held_run_lock_stops_every_process(corpus, tmp_path):
    """Rank 0 alone takes the run lock, before the processes connect: held by another run, rank 0's one line
    ends the launch (torchrun stops rank 1) instead of rank 1 waiting for it forever, and nothing is written."""
    out = tmp_path / "ddp"
    with checkpoint.RunLock(out):
        err = torchrun(2, small_flags(corpus, out, "--max_iters=4"), ok=False)
        assert f"error: {out} is in use by another training run (pid {os.getpid()} on " in err
        assert [p.name for p in out.iterdir()] == ["run.lock"]


def test_out_dir_defaults_to_the_dataset():
    assert load_config(train.TrainConfig(), ["--dataset=mybook"]).out_dir == os.path.join("out", "mybook")
    assert load_config(train.TrainConfig(), ["--dataset=mybook", "--out_dir=out/x"]).out_dir == "out/x"


def test_resume_takes_the_runs_own_config_and_announces_a_new_horizon(corpus, tmp_path, capsys):
    """--init_from=resume alone continues the run as it was configured (its dataset, its schedule); a new
    budget given on resume is taken, and the changed schedule horizon is said in a note."""
    out = tmp_path / "run"
    run_small(corpus, out, "--max_iters=6", "--eval_interval=3", "--lr=2e-3", dataset="code_b")
    capsys.readouterr()
    cfg = load_config(train.TrainConfig(), [f"--out_dir={out}", "--init_from=resume", f"--data_dir={corpus / 'data'}"])
    resumed, _ = checkpoint.start(cfg)
    assert (resumed.dataset, resumed.max_iters, resumed.lr) == ("code_b", 6, 2e-3)
    assert "note:" not in capsys.readouterr().out
    cfg = load_config(train.TrainConfig(), [f"--out_dir={out}", "--init_from=resume", "--max_iters=12",
                                            f"--data_dir={corpus / 'data'}"])
    resumed, _ = checkpoint.start(cfg)
    assert resumed.max_iters == 12
    assert "note: resuming with max_iters 6 -> 12: the LR schedule's horizon changes" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"resume keeps the model and optimizer .*\(n_layer=2\), not n_layer=3"):
        checkpoint.start(load_config(train.TrainConfig(), [f"--out_dir={out}", "--init_from=resume", "--n_layer=3",
                                                           f"--data_dir={corpus / 'data'}"]))


def test_setup_of_one_cuda_process_turns_on_tf32(monkeypatch):
    """A single CUDA process (no torchrun) gets its Env and TF32 matmuls (a function-local import once made
    `torch` unbound there: every plain CUDA run failed). Run on a CPU with the device name faked."""
    monkeypatch.setattr(common, "resolve_device", lambda name: "cuda")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        assert common.setup("cuda", "float32") == common.Env(0, 1, "cuda", "float32")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_a_budget_given_without_max_iters_alone_ends_the_run(capsys):
    assert train.budget_alone(cfg_of("--time_budget=10")).max_iters == 0  # not the default's 2,000 steps
    assert "max_iters: none (not 2,000), the 10-minute budget ends the run" in capsys.readouterr().out
    for argv in (["--time_budget=10", "--max_iters=500"], [], ["--time_budget=10", "--init_from=resume"]):
        assert train.budget_alone(cfg_of(*argv)).max_iters == cfg_of(*argv).max_iters > 0
    quickstart = load_config(train.TrainConfig(), [str(REPO / "config" / "quickstart.py")])
    assert train.budget_alone(quickstart).max_iters == quickstart.max_iters  # a config file gives it too
    assert capsys.readouterr().out == ""


def test_a_fine_tune_keeps_the_record_of_given_keys_so_a_given_max_iters_still_caps_its_budget(corpus, tmp_path):
    run_small(corpus, tmp_path / "base", "--max_iters=2", "--eval_interval=2")
    for extra, cap in ((["--max_iters=3"], 3), ([], 0)):
        cfg = cfg_of(*small_flags(corpus, tmp_path / f"tune{cap}", f"--init_from={tmp_path / 'base'}",
                                  "--time_budget=10", *extra))
        cfg, ckpt = checkpoint.start(cfg)
        assert ckpt is not None and train.budget_alone(cfg).max_iters == cap


@pytest.mark.parametrize("flag, device, dtype, budget, cxx, warm, compiles", [
    (None, "cpu", "bfloat16", 0, True, True, False),     # no budget: the run's length is unknown
    (None, "cpu", "bfloat16", 2.5, True, False, False),  # the quickstart: compiling would cost more than it saves
    (None, "cpu", "bfloat16", 2.5, True, True, True),    # ... unless an earlier run left its graphs in Inductor's cache
    (None, "cpu", "bfloat16", 0.5, True, True, False),   # under the warm minimum even a warm compile is not worth it
    (None, "cpu", "bfloat16", 5, True, False, True),     # COMPILE_MIN_BUDGET minutes or more
    (None, "cpu", "float32", 5, True, False, False),     # in fp32 compiling gains less: a longer run earns it back
    (None, "cpu", "float32", 15, True, False, True),
    (None, "cpu", "float32", 2.5, True, True, True),     # ... but a warm one, as in bf16
    (None, "cpu", "bfloat16", 30, False, True, False),   # Inductor cannot build CPU kernels here
    (None, "mps", "float32", 30, True, True, False),
    (None, "cuda", "bfloat16", 0, False, False, True),
    (False, "cpu", "bfloat16", 30, True, True, False),   # an explicit flag always wins
    (True, "cpu", "float32", 0, False, False, True),
])
def test_auto_compile_on_a_cpu_waits_for_a_long_budget_or_a_warm_cache(monkeypatch, flag, device, dtype, budget, cxx,
                                                                        warm, compiles):
    monkeypatch.setattr(common, "cpu_kernels_buildable", lambda: cxx)
    monkeypatch.setattr(common, "graphs_cached", lambda key: warm and key == "k")
    assert common.resolve_compile(flag, device, dtype, budget, "k") is compiles


def test_the_graphs_key_names_what_decides_the_compiled_graphs(monkeypatch):
    shape = dict(args={"n_layer": 2, "n_embd": 32}, batch=(8, 32), dtype="bfloat16")
    key = common.graphs_key(**shape)
    assert common.graphs_key(**shape) == key and len(key) == 24
    assert common.graphs_key(**{**shape, "batch": (4, 32)}) != key
    assert common.graphs_key(**{**shape, "args": {"n_layer": 2, "n_embd": 64}}) != key
    other = torch.get_num_threads() + 1
    monkeypatch.setattr(common.torch, "get_num_threads", lambda: other)  # kernels built for another thread count
    assert common.graphs_key(**shape) != key


def test_a_cache_folder_that_cannot_be_made_is_a_cold_cache_not_an_error(monkeypatch, tmp_path):
    import torch._inductor.runtime.cache_dir_utils  # noqa: F401  (first imported with a folder that works: an import
    # that fails half-way would leave torch.compile broken for the rest of this process)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "file" / "inductor"))  # under a file
    common.mark_graphs_cached("k")
    assert not common.graphs_cached("k")


FAULTS = """import resource, sys, torch, common
kept = common.keep_freed_memory()
def step():  # a step's activations, in small: 8 buffers of 1 MB, allocated, written, all freed at the end
    buffers = [torch.empty(1 << 20, dtype=torch.uint8).fill_(1) for _ in range(8)]
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_a_cpu_process_keeps_freed_memory_so_steps_do_not_page_fault_again():
    """After keep_freed_memory (which setup calls on a CPU) the heap keeps a step's freed buffers: no page
    faults once warm. By default malloc often gives them back to the OS, as they exceed its trim threshold,
    and the next step faults every page in again (up to 2,048 faults a step here; how often varies from
    process to process, with where the heap lies, so only the kept case is asserted)."""
    run = subprocess.run([sys.executable, "-c", FAULTS], cwd=REPO, capture_output=True, text=True, check=True)
    kept, faults = run.stdout.split()
    if kept != "True":
        pytest.skip("not glibc's malloc")
    assert int(faults) < 100


def test_cpu_kernels_need_a_compiler_and_pythons_headers(monkeypatch, tmp_path):
    monkeypatch.setattr(common.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "clang++" else None)
    monkeypatch.setattr(common.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    assert not common.cpu_kernels_buildable()  # no Python.h
    (tmp_path / "Python.h").write_text("")
    assert common.cpu_kernels_buildable()
    monkeypatch.setattr(common.shutil, "which", lambda name: None)
    assert not common.cpu_kernels_buildable()  # no compiler


def test_a_cpu_run_compiles_by_default_for_a_long_budget_and_then_for_a_short_one_of_its_shape(
        corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # not the machine's own cache
    compile_ = torch.compile
    calls = []
    monkeypatch.setattr(train.torch, "compile", lambda m: calls.append(m) or compile_(m, backend="eager"))
    monkeypatch.setattr(common, "cpu_kernels_buildable", lambda: True)  # wherever this runs

    dtype = "float32"  # the thresholds of one dtype, whichever dtype=auto picks on this machine
    warm, cold = common.COMPILE_WARM_MIN_BUDGET, common.COMPILE_MIN_BUDGET[dtype]

    def compiled(name, *extra):
        before = len(calls)
        run_small(corpus, tmp_path / name, "--max_iters=2", "--eval_interval=2", f"--dtype={dtype}", *extra)
        out = capsys.readouterr().out
        assert (" compiled" in out) == (len(calls) > before)
        return len(calls) > before, out

    assert not compiled("short", f"--time_budget={warm}")[0]  # nothing compiled this shape yet
    assert compiled("long", f"--time_budget={cold}")[0]
    assert len(os.listdir(tmp_path / "inductor" / "lm-graphs")) == 1  # the long run's graphs are marked cached
    now, out = compiled("short_again", f"--time_budget={warm}")
    assert now and "its graphs are in Inductor's cache" in out
    assert not compiled("other_shape", f"--time_budget={warm}", "--batch_size=4")[0]
    assert not compiled("under_the_warm_minimum", f"--time_budget={warm / 2}")[0]
    assert not compiled("no_budget")[0]


def test_compile_true_where_no_cpu_kernels_can_be_built_is_one_line(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "cpu_kernels_buildable", lambda: False)
    with pytest.raises(UserError, match=r"compile=True on a CPU needs a C\+\+ compiler .* or pass --compile=False"):
        run_small(corpus, tmp_path / "run", "--max_iters=2", "--compile=True")
    assert not (tmp_path / "run" / "ckpt.pt").exists()
