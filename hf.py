"""
Hugging Face's formats, both ways: GPT-2 and the Llama family (Llama, Qwen2, Qwen3, Apertus, Arcee:
hf_llama.py maps those) become a checkpoint of our GPT (model.py), and a run becomes a directory
transformers loads, in the one architecture that holds it exactly (export_plan picks it).

    ckpt = load_pretrained("gpt2")              # gpt2 | gpt2-medium | gpt2-large | gpt2-xl: the Hub, cached
    ckpt = load_pretrained("hf:path/to/dir")    # config.json + model.safetensors (+ tokenizer.json), offline
    ckpt = load_pretrained("hf:Qwen/Qwen3-0.6B")  # a Hub repository, cached
    model = checkpoint.model_from_checkpoint(ckpt)   # our GPT, in the weights' dtype (bf16 stays bf16)
    family, problems = export_plan("gpt", args, meta)   # gpt2 | llama | qwen2 | qwen3 | apertus | arcee
    save_pretrained(model, meta, "out/x/hf", family)   # config.json, model.safetensors, tokenizer files

The tokenizer goes along: GPT-2's vocab.json and merges.txt for gpt2 runs, a tokenizer.json built with the
`tokenizers` library for char, word and byte runs (the same ids), the original files for hf:NAME.

GPT-2's layout:

The two differ in names and in one layout detail: GPT-2's Conv1D keeps a weight as (in, out) where
nn.Linear keeps (out, in), so every matrix inside the blocks is transposed. Both fuse the query, key
and value projections into one matrix, in that order, and split heads the same way. A checkpoint made
here holds what train.py's do: model_kind, model_args, model (the state_dict), meta (the tokenizer), plus
config and iter for train.py's fine-tuning; its meta names the tokenizer (gpt2, or hf:WHERE with the model's
tokenizer.json). Needs safetensors, huggingface_hub and tokenizers, never transformers.
"""
import json
import os
import shutil

import torch

import hf_llama
from configurator import UserError
from download import hub_download
from model import GPT, GPTConfig
from tokenizer import Tokenizer, hf_name

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", **hf_llama.ARCHITECTURES}  # model_type -> its class in transformers
MODEL_TYPES = tuple(ARCHITECTURES)  # what init_from=hf: imports and export writes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")  # hf:NAME's, copied

GPT2_MODELS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
GPT2_VOCAB, GPT2_EOT = 50257, 50256  # GPT-2's BPE vocabulary (tiktoken's gpt2) and its <|endoftext|>
LAYER_NORM_EPS = 1e-5  # GPT-2's, and nn.LayerNorm's default
TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu2": "relu2"}  # ours -> activation_function (gelu_new: tanh)
FROM_HF_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu2": "relu2"}
# options of ours that no format export writes holds, and why
NO_FORMAT_HOLDS = {"x0_mix": "each block's input mixed with the embeddings, which no Hugging Face format holds"}
# our state_dict names -> GPT-2's (below `transformer.`), and the weights stored transposed (Conv1D)
RENAMES = [("blocks.", "h."), (".ln1.", ".ln_1."), (".ln2.", ".ln_2."), (".attn.qkv.", ".attn.c_attn."),
           (".attn.proj.", ".attn.c_proj."), (".mlp.fc.", ".mlp.c_fc."), (".mlp.proj.", ".mlp.c_proj.")]
TRANSPOSED = (".qkv.weight", ".proj.weight", ".fc.weight")
IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some GPT-2 files carry


def gpt2_name(name):
    """Our state_dict key -> GPT-2's (inside `transformer.`, but for lm_head): blocks.0.attn.qkv.weight ->
    h.0.attn.c_attn.weight."""
    for ours, theirs in RENAMES:
        name = name.replace(ours, theirs)
    return name


def is_pretrained(init_from):
    """Whether init_from names Hugging Face weights (gpt2, gpt2-*, hf:DIR) rather than a run of ours."""
    return init_from.startswith("hf:") or (init_from.startswith("gpt2") and not os.path.exists(init_from))


