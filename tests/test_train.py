"""train.py and sample.py: the LR schedule, batches, deterministic eval, and a real tiny run end to end
(train, resume faithfully, sample), plus the Makefile targets the README names."""
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import dataloader
import metrics
import optim
import sample
import train
from configurator import UserError, load_config
from model import build_model, GPT2_ARCH
from conftest import REPO, run_small_log5


# ----------------------------------------------------------------------------- pure pieces

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


def test_batches_targets_shift_and_seeded_stream():
    data = np.arange(1000, dtype=np.uint16)
    a = dataloader.Batches(data, block_size=8, batch_size=4, seed=3)
    x, y = a.next()
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    b = dataloader.Batches(data, block_size=8, batch_size=4, seed=3)
    assert torch.equal(b.next()[0], x)
    assert not torch.equal(a.next()[0], x)  # the stream moves on
    with pytest.raises(UserError, match="block_size=2000 is too long"):
        dataloader.Batches(data, block_size=2000, batch_size=4, seed=0)


def test_full_split_evaluation_scores_every_token_once():
    torch.manual_seed(0)
    cfg = train.TrainConfig(block_size=8, batch_size=3)
    model = build_model("gpt", dict(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=8))
    data = np.random.default_rng(0).integers(0, 20, 43).astype(np.uint16)
    loss, n = metrics.evaluate_split(model, data, cfg.batch_size, cfg.block_size, "cpu", "float32")
    assert n == 42
    # the same, by hand: consecutive windows of 8, the last one 2 tokens long
    total = 0.0
    for s in range(0, 42, 8):
        x = torch.tensor(data[s:min(s + 8, 42)], dtype=torch.long)[None]
        y = torch.tensor(data[s + 1:min(s + 9, 43)], dtype=torch.long)[None]
        logits, _ = model(x)
        total += torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum").item()
    assert loss == pytest.approx(total / 42, rel=1e-5)


def test_metrics_bits_per_byte():
    m = metrics.metrics_for(math.log(2), {"tokens": 100, "bytes": 400})  # 1 bit per token, 4 bytes per token
    assert m["bits_per_token"] == pytest.approx(1.0) and m["bpb"] == pytest.approx(0.25)
    assert m["ppl"] == pytest.approx(2.0)


def test_config_validation_messages():
    with pytest.raises(UserError, match="n_embd=30 must be a multiple of n_head=4"):
        load_config(train.TrainConfig(), ["--n_embd=30"])
    with pytest.raises(UserError, match="model must be gpt, lstm or gru"):
        load_config(train.TrainConfig(), ["--model=transformer"])


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    checkpoint.save_atomic({"a": 1}, str(path))

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint is untouched"):
        checkpoint.save_atomic({"a": 2}, str(path))
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"a": 1}
    assert not (tmp_path / "ckpt.pt.tmp").exists()


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


def test_sample_from_the_trained_run(corpus, tmp_path):
    out = tmp_path / "run"
    run_small_log5(corpus, out, "--max_iters=10", "--eval_interval=10")
    cfg = load_config(sample.SampleConfig(), [f"--out_dir={out}", "--start=def ", "--num_samples=2",
                                              "--max_new_tokens=50", "--seed=3"])
    texts = sample.sample(cfg)
    assert len(texts) == 2 and all(t.startswith("def ") and len(t) == 54 for t in texts)
    assert sample.sample(cfg) == texts  # same seed, same samples
    with pytest.raises(UserError, match="is not in this dataset.s vocabulary"):
        sample.sample(load_config(sample.SampleConfig(), [f"--out_dir={out}", "--start=\u2603 snowman"]))
    with pytest.raises(UserError, match="no checkpoint at"):
        sample.sample(load_config(sample.SampleConfig(), [f"--out_dir={tmp_path / 'nothing'}"]))


def test_command_line_errors_are_one_line(corpus, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    r = run("train.py", "--lerning_rate=0.1")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "unknown config key 'lerning_rate'" in r.stderr and "Traceback" not in r.stderr
    r = run("train.py", f"--data_dir={tmp_path}", "--dataset=nope")
    assert r.returncode == 2 and "python prepare.py" in r.stderr and "Traceback" not in r.stderr


def test_make_shows_the_readme_targets():
    for target in ("all", "test", "data", "train", "sample", "bench"):
        r = subprocess.run(["make", "-n", target, "PYTHON=python3"], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, (target, r.stderr)
    r = subprocess.run(["make", "-n", "all", "PYTHON=python3"], cwd=REPO, capture_output=True, text=True)
    assert "train.py config/quickstart.py" in r.stdout and "sample.py" in r.stdout
    r = subprocess.run(["make", "-n", "test", "PYTHON=python3"], cwd=REPO, capture_output=True, text=True)
    assert "pytest" in r.stdout
    r = subprocess.run(["make", "-n", "data", "DATASET=enwik8", "PYTHON=python3"], cwd=REPO,
                       capture_output=True, text=True)
    assert "prepare.py enwik8" in r.stdout
