"""metrics.py: scoring a whole split (every token once, checked by hand) and the units (bits per token, bits per
byte, perplexity). The results files a run writes are checked in test_train.py and test_train_faults.py."""
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
