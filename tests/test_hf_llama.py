"""The Llama family in and out of Hugging Face's format, offline: tiny random Llama (with Llama 3's rope scaling),
Qwen2 (q/k/v biases) and Qwen3 (a head_dim of its own) models that transformers builds and saves are imported
with the same logits and greedy tokens; our runs export to GPT-2, Apertus, Arcee, Qwen3, Llama or Qwen2 and load
back in transformers the same; char, word and byte vocabularies go along as tokenizer.json.

    python -m pytest -q tests/test_hf_llama.py
"""
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, code_text, prepare_text

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import checkpoint  # noqa: E402
import export  # noqa: E402
import hf  # noqa: E402
import sample  # noqa: E402
import train  # noqa: E402
from configurator import UserError, load_config  # noqa: E402
from model import GPT, RECIPE_ARCH, GPTConfig  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

ATOL = 1e-5
TEXT = code_text()[:20_000]
NON_ASCII = "Zażółć gęślą jaźń. Grüße aus Köln, Straße. Ĳssel. €100 — naïve café.\n"
TINY = dict(hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64, rms_norm_eps=1e-6)
FAMILIES = {  # what each family brings that the others do not
    "llama": (transformers.LlamaConfig, dict(tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=False)),
    "qwen3": (transformers.Qwen3Config, dict(head_dim=12, tie_word_embeddings=False)),
}


def bpe_tokenizer_json(path, vocab_size=300):
    """A small byte-level BPE tokenizer.json trained on code and non-ASCII text, with an <|eos|> token."""
    from tokenizers import Tokenizer as Fast, decoders, models, pre_tokenizers, trainers
    fast = Fast(models.BPE())
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    fast.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    fast.train_from_iterator([TEXT, NON_ASCII], trainer)
    fast.save(str(path / "tokenizer.json"))
    return fast


def tiny_family(path, family, seed=0, **extra):
    """A random transformers model of `family` saved to path with a tokenizer.json; every weight random (the
    norms' gains too), so a weight in the wrong place shows in the logits."""
    path.mkdir(parents=True, exist_ok=True)
    fast = bpe_tokenizer_json(path)
    config_cls, own = FAMILIES[family]
    torch.manual_seed(seed)
    config = config_cls(**{**TINY, **own, **extra}, vocab_size=fast.get_vocab_size() + 4,  # padded, as Qwen's are
                        eos_token_id=fast.token_to_id("<|eos|>"), bos_token_id=None)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.3)
    model.save_pretrained(path)
    return model


def compare(ours, theirs, vocab, steps=8):
    """Max abs logit difference over a random batch, and whether greedy decoding picks the same tokens."""
    idx = torch.randint(vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(idx)[0] - theirs(idx).logits).abs().max().item()
        want = theirs.generate(idx[:1, :6], attention_mask=torch.ones_like(idx[:1, :6]), max_new_tokens=steps,
                               do_sample=False)
        got = idx[:1, :6]
        for _ in range(steps):
            got = torch.cat([got, ours(got)[0][:, -1:].argmax(-1)], dim=1)
    return diff, torch.equal(got, want)


# ----------------------------------------------------------------------------- import

@pytest.mark.parametrize("family", FAMILIES)
def test_import_gives_transformers_logits_and_greedy_tokens(tmp_path, family):
    theirs = tiny_family(tmp_path, family)
    ckpt = hf.load_pretrained(f"hf:{tmp_path}")
    assert ckpt["meta"]["tokenizer"] == f"hf:{tmp_path}" and ckpt["meta"]["vocab_size"] == theirs.config.vocab_size
    ours = checkpoint.model_from_checkpoint(ckpt).eval()
    diff, same = compare(ours, theirs, theirs.config.vocab_size)
    print(f"import {family}: max abs logit difference {diff:.2e}")
    assert diff < ATOL and same
    args = ckpt["model_args"]
    assert (args["qkv_bias"], args["qk_norm"], args["tie_weights"]) == \
           (family == "qwen2", family == "qwen3", family == "llama")
    if family == "llama":
        assert args["rope_scaling"] == "8.0,1.0,4.0,16" and args["rope_theta"] == 50000.0
    if family == "qwen3":
        assert ours.blocks[0].attn.hs == 12 != args["n_embd"] // args["n_head"]