# ----------------------------------------------------------------------------- import

def is_hub_name(name):
    """Whether hf:NAME names a Hub repository (owner/name, not a folder here)."""
    return not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/"))


def pretrained_files(init_from):
    """(directory or Hub repo, config.json path, weight file paths) for gpt2* or hf:DIR."""
    if init_from.startswith("hf:") and is_hub_name(init_from[3:]):
        repo = init_from[3:]
        config = hub_download(repo, "config.json")
        try:
            index = hub_download(repo, "model.safetensors.index.json", optional=True)
        except UserError:  # one file, not shards
            return repo, config, [hub_download(repo, "model.safetensors")]
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return repo, config, [hub_download(repo, s) for s in shards]
    if init_from.startswith("hf:"):
        where = hf_name(init_from[3:])
        if not os.path.isdir(where):
            raise UserError(f"init_from={init_from}: {where} is not a directory (give a Hugging Face model folder "
                            f"holding config.json and model.safetensors)")
        path = lambda f: os.path.join(where, f)  # noqa: E731
        if not os.path.isfile(path("config.json")):
            raise UserError(f"{where} has no config.json, so it is not a Hugging Face model directory")
        if os.path.isfile(path("model.safetensors.index.json")):  # sharded
            try:
                with open(path("model.safetensors.index.json")) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise UserError(f"cannot read {path('model.safetensors.index.json')} ({type(e).__name__})") from None
            return where, path("config.json"), [path(s) for s in shards]
        if not os.path.isfile(path("model.safetensors")):
            also = " (only pytorch_model.bin, a pickle: save it again with safe_serialization=True)" \
                if os.path.isfile(path("pytorch_model.bin")) else ""
            raise UserError(f"{where} has no model.safetensors{also}")
        return where, path("config.json"), [path("model.safetensors")]
    if init_from not in GPT2_MODELS:
        raise UserError(f"unknown GPT-2 model '{init_from}': use {', '.join(GPT2_MODELS)}, or hf:DIR for a "
                        f"local Hugging Face directory")
    repo = GPT2_MODELS[init_from]
    return repo, hub_download(repo, "config.json"), [hub_download(repo, "model.safetensors")]


def model_args_from_hf(config, where):
    """Our GPTConfig fields for a GPT-2 config.json (a dict), or a UserError saying why it is not one."""
    act = config.get("activation_function", "gelu_new")
    unsupported = [f"activation_function={act}"] if act not in FROM_HF_ACTIVATION else []
    unsupported += [f"{k}={config[k]}" for k, ok in [("layer_norm_epsilon", LAYER_NORM_EPS),
                                                     ("scale_attn_weights", True), ("add_cross_attention", False),
                                                     ("scale_attn_by_inverse_layer_idx", False)]
                    if config.get(k, ok) != ok]
    if unsupported:
        raise UserError(f"{where} is a GPT-2 variant our GPT cannot run: {', '.join(unsupported)}")
    try:
        n_embd = int(config["n_embd"])
        args = dict(vocab_size=int(config["vocab_size"]), block_size=int(config["n_positions"]),
                    n_layer=int(config["n_layer"]), n_head=int(config["n_head"]), n_embd=n_embd, bias=True,
                    pos_emb="learned", n_kv_head=0, mlp_ratio=(config.get("n_inner") or 4 * n_embd) / n_embd,
                    tie_weights=bool(config.get("tie_word_embeddings", True)), activation=FROM_HF_ACTIVATION[act])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}'s config.json lacks a usable {e} (a GPT-2 config has vocab_size, n_positions, "
                        f"n_layer, n_head, n_embd)") from None
    GPTConfig(**args)  # its own checks (n_embd a multiple of n_head)
    return args


