"""sizing.py: the ladder of sizes and the shape keys a user gives, the choice the rule makes from the probe's
rates (with a fake probe: any rates, any budget, any corpus size), the dropout a small corpus read many times
gets, an auto-sized run end to end (and its resume), the one-line errors, and the context and LR a long
budget buys (alone and in a run)."""
import functools
import json
import math
import re
import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sizing
import train
from checkpoint import model_args
from common import Env
from configurator import given_keys
from conftest import FEW, cfg_of, cli_error, events

CPU = Env(rank=0, world=1, device="cpu", dtype="float32")


def test_the_ladder_keeps_the_shape_keys_given():
    assert sizing.ladder(cfg_of("--auto_size=True", "--time_budget=5"))[:4] == [(1, 32, 1), (2, 64, 2), (3, 96, 3),
                                                                              (4, 128, 4)]
    assert (4, 128, 4) in sizing.ladder(cfg_of())  # the fixed default is a rung
    wide = sizing.ladder(cfg_of("--auto_size=True", "--time_budget=5", "--n_embd=256"))
    assert {r[1:] for r in wide} == {(256, 8)} and [r[0] for r in wide] == list(range(1, sizing.MAX_LAYERS + 1))
    deep = sizing.ladder(cfg_of("--auto_size=True", "--time_budget=5", "--n_layer=3", "--n_head=2"))
    assert {r[0] for r in deep} == {3} and all(r[2] == 2 and r[1] % 2 == 0 for r in deep)
    assert [r[1] for r in deep][:3] == [32, 64, 96]


@functools.cache
def params_of(rung):
    """The block params of a rung (n_layer, n_embd, n_head) at vocab 100."""
    return sizing.block_params(model_args(cfg_of(*(f"--{k}={v}" for k, v in zip(sizing.SHAPE_KEYS, rung))), 100))


def fake_choice(monkeypatch, budget, unique, speed):
    """sizing.choose on a fake probe whose tokens/s fall as 1 / params^0.8 (bigger matrices run a little more
    efficiently); returns (the chosen config, {n_layer: (tokens the budget buys, block params)}, the rates)."""
    cfg = cfg_of("--auto_size=True", f"--time_budget={budget}")
    rates = {}

    def probe(cfg_, env, args, data):
        rates[args["n_layer"]] = speed / sizing.block_params(args) ** 0.8
        return rates[args["n_layer"]]
    monkeypatch.setattr(sizing, "probe", probe)
    monkeypatch.setattr(sizing, "time", types.SimpleNamespace(time=lambda: 1000.0))  # no time passes: exact ratios
    chosen, spent = sizing.choose(cfg, CPU, 100, np.zeros(unique, dtype=np.uint16))
    assert spent == 0 and (chosen.n_embd, chosen.n_head) == (32 * chosen.n_layer, chosen.n_layer)
    every = {r[0]: (speed / params_of(r) ** 0.8 * budget * 60, params_of(r)) for r in sizing.ladder(cfg)}
    return chosen, every, rates


@FEW
@given(budget=st.floats(1, 300), unique=st.integers(10_000, 10**9), speed=st.floats(1e6, 1e9))
def test_the_choice_is_the_rung_nearest_the_ratio(budget, unique, speed):
    with pytest.MonkeyPatch.context() as m:
        chosen, every, probed = fake_choice(m, budget, unique, speed)
    ratio = lambda d: every[d][0] / every[d][1]
    best = min(every, key=lambda d: abs(math.log(ratio(d) / sizing.TOKENS_PER_PARAM)))
    assert chosen.n_layer == best
    assert len(probed) <= abs(chosen.n_layer - 4) + 2  # the probe climbs (or descends) from 4 x 128 as far as it must