def test_bf16_weights_load_without_an_fp32_copy(tmp_path):
    theirs = tiny_family(tmp_path / "m", "qwen3")
    theirs.to(torch.bfloat16).save_pretrained(tmp_path / "m")
    ours = checkpoint.model_from_checkpoint(hf.load_pretrained(f"hf:{tmp_path / 'm'}"))
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}


def test_fine_tune_and_sample_an_imported_model_with_its_own_tokenizer(tmp_path, capsys, monkeypatch):
    d = tmp_path / "smol"
    theirs = tiny_family(d, "llama")
    data = prepare_text(tmp_path, "code", TEXT + NON_ASCII * 20, tokenizer=f"hf:{d}")
    meta = json.loads((data / "code" / "meta.json").read_text())
    assert meta["tokenizer"] == f"hf:{d}" and "token_dtype" not in meta  # small: uint16
    # sample.py --init_from=hf:DIR greedy = transformers' generate, decoded by the model's own tokenizer
    argv = [sys.executable, "sample.py", f"--init_from=hf:{d}", "--start=def ", "--temperature=0", "--num_samples=1",
            "--max_new_tokens=10", "--eot=False", "--stream=False", "--dtype=float32", "--device=cpu"]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
    ids = torch.tensor([tok.encode("def ")])
    want = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    assert tok.decode(want[0]) in r.stdout
    # fine-tune it on data tokenized with its tokenizer, then sample the run (int8 too)
    out = tmp_path / "ft"
    train.train(load_config(train.TrainConfig(), [f"--dataset=code", f"--data_dir={data}", f"--out_dir={out}",
                                                  f"--init_from=hf:{d}", "--max_iters=3", "--eval_interval=3",
                                                  "--eval_iters=1", "--batch_size=2", "--block_size=32",
                                                  "--optimizer=adamw", "--device=cpu", "--compile=False"]))
    ft = checkpoint.load_checkpoint(out / "ckpt.pt")
    assert ft["model_args"]["rope_scaling"] == "8.0,1.0,4.0,16" and ft["meta"]["tokenizer"] == f"hf:{d}"
    for extra in ([], ["--quantize=int8"]):
        texts = sample.sample(load_config(sample.SampleConfig(), [f"--out_dir={out}", "--start=def ", "--num_samples=1",
                                                                  "--max_new_tokens=8", "--device=cpu", *extra]))
        assert texts[0].startswith("def ")
    # and the fine-tuned run exports back to a Llama that transformers loads with the same logits
    capsys.readouterr()
    export.main([f"--out_dir={out}"])
    assert "as LlamaForCausalLM:" in capsys.readouterr().out
    back = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    diff, same = compare(checkpoint.model_from_checkpoint(ft).eval(), back, theirs.config.vocab_size)
    assert diff < ATOL and same


# ----------------------------------------------------------------------------- export

RECIPE = dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, activation="swiglu", bias=False, tie_weights=False)
TARGETS = [  # (our options, the architecture that holds them)
    (RECIPE, "Qwen3ForCausalLM"),
    ({**RECIPE, "activation": "relu2"}, "ApertusForCausalLM"),
    ({**RECIPE, "n_kv_head": 2, "activation": "gelu_tanh", "norm_eps": 1e-6}, "ApertusForCausalLM"),
    ({**RECIPE, "activation": "relu2", "qk_norm": False, "tie_weights": True}, "ArceeForCausalLM"),
    ({**RECIPE, "qk_norm": False, "bias": True, "activation": "gelu"}, "ArceeForCausalLM"),
    ({**RECIPE, "head_dim": 12, "n_kv_head": 1}, "Qwen3ForCausalLM"),
    ({**RECIPE, "qk_gain": 1.7}, "Qwen3ForCausalLM"),  # a starting value only: the gains are weights
    ({**RECIPE, "qk_norm": False, "rope_theta": 5e5, "rope_scaling": "8,1,4,16", "mlp_hidden": 40}, "LlamaForCausalLM"),
    ({**RECIPE, "qk_norm": False, "qkv_bias": True}, "Qwen2ForCausalLM"),
    ({**RECIPE, "activation": "relu2", "qkv_bias": True}, "ApertusForCausalLM"),  # a zero o_proj bias
    (dict(activation="gelu_tanh", bias=False, tie_weights=False), "GPT2LMHeadModel"),
]


