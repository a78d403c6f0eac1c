"""make compare: a GPT and an LSTM trained on the same tiny corpus, then compare.py's report and plots."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, code_text, prepare_text

pytestmark = pytest.mark.slow  # make compare: two train.py runs and compare.py, in subprocesses

# both runs: tiny shapes (the LSTM's too), 12 steps, eager (a 5-minute budget would compile them), make's ARGS
TINY_ARGS = ("--n_layer=1 --n_head=2 --n_embd=16 --n_hidden=16 --block_size=16 --batch_size=4 --max_iters=12 "
             "--eval_interval=6 --eval_iters=2 --log_interval=3 --final_eval_tokens=300 --compile=False")


def test_make_compare_writes_the_report(tmp_path):
    prepare_text(tmp_path, "code", code_text())
    out = tmp_path / "cmp"
    argv = ["make", "-s", "compare", f"PYTHON={sys.executable}", "DEPS=", "DATASET=code", "BUDGET=5",
            f"COMPARE_DIR={out}", f"ARGS={TINY_ARGS} --data_dir={tmp_path / 'data'}"]
    for run in ("gpt", "lstm"):  # an earlier comparison's runs, which train.py would refuse to train over
        (out / run).mkdir(parents=True)
        (out / run / "ckpt.pt").write_bytes(b"an earlier run")
    (out / "stale.txt").write_text("an earlier report's file")
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert not (out / "stale.txt").exists()  # like `make`, `make compare` starts afresh
    for name in ("report.md", "curves_tokens.png", "curves_time.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    gpt, lstm = (json.loads((out / run / "results.json").read_text()) for run in ("gpt", "lstm"))
    assert gpt["model"] == "gpt" and lstm["model"] == "lstm"
    assert gpt["tokens_seen"] == lstm["tokens_seen"] == 12 * 4 * 16  # same data budget per step
    assert f"| test loss | {gpt['test_loss']:.4f} | {lstm['test_loss']:.4f} |" in report
    assert "generation tokens/s" in report
    assert report.count("### gpt, temperature") == 3 and report.count("### lstm, temperature") == 3
    winner, loser = sorted((gpt, lstm), key=lambda r: r["val_loss"])
    assert f"**{winner['model']}** reaches the lower val loss" in report.splitlines()[1]  # the verdict, first
    assert f"{winner['val_loss']:.4f} against {loser['model']}'s {loser['val_loss']:.4f}" in report
    assert "| model |" not in report  # the header already names the runs
    prompt = report.split("(prompt ")[1].split(", 300 new tokens")[0]
    assert len(eval(prompt).strip()) > 0 and eval(prompt).endswith(" ")  # the test split's start, not a bare newline