def test_a_bigger_budget_buys_a_bigger_model_and_a_small_corpus_the_same_one(monkeypatch):
    sizes = [fake_choice(monkeypatch, b, 10**9, 3e8)[0].n_layer for b in (2, 10, 30, 120)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    few, every, _ = fake_choice(monkeypatch, 30, 200_000, 3e8)  # 30 minutes of a 200k-token corpus: read many times
    assert few.n_layer == sizes[2] and every[few.n_layer][0] > 10 * 200_000


def test_a_small_corpus_read_many_times_gets_dropout_but_not_on_attention_unless_given(monkeypatch, capsys):
    few, every, _ = fake_choice(monkeypatch, 30, 200_000, 3e8)  # read many times over: dropout
    assert every[few.n_layer][0] / 200_000 > sizing.DROPOUT_PASSES
    assert (few.dropout, few.attn_dropout) == (sizing.DROPOUT, 0.0)
    assert "dropout=0.1, attn_dropout=0: the chosen size reads its training data" in capsys.readouterr().out
    many, every, _ = fake_choice(monkeypatch, 30, 10**9, 3e8)  # read once: none
    assert every[many.n_layer][0] / 10**9 < 1 and (many.dropout, many.attn_dropout) == (0.0, None)
    cfg = cfg_of("--auto_size=True", "--time_budget=30")
    assert sizing.small_corpus(cfg, sizing.DROPOUT_PASSES) is cfg  # (the threshold itself: no more than it)
    assert sizing.small_corpus(cfg_of("--dropout=0.2"), 100).dropout == 0.2  # a given dropout is kept...
    assert sizing.small_corpus(cfg_of("--dropout=0.2"), 100).attn_dropout is None  # ...on attention too
    kept = sizing.small_corpus(cfg_of("--attn_dropout=0.05"), 100)
    assert (kept.dropout, kept.attn_dropout) == (sizing.DROPOUT, 0.05)


@pytest.mark.slow
def test_an_auto_sized_run_trains_the_chosen_shape_counts_the_probe_and_resumes_it(corpus, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.setattr(sizing, "PROBE_SECONDS", 0.05)
    out = tmp_path / "auto"
    argv = [f"--data_dir={corpus / 'data'}", "--dataset=code", f"--out_dir={out}", "--auto_size=True",
            "--time_budget=1", "--max_iters=4", "--block_size=32", "--batch_size=4", "--eval_iters=1",
            "--eval_interval=2", "--log_interval=2", "--final_eval_tokens=500"]
    results = train.train(cfg_of(*argv))
    log = capsys.readouterr().out
    chose = next(line for line in log.splitlines() if line.startswith("auto_size: chose"))
    depth, width = (int(v) for v in re.match(r"auto_size: chose (\d+) x (\d+),", chose).groups())
    stored = json.loads((out / "config.json").read_text())
    stored = stored.get("config", stored)
    assert (stored["n_layer"], stored["n_embd"], stored["n_head"]) == (depth, width, width // sizing.HEAD_DIM)
    assert results["iters"] == 4 and f"{depth} x {width}" in log
    probe_s = float(chose.split("(probe ")[1].split(" s")[0])
    rounding = 0.05 + 0.005  # the log prints the probe's seconds to 0.1 and the event's to 0.01
    assert events(out, "train")[0]["elapsed_s"] >= probe_s - rounding  # the probe's seconds are the run's
    resumed = train.train(cfg_of(*argv[:-4], "--init_from=resume", "--max_iters=6", "--eval_interval=2",
                                 "--final_eval_tokens=500"))
    assert resumed["iters"] == 6 and "auto_size:" not in capsys.readouterr().out  # the stored shape, no new probe


@pytest.mark.parametrize("argv, says", [
    (["--auto_size=True", "--time_budget=5", "--n_layer=6", "--n_embd=192"], "both are given"),
    (["--auto_size=True", "--time_budget=0.5"], "too short to probe"),
    (["--auto_size=True"], "set --time_budget"),
    (["--auto_size=True", "--time_budget=5", "--model=lstm"], "sizes GPTs"),
    (["--auto_size=True", "--time_budget=5", "--init_from=out/somewhere"], "brings its shape"),
    (["--auto_size=True", "--time_budget=5", "--n_embd=100"], "no size that fits"),
])
def test_auto_size_errors_are_one_line(argv, says, tmp_path, capsys, monkeypatch):
    err = cli_error(train.main, [f"--out_dir={tmp_path / 'run'}", *argv], capsys, monkeypatch)
    assert says in err
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_a_long_budget_doubles_the_context_at_the_same_tokens_a_step_unless_the_batch_is_given():
    meta, splits = {"dataset": "code"}, [np.zeros(10_000, dtype=np.uint16)] * 2  # token data: no "kind"
    shape = lambda c: (c.block_size, c.batch_size)
    long_ = sizing.long_budget(cfg_of(f"--time_budget={sizing.LONG_BUDGET}", "--n_layer=3"), meta, splits)
    assert shape(long_) == (sizing.LONG_CONTEXT, 8) and 8 * sizing.LONG_CONTEXT == 16 * 128
    assert "n_layer" in given_keys(long_)  # auto_size, after it, still sees the shape keys given
    for argv in ([f"--time_budget={sizing.LONG_BUDGET - 0.1}"], [], ["--time_budget=10", "--block_size=128"],
                 ["--time_budget=10", "--batch_size=16"], ["--time_budget=10", "--model=lstm"]):
        assert shape(sizing.long_budget(cfg_of(*argv), meta, splits)) == (128, 16), argv
    assert shape(sizing.long_budget(cfg_of("--time_budget=10"), {"kind": "sft"}, splits)) == (128, 16)
    short = [np.zeros(sizing.LONG_CONTEXT, dtype=np.uint16)] * 2  # no window of 256 + 1 tokens
    assert shape(sizing.long_budget(cfg_of("--time_budget=10"), meta, short)) == (128, 16)


def test_a_long_budget_lowers_the_lr_unless_the_lr_or_optimizer_is_given(capsys):
    meta, splits = {"dataset": "code"}, [np.zeros(10_000, dtype=np.uint16)] * 2
    default_lr = train.TrainConfig().lr
    assert sizing.LONG_LR < default_lr
    long_ = sizing.long_budget(cfg_of(f"--time_budget={sizing.LONG_BUDGET}"), meta, splits)
    assert long_.lr == sizing.LONG_LR
    assert f"lr: {sizing.LONG_LR:g} (not {default_lr:g})" in capsys.readouterr().out
    kept = sizing.long_budget(cfg_of("--time_budget=10", "--block_size=128", "--batch_size=16"), meta, splits)
    assert kept.lr == sizing.LONG_LR and (kept.block_size, kept.batch_size) == (128, 16)  # the two rules are apart
    for argv, lr in ([[f"--time_budget={sizing.LONG_BUDGET - 0.1}"], default_lr],
                     [["--time_budget=10", "--lr=5e-3"], 5e-3],
                     [["--time_budget=10", "--optimizer=adamw"], default_lr],
                     [["--time_budget=10", "--model=lstm"], default_lr]):
        assert sizing.long_budget(cfg_of(*argv), meta, splits).lr == lr, argv
    assert sizing.long_budget(cfg_of("--time_budget=10"), {"kind": "sft"}, splits).lr == default_lr


@pytest.mark.slow
def test_a_long_budget_run_trains_and_resumes_on_the_longer_windows_at_the_lower_lr(corpus, tmp_path, capsys):
    out = tmp_path / "long"
    argv = [f"--data_dir={corpus / 'data'}", "--dataset=code", f"--out_dir={out}", "--time_budget=10",
            "--max_iters=2", "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=16", "--eval_iters=1",
            "--eval_interval=2", "--final_eval_tokens=600"]
    train.train(cfg_of(*argv))
    stored = json.loads((out / "config.json").read_text())
    stored = stored.get("config", stored)
    assert (stored["block_size"], stored["batch_size"]) == (sizing.LONG_CONTEXT, 8)
    log = capsys.readouterr().out
    assert "context: windows of 256 tokens, 8 a batch" in log and "2,048 tokens/step" in log
    assert stored["lr"] == sizing.LONG_LR and f"lr: {sizing.LONG_LR:g}" in log
    resumed = train.train(cfg_of(*argv[:4], "--init_from=resume", "--max_iters=3"))
    assert resumed["iters"] == 3 and "context:" not in (log := capsys.readouterr().out) and "lr: " not in log
    stored = json.loads((out / "config.json").read_text())
    stored = stored.get("config", stored)
    assert (stored["block_size"], stored["lr"]) == (sizing.LONG_CONTEXT, sizing.LONG_LR)
