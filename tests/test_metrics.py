"""metrics.py: scoring a whole split (every token once, checked by hand) and the units (bits per token, bits per
byte, perplexity). The results files a run writes are checked in test_train.py and test_train_faults.py."""
import json
import math

import numpy as np
import pytest
import torch

import metrics
import train
from model import build_model


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


def test_results_name_what_was_scored_in_a_meaningful_order(tmp_path):
    results = {"model": "gpt", "params": 1000, "iters": 10, "tokens_seen": 2560, "wall_time_s": 150.8, "dataset": "x",
               "checkpoint": "ckpt.pt", "checkpoint_step": 10, "final_eval_cut": False}
    for split, loss, n, total in (("train", 1.5, 100, 10_000), ("val", 1.2, 100, 400), ("test", 1.3, 400, 400)):
        results.update({f"{split}_loss": loss, f"{split}_perplexity": math.exp(loss), f"{split}_bpb": loss / 2,
                        f"{split}_bits_per_token": loss, f"{split}_tokens_scored": n, f"{split}_tokens": total})
    text = metrics.write_results(str(tmp_path), results, "gpt on x")
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert rows[:4] == ["split", "val", "test", "train (sample)"]  # val first: what runs are compared on
    assert "| val | 1.2000 | 3.32 | 0.6000 | 100 of 400 (25%) |" in text and "400 of 400 (all)" in text
    assert "| wall time | 2:30 |" in text and "| checkpoint | ckpt.pt (step 10) |" in text
    assert "Only part of val was scored (a cap: final_eval_tokens" in text  # test was scored whole
    assert "another estimate: fixed random windows of val" in text
    assert json.loads((tmp_path / "results.json").read_text()) == results
