"""Every bad input is one line on stderr (`error: ...`), exit code 2, no traceback, and no file is touched:
config mistakes, unprepared or damaged datasets, mismatched or damaged checkpoints, a malicious checkpoint, a
run that would be overwritten, an out_dir another run holds, an unwritable out_dir, bad prompts. A few go
through real `python train.py/sample.py` processes, the rest through configurator.cli in process (the same
wrapper, without the cost of importing torch again).

    python -m pytest -q tests/test_errors.py
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
import evaluate
import prepare
import sample
import train
from configurator import load_config
from conftest import ENV, REPO, check_one_line, cli_error, flags, run_train, snapshot


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    """A finished tiny run (10 steps, checkpoints at 0, 5 and 10) to copy and break."""
    out = tmp_path_factory.mktemp("errors") / "run"
    run_train(data, out, "--max_iters=10", "--eval_interval=5", "--log_interval=5")
    return out


@pytest.fixture
def run(run_dir, tmp_path):
    """A private copy of run_dir."""
    return shutil.copytree(run_dir, tmp_path / "run")


@pytest.fixture
def dataset(data, tmp_path):
    """A private copy of the prepared dataset: (data_dir, data_dir/code)."""
    shutil.copytree(data / "code", tmp_path / "data" / "code")
    return tmp_path / "data", tmp_path / "data" / "code"


# ----------------------------------------------------------------------------- real processes

@pytest.mark.slow
def test_real_command_lines(run, data):
    def cli(script, *args):
        r = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                           env={**ENV, "PYTHONIOENCODING": "utf-8"}, timeout=120)
        check_one_line(r.returncode, r.stderr)
        return r.stderr

    assert "unknown config key 'n_layers' (did you mean 'n_layer'?)" in cli("train.py", "--n_layers=2")
    with open(run / "last.pt", "r+b") as f:
        f.truncate(1000)  # a disk error, or a copy cut short
    before = snapshot(run)
    err = cli("train.py", *flags(data, run, "--init_from=resume"))
    assert "last.pt is corrupt or truncated" in err and f"move {run / 'last.pt'} aside" in err
    err = cli("sample.py", f"--out_dir={run}", "--start=\u2603 snow")
    assert "character '\u2603' (U+2603) is not in this dataset's vocabulary" in err
    assert snapshot(run) == before


class CreatesAFile:
    """Pickled as a call to open(path, "w"): unpickling it with weights_only=False creates the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.slow
def test_a_malicious_checkpoint_runs_nothing(run, data, tmp_path):
    pwned = tmp_path / "pwned"
    ckpt = checkpoint.load_checkpoint(run / "ckpt.pt")
    torch.save({**ckpt, "meta": {**ckpt["meta"], "note": CreatesAFile(pwned)}}, run / "ckpt.pt")
    before = snapshot(run)
    for argv in (["sample.py", f"--out_dir={run}"], ["train.py", *flags(data, tmp_path / "ft", f"--init_from={run}")]):
        r = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, env=ENV, timeout=120)
        check_one_line(r.returncode, r.stderr)
        assert f"refused to load {run / 'ckpt.pt'}: it holds Python objects" in r.stderr
        assert "(it calls io.open)" in r.stderr and "nothing in it was run" in r.stderr
        assert not pwned.exists()
    assert snapshot(run) == before and not (tmp_path / "ft").exists()
    torch.load(run / "ckpt.pt", weights_only=False)  # what loading it used to do: the file is real
    assert pwned.exists()


