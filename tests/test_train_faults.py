"""Faults in a training run (train.py) that must never lose it: SIGTERM and kill -9 on a real `python train.py`,
resume after them (taking over the dead run's lock), a second train.py on a running out_dir, SIGTERM or Ctrl-C
during the final evaluation, the time budget across a resume (fake clock), a nan loss between evals, fp16
skipped steps, a full disk while saving, stale *.tmp files, a second Ctrl-C.

    python -m pytest -q tests/test_train_faults.py
"""
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import common
import dataloader
import compare
import evaluate
import metrics
import train
from model import build_model
from dataloader import SPLITS
from configurator import UserError
from conftest import REPO, ENV, events, flags, run_train, snapshot

def wait_for(proc, out, condition, timeout=120):
    """Poll metrics.jsonl until condition(events) holds; fail if the process ends first."""
    t0 = time.time()
    while not condition(events(out)):
        assert proc.poll() is None, f"train.py ended early: {proc.communicate()}"
        assert time.time() - t0 < timeout, "train.py made no progress"
        time.sleep(0.02)


def all_finite(state_dict):
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


# ----------------------------------------------------------------------------- real processes

@pytest.mark.slow
def test_sigterm_saves_evaluates_and_exits_0(data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *flags(data, out, "--max_iters=100000",
                                                                "--eval_interval=100000", "--log_interval=2")],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(proc, out, lambda ev: any(e["event"] == "train" for e in ev))
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "SIGTERM: stopping after this step" in stdout and "Traceback" not in stderr
    stop = events(out, "final")[0]["step"]
    assert stop >= events(out, "train")[-1]["step"] > 0  # it stopped at the end of the step it was in
    assert [e["step"] for e in events(out, "eval")] == [0, stop]  # and evaluated there
    last = checkpoint.load_checkpoint(out / "last.pt")
    assert last["iter"] == stop and all_finite(last["model"])
    results = json.loads((out / "results.json").read_text())
    assert results["iters"] == stop and results["tokens_seen"] == stop * 4 * 16
    assert (out / "results.md").is_file()