@pytest.mark.parametrize("options, arch", TARGETS, ids=[f"{a}-{i}" for i, (_, a) in enumerate(TARGETS)])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, options, arch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=96, block_size=64, n_layer=2, n_head=4, n_embd=32, **options)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # every weight random, the gains and biases too
            p.normal_(1.0 if "norm" in name or "ln" in name else 0.0, 0.3)
    meta = {"tokenizer": "byte", "vocab_size": 96, "eot_token": None}
    family, problems = hf.export_plan("gpt", vars(model.cfg), meta)
    assert problems == [] and hf.ARCHITECTURES[family] == arch
    hf.save_pretrained(model, meta, tmp_path / "hf", family)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == arch
    diff, same = compare(model, theirs, 96)
    print(f"export {arch} {options}: max abs logit difference {diff:.2e}")
    assert diff < ATOL and same
    again = checkpoint.model_from_checkpoint(hf.load_pretrained(f"hf:{tmp_path / 'hf'}")).eval()  # and back in
    idx = torch.randint(96, (1, 16))
    with torch.no_grad():
        assert torch.allclose(again(idx)[0], model(idx)[0], rtol=0, atol=1e-6)


def test_the_default_recipe_exports_to_qwen3_from_the_cli(tmp_path, capsys):
    data = prepare_text(tmp_path, "code", TEXT + NON_ASCII)  # char-level
    train.train(load_config(train.TrainConfig(), [f"--dataset=code", f"--data_dir={data}", f"--out_dir={tmp_path / 'run'}",
                                                  "--max_iters=2", "--eval_iters=1", "--batch_size=2", "--device=cpu",
                                                  "--compile=False"]))
    capsys.readouterr()
    export.main([f"--out_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'run' / 'hf'} as Qwen3ForCausalLM: config.json, model.safetensors, tokenizer.json, " \
           f"tokenizer_config.json" in out
    ckpt = checkpoint.load_checkpoint(tmp_path / "run" / "ckpt.pt")
    ours = checkpoint.model_from_checkpoint(ckpt).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "run" / "hf")
    ids = tok("def f(x):", return_tensors="pt").input_ids
    assert ids[0].tolist() == Tokenizer.from_meta(ckpt["meta"]).encode("def f(x):")
    assert json.loads((tmp_path / "run" / "hf" / "config.json").read_text())["rope_parameters"] == {
        "rope_type": "default", "rope_theta": RECIPE_ARCH["rope_theta"]}  # the recipe's RoPE base, not RoFormer's
    with torch.no_grad():
        assert (ours(ids)[0] - theirs(ids).logits).abs().max().item() < ATOL
    export.main([f"--out_dir={tmp_path / 'run'}"])  # an export of the same shape may be replaced


# ----------------------------------------------------------------------------- tokenizers

def real_lines(shared):
    lines = (shared / "data" / "wikitext-2" / "valid.txt").read_text(encoding="utf-8").splitlines()[:300]
    return "\n".join(lines) + "\n" + NON_ASCII


@pytest.mark.parametrize("kind", ["char", "word", "byte"])
def test_tokenizer_json_round_trips_with_the_same_ids(tmp_path, shared_dir, kind):
    text = real_lines(shared_dir)
    assert any(ord(c) > 127 for c in text)
    tok = Tokenizer.build(kind, [text])
    (tmp_path / "tokenizer.json").write_text(hf.tokenizer_json(tok), encoding="utf-8")
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"),
                                                  clean_up_tokenization_spaces=False)
    ids = tok.encode(text)
    assert theirs.encode(text) == ids
    want = tok.decode(ids)  # (word: our own canonical text, one space between words)
    assert theirs.decode(ids) == want and (kind == "word" or want == text)