# ----------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("argv, message", [
    (["--lerning_rate=0.1"], "unknown config key 'lerning_rate' (did you mean 'lr'?)"),
    (["--learning_rate=0.1"], "(did you mean 'lr'?)"),  # nanoGPT's names
    (["--gradient_accumulation_steps=4"], "(did you mean 'grad_accum'?)"),
    (["--lr=fast"], "flag --lr=fast: lr must be float, got 'fast'"),
    (["--max_iters=1.5"], "max_iters must be int"),
    (["--compile=yes"], "compile must be bool"),
    (["--lr={[]: 1}"], "lr must be float"),
    (["--batch_size"], "flag --batch_size has no value"),
    (["--batch_size=0"], "batch_size, grad_accum, block_size and eval_iters must be positive"),
    (["--grad_accum=-2"], "must be positive"),
    (["--n_embd=30", "--n_head=4"], "n_embd=30 must be a multiple of n_head=4"),
    (["--device=tpu"], "device must be auto, cpu, cuda, cuda:N or mps, not 'tpu'"),
    (["--dtype=fp8"], "dtype must be auto, float32, bfloat16 or float16"),
    (["nonsense"], "unexpected argument 'nonsense'"),
    (["missing.py"], "config file missing.py does not exist"),
    (["SYNTAX"], "line 2: syntax error"),
    (["LATIN1"], "cannot read config file"),
    (["TYPO"], "unknown config key 'n_layers' (did you mean 'n_layer'?)"),
    (["RAISES"], "failed: ZeroDivisionError: division by zero"),
])
def test_config_mistakes(argv, message, tmp_path, capsys, monkeypatch):
    files = {"SYNTAX": b"n_layer = 2\nlr = = 3\n", "LATIN1": "lr = 0.1  # caf\xe9\n".encode("latin-1"),
             "TYPO": b"n_layers = 2\n", "RAISES": b"lr = 1 / 0\n"}
    for name, body in files.items():
        (tmp_path / f"{name}.py").write_bytes(body)
    argv = [str(tmp_path / f"{a}.py") if a in files else a for a in argv]
    assert message in cli_error(train.main, argv, capsys, monkeypatch)


def test_device_without_a_gpu(capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "no CUDA GPU is visible" in cli_error(train.main, ["--device=cuda:0"], capsys, monkeypatch)
    assert "dtype=float16 needs a CUDA GPU" in cli_error(train.main, ["--device=cpu", "--dtype=float16"],
                                                         capsys, monkeypatch)


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE, RANK and LOCAL_RANK must be integers"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 needs RANK in 0..1: launch with torchrun"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "needs RANK in 0..1"),
])
def test_bad_distributed_environment(env, message, capsys, monkeypatch):
    for key in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert message in cli_error(train.main, ["--device=cpu"], capsys, monkeypatch)


# ----------------------------------------------------------------------------- datasets

def write_ids(path, ids):
    np.asarray(ids, dtype="<u2").tofile(path)


@pytest.mark.parametrize("damage, message", [
    ("missing meta", "dataset not prepared: run `python prepare.py text --input=FILE --name=code`"),
    ("bad json", "meta.json is not valid JSON"),
    ("no splits", "meta.json lacks tokenizer, vocab_size or a split's counts: prepare the dataset again"),
    ("odd size", "train.bin has an odd size"),
    ("short", "val.bin holds 10 tokens but meta.json says"),
    ("missing bin", "test.bin is missing: run `python prepare.py text"),
    ("big id in train", "train.bin holds token id 60000 >= vocab_size 94"),
    ("big id in val", "val.bin holds token id 94 >= vocab_size 94"),
])
def test_damaged_datasets(damage, message, dataset, tmp_path, capsys, monkeypatch):
    data_dir, folder = dataset
    meta = json.loads((folder / "meta.json").read_text())
    train_ids = np.fromfile(folder / "train.bin", dtype="<u2")
    if damage == "missing meta":
        (folder / "meta.json").unlink()
    elif damage == "bad json":
        (folder / "meta.json").write_text('{"format": 1, ')
    elif damage == "no splits":
        (folder / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "splits"}))
    elif damage == "odd size":
        (folder / "train.bin").write_bytes((folder / "train.bin").read_bytes() + b"\0")
    elif damage == "short":
        write_ids(folder / "val.bin", range(10))
    elif damage == "missing bin":
        (folder / "test.bin").unlink()
    elif damage == "big id in train":  # near the end: the whole split is checked, not a sample
        train_ids[-3] = 60000
        write_ids(folder / "train.bin", train_ids)
    elif damage == "big id in val":
        val_ids = np.fromfile(folder / "val.bin", dtype="<u2")
        val_ids[0] = 94
        write_ids(folder / "val.bin", val_ids)
    before = snapshot(folder)
    out = tmp_path / "out"
    assert message in cli_error(train.main, flags(data_dir, out, "--max_iters=5"), capsys, monkeypatch)
    assert not out.exists()  # found before anything started
    assert snapshot(folder) == before


