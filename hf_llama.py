"""
The Llama family of Hugging Face formats, both ways: Llama (SmolLM2, TinyLlama, Llama 3.x), Qwen2, Qwen3,
Apertus and Arcee hold our GPT with pos_emb=rope and norm=rmsnorm. hf.py reads and writes the files; this
file maps configs and weight names.

    family = pick_family(args)                 # which of them holds a run exactly (None: none does)
    args = model_args(config, where)           # our GPTConfig fields from a config.json
    ours = from_hf(weights, args, family)      # their state_dict -> ours;  to_hf(state, args, family): back

What tells them apart (checked in transformers' modeling files): a gated SwiGLU MLP (gate_proj, up_proj)
in Llama, Qwen2 and Qwen3, a plain one (up_proj only, any activation) in Apertus and Arcee; per-head
RMSNorm of queries and keys, before RoPE, in Qwen3 and Apertus; biases on q, k and v only in Qwen2.
All split q, k and v (we fuse them: qkv = [q; k; v]) and our gated fc is [gate; up]. All rotate feature
pairs (i, i + head_dim/2) as we do, scale attention by head_dim ** -0.5, and take head_dim, the RMSNorm
epsilon, rope_theta, Llama 3's rope scaling and tied embeddings from config.json.
"""
import torch