def read_weights(files, strip="transformer."):
    """Every tensor of the safetensors files, in its stored dtype (bf16 stays bf16: no fp32 copy)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    weights = {}
    for path in files:
        try:
            weights.update(load_file(path))
        except (OSError, SafetensorError) as e:
            raise UserError(f"cannot read {path}: {e}".splitlines()[0]) from None
    return {k.removeprefix(strip): v for k, v in weights.items()} if strip else weights


def load_pretrained(init_from, block_size=0, dropout=0.0):
    """A checkpoint dict of our GPT from GPT-2 or Llama-family weights (see the docstring at the top), in their
    dtype. block_size > 0 crops the context to that many tokens; dropout is for fine-tuning."""
    where, config_path, files = pretrained_files(init_from)
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {config_path}: {e}") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in MODEL_TYPES:
        raise UserError(f"{where} holds a {kind or 'model of no model_type'}, which init_from=hf: cannot import: "
                        f"it takes model types {', '.join(MODEL_TYPES)}")
    if kind == "gpt2":
        args = {**model_args_from_hf(config, where), "dropout": dropout}
        state = gpt2_state(args, read_weights(files), where)
    else:
        args = {**hf_llama.model_args(config, where), "dropout": dropout}
        state = hf_llama.from_hf(read_weights(files, strip=""), args, kind, where)
        with torch.device("meta"):
            expected = {k: v.shape for k, v in GPT(GPTConfig(**args)).state_dict().items()}
        wrong = [k for k, shape in expected.items() if state[k].shape != shape]
        if wrong:
            raise UserError(f"{where}'s weights do not match its config.json: {wrong[0]} is "
                            f"{tuple(state[wrong[0]].shape)}, not {tuple(expected[wrong[0]])}")
    n_positions = args["block_size"]
    if 0 < block_size < n_positions:
        args["block_size"] = block_size
        if "wpe.weight" in state:
            state["wpe.weight"] = state["wpe.weight"][:block_size].clone()
    meta = {"dataset": where, **pretrained_tokenizer(init_from, where, config, args["vocab_size"]),
            "vocab_size": args["vocab_size"], "pretrained": init_from}
    return {"model_kind": "gpt", "model_args": args, "model": state, "meta": meta, "iter": 0,
            "config": {"dataset": where, "block_size": args["block_size"], "n_positions": n_positions}}


def pretrained_tokenizer(init_from, where, config, vocab_size):
    """The tokenizer meta of imported weights: gpt2 for GPT-2's vocabulary, hf:WHERE when the model has a
    tokenizer.json, else none (sampling and fine-tuning then refuse, naming it)."""
    if config["model_type"] == "gpt2" and vocab_size == GPT2_VOCAB:  # GPT-2's tokens, as OpenAI's and our exports
        return {"tokenizer": "gpt2", "eot_token": GPT2_EOT}
    if is_hub_name(where):
        try:
            hub_download(where, "tokenizer.json", optional=True)
        except UserError:
            return {"tokenizer": None, "eot_token": None}
    elif not os.path.isfile(os.path.join(where, "tokenizer.json")):
        return {"tokenizer": None, "eot_token": None}
    eos = config.get("eos_token_id")
    return {"tokenizer": f"hf:{where}", "eot_token": eos[0] if isinstance(eos, list) and eos else eos}


def gpt2_state(args, weights, where):
    """Our state_dict from GPT-2's weights (names, and Conv1D's matrices transposed)."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in GPT(GPTConfig(**args)).state_dict().items()}
    tied = args["tie_weights"]
    missing = [gpt2_name(k) for k in expected if gpt2_name(k) not in weights and not (k == "lm_head.weight" and tied)]
    extra = sorted(k for k in set(weights) - {gpt2_name(k) for k in expected} if not k.endswith(IGNORED))
    if missing or extra:
        raise UserError(f"{where} is not GPT-2-shaped: its weights " + (f"lack {', '.join(missing[:3])}" if missing
                        else f"include {', '.join(extra[:3])}, which GPT-2's do not"))
    state = {}
    for name, shape in expected.items():
        key = "wte.weight" if name == "lm_head.weight" and tied else gpt2_name(name)
        flip = name.endswith(TRANSPOSED)  # Conv1D: (in, out)
        if weights[key].shape != (shape[::-1] if flip else shape):
            raise UserError(f"{where} is not GPT-2-shaped: {key} is {tuple(weights[key].shape)}, but its "
                            f"config.json makes it {tuple(shape[::-1] if flip else shape)}")
        state[name] = weights[key].t().contiguous() if flip else weights[key]
    return state