def test_uint32_tokens_for_a_large_vocabulary(tmp_path, capsys):
    from tokenizers import Tokenizer as Fast, models, pre_tokenizers
    words = sorted(set(TEXT.split()))
    vocab = {w: i for i, w in enumerate(words + [f"w{i}" for i in range(70_000)] + ["<unk>"])}
    fast = Fast(models.WordLevel(vocab, unk_token="<unk>"))
    fast.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (tmp_path / "big").mkdir()
    fast.save(str(tmp_path / "big" / "tokenizer.json"))
    text = TEXT + " w69999 w12345\n"
    data = prepare_text(tmp_path, "big", text, tokenizer=f"hf:{tmp_path / 'big'}")
    meta = json.loads((data / "big" / "meta.json").read_text())
    assert meta["token_dtype"] == "uint32" and meta["vocab_size"] == len(vocab)
    from dataloader import open_split
    ids = [open_split(data / "big", s, check_ids=True) for s in ("train", "val", "test")]
    assert ids[0].dtype == "<u4" and vocab["w69999"] in ids[2]
    with pytest.raises(UserError, match="token_dtype=uint16 holds at most 65,535: use --token_dtype=uint32"):
        Tokenizer(f"hf:{tmp_path / 'big'}", token_dtype="uint16")


# ----------------------------------------------------------------------------- bad input

def test_what_no_architecture_holds_is_named(tmp_path):
    assert hf.export_plan("gpt", {"n_head": 4, "n_embd": 32, "pos_emb": "sinusoidal"}, {})[1] == [
        "pos_emb=sinusoidal with norm=layernorm (GPT-2 has learned positions and LayerNorm, the Llama family RoPE "
        "and RMSNorm)"]
    assert hf.export_plan("gpt", {**RECIPE, "bias": True, "n_head": 4, "n_embd": 32}, {})[1] == [
        "bias=True with qk_norm=True (Qwen3 and Apertus have no MLP biases)"]
    assert hf.export_plan("lstm", {}, {})[0] is None


def test_export_refuses_a_target_holding_another_model(tmp_path):
    model = GPT(GPTConfig(vocab_size=96, n_layer=1, n_embd=32, **RECIPE))
    meta = {"tokenizer": "byte", "vocab_size": 96, "eot_token": None}
    hf.save_pretrained(model, meta, tmp_path / "a", "qwen3")
    other = GPT(GPTConfig(vocab_size=96, n_layer=2, n_embd=32, **RECIPE))
    with pytest.raises(UserError, match="already holds a different model \\(qwen3, 96 tokens\\): pick another --to"):
        hf.save_pretrained(other, meta, tmp_path / "a", "qwen3")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds files that are not a model export"):
        hf.save_pretrained(model, meta, tmp_path / "b", "qwen3")


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mamba"}, "holds a mamba, which init_from=hf: cannot import: it takes model types gpt2, llama, "
                              "qwen2, qwen3, apertus, arcee"),
    ({"use_sliding_window": True}, "is a qwen2 our GPT cannot run: sliding-window attention layers"),
    ({"num_experts": 8}, "num_experts=8 (a mixture of experts)"),
    ({"hidden_act": "gelu"}, "hidden_act=gelu in a gated MLP"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope_type=yarn (we have default "
                                                                                   "and llama3)"),
])
def test_unsupported_models_are_named(tmp_path, change, message):
    tiny_family(tmp_path, "qwen2")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match=message.replace("(", "\\(").replace(")", "\\)")):
        hf.load_pretrained(f"hf:{tmp_path}")


def test_a_model_without_tokenizer_json_cannot_sample_or_prepare(tmp_path):
    tiny_family(tmp_path, "qwen3")
    (tmp_path / "tokenizer.json").unlink()
    ckpt = hf.load_pretrained(f"hf:{tmp_path}")
    with pytest.raises(UserError, match="its tokenizer is not one this project has \\(no tokenizer.json in"):
        hf.require_tokenizer(ckpt)
    with pytest.raises(UserError, match="has no tokenizer.json"):
        Tokenizer(f"hf:{tmp_path}")


def test_hub_names_offline_without_a_cache_name_hf_dir(tmp_path):
    argv = [sys.executable, "sample.py", "--init_from=hf:HuggingFaceTB/SmolLM2-135M", "--max_new_tokens=2"]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "could not download config.json of HuggingFaceTB/SmolLM2-135M" in r.stderr and "init_from=hf:DIR" in r.stderr
