"""sample.py and engine.py's Session on real tiny runs (a RoPE + multi-query GPT and an LSTM, trained by
train.train): batches of samples, seeds, greedy, stop strings and end-of-text, streaming, the prompts x
temperatures grid, speed reports, bf16 and int8 weights, auto-compile, and one-line errors for bad input; and
sample.sample on the end-to-end run of test_train.py's flags (SMALL_LOG5)."""
import json
import subprocess
import sys

import pytest
import torch

import common
import engine
import sample
import train
from configurator import UserError, load_config
from model import GPT, GPTConfig
from conftest import REPO, code_text, prepare_text, run_small_log5

# the two runs the tests sample from: 30 steps of a 2-layer, 32-wide model on 8 x 24-token batches
RUN_FLAGS = ["--n_layer=2", "--n_embd=32", "--block_size=24", "--batch_size=8", "--eval_iters=2", "--log_interval=10",
        "--warmup_iters=5", "--lr=3e-3", "--final_eval_tokens=500", "--max_iters=30", "--eval_interval=30"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A char-level corpus, a GPT (RoPE, one key/value head) and an LSTM trained on it for 30 steps."""
    root = tmp_path_factory.mktemp("sample")
    prepare_text(root, "code", code_text())
    out = {}
    for kind, extra in (("gpt", ["--n_head=2", "--pos_emb=rope", "--n_kv_head=1"]),
                        ("lstm", ["--model=lstm", "--n_hidden=32"])):
        out[kind] = root / kind
        train.train(load_config(train.TrainConfig(), [f"--data_dir={root / 'data'}", "--dataset=code",
                                                      f"--out_dir={out[kind]}", *RUN_FLAGS, *extra]))
        losses = [e["val_loss"] for e in map(json.loads, open(out[kind] / "metrics.jsonl")) if e["event"] == "eval"]
        assert losses[-1] < losses[0] - 0.5, (kind, losses)  # training works with rope + multi-query, and the LSTM
    return out


def cfg_for(run, *args):
    return sample.parse_args([f"--out_dir={run}", "--start=def ", "--max_new_tokens=40", "--seed=3", *args])


@pytest.mark.parametrize("kind", ["gpt", "lstm"])
def test_batch_seed_greedy_and_cache_through_one_code_path(runs, kind):
    cfg = cfg_for(runs[kind], "--num_samples=3", "--temperature=1.0", "--top_k=20", "--top_p=0.95")
    texts = sample.sample(cfg)
    assert len(texts) == 3 and all(t.startswith("def ") and len(t) == 44 for t in texts)
    assert len(set(texts)) > 1  # a batch of independent samples
    assert sample.sample(cfg) == texts  # same seed, same samples
    assert sample.sample(cfg_for(runs[kind], "--num_samples=3", "--temperature=1.0", "--seed=4")) != texts
    assert sample.sample(cfg_for(runs[kind], "--num_samples=3", "--temperature=1.0", "--top_k=20", "--top_p=0.95",
                                 "--cache=False")) == texts  # the uncached reference draws the same tokens
    greedy = sample.sample(cfg_for(runs[kind], "--num_samples=2", "--temperature=0", "--max_new_tokens=60"))
    assert greedy[0] == greedy[1]  # 60 > block_size 24: the GPT slides its window
    for slide in ("1", "0", "24"):  # exact, half (the default), the whole window
        args = ("--num_samples=2", "--temperature=1.0", "--max_new_tokens=60", f"--slide={slide}")
        assert sample.sample(cfg_for(runs[kind], *args)) == sample.sample(cfg_for(runs[kind], *args, "--cache=False"))


def test_stop_string_trims_each_sample_at_its_own_stop(runs):
    base = cfg_for(runs["gpt"], "--num_samples=4", "--temperature=1.0")
    full = engine.Session(base).generate("def ", 1.0)["samples"]
    stop = full[0][15:17]  # occurs in sample 0, maybe in others, at their own places
    cfg = cfg_for(runs["gpt"], "--num_samples=4", "--temperature=1.0", f"--stop={stop}")
    r = engine.Session(cfg).generate("def ", 1.0)
    for text, stopped, before in zip(r["samples"], r["stopped"], full):
        assert stopped == (stop in before)
        assert text == (before[:before.index(stop)] if stop in before else before)
    assert r["stopped"][0] and len(r["samples"][0]) <= 15
    # escapes: --stop='\n' is a newline
    assert cfg_for(runs["gpt"], "--stop=\\n").stop == ("\n",)
    # several stops: each sample is cut at the first of them to appear
    other = full[1][10:12]
    r = engine.Session(cfg_for(runs["gpt"], "--num_samples=4", "--temperature=1.0", f"--stop={stop}",
                               f"--stop={other}")).generate("def ", 1.0)
    for text, before in zip(r["samples"], full):
        cuts = [before.index(s) for s in (stop, other) if s in before]
        assert text == (before[:min(cuts)] if cuts else before)


def test_end_of_text_stops_each_sample_and_ends_generation_when_all_have(runs):
    session = engine.Session(cfg_for(runs["lstm"], "--num_samples=3", "--temperature=1.0", "--max_new_tokens=80"))
    full = session.generate("def ", 1.0)
    session.eot = session.tok.encode("\n")[0]  # pretend the newline is end-of-text (what a Session stops at)
    r = session.generate("def ", 1.0)
    assert r["samples"] == [s.split("\n")[0] for s in full["samples"]]
    assert r["stopped"] == ["\n" in s for s in full["samples"]]
    if all(r["stopped"]):  # every sample stopped: no more steps than the last stop needed
        assert r["steps"] == max(r["new_tokens"]) + 1
    session.cfg.eot = False
    assert session.generate("def ", 1.0)["samples"] == full["samples"]


def test_single_sample_streams_token_by_token(runs, capsys):
    cfg = cfg_for(runs["gpt"], "--num_samples=1", "--temperature=0.8")
    pieces = []
    r = engine.Session(cfg).generate("def ", 0.8, echo=pieces.append)
    assert "".join(pieces) == r["samples"][0] and len(pieces) > 10
    sample.main([f"--out_dir={runs['gpt']}", "--start=def ", "--max_new_tokens=40", "--seed=3", "--num_samples=1"])
    out = capsys.readouterr().out
    assert out.startswith("def " + r["samples"][0] + "\n")
    assert "tok/s" in out and "prefill 4 tokens x 1" in out and "decode 39 steps x 1" in out


def test_prompts_by_temperatures_grid_writes_json(runs, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def \n\nclass A:\nimport os\n", encoding="utf-8")  # the blank line is skipped
    output = tmp_path / "gen" / "grid.json"
    sample.main([f"--out_dir={runs['gpt']}", f"--prompts={prompts}", "--temperatures=0,1.0,1.5",
                 "--num_samples=2", "--max_new_tokens=20", f"--output={output}"])
    doc = json.loads(output.read_text(encoding="utf-8"))
    combos = [(g["prompt"], g["temperature"]) for g in doc["generations"]]
    assert sorted(combos) == sorted((p, t) for p in ("def ", "class A:", "import os") for t in (0.0, 1.0, 1.5))
    assert doc["settings"]["max_new_tokens"] == 20 and doc["model"] == "gpt" and doc["model_args"]["pos_emb"] == "rope"
    for g in doc["generations"]:
        assert len(g["samples"]) == 2 and all(len(s) == 20 for s in g["samples"])
        assert g["decode_tok_s"] > 0 and g["prefill_tok_s"] > 0
        if g["temperature"] == 0:
            assert g["samples"][0] == g["samples"][1]
    table = capsys.readouterr().out
    assert table.count("| `class A:` |") == 3 and "9 generations written to" in table
    # one temperature alone is a grid too; the default output is out_dir/generations.json
    sample.main([f"--out_dir={runs['lstm']}", "--temperatures=0.7", "--max_new_tokens=5", "--num_samples=1"])
    assert json.loads((runs["lstm"] / "generations.json").read_text())["temperatures"] == [0.7]


@pytest.mark.slow
def test_bad_input_is_one_clear_user_error(runs, tmp_path):
    run = f"--out_dir={runs['gpt']}"
    cases = [([f"--prompts={tmp_path / 'missing.txt'}"], "cannot read the prompts file"),
             (["--temperatures=0.5,hot"], "temperatures must be numbers separated by commas"),
             (["--temperatures=-1"], "temperatures must be >= 0"),
             (["--start=\u2603 snowman"], "is not in this dataset.s vocabulary"),
             (["--top_p=0"], "top_p must be in"),
             (["--stop=\\x"], "bad backslash escape"),
             (["--quantize=int4"], "quantize must be int8 or empty"),
             (["--slide=-1"], "slide must be >= 0"),
             (["--slide=25"], "slide=25 is more than the model's context of 24 tokens"),
             (["--dtype=float16"], "dtype=float16 needs a CUDA GPU")]
    (tmp_path / "empty.txt").write_text("\n\n")
    cases.append(([f"--prompts={tmp_path / 'empty.txt'}"], "has no prompts"))
    for args, message in cases:
        with pytest.raises(UserError, match=message):
            sample.main([run, "--max_new_tokens=2", *args])
    with pytest.raises(UserError, match="quantize=int8 runs on a CPU or a CUDA GPU, not on mps"):
        engine.for_generation(GPT(GPTConfig()), "mps", "float32", "int8")  # (no MPS here to load on)
    for args in (["--quantize=int8"], ["--compile=True"]):  # an LSTM has neither int8 Linear layers nor a KV cache
        with pytest.raises(UserError, match="quantize=int8 is for GPT|compile=True compiles a GPT"):
            sample.main([f"--out_dir={runs['lstm']}", "--max_new_tokens=2", *args])
    for args, message in (("--temperatures=0.5,,x", "temperatures must be numbers"),
                          ("--quantize=int4", "quantize must be int8"), ("--dtype=float16", "dtype=float16 needs")):
        r = subprocess.run([sys.executable, "sample.py", run, args], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert message in r.stderr


def test_bfloat16_and_int8_weights_generate_through_the_session(runs):
    """dtype=bfloat16 casts the weights once (no autocast); quantize=int8 swaps in int8 Linear layers.
    Greedy text from either mostly matches fp32's: the tiny model's top tokens are rarely near-ties."""
    ref = engine.Session(cfg_for(runs["gpt"], "--num_samples=1", "--temperature=0", "--dtype=float32"))
    want = ref.generate("def ", 0)["samples"][0]
    for args in (["--dtype=bfloat16"], ["--dtype=bfloat16", "--quantize=int8"], ["--quantize=int8"]):
        session = engine.Session(cfg_for(runs["gpt"], "--num_samples=1", "--temperature=0", *args))
        got = session.generate("def ", 0)["samples"][0]
        assert len(got) == len(want) == 40
        assert sum(a == b for a, b in zip(got, want)) >= 20, (args, got, want)
    assert session.model.lm_head.weight.dtype == torch.int8 and session.dtype == "float32"
    assert ref.dtype == "float32" and not any(p.requires_grad for p in ref.model.parameters())


def test_auto_compile_waits_for_a_long_generation(runs, monkeypatch):
    """compile=None times COMPILE_AFTER eager steps and compiles only when the rest would take longer
    than COMPILE_PAYS_S eagerly; the step that compiled is reported apart from the decode rate."""
    compiled, compile_step = [], engine.compile_step
    monkeypatch.setattr(engine, "compile_step", lambda model, device: compiled.append(model) or
                        compile_step(model, device, backend="eager"))
    monkeypatch.setattr(engine, "cpu_kernels_buildable", lambda: True)  # the eager backend needs no compiler
    session = engine.Session(cfg_for(runs["gpt"], "--num_samples=1", "--temperature=0", "--max_new_tokens=20"))
    want = session.generate("def ", 0)
    assert not compiled and want["compile_s"] is None  # 20 tiny steps: never worth a compile
    monkeypatch.setattr(engine, "COMPILE_PAYS_S", 0.0)
    got = session.generate("def ", 0)
    assert compiled == [session.model] and got["compile_s"] is not None
    assert got["samples"] == want["samples"] and "compiled; its first step" in sample.speed_line(got)


# ----------------------------------------------------------------------------- a run trained with the end-to-end flags

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


def test_compiling_where_no_cpu_kernels_can_be_built(runs, monkeypatch):
    """Without a C++ compiler or Python's headers: compile=True is one clear line; compile=None stays eager
    however long the generation."""
    monkeypatch.setattr(common, "cpu_kernels_buildable", lambda: False)
    monkeypatch.setattr(engine, "cpu_kernels_buildable", lambda: False)
    with pytest.raises(UserError, match="compile=True on a CPU needs a C\\+\\+ compiler"):
        engine.Session(cfg_for(runs["gpt"], "--compile=True"))
    monkeypatch.setattr(engine, "COMPILE_PAYS_S", 0.0)
    session = engine.Session(cfg_for(runs["gpt"], "--num_samples=1", "--temperature=0", "--max_new_tokens=20"))
    assert session.generate("def ", 0)["compile_s"] is None and session.model.compiled_step is None