def require_tokenizer(ckpt):
    """Sampling or fine-tuning a Hugging Face model needs its tokenizer: GPT-2's, or its tokenizer.json."""
    meta = ckpt["meta"]
    if meta["tokenizer"] is None:
        raise UserError(f"{meta['dataset']} has a vocabulary of {meta['vocab_size']:,} tokens, not GPT-2's "
                        f"{GPT2_VOCAB:,}: its tokenizer is not one this project has (no tokenizer.json in "
                        f"{meta['dataset']}: copy the model's there)")


# ----------------------------------------------------------------------------- export

def export_plan(kind, args, meta):
    """(the model_type that holds the run exactly, []), or (None, what none of them can express, as phrases).
    Learned positions with LayerNorm go to GPT-2; RoPE with RMSNorm to the Llama family (hf_llama.pick_family)."""
    if kind != "gpt":
        return None, export_problems(kind, args, meta)
    pos, norm = args.get("pos_emb", "learned"), args.get("norm", "layernorm")
    if (pos, norm) == ("learned", "layernorm"):
        problems = export_problems(kind, args, meta)
        return ("gpt2" if not problems else None), problems
    unknown = unknown_options(args)
    if (pos, norm) != ("rope", "rmsnorm"):
        return None, [f"pos_emb={pos} with norm={norm} (GPT-2 has learned positions and LayerNorm, the Llama "
                      f"family RoPE and RMSNorm)", *unknown]
    family, problems = hf_llama.pick_family(args)
    return (family if not problems + unknown else None), problems + unknown


def unknown_options(args):
    """Options this file does not know, unless they have GPTConfig's default value."""
    known = {"vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "attn_dropout", "bias", "mlp_ratio",
             "tie_weights", "pos_emb", "n_kv_head", "norm", "qk_norm", "activation", "mlp_hidden", "head_dim",
             "qkv_bias", "norm_eps", "rope_theta", "rope_scaling",
             "zero_init", "qk_gain"}  # (these two only set the starting weights)
    defaults = GPTConfig.__dataclass_fields__
    return [f"{k}={v} ({NO_FORMAT_HOLDS.get(k, 'export does not know this option')})" for k, v in args.items()
            if k not in known and (k not in defaults or defaults[k].default != v)]


