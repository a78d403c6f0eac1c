"""GPT-2 in and out of Hugging Face's format, offline. Tiny random transformers GPT-2s, imported with init_from=hf:DIR,
give the same logits and greedy tokens; the Hub names go through a pre-filled cache (the download itself cannot run
here); GPT-2 weights fine-tune and sample; our runs export to directories transformers loads with the same logits
and tokens; every bad input is one line.

    python -m pytest -q tests/test_hf.py
"""
import dataclasses
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a guard: nothing here may reach the network (read at import)

import pytest  # noqa: E402
import torch  # noqa: E402

import checkpoint
import dataloader
import tokenizer
import export  # noqa: E402
import hf  # noqa: E402
import sample  # noqa: E402
import train  # noqa: E402
from configurator import load_config  # noqa: E402
from conftest import REPO, check_one_line, cli_error, code_text, events, flags, prepare_text, snapshot  # noqa: E402
from engine import generate  # noqa: E402
from model import GPT2_ARCH as GPT2_OPTIONS, RECIPE_ARCH, GPTConfig  # noqa: E402

transformers = pytest.importorskip("transformers", reason="a test dependency: make test installs requirements-test.txt")

TINY_GPT2 = dict(vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                 attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
# Same float32 arithmetic in another order (transformers spells out the tanh GELU and runs its own attention):
# the logits, of size ~3, differ by float32 rounding (~1e-6), far below any mistake in the conversion (~1e-1).
ATOL = 1e-5
# GPT-2's architecture, which TrainConfig's defaults (the modern recipe) are not: what export can write
GPT2_ARCH = [f"--{k}={v}" for k, v in GPT2_OPTIONS.items()]


def tiny_gpt2(path, seed=0, std=0.3, **config):
    """A random transformers GPT2LMHeadModel saved to path. Every tensor is random, the LayerNorms and biases too,
    so a weight in the wrong place or untransposed shows in the logits."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**TINY_GPT2, **config})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    model.save_pretrained(path)
    return model


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8", **extra}


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny GPT-2 with GPT-2's vocabulary (so the gpt2 tokenizer reads it), saved by transformers."""
    path = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    tiny_gpt2(path, seed=1, std=0.05, vocab_size=hf.GPT2_VOCAB, eos_token_id=hf.GPT2_EOT, bos_token_id=hf.GPT2_EOT)
    return path


@pytest.fixture(scope="module")
def gpt2_data(gpt2_offline, tmp_path_factory):
    """The json package's source, gpt2-tokenized; returns the data_dir (dataset `code`)."""
    return prepare_text(tmp_path_factory.mktemp("gpt2data"), "code", code_text()[:60_000], tokenizer="gpt2")


# ----------------------------------------------------------------------------- import

@pytest.mark.parametrize("tie, act", [(True, "gelu_new"), (False, "gelu"), (True, "gelu_pytorch_tanh")])
def test_import_gives_transformers_logits_and_greedy_tokens(tmp_path, tie, act):
    theirs = tiny_gpt2(tmp_path, tie_word_embeddings=tie, activation_function=act, n_inner=48)
    ckpt = hf.load_pretrained(f"hf:{tmp_path}")
    assert ckpt["model_args"]["activation"] == ("gelu" if act == "gelu" else "gelu_tanh")
    assert ckpt["model_args"]["tie_weights"] == tie and ckpt["model_args"]["mlp_ratio"] == 1.5
    ours = checkpoint.model_from_checkpoint(ckpt).eval()
    assert (ours.lm_head.weight is ours.wte.weight) == tie
    idx = torch.randint(TINY_GPT2["vocab_size"], (3, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(idx)[0] - theirs(idx).logits).abs().max().item()
    assert diff < ATOL, diff
    prompt = idx[:, :10]
    mine = generate(ours, prompt, 40, temperature=0)  # KV-cached, as transformers' generate
    want = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False)
    assert torch.equal(mine, want)


def test_import_reads_openai_s_layout_and_sharded_weights(tmp_path):
    """OpenAI's files on the Hub name weights without `transformer.` and carry the causal-mask buffers;
    big models come as shards with an index."""
    from safetensors.torch import load_file, save_file
    theirs = tiny_gpt2(tmp_path / "plain")
    openai = tmp_path / "openai"
    openai.mkdir()
    (openai / "config.json").write_bytes((tmp_path / "plain" / "config.json").read_bytes())
    weights = load_file(tmp_path / "plain" / "model.safetensors")
    weights = {k.removeprefix("transformer."): v for k, v in weights.items()}
    mask = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
    weights.update({f"h.{i}.attn.bias": mask.clone() for i in range(TINY_GPT2["n_layer"])})
    save_file({k: v.contiguous() for k, v in weights.items()}, openai / "model.safetensors")
    theirs.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    idx = torch.randint(TINY_GPT2["vocab_size"], (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = theirs(idx).logits
        for d in (openai, tmp_path / "sharded"):
            got = checkpoint.model_from_checkpoint(hf.load_pretrained(f"hf:{d}")).eval()(idx)[0]
            assert (got - want).abs().max().item() < ATOL, d


@pytest.mark.slow
def test_hub_names_come_from_the_huggingface_cache(gpt2_dir, gpt2_offline, tmp_path):
    """`sample.py --init_from=gpt2` in a real process, its files in a Hugging Face cache laid out as
    hf_hub_download leaves it (no network: HF_HUB_OFFLINE); the text is transformers' greedy continuation."""
    snapshot_dir = tmp_path / "hub" / "models--openai-community--gpt2" / "snapshots" / ("0" * 40)
    snapshot_dir.mkdir(parents=True)
    (snapshot_dir.parents[1] / "refs").mkdir()
    (snapshot_dir.parents[1] / "refs" / "main").write_text("0" * 40)
    for name in ("config.json", "model.safetensors"):
        (snapshot_dir / name).write_bytes((gpt2_dir / name).read_bytes())
    argv = [sys.executable, "sample.py", "--init_from=gpt2", "--start=The cat", "--temperature=0", "--num_samples=1",
            "--max_new_tokens=12", "--eot=False", "--stream=False", "--dtype=float32", "--device=cpu"]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=env(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr
    tok = tokenizer.Tokenizer("gpt2")
    ids = torch.tensor([tok.encode("The cat")])
    model = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert "The cat" + tok.decode(want[0, ids.size(1):].tolist()) + "\n" + "-" * 40 in r.stdout
    # and with no cached copy, the way out is named
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=env(HF_HUB_CACHE=str(tmp_path / "empty"), HF_HUB_OFFLINE="1"))
    check_one_line(r.returncode, r.stderr)
    assert "could not download config.json of openai-community/gpt2" in r.stderr
    assert "and it is not cached" in r.stderr and "init_from=hf:DIR" in r.stderr


@pytest.mark.slow
def test_fine_tune_gpt2_weights_then_sample(gpt2_dir, gpt2_data, tmp_path, monkeypatch, capsys):
    """--init_from=gpt2 with the Hub download replaced by the tiny model's files (everything after it is real)."""
    monkeypatch.setattr(hf, "hub_download", lambda repo, filename: str(gpt2_dir / filename))
    out = tmp_path / "ft"
    argv = flags(gpt2_data, out, "--init_from=gpt2", "--max_iters=30", "--eval_interval=15", "--block_size=32",
                 "--lr=1e-2", "--dtype=float32", "--n_layer=5")
    train.train(load_config(train.TrainConfig(), argv))
    printed = capsys.readouterr().out
    assert "gpt2: context cropped to block_size=32 of its 64 positions" in printed
    assert "fine-tuning keeps the checkpoint's shape: n_layer=2" in printed
    ckpt = checkpoint.load_checkpoint(out / "last.pt")
    imported = hf.load_pretrained(f"hf:{gpt2_dir}", block_size=32)["model_args"]
    assert GPTConfig(**ckpt["model_args"]) == GPTConfig(**imported)  # (the run lists every option's value)
    assert ckpt["model"]["wpe.weight"].shape == (32, 32) and ckpt["meta"]["tokenizer"] == "gpt2"
    # it started from GPT-2's weights: the first eval is transformers' loss on the same windows
    val = dataloader.open_split(gpt2_data / "code", "val")
    starts = dataloader.fixed_starts(len(val), 32, 4, 1337 + train.EVAL_SEED_OFFSET)  # eval_iters=1 x batch_size=4
    x, y = dataloader.windows(val, starts, 32)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    with torch.no_grad():
        start_loss = torch.nn.functional.cross_entropy(theirs(x).logits.flatten(0, 1), y.flatten()).item()
    losses = [e["val_loss"] for e in events(out, "eval")]
    assert losses[0] == pytest.approx(start_loss, abs=1e-4) and losses[-1] < losses[0] - 0.5, losses
    texts = sample.sample(load_config(sample.SampleConfig(), [f"--out_dir={out}", "--start=def ", "--num_samples=2",
                                                              "--max_new_tokens=8", "--eot=False"]))
    assert len(texts) == 2 and all(t.startswith("def ") and len(t) > 4 for t in texts)


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("options", [[], ["--bias=False", "--tie_weights=False", "--activation=gelu_tanh",
                                          "--mlp_ratio=3", "--dropout=0.1", "--attn_dropout=0.0"],
                                     ["--activation=relu2", "--zero_init=True", "--tie_weights=False"]])
def test_export_loads_in_transformers_with_the_same_logits(gpt2_data, tmp_path, options, capsys, monkeypatch):
    run = tmp_path / "run"
    train.train(load_config(train.TrainConfig(), flags(gpt2_data, run, "--max_iters=4", "--eval_interval=4", *GPT2_ARCH, *options)))
    to = tmp_path / "exported"
    monkeypatch.setattr(sys, "argv", ["export.py", f"--out_dir={run}", f"--to={to}"])
    capsys.readouterr()
    export.main(sys.argv[1:])
    assert f"wrote {to} as GPT2LMHeadModel: config.json, merges.txt, model.safetensors, tokenizer_config.json, vocab.json" in \
        capsys.readouterr().out
    ours = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(run / "ckpt.pt")).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(to).eval()
    assert isinstance(theirs, transformers.GPT2LMHeadModel)
    pdrop = (theirs.config.resid_pdrop, theirs.config.embd_pdrop, theirs.config.attn_pdrop)
    assert pdrop == ((0.1, 0.1, 0.0) if "--dropout=0.1" in options else (0.0, 0.0, 0.0))
    assert (theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr()) == (not options)
    idx = torch.randint(hf.GPT2_VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(idx)[0] - theirs(idx).logits).abs().max().item()
    assert diff < ATOL, diff
    text = code_text()[:3000]
    assert transformers.AutoTokenizer.from_pretrained(to).encode(text) == tokenizer.Tokenizer("gpt2").encode(text)
    again = checkpoint.model_from_checkpoint(hf.load_pretrained(f"hf:{to}", dropout=ours.cfg.dropout)).eval()  # back in
    # bias=False came back as zero biases; zero_init only set the starting weights, which the file does not record
    # (and the dropout on attention is fine-tuning's to choose, as the dropout is: it follows dropout)
    assert dataclasses.replace(again.cfg, bias=ours.cfg.bias, zero_init=ours.cfg.zero_init,
                               attn_dropout=ours.cfg.attn_dropout) == ours.cfg
    with torch.no_grad():
        assert torch.allclose(again(idx)[0], ours(idx)[0], rtol=0, atol=1e-6)


def test_a_byte_level_run_exports_with_a_byte_tokenizer_json(tmp_path, capsys):
    data = prepare_text(tmp_path, "code", code_text()[:30_000], tokenizer="byte")
    train.train(load_config(train.TrainConfig(), flags(data, tmp_path / "run", "--max_iters=2", *GPT2_ARCH)))
    capsys.readouterr()
    export.main([f"--out_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'run' / 'hf'} as GPT2LMHeadModel: config.json, model.safetensors, tokenizer.json, " \
           f"tokenizer_config.json\n" in out
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf").eval()
    ours = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(tmp_path / "run" / "ckpt.pt")).eval()
    idx = torch.tensor([list("def f(x):".encode())])
    with torch.no_grad():
        assert (ours(idx)[0] - theirs(idx).logits).abs().max().item() < ATOL


def test_tokenizer_files_are_openai_s(shared_dir, gpt2_offline):
    """vocab.json and merges.txt rebuilt from tiktoken are OpenAI's encoder.json and vocab.bpe."""
    vocab, merges = hf.gpt2_tokenizer_files()
    assert json.loads(vocab) == json.loads((shared_dir / "data/tiktoken/encoder.json").read_text(encoding="utf-8"))
    assert merges == (shared_dir / "data/tiktoken/vocab.bpe").read_text(encoding="utf-8")


def test_export_refuses_what_gpt2_cannot_express(tmp_path, capsys, monkeypatch):
    data = prepare_text(tmp_path, "code", code_text()[:30_000])  # char-level
    for name, options in [("rope", ["--pos_emb=sinusoidal", "--n_kv_head=1"]), ("lstm", ["--model=lstm", "--n_hidden=16"])]:
        train.train(load_config(train.TrainConfig(), flags(data, tmp_path / name, "--max_iters=2", *options)))
    before = snapshot(tmp_path / "rope")
    err = cli_error(export.main, [f"--out_dir={tmp_path / 'rope'}"], capsys, monkeypatch)
    assert "ckpt.pt cannot be exported: no Hugging Face architecture this project writes (gpt2, llama, qwen2, qwen3, " \
           "apertus, arcee) can express pos_emb=sinusoidal with norm=rmsnorm" in err
    assert snapshot(tmp_path / "rope") == before and not (tmp_path / "rope" / "hf").exists()
    err = cli_error(export.main, [f"--out_dir={tmp_path / 'lstm'}", f"--to={tmp_path / 'x'}"], capsys, monkeypatch)
    assert "can express an LSTM (the format holds GPT-2 transformers)" in err and not (tmp_path / "x").exists()


def test_export_problems_of_options_read_with_their_gpt2_defaults():
    """Options that may come after this file (norm, qk_norm, relu2, anything else) are named."""
    args = {"n_head": 4, "vocab_size": 50257}
    assert hf.export_problems("gpt", args, {"tokenizer": "gpt2"}) == []  # an old checkpoint: GPT-2's defaults
    odd = {**args, "norm": "rmsnorm", "qk_norm": True, "activation": "swish", "parallel": True,
           "pos_emb": "sinusoidal", "n_kv_head": 4}
    assert hf.export_problems("gpt", odd, {"tokenizer": "word"}) == [
        "pos_emb=sinusoidal (GPT-2 learns its position embeddings)", "norm=rmsnorm (GPT-2 uses LayerNorm)",
        "qk_norm=True (GPT-2 does not normalize queries and keys)",
        "activation=swish (GPT-2's format takes gelu or gelu_tanh or relu2)",
        "parallel=True (export does not know this option)"]
    recipe = {**args, **RECIPE_ARCH, "x0_mix": True}  # the Llama family would hold it but for x0_mix
    assert hf.export_plan("gpt", recipe, {"tokenizer": "gpt2"}) == (None, [
        "x0_mix=True (each block's input mixed with the embeddings, which no Hugging Face format holds)"])


# ----------------------------------------------------------------------------- bad input

def test_bad_gpt2_names_and_directories(tmp_path, gpt2_data, capsys, monkeypatch):
    def write(name, config, weights_from=None):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
        if weights_from:
            (d / "model.safetensors").write_bytes((weights_from / "model.safetensors").read_bytes())
        return d

    good = tmp_path / "good"
    tiny_gpt2(good)
    config = json.loads((good / "config.json").read_text())
    llama = write("llama", {**config, "model_type": "mamba"}, good)
    wider = write("wider", {**config, "n_embd": 64}, good)
    variant = write("variant", {**config, "scale_attn_by_inverse_layer_idx": True}, good)
    no_weights = write("no_weights", config)
    from safetensors.torch import load_file, save_file
    lacking = write("lacking", config)
    save_file({k: v for k, v in load_file(good / "model.safetensors").items() if "h.1.ln_2" not in k},
              lacking / "model.safetensors")
    (no_weights / "pytorch_model.bin").write_bytes(b"")
    out = tmp_path / "out"
    for argv, message in [
        (["--init_from=gpt2-small"], "unknown GPT-2 model 'gpt2-small': use gpt2, gpt2-medium, gpt2-large, gpt2-xl, "
                                     "or hf:DIR for a local Hugging Face directory"),
        ([f"--init_from=hf:{llama}"], f"{llama} holds a mamba, which init_from=hf: cannot import: it takes model types"),
        ([f"--init_from=hf:{wider}"], f"{wider} is not GPT-2-shaped: wte.weight is (96, 32), but its config.json "
                                      f"makes it (96, 64)"),
        ([f"--init_from=hf:{lacking}"], f"{lacking} is not GPT-2-shaped: its weights lack h.1.ln_2.weight, "
                                        f"h.1.ln_2.bias"),
        ([f"--init_from=hf:{variant}"], "is a GPT-2 variant our GPT cannot run: scale_attn_by_inverse_layer_idx=True"),
        ([f"--init_from=hf:{no_weights}"], "has no model.safetensors (only pytorch_model.bin, a pickle: save it "
                                           "again with safe_serialization=True)"),
        ([f"--init_from=hf:{tmp_path / 'nowhere'}"], "is not a directory"),
        ([f"--init_from=hf:{good}"], f"{good} has a vocabulary of 96 tokens, not GPT-2's 50,257"),
    ]:
        err = cli_error(train.main, flags(gpt2_data, out, *argv), capsys, monkeypatch)
        assert message in err, (argv, err)
        assert not out.exists()
    err = cli_error(sample.main, ["--init_from=gpt2-xxl"], capsys, monkeypatch)
    assert "unknown GPT-2 model 'gpt2-xxl'" in err
    err = cli_error(sample.main, [f"--init_from={out}"], capsys, monkeypatch)
    assert "give gpt2, gpt2-medium, gpt2-large, gpt2-xl or hf:DIR (a run of yours is --out_dir=...)" in err
    err = cli_error(sample.main, [f"--init_from=hf:{good}"], capsys, monkeypatch)
    assert "has a vocabulary of 96 tokens, not GPT-2's 50,257: its tokenizer is not one this project has" in err


def test_gpt2_weights_need_a_gpt2_tokenized_dataset(gpt2_dir, tmp_path, capsys, monkeypatch):
    data = prepare_text(tmp_path, "code", code_text()[:30_000])  # char-level
    before = snapshot(data / "code")
    err = cli_error(train.main, flags(data, tmp_path / "out", f"--init_from=hf:{gpt2_dir}"), capsys, monkeypatch)
    assert f"hf:{gpt2_dir}'s weights read GPT-2's tokens, but {data / 'code'} is tokenized with char: prepare it " \
           f"with --tokenizer=gpt2" in err
    assert snapshot(data / "code") == before and not (tmp_path / "out").exists()
    err = cli_error(train.main, flags(data, tmp_path / "out", "--activation=relu"), capsys, monkeypatch)
    assert "activation must be one of gelu, gelu_tanh, relu2, swiglu, not 'relu'" in err