@pytest.mark.parametrize("flag, message", [
    ("--norm=batchnorm", "norm must be one of layernorm, rmsnorm, not 'batchnorm'"),
    ("--qk_gain=0", "qk_gain must be > 0"),
    ("--rope_theta=0", "rope_theta must be > 1"),
    ("--n_embd=15", "n_embd=15 must be a multiple of n_head=2"),
])
def test_bad_model_options_write_nothing(flag, message, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert message in cli_error(train.main, flags(data, out, flag), capsys, monkeypatch)
    assert not out.exists()  # found before the run's config was written


def test_block_size_longer_than_a_split(dataset, tmp_path, capsys, monkeypatch):
    data_dir, folder = dataset
    meta = json.loads((folder / "meta.json").read_text())
    n_val = meta["splits"]["val"]["tokens"]
    err = cli_error(train.main, flags(data_dir, tmp_path / "a", f"--block_size={n_val}"), capsys, monkeypatch)
    assert f"block_size={n_val} is too long for the val split of {n_val} tokens; lower --block_size" in err
    # a val split long enough but a train split too short for the window
    write_ids(folder / "train.bin", range(20))
    meta["splits"]["train"]["tokens"] = 20
    (folder / "meta.json").write_text(json.dumps(meta))
    err = cli_error(train.main, flags(data_dir, tmp_path / "c", "--block_size=32"), capsys, monkeypatch)
    assert "block_size=32 is too long for the train split of 20 tokens" in err


# ----------------------------------------------------------------------------- runs and checkpoints

def test_a_new_run_never_overwrites_an_old_one(run, data, capsys, monkeypatch):
    before = snapshot(run)
    err = cli_error(train.main, flags(data, run, "--max_iters=5"), capsys, monkeypatch)
    assert f"{run} already holds a run (last.pt): continue it with --init_from=resume" in err
    assert snapshot(run) == before


def test_a_locked_out_dir_is_refused_and_the_lock_is_released_on_errors(run, data, tmp_path, capsys, monkeypatch):
    before = snapshot(run)
    with checkpoint.RunLock(run):  # another run training there (this process, for the test)
        held = json.loads((run / "run.lock").read_text())
        for extra in (["--init_from=resume"], []):
            err = cli_error(train.main, flags(data, run, *extra), capsys, monkeypatch)
            assert err.startswith(f"error: {run} is in use by another training run (pid {os.getpid()} on "
                                  f"{held['host']}, started {held['started']}): wait for it to end"), err
        assert json.loads((run / "run.lock").read_text()) == held
    assert snapshot(run) == before
    err = cli_error(train.main, flags(data, run, "--init_from=resume", "--n_layer=3"), capsys, monkeypatch)
    assert "resume keeps the model and optimizer of the checkpoint" in err and snapshot(run) == before  # released on an error
    out = tmp_path / "new" / "run"
    cli_error(train.main, flags(data, out, "--init_from=resume"), capsys, monkeypatch)
    assert not (tmp_path / "new").exists()  # the folders made for the lock go with it when nothing was written


def test_resume_mismatches(run, data, dataset, tmp_path, capsys, monkeypatch):
    before = snapshot(run)
    # another shape asked for: the checkpoint's shape would silently win, so say so
    argv = flags(data, run, "--init_from=resume", "--n_layer=3", "--n_embd=32")
    err = cli_error(train.main, argv, capsys, monkeypatch)
    assert "resume keeps the model and optimizer of the checkpoint" in err
    assert "(n_layer=1, n_embd=16), not n_layer=3, n_embd=32" in err
    err = cli_error(train.main, flags(data, run, "--init_from=resume", "--model=lstm"), capsys, monkeypatch)
    assert "(model=gpt), not model=lstm" in err
    # another vocabulary: the same run pointed at a different dataset
    (tmp_path / "abc.txt").write_text("abc\n" * 2000)
    data_dir = dataset[0]
    prepare.prepare(load_config(prepare.PrepareConfig(), ["--dataset=text", f"--input={tmp_path / 'abc.txt'}",
                                                          f"--data_dir={data_dir}", "--name=abc"]))
    err = cli_error(train.main, flags(data_dir, run, "--init_from=resume", "--dataset=abc"), capsys, monkeypatch)
    assert "was trained on a char vocabulary of 94" in err and "has char with 4" in err
    assert snapshot(run) == before
    # no checkpoint at all
    err = cli_error(train.main, flags(data, tmp_path / "empty", "--init_from=resume"), capsys, monkeypatch)
    assert "nothing to resume in" in err and "(no last.pt or ckpt.pt)" in err


def test_damaged_checkpoints(run, data, capsys, monkeypatch):
    ckpt = torch.load(run / "ckpt.pt", weights_only=True)
    # weights that do not fit the architecture the checkpoint states
    torch.save({**ckpt, "model_args": {**ckpt["model_args"], "n_embd": 32}}, run / "last.pt")
    torch.save([1, 2, 3], run / "other.pt")
    (run / "empty.pt").write_bytes(b"")
    before = snapshot(run)
    argv = [f"--data_dir={data}", "--dataset=code", f"--out_dir={run}", "--init_from=resume"]  # shape: the file's
    assert "the checkpoint's weights do not fit its gpt architecture" in cli_error(train.main, argv, capsys, monkeypatch)
    err = cli_error(sample.main, [f"--out_dir={run}", "--ckpt=last.pt"], capsys, monkeypatch)
    assert "the checkpoint's weights do not fit its gpt architecture" in err
    err = cli_error(sample.main, [f"--out_dir={run}", "--ckpt=other.pt"], capsys, monkeypatch)
    assert "other.pt is not a checkpoint of this project" in err
    err = cli_error(sample.main, [f"--out_dir={run}", "--ckpt=empty.pt"], capsys, monkeypatch)
    assert "empty.pt is corrupt or truncated" in err
    err = cli_error(sample.main, [f"--out_dir={run}", "--ckpt=nothing.pt"], capsys, monkeypatch)
    assert "no checkpoint at" in err
    assert snapshot(run) == before


def test_out_dir_not_writable(data, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    err = cli_error(train.main, flags(data, blocker / "run"), capsys, monkeypatch)
    assert f"cannot write to out_dir {blocker / 'run'}" in err and "pick another --out_dir" in err
    assert blocker.read_text() == "keep me"
    (tmp_path / "blocked" / "metrics.jsonl").mkdir(parents=True)  # the run's log cannot be opened
    err = cli_error(train.main, flags(data, tmp_path / "blocked"), capsys, monkeypatch)
    assert "cannot write" in err and "metrics.jsonl" in err and "are untouched" in err


def test_disk_full_writing_the_results_keeps_the_run_and_evaluate_finishes_it(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"

    def full_disk(out_dir):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(train, "plot_curves", full_disk)
    err = cli_error(train.main, flags(data, out, "--max_iters=6", "--eval_interval=3"), capsys, monkeypatch)
    assert "could not write the results" in err and "No space left on device" in err
    assert f"run python evaluate.py --out_dir={out}" in err
    assert checkpoint.load_checkpoint(out / "last.pt")["iter"] == 6
    monkeypatch.undo()
    assert evaluate.main([f"--out_dir={out}", f"--data_dir={data}"]) is None
    assert json.loads((out / "results.json").read_text())["iters"] == 6
    assert (out / "learning_curves.png").is_file()


def test_sample_mistakes(run, tmp_path, capsys, monkeypatch):
    before = snapshot(run)
    for argv, message in [
        (["--start=\u00e9t\u00e9"], "character '\u00e9' (U+00E9) is not in this dataset's vocabulary of 94"),
        ([f"--start=FILE:{tmp_path / 'nope.txt'}"], "cannot read the prompt file"),
        (["--start="], "the prompt is empty"),
        (["--top_p=0"], "top_p must be in (0, 1]"),
        (["--temperature=-1"], "temperature must be >= 0"),
        (["--num_samples=0"], "num_samples must be >= 1, got 0"),
        (["--top_k=-5"], "top_k must be >= 0, got -5"),
        (["--slide=-1"], "slide must be >= 0, got -1"),
        (["--device=gpu"], "device must be auto, cpu, cuda, cuda:N or mps, not 'gpu'"),
    ]:
        assert message in cli_error(sample.main, [f"--out_dir={run}", *argv], capsys, monkeypatch), argv
    assert snapshot(run) == before


def test_str_fields_take_numbers_and_words_as_text():
    cfg = load_config(train.TrainConfig(), ["--wandb_run_name=2024", "--dataset=None", "--out_dir=1e3"])
    assert (cfg.wandb_run_name, cfg.dataset, cfg.out_dir) == ("2024", "None", "1e3")
    assert os.path.basename(load_config(train.TrainConfig(), ["--out_dir='out/x'"]).out_dir) == "x"


# ----------------------------------------------------------------------------- command lines

@pytest.mark.slow
def test_command_line_errors_are_one_line(corpus, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    r = run("train.py", "--lerning_rate=0.1")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "unknown config key 'lerning_rate'" in r.stderr and "Traceback" not in r.stderr
    r = run("train.py", f"--data_dir={tmp_path}", "--dataset=nope")
    assert r.returncode == 2 and "python prepare.py" in r.stderr and "Traceback" not in r.stderr