def export_problems(kind, args, meta):
    """What GPT-2's Hugging Face format cannot express about a run, as phrases; empty if it can be exported.
    Options are read with their GPT-2 defaults, so a checkpoint older than an option reads as GPT-2."""
    if kind != "gpt":
        return [f"{ {'lstm': 'an LSTM', 'gru': 'a GRU'}.get(kind, kind)} (the format holds GPT-2 transformers)"]
    problems = []
    if args.get("pos_emb", "learned") != "learned":
        problems.append(f"pos_emb={args['pos_emb']} (GPT-2 learns its position embeddings)")
    if args.get("n_kv_head", 0) not in (0, args["n_head"]):
        problems.append(f"n_kv_head={args['n_kv_head']} (GPT-2 has a key and value head for every query head)")
    if args.get("norm", "layernorm") != "layernorm":
        problems.append(f"norm={args['norm']} (GPT-2 uses LayerNorm)")
    if args.get("qk_norm", False):
        problems.append("qk_norm=True (GPT-2 does not normalize queries and keys)")
    if args.get("activation", "gelu") not in TO_HF_ACTIVATION:
        problems.append(f"activation={args['activation']} (GPT-2's format takes {' or '.join(TO_HF_ACTIVATION)})")
    if args.get("head_dim", 0) not in (0, args.get("n_embd", 0) // args["n_head"]):
        problems.append(f"head_dim={args['head_dim']} (GPT-2's heads are n_embd/n_head wide)")
    if args.get("qkv_bias", False) and not args.get("bias", True):
        problems.append("qkv_bias=True with bias=False (GPT-2 has every bias or none)")
    return problems + unknown_options(args)


def hf_config(model, meta):
    """config.json of a GPT2LMHeadModel equal to our model."""
    cfg = model.cfg
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_inner": model.blocks[0].mlp.fc.out_features, "activation_function": TO_HF_ACTIVATION[cfg.activation],
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attention_dropout,
            "layer_norm_epsilon": LAYER_NORM_EPS, "initializer_range": 0.02, "tie_word_embeddings": cfg.tie_weights,
            "bos_token_id": meta.get("eot_token"), "eos_token_id": meta.get("eot_token"), "use_cache": True}


def hf_state_dict(model):
    """Our GPT's weights under GPT-2's names and layout; bias=False becomes zero biases, a tied head is left out."""
    ours = model.state_dict()
    out = {}
    for name, w in ours.items():
        if name == "lm_head.weight" and model.cfg.tie_weights:
            continue  # GPT-2 ties it to wte on load
        where = "" if name == "lm_head.weight" else "transformer."
        out[where + gpt2_name(name)] = (w.t() if name.endswith(TRANSPOSED) else w).contiguous()
        bias = name.removesuffix("weight") + "bias"  # bias=False: GPT-2 always has one, so zeros
        if name.startswith(("blocks.", "ln_f.")) and name.endswith("weight") and bias not in ours:
            out[where + gpt2_name(bias)] = torch.zeros(w.shape[0], dtype=w.dtype)
    return out