from configurator import UserError
from model import ACTIVATIONS, ROPE_BASE, GPTConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "apertus": "ApertusForCausalLM", "arcee": "ArceeForCausalLM"}
GATED = ("llama", "qwen2", "qwen3")  # gate_proj * up_proj; the others have up_proj alone
QK_NORM = ("qwen3", "apertus")  # q_norm and k_norm on every head
LAYER_NORMS = {"apertus": ("attention_layernorm", "feedforward_layernorm")}  # the others' names:
DEFAULT_NORMS = ("input_layernorm", "post_attention_layernorm")
# a plain MLP's hidden_act <-> ours (a gated one is always silu: our swiglu)
TO_HF_ACT = {"relu2": "relu2", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
FROM_HF_ACT = {"relu2": "relu2", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
IGNORED = ("rotary_emb.inv_freq",)  # a buffer some older Llama files carry


def rms_eps(args):
    """The RMSNorm epsilon a run uses: norm_eps, or float32's machine epsilon (nn.RMSNorm's default)."""
    return args.get("norm_eps") or torch.finfo(torch.float32).eps


def pick_family(args):
    """(the family that holds our GPT args exactly, or None; why not, as phrases). Only rope + rmsnorm runs."""
    gated, qk = args.get("activation") == "swiglu", args.get("qk_norm", False)
    bias, qkv_bias = args.get("bias", True), args.get("qkv_bias", False)
    if bias and qk:
        return None, ["bias=True with qk_norm=True (Qwen3 and Apertus have no MLP biases)"]
    if qkv_bias and gated and not qk and not bias:
        return "qwen2", []
    if gated:
        return ("qwen3" if qk else "llama"), []
    if args.get("activation", "gelu") not in TO_HF_ACT:
        return None, [f"activation={args['activation']}"]
    return ("apertus" if qk else "arcee"), []


def hf_config(args, family, meta):
    """config.json of the family's model equal to our GPT args."""
    eot = meta.get("eot_token")
    config = {"architectures": [ARCHITECTURES[family]], "model_type": family, "vocab_size": args["vocab_size"],
              "hidden_size": args["n_embd"], "intermediate_size": mlp_width(args), "num_hidden_layers": args["n_layer"],
              "num_attention_heads": args["n_head"], "num_key_value_heads": args.get("n_kv_head") or args["n_head"],
              "head_dim": GPTConfig(**args).hs, "hidden_act": "silu" if family in GATED else TO_HF_ACT[args["activation"]],
              "max_position_embeddings": args["block_size"], "rms_norm_eps": rms_eps(args),
              "tie_word_embeddings": args.get("tie_weights", True), "attention_dropout": 0.0,
              "initializer_range": 0.02, "use_cache": True, "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": None,
              "rope_parameters": rope_parameters(args)}
    if family != "qwen2":  # Qwen2's q, k, v biases are built in; the others' attention_bias covers o_proj too
        config["attention_bias"] = bool(args.get("bias") or args.get("qkv_bias"))
    if family in ("llama", "arcee"):
        config["mlp_bias"] = bool(args.get("bias"))
    if family in ("qwen2", "qwen3"):
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=args["n_layer"])
    return config


def mlp_width(args):
    return args.get("mlp_hidden") or round(args.get("mlp_ratio", 4.0) * args["n_embd"])


def rope_parameters(args):
    theta = float(args.get("rope_theta", ROPE_BASE))
    if not args.get("rope_scaling"):
        return {"rope_type": "default", "rope_theta": theta}
    values = [float(v) for v in args["rope_scaling"].split(",")]
    values[3] = int(values[3])
    return {"rope_type": "llama3", "rope_theta": theta, **dict(zip(LLAMA3_KEYS, values))}


def model_args(config, where):
    """Our GPTConfig fields for a Llama-family config.json (a dict), or a UserError naming what we cannot run."""
    family = config["model_type"]
    act = config.get("hidden_act", "silu")
    rope = config.get("rope_parameters") or {**(config.get("rope_scaling") or {}),
                                              "rope_theta": config.get("rope_theta", ROPE_BASE)}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    problems = []
    if family in GATED and act != "silu":
        problems.append(f"hidden_act={act} in a gated MLP (we have silu: swiglu)")
    if family not in GATED and act not in FROM_HF_ACT:
        problems.append(f"hidden_act={act} (we have {', '.join(FROM_HF_ACT)})")
    if rope_type not in ("default", "llama3"):
        problems.append(f"rope_type={rope_type} (we have default and llama3)")
    if config.get("use_sliding_window") or "sliding_attention" in (config.get("layer_types") or []):
        problems.append("sliding-window attention layers")
    for moe in ("num_experts", "num_local_experts", "n_routed_experts"):
        if config.get(moe):
            problems.append(f"{moe}={config[moe]} (a mixture of experts)")
    attn_bias, mlp_bias = bool(config.get("attention_bias")), bool(config.get("mlp_bias"))
    if mlp_bias and not attn_bias:
        problems.append("mlp_bias=True without attention_bias (we bias both, or q, k and v alone)")
    if config.get("pretraining_tp", 1) != 1:
        problems.append(f"pretraining_tp={config['pretraining_tp']}")
    if problems:
        raise UserError(f"{where} is a {family} our GPT cannot run: {'; '.join(problems)}")
    try:
        n_embd, n_head = int(config["hidden_size"]), int(config["num_attention_heads"])
        scaling = ""
        if rope_type == "llama3":
            scaling = ",".join(str(rope[k]) for k in LLAMA3_KEYS)
        args = dict(vocab_size=int(config["vocab_size"]), block_size=int(config["max_position_embeddings"]),
                    n_layer=int(config["num_hidden_layers"]), n_head=n_head, n_embd=n_embd,
                    n_kv_head=int(config.get("num_key_value_heads") or n_head),
                    head_dim=int(config.get("head_dim") or n_embd // n_head),
                    mlp_hidden=int(config["intermediate_size"]), bias=attn_bias and mlp_bias,
                    qkv_bias=family == "qwen2" or (attn_bias and not mlp_bias), pos_emb="rope", norm="rmsnorm",
                    qk_norm=family in QK_NORM,
                    activation="swiglu" if family in GATED else FROM_HF_ACT[act],
                    norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                    rope_theta=float(rope.get("rope_theta", ROPE_BASE)),
                    rope_scaling=scaling, tie_weights=bool(config.get("tie_word_embeddings", False)), zero_init=False)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}'s config.json lacks a usable {e} (a {family} config has vocab_size, hidden_size, "
                        f"intermediate_size, num_hidden_layers, num_attention_heads, max_position_embeddings)") from None
    assert args["activation"] in ACTIVATIONS
    GPTConfig(**args)  # its own checks
    return args


