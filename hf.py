"""
GPT-2 in Hugging Face's format, both ways: OpenAI's GPT-2 weights (or any GPT-2-shaped Hugging Face
directory) become a checkpoint of our GPT (model.py), and a run becomes a directory transformers loads.

    ckpt = load_pretrained("gpt2")              # gpt2 | gpt2-medium | gpt2-large | gpt2-xl: the Hub, cached
    ckpt = load_pretrained("hf:path/to/dir")    # config.json + model.safetensors, offline
    model = checkpoint.model_from_checkpoint(ckpt)   # our GPT with exactly GPT-2's architecture
    save_pretrained(model, ckpt["meta"], "out/x/hf")   # config.json, model.safetensors (+ gpt2 tokenizer files)

The two differ in names and in one layout detail: GPT-2's Conv1D keeps a weight as (in, out) where
nn.Linear keeps (out, in), so every matrix inside the blocks is transposed. Both fuse the query, key
and value projections into one matrix, in that order, and split heads the same way. A checkpoint made
here holds what train.py's do: model_kind, model_args, model (the state_dict), meta (the tokenizer), plus
config and iter for train.py's fine-tuning. Needs safetensors and huggingface_hub, never transformers.
"""
import json
import logging
import os

import torch

from configurator import UserError
from model import GPT, GPTConfig
from tokenizer import Tokenizer

GPT2_MODELS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
GPT2_VOCAB, GPT2_EOT = 50257, 50256  # GPT-2's BPE vocabulary (tiktoken's gpt2) and its <|endoftext|>
LAYER_NORM_EPS = 1e-5  # GPT-2's, and nn.LayerNorm's default
TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu2": "relu2"}  # ours -> activation_function (gelu_new: tanh)
FROM_HF_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu2": "relu2"}
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

def hub_download(repo, filename):
    """The path of one file of a Hub repository: the cached copy if there is one, else downloaded (and cached)."""
    import huggingface_hub
    try:
        return huggingface_hub.hf_hub_download(repo, filename, local_files_only=True)
    except Exception:  # not cached yet
        pass
    quiet = logging.getLogger("huggingface_hub")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # no warnings about retries: what goes wrong is our one line
    try:
        return huggingface_hub.hf_hub_download(repo, filename)
    except Exception as e:
        raise UserError(f"could not download {filename} of {repo} from the Hugging Face Hub ({type(e).__name__}) "
                        f"and it is not cached: connect to the network once, or download config.json and "
                        f"model.safetensors of {repo} where there is a network, then pass init_from=hf:DIR") from None
    finally:
        quiet.setLevel(level)


def pretrained_files(init_from):
    """(directory or Hub repo, config.json path, weight file paths) for gpt2* or hf:DIR."""
    if init_from.startswith("hf:"):
        where = init_from[3:]
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
    if not isinstance(config, dict) or config.get("model_type") != "gpt2":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise UserError(f"{where} holds a {kind or 'model of no model_type'}, not GPT-2: init_from=hf:DIR takes "
                        f"GPT-2-shaped Hugging Face directories (model_type gpt2)")
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


def read_weights(files):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    weights = {}
    for path in files:
        try:
            weights.update(load_file(path))
        except (OSError, SafetensorError) as e:
            raise UserError(f"cannot read {path}: {e}".splitlines()[0]) from None
    return {k.removeprefix("transformer."): v for k, v in weights.items()}


def load_pretrained(init_from, block_size=0, dropout=0.0):
    """A checkpoint dict of our GPT from GPT-2 weights (see the docstring at the top). block_size > 0 crops the
    context (the position embeddings) to that many tokens; dropout is for fine-tuning."""
    where, config_path, files = pretrained_files(init_from)
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {config_path}: {e}") from None
    args = {**model_args_from_hf(config, where), "dropout": dropout}
    weights = read_weights(files)
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
        state[name] = weights[key].t() if flip else weights[key]
    n_positions = args["block_size"]
    if 0 < block_size < n_positions:
        args["block_size"] = block_size
        state["wpe.weight"] = state["wpe.weight"][:block_size]
    gpt2_vocab = args["vocab_size"] == GPT2_VOCAB  # then it reads GPT-2's tokens, as OpenAI's and our exports do
    meta = {"dataset": where, "tokenizer": "gpt2" if gpt2_vocab else None, "vocab_size": args["vocab_size"],
            "eot_token": GPT2_EOT if gpt2_vocab else None, "pretrained": init_from}
    return {"model_kind": "gpt", "model_args": args, "model": state, "meta": meta, "iter": 0,
            "config": {"dataset": where, "block_size": args["block_size"], "n_positions": n_positions}}


def require_gpt2_tokens(ckpt):
    """Sampling or fine-tuning a Hugging Face model needs a tokenizer: GPT-2's is the one we have."""
    meta = ckpt["meta"]
    if meta["tokenizer"] is None:
        raise UserError(f"{meta['dataset']} has a vocabulary of {meta['vocab_size']:,} tokens, not GPT-2's "
                        f"{GPT2_VOCAB:,}: its tokenizer is not one this project has (gpt2)")


# ----------------------------------------------------------------------------- export

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
    # any other option this file does not know is refused unless it has GPTConfig's default value
    known = {"vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "mlp_ratio",
             "tie_weights", "pos_emb", "n_kv_head", "norm", "qk_norm", "activation",
             "zero_init"}  # (zero_init only sets the starting weights)
    defaults = GPTConfig.__dataclass_fields__
    problems += [f"{k}={v} (export does not know this option)" for k, v in args.items()
                 if k not in known and (k not in defaults or defaults[k].default != v)]
    if meta["tokenizer"] in ("char", "word"):
        problems.append(f"a {meta['tokenizer']} vocabulary (no Hugging Face tokenizer reads it; prepare the data "
                        f"with --tokenizer=gpt2)")
    return problems


def hf_config(model, meta):
    """config.json of a GPT2LMHeadModel equal to our model."""
    cfg = model.cfg
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_inner": model.blocks[0].mlp.fc.out_features, "activation_function": TO_HF_ACTIVATION[cfg.activation],
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
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


def save_pretrained(model, meta, to):
    """Write our GPT (checked with export_problems first) as a Hugging Face GPT-2 directory; returns the files."""
    from safetensors.torch import save_file
    os.makedirs(to, exist_ok=True)
    files = {"config.json": json.dumps(hf_config(model, meta), indent=2) + "\n"}
    if meta["tokenizer"] == "gpt2":
        files["vocab.json"], files["merges.txt"] = gpt2_tokenizer_files()
        eot = "<|endoftext|>"
        files["tokenizer_config.json"] = json.dumps({
            "tokenizer_class": "GPT2Tokenizer", "model_max_length": model.cfg.block_size, "add_prefix_space": False,
            "bos_token": eot, "eos_token": eot, "unk_token": eot}, indent=2) + "\n"
    for name, text in files.items():
        with open(os.path.join(to, name), "w", encoding="utf-8") as f:
            f.write(text)
    save_file(hf_state_dict(model), os.path.join(to, "model.safetensors"), metadata={"format": "pt"})
    return sorted([*files, "model.safetensors"])