def bytes_to_unicode():
    """GPT-2's byte -> printable character table: its vocab.json and merges.txt spell every token with these."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def gpt2_tokenizer_files():
    """GPT-2's vocab.json (token -> id) and merges.txt, rebuilt from tiktoken's gpt2 encoding: token id r >= 256
    is the merge of the two tokens that byte-pair encoding with ranks below r leaves of its bytes."""
    enc = Tokenizer("gpt2")._enc
    ranks = {b: enc.encode_single_token(b) for b in enc.token_byte_values()}
    char = bytes_to_unicode()
    spell = lambda b: "".join(char[x] for x in b)  # noqa: E731
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, i = min(pairs)
            if best >= rank:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        assert len(parts) == 2, token  # every gpt2 token is one merge of two earlier ones
        merges.append(f"{spell(parts[0])} {spell(parts[1])}")
    vocab = {spell(b): r for b, r in sorted(ranks.items(), key=lambda kv: kv[1])}
    vocab["<|endoftext|>"] = enc.eot_token
    return json.dumps(vocab, ensure_ascii=False), "#version: 0.2\n" + "\n".join(merges) + "\n"


def tokenizer_json(tok):
    """tokenizer.json (the `tokenizers` library's format, which AutoTokenizer reads) of a char, word or byte
    Tokenizer: the same ids, and decoding gives our decode's text."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Fast
    if tok.kind == "byte":  # each byte its own token, spelled as GPT-2 spells bytes; ids are the byte values
        char = bytes_to_unicode()
        fast = Fast(models.BPE({char[b]: b for b in range(256)}, []))
        fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        fast.decoder = decoders.ByteLevel()
    elif tok.kind == "char":  # every character a word of its own; decoding joins them with nothing between
        fast = Fast(models.WordLevel({c: i for i, c in enumerate(tok.vocab)}, unk_token="<unk>"))
        fast.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        fast.decoder = decoders.Fuse()
    else:  # word: whitespace-separated words, <eos> for a newline; decoding joins a line's words with spaces
        fast = Fast(models.WordLevel({w: i for i, w in enumerate(tok.vocab)}, unk_token="<unk>"))
        fast.normalizer = normalizers.Replace("\n", " <eos> ")
        fast.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        fast.decoder = decoders.Sequence([decoders.Replace("<eos>", "\n"), decoders.Replace(Regex("^(?!\n)"), " "),
                                          decoders.Fuse(), decoders.Replace("\n ", "\n"), decoders.Strip(" ", 1, 0)])
    return fast.to_str(pretty=True)


def tokenizer_files(model, meta):
    """{file name: text} of the run's tokenizer for AutoTokenizer (hf:NAME's original files are copied)."""
    if (meta["tokenizer"] or "hf:").startswith("hf:"):
        return {}  # copied by copy_hf_tokenizer
    tok = Tokenizer.from_meta(meta)
    eot = None if tok.eot_token is None else ("<eos>" if tok.kind == "word" else "<|endoftext|>")
    if tok.kind == "gpt2":
        files = dict(zip(("vocab.json", "merges.txt"), gpt2_tokenizer_files()))
        config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "unk_token": eot}
    else:
        files = {"tokenizer.json": tokenizer_json(tok)}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    config = {**config, "model_max_length": model.cfg.block_size, "bos_token": eot, "eos_token": eot}
    return {**files, "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}


def copy_hf_tokenizer(name, to):
    """hf:NAME's own tokenizer files into `to`; returns their names."""
    where = name[3:]
    copied = []
    for f in TOKENIZER_FILES:
        if os.path.isdir(where):
            path = os.path.join(where, f) if os.path.isfile(os.path.join(where, f)) else None
        else:
            try:
                path = hub_download(where, f, optional=f != "tokenizer.json")
            except UserError:
                path = None
        if path:
            shutil.copyfile(path, os.path.join(to, f))
            copied.append(f)
    return copied


def check_target(to, config):
    """An export may replace an earlier export of the same architecture and shape, not another model."""
    path = os.path.join(to, "config.json")
    if not os.path.isdir(to) or not os.listdir(to):
        return
    try:
        with open(path, encoding="utf-8") as f:
            there = json.load(f)
    except (OSError, ValueError):
        there = None
    if not isinstance(there, dict) or "model_type" not in there:  # e.g. a run's own config.json
        raise UserError(f"{to} already holds files that are not a model export: pick another --to (or delete "
                        f"them)")
    if there != config:
        raise UserError(f"{to} already holds a different model ({there.get('model_type')}, "
                        f"{there.get('vocab_size')} tokens): pick another --to (or delete it)")


def save_pretrained(model, meta, to, family="gpt2"):
    """Write our GPT as a Hugging Face directory of `family` (export_plan's pick, checked first); returns the
    files. `to` may hold an earlier export of the same shape (it is replaced), nothing else."""
    from dataclasses import asdict
    from safetensors.torch import save_file
    args = asdict(model.cfg)
    config = hf_config(model, meta) if family == "gpt2" else hf_llama.hf_config(args, family, meta)
    check_target(to, config)
    os.makedirs(to, exist_ok=True)
    files = {"config.json": json.dumps(config, indent=2) + "\n", **tokenizer_files(model, meta)}
    for name, text in files.items():
        with open(os.path.join(to, name), "w", encoding="utf-8") as f:
            f.write(text)
    copied = copy_hf_tokenizer(meta["tokenizer"], to) if (meta["tokenizer"] or "").startswith("hf:") else []
    state = hf_state_dict(model) if family == "gpt2" else hf_llama.to_hf(model.state_dict(), args, family)
    save_file(state, os.path.join(to, "model.safetensors"), metadata={"format": "pt"})
    return sorted([*files, *copied, "model.safetensors"])