@pytest.mark.slow
def test_a_second_run_on_the_same_out_dir_stops_at_once_having_written_nothing(data, tmp_path):
    """The run lock: a second train.py on a running out_dir (resumed or fresh) is one line and exit code 2, and
    every file stays as it was; sample.py still reads the running run; the lock goes when the run ends."""
    out = tmp_path / "run"
    quiet = ["--max_iters=1000000", "--eval_interval=1000000", "--log_interval=1000000"]  # no writes after step 0
    first = subprocess.Popen([sys.executable, "train.py", *flags(data, out, *quiet)], cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # step 0's eval saved last.pt, then ckpt.pt (the last write until the run ends)
        wait_for(first, out, lambda ev: (out / "ckpt.pt").exists() and not list(out.glob("*.tmp")))
        lock = json.loads((out / "run.lock").read_text())
        assert (lock["pid"], lock["host"]) == (first.pid, socket.gethostname())
        before = snapshot(out)
        for extra in (["--init_from=resume"], []):
            second = subprocess.run([sys.executable, "train.py", *flags(data, out, "--max_iters=10", *extra)],
                                    cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2 and second.stdout == "", second.stderr
            assert second.stderr == (f"error: {out} is in use by another training run (pid {first.pid} on "
                                     f"{lock['host']}, started {lock['started']}): wait for it to end, or pick "
                                     f"another --out_dir\n")
        sampled = subprocess.run([sys.executable, "sample.py", f"--out_dir={out}", "--num_samples=1",
                                  "--max_new_tokens=8"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        assert sampled.returncode == 0, sampled.stderr
        assert snapshot(out) == before  # checkpoints, config.json, metrics.jsonl, the lock: all as they were
        first.send_signal(signal.SIGTERM)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:  # a failed assertion must not leave it training
            first.kill()
    assert first.returncode == 0, stderr
    assert (out / "results.json").is_file() and not (out / "run.lock").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_final_evaluation_cuts_it_short_and_still_writes_the_results(data, tmp_path, sig,
                                                                                          monkeypatch, capsys):
    """The signal arrives at a fixed point, deterministically: sent by this process to itself once the train
    sample is scored, as the val split is about to be. The splits not reached score null."""
    out = tmp_path / "run"
    real = metrics.evaluate_split
    calls = []

    def signal_before_val(*args, **kwargs):
        calls.append(len(calls))
        if len(calls) == 2:  # train sample, then val
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)
    monkeypatch.setattr(metrics, "evaluate_split", signal_before_val)
    train.main(flags(data, out, "--max_iters=4", "--eval_interval=4", "--final_eval_tokens=0"))
    stdout = capsys.readouterr().out
    assert f"{sig.name}: cutting the evaluation short" in stdout and len(calls) == 3
    results = json.loads((out / "results.json").read_text())
    assert results["final_eval_cut"] is True and results["train_tokens_scored"] > 0 and results["train_loss"] < 10
    assert results["val_tokens_scored"] == results["test_tokens_scored"] == 0
    assert results["val_loss"] is None and results["test_loss"] is None
    assert "The evaluation was cut short" in (out / "results.md").read_text()
    assert "not scored" in (out / "results.md").read_text()
    before = {name: digest for name, digest in snapshot(out).items() if name.endswith(".pt")}
    assert set(before) == {"ckpt.pt", "last.pt"}
    with pytest.raises(UserError, match="evaluation was cut short: score it again"):
        compare.read_run(out)  # half a score is not compared with a whole one

    monkeypatch.setattr(metrics, "evaluate_split", real)
    evaluate.main([f"--out_dir={out}", f"--data_dir={data}", "--max_tokens=1000"])
    results = json.loads((out / "results.json").read_text())
    assert results["final_eval_cut"] is False and all(results[f"{s}_tokens_scored"] == 1000 for s in SPLITS)
    assert {name: snapshot(out)[name] for name in before} == before  # scoring never touches the checkpoints


@pytest.mark.slow
def test_kill_9_mid_training_then_resume_finishes_the_run(data, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "train.py", *flags(data, out, "--max_iters=60", "--eval_interval=10", "--log_interval=5")]
    proc = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(proc, out, lambda ev: any(e["event"] == "train" and e["step"] >= 15 for e in ev))
    proc.kill()  # SIGKILL: no handler runs, a save may be half written
    proc.wait()
    assert not events(out, "final"), "the kill should land mid-training"
    killed_at = events(out, "train")[-1]["step"]
    saved = checkpoint.load_checkpoint(out / "last.pt")  # the rename is atomic: old or new, never a torn file
    assert saved["iter"] % 10 == 0 and 10 <= saved["iter"] <= killed_at + 5
    best = checkpoint.load_checkpoint(out / "ckpt.pt")
    assert best["iter"] <= saved["iter"] and all_finite(best["model"])
    left = json.loads((out / "run.lock").read_text())  # the killed run's lock stays behind, and is taken over
    assert left["pid"] == proc.pid

    r = subprocess.run(argv + ["--init_from=resume"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"note: taking over {out / 'run.lock'} from pid {proc.pid} on {left['host']}" in r.stdout
    assert f"resuming {out} at step {saved['iter']}" in r.stdout
    assert json.loads((out / "results.json").read_text())["iters"] == 60
    after = [e["step"] for e in events(out, "train")]
    resumed = after[after.index(killed_at) + 1:]  # the train steps logged by the resumed process
    assert resumed == list(range(saved["iter"] + 5, 61, 5))  # it went on from the checkpoint, to the end
    assert checkpoint.load_checkpoint(out / "last.pt")["iter"] == 60
    checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(out / "ckpt.pt"))
    assert not list(out.glob("*.tmp"))


# ----------------------------------------------------------------------------- in process

class FakeTime:
    """Stands in for the time module inside train.py: time() is a clock the test moves."""

    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


def test_resume_counts_the_time_already_spent(data, tmp_path, monkeypatch):
    clock = FakeTime()
    monkeypatch.setattr(train, "time", clock)
    draw = dataloader.Batches.next
    draws = []

    def step_takes_a_second(self):
        clock.now += 1.0
        draws.append(1)
        if draws == [1] * 12 and split_run:  # Ctrl-C during step 12 of the split run
            signal.raise_signal(signal.SIGINT)
        return draw(self)
    monkeypatch.setattr(dataloader.Batches, "next", step_takes_a_second)
    budget = ["--max_iters=100000", "--time_budget=0.5", "--eval_interval=10", "--log_interval=3"]  # 30 "seconds"

    split_run = False
    straight = run_train(data, tmp_path / "straight", *budget)
    assert straight["iters"] == 30 and straight["wall_time_s"] == 30.0

    split_run, draws = True, []
    assert run_train(data, tmp_path / "split", *budget)["iters"] == 12
    assert checkpoint.load_checkpoint(tmp_path / "split" / "last.pt")["elapsed_s"] == 12.0
    clock.now += 3600.0  # an hour passes before the resume: it is not training time
    resumed = run_train(data, tmp_path / "split", *budget, "--init_from=resume")
    assert resumed["iters"] == 30 and resumed["wall_time_s"] == 30.0  # 12 spent + 18 more, not 30 more
    # the same LR schedule position and losses step by step (the LR is a function of elapsed time here)
    pick = [(e["step"], e["lr"], e["loss"]) for e in events(tmp_path / "straight", "train")]
    assert [(e["step"], e["lr"], e["loss"]) for e in events(tmp_path / "split", "train")] == pick


@pytest.mark.parametrize("log_interval, caught_at", [(100, "eval"), (5, "log")])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, log_interval, caught_at):
    out = tmp_path / "run"
    models, build = [], build_model
    monkeypatch.setattr(train, "build_model", lambda kind, args: models.append(build(kind, args)) or models[-1])
    draw, draws = dataloader.Batches.next, []

    def poison(self):  # the weights go nan during step 14, between the evals at 10 and 20
        draws.append(1)
        if len(draws) == 14:
            with torch.no_grad():
                for p in models[-1].parameters():  # the model trained (train.py first checks one on meta)
                    p.fill_(float("nan"))
        return draw(self)
    monkeypatch.setattr(dataloader.Batches, "next", poison)
    with pytest.raises(UserError, match=r"training loss at step 14 is nan or inf: stopped without saving; "
                                        r"the last good checkpoint \(step 10\)"):
        run_train(data, out, "--max_iters=40", "--eval_interval=10", f"--log_interval={log_interval}")
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["iter"] == 10 and all_finite(last["model"])  # the eval at step 20 did not save nan weights
    assert all_finite(torch.load(out / "ckpt.pt", weights_only=True)["model"])
    assert not (out / "results.json").exists()
    assert max(e["step"] for e in events(out)) == (20 if caught_at == "eval" else 10)  # nothing logged after


def test_fp16_skipped_steps_are_counted_not_treated_as_nan(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(common, "resolve_dtype", lambda name, device: "float16")  # CPU autocast runs fp16 too
    # a huge initial loss scale: the first steps' gradients overflow and the GradScaler skips them
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 40))
    run_train(data, out, "--max_iters=30", "--eval_interval=30", "--log_interval=30")
    skipped = events(out, "train")[-1]["skipped_steps"]
    state = torch.load(out / "last.pt", weights_only=True)["optimizer"][-1]["state"][0]
    assert 0 < skipped < 30 and int(state["step"]) == 30 - skipped  # AdamW stepped exactly the other times


def test_disk_full_while_saving_keeps_the_checkpoints_and_stale_tmp_files_are_ignored(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_train(data, out, "--max_iters=10", "--eval_interval=5", "--log_interval=5")
    (out / "last.pt.tmp").write_bytes(b"half a checkpoint, from a kill -9 during a save")
    before = snapshot(out)
    real_save = torch.save

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"could not save .*last.pt: No space left on device; the previous "
                                        r"checkpoint is untouched"):
        run_train(data, out, "--max_iters=20", "--eval_interval=5", "--log_interval=5", "--init_from=resume")
    after = snapshot(out)
    for name in ("ckpt.pt", "last.pt", "results.json", "results.md"):
        assert after[name] == before[name], name
    assert "last.pt.tmp" not in after  # the failed save cleaned up after itself

    monkeypatch.setattr(torch, "save", real_save)
    (out / "last.pt.tmp").write_bytes(b"garbage")
    assert run_train(data, out, "--max_iters=20", "--eval_interval=5", "--log_interval=5",
                     "--init_from=resume")["iters"] == 20
    assert [e["step"] for e in events(out, "eval")][-3:] == [10, 15, 20]  # resumed from last.pt at 10
    assert not (out / "last.pt.tmp").exists()


def test_second_ctrl_c_exits_at_once_but_a_second_sigterm_does_not(monkeypatch):
    def exit_now(code):
        raise SystemExit(code)
    monkeypatch.setattr(train.os, "_exit", exit_now)
    flag = common.StopFlag()
    try:
        assert not flag.requested
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # a scheduler repeating itself: still a clean stop
        assert flag.requested
        with pytest.raises(SystemExit) as e:
            signal.raise_signal(signal.SIGINT)
        assert e.value.code == 130
    finally:
        flag.restore()