def names(args, family):
    """(our name, [their names], split sizes) for every weight: ours is their tensors concatenated in order."""
    cfg = GPTConfig(**args)
    hs, kv, hidden = cfg.hs, cfg.kv_heads, mlp_width(args)
    ln1, ln2 = LAYER_NORMS.get(family, DEFAULT_NORMS)
    gated = family in GATED
    out = [("wte.weight", ["model.embed_tokens.weight"], None), ("ln_f.weight", ["model.norm.weight"], None)]
    if not cfg.tie_weights:
        out.append(("lm_head.weight", ["lm_head.weight"], None))
    biased = ["weight", "bias"] if cfg.bias else ["weight"]
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out += [(ours + "ln1.weight", [theirs + ln1 + ".weight"], None),
                (ours + "ln2.weight", [theirs + ln2 + ".weight"], None)]
        for p in ["weight", "bias"] if cfg.bias or cfg.qkv_bias else ["weight"]:
            out.append((ours + f"attn.qkv.{p}", [theirs + f"self_attn.{x}_proj.{p}" for x in "qkv"],
                        [cfg.n_head * hs, kv * hs, kv * hs]))
        for p in biased:
            out.append((ours + f"attn.proj.{p}", [theirs + f"self_attn.o_proj.{p}"], None))
            out.append((ours + f"mlp.fc.{p}", [theirs + f"mlp.{x}_proj.{p}" for x in (("gate", "up") if gated else ("up",))],
                        [hidden, hidden] if gated else None))
            out.append((ours + f"mlp.proj.{p}", [theirs + f"mlp.down_proj.{p}"], None))
        if cfg.qk_norm:
            out += [(ours + f"attn.{x}_norm.weight", [theirs + f"self_attn.{x}_norm.weight"], None) for x in "qk"]
    return out


def from_hf(weights, args, family, where):
    """Our state_dict from their weights (popped from `weights` as they are used, so no second copy lingers)."""
    table = names(args, family)
    if args.get("tie_weights"):
        weights.pop("lm_head.weight", None)  # some files keep the tied copy
    if args["qkv_bias"] and not args["bias"] and family != "qwen2":  # attention_bias=True: o_proj has one too
        o_bias = [weights.pop(k) for k in sorted(weights) if k.endswith("self_attn.o_proj.bias")]
        if any(b.any() for b in o_bias):
            raise UserError(f"{where} has attention_bias=True with nonzero o_proj biases (we bias q, k and v, or "
                            f"every layer with mlp_bias too)")
    wanted = {t for _, theirs, _ in table for t in theirs}
    missing = sorted(wanted - set(weights))
    extra = sorted(k for k in set(weights) - wanted if not k.endswith(IGNORED))
    if missing or extra:
        raise UserError(f"{where}'s weights do not match its config.json ({family}): "
                        + (f"they lack {', '.join(missing[:3])}" if missing else f"{', '.join(extra[:3])} is unexpected"))
    state = {}
    for ours, theirs, _ in table:
        parts = [weights.pop(t) for t in theirs]
        state[ours] = parts[0] if len(parts) == 1 else torch.cat(parts)
    if args.get("tie_weights"):
        state["lm_head.weight"] = state["wte.weight"]
    return state


def to_hf(state, args, family):
    """Their state_dict from our GPT's; a q/k/v bias without an o_proj one (qkv_bias outside Qwen2) gets zeros."""
    out = {}
    for ours, theirs, sizes in names(args, family):
        parts = state[ours].split(sizes) if sizes else [state[ours]]
        out.update({t: p.contiguous() for t, p in zip(theirs, parts)})
    if args.get("qkv_bias") and not args.get("bias") and family != "qwen2":
        for i in range(args["n_layer"]):
            out[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(args["n_embd"], dtype=state["wte.weight"].dtype)
    return out
