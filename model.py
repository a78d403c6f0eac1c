"""
A GPT-2-style decoder-only transformer and its KV cache.

    model = GPT(GPTConfig(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128))
    logits, loss = model(idx, targets)        # (B, T, V) logits, mean cross-entropy
    cache = model.new_state(capacity)         # an empty static KV cache (block_size slots by default)
    logits, cache = model.step(idx, cache)    # incremental: only the new tokens, KV cache carried
    model = build_model("gpt", args)          # the config key `model`: gpt here, lstm or gru from rnn.py

Token embeddings plus positions (pos_emb: learned GPT-2 embeddings, fixed sinusoids, or rotary
embeddings applied to queries and keys), pre-norm blocks (causal self-attention through
scaled_dot_product_attention, with n_kv_head < n_head for grouped-query / multi-query attention,
then an MLP), dropout, a final norm, output weights tied to the token embedding, N(0, 0.02) init
with the residual projections scaled by 1/sqrt(2 * n_layer). The defaults are exactly GPT-2. The
options since GPT-2 (the modded-nanogpt speedrun measured each): norm=rmsnorm, qk_norm (RMSNorm of
each head's queries and keys, its gains starting at qk_gain), activation=relu2 (ReLU squared) or swiglu
(a gated MLP, Llama's and the recipe's), zero_init (residual projections, and an untied head, start at
0). For Llama-family weights (hf.py imports them): rope_theta and Llama 3's rope_scaling, norm_eps,
qkv_bias (Qwen2), head_dim and mlp_hidden (exact widths); each default keeps the architecture above unchanged.
x0_mix (nanochat's residual and x0 scalars) makes each block's input a learned mix of the residual stream and
the embedding output: a direct path to the token, which no Hugging Face format holds (export.py refuses it).
rnn.py's models have the same interface, so train.py, engine.py and the tests never branch on it.
Generating (sampling, the decode loop, compiling the one-token step, int8 weights) is engine.py's.
"""
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from configurator import UserError

INIT_STD = 0.02  # GPT-2's weight init
ROPE_BASE = 10000.0  # rotary frequencies base ** (-2i / head_size), as in RoFormer / LLaMA
SINUSOID_BASE = 10000.0  # "Attention Is All You Need" position encoding wavelengths
CACHE_ROUND = 64  # KV cache sizes are multiples of this (each size is one compiled decode step)
POS_EMBS = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm")
# the MLP's nonlinearity: exact GELU, the tanh approximation GPT-2 was trained with, or ReLU squared
ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": partial(F.gelu, approximate="tanh"), "relu2": lambda x: F.relu(x).square(),
               "swiglu": F.silu}  # swiglu: silu(gate) * up, a gated MLP (Llama, Qwen)


@dataclass
class GPTConfig:
    vocab_size: int = 256
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # on the embeddings, every residual branch's output and the attention weights...
    attn_dropout: float | None = None  # ...but these at this rate, if given (GPT-2's attn_pdrop; None = dropout)
    bias: bool = True
    pos_emb: str = "learned"  # learned | sinusoidal | rope
    n_kv_head: int = 0  # key/value heads: 0 = n_head (standard), 1 = multi-query, else grouped-query
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * n_embd
    tie_weights: bool = True  # the output layer shares the token embedding's weights
    norm: str = "layernorm"  # layernorm (with a bias when bias=True) | rmsnorm
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before attention
    qk_gain: float = 1.0  # qk_norm: the gains' starting value; their product scales the attention logits
    activation: str = "gelu"  # the MLP's: gelu | gelu_tanh (GPT-2's tanh approximation) | relu2 | swiglu (gated)
    zero_init: bool = False  # residual projections (and an untied head) start at zero
    mlp_hidden: int = 0  # exact MLP width (Llama's intermediate_size); 0 = round(mlp_ratio * n_embd)
    head_dim: int = 0  # per-head width (Qwen3's may differ from n_embd/n_head); 0 = n_embd // n_head
    qkv_bias: bool = False  # biases on the query, key and value projections only (Qwen2), even with bias=False
    norm_eps: float = 0.0  # RMSNorm's epsilon; 0 = float32's machine epsilon (nn.RMSNorm's default)
    rope_theta: float = ROPE_BASE  # RoPE's base wavelength
    rope_scaling: str = ""  # Llama 3's frequency scaling "factor,low_freq_factor,high_freq_factor,original_context"
    x0_mix: bool = False  # block i's input is resid_scale[i] * x + x0_scale[i] * x0, x0 the embedding output

    def __post_init__(self):
        if not (0 <= self.dropout < 1 and 0 <= self.attention_dropout < 1):
            raise UserError(f"dropout and attn_dropout must be in [0, 1), not {self.dropout:g} and "
                            f"{self.attention_dropout:g}")
        if self.n_embd % self.n_head and not self.head_dim:
            raise UserError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if self.pos_emb not in POS_EMBS:
            raise UserError(f"pos_emb must be one of {', '.join(POS_EMBS)}, not '{self.pos_emb}'")
        if self.pos_emb == "rope" and self.hs % 2:
            raise UserError(f"pos_emb=rope needs an even head size, but it is {self.hs}")
        if not self.rope_theta > 1:
            raise UserError(f"rope_theta must be > 1 (RoPE's base wavelength: 10,000 RoFormer's, 100,000 the "
                            f"recipe's), not {self.rope_theta:g}")
        if self.rope_scaling and (len(self.rope_scaling.split(",")) != 4 or self.pos_emb != "rope"):
            raise UserError(f"rope_scaling='{self.rope_scaling}' must be 4 numbers 'factor,low_freq_factor,"
                            f"high_freq_factor,original_context' (Llama 3's), with pos_emb=rope")
        if not 0 <= self.n_kv_head <= self.n_head or self.n_head % max(self.n_kv_head, 1):
            raise UserError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (0 means n_head)")
        if not self.qk_gain > 0:
            raise UserError(f"qk_gain must be > 0 (the starting gain of qk_norm's queries and keys), "
                            f"not {self.qk_gain:g}")
        if self.qk_gain != 1 and not self.qk_norm:
            raise UserError(f"qk_gain={self.qk_gain:g} starts QK-norm's gains, but qk_norm is off: "
                            f"add --qk_norm=True or drop qk_gain")
        if self.norm not in NORMS:
            raise UserError(f"norm must be one of {', '.join(NORMS)}, not '{self.norm}'")
        if self.activation not in ACTIVATIONS:
            raise UserError(f"activation must be one of {', '.join(ACTIVATIONS)}, not '{self.activation}'")

    @property
    def attention_dropout(self):
        return self.dropout if self.attn_dropout is None else self.attn_dropout

    @property
    def kv_heads(self):
        return self.n_kv_head or self.n_head

    @property
    def hs(self):  # the width of one attention head
        return self.head_dim or self.n_embd // self.n_head


def size_gated_mlp(args):
    """Model args (a dict of GPTConfig fields) whose SwiGLU MLP, if left to mlp_ratio, is as wide as holds the
    weights of a plain MLP mlp_ratio * n_embd wide: 2/3 of it (three matrices, not two), rounded up to a
    multiple of 8. train.py's runs (checkpoint.model_args) and bench.py size a gated MLP so."""
    if args.get("activation") != "swiglu" or args.get("mlp_hidden"):
        return args
    return {**args, "mlp_hidden": -(-round(2 * args.get("mlp_ratio", 4.0) * args["n_embd"] / 3) // 8) * 8}


# GPT-2's choice (GPTConfig's default) for each option train.py's modern recipe changes: a config sets
# these to train GPT-2's architecture (the seed configs do; bench.py's baselines and the tests too)
GPT2_ARCH = {k: getattr(GPTConfig, k) for k in ("pos_emb", "norm", "qk_norm", "activation", "zero_init",
                                                 "bias", "tie_weights", "rope_theta")}
# train.py's modern recipe (TrainConfig's defaults) for the same options: RoPE, RMSNorm, QK-norm, a SwiGLU MLP
# (sized by size_gated_mlp), zero-initialized residual projections, no biases, an untied head, and RoPE's base
# at 100,000 for RoFormer's 10,000: more of a small head nearly free of position, for matching content far
# back (an induction head; README, "A longer RoPE wavelength")
RECIPE_ARCH = dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, activation="swiglu", zero_init=True,
                   bias=False, tie_weights=False, rope_theta=100_000.0)


class KVCache:
    """Keys and values of every layer, in a static shape, so a one-token step compiles once.

    Each layer's keys and values live in one zero-filled tensor (B, n_kv_head, capacity, head_size),
    allocated at the first write; a step writes its entries in place at the positions held in the
    device tensor `pos` (how many tokens are cached), and attention reads all `capacity` entries with
    a mask over the unwritten ones, so no shape changes as `pos` advances. `length` is `pos` on the
    host (bounds checks without a device sync). With RoPE the keys are stored rotated."""

    def __init__(self, n_layer, capacity, device=None):
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.capacity = capacity
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.length = 0

    def reset(self):
        """Empty, keeping the buffers (a CUDA graph recorded on them stays valid)."""
        self.pos.zero_()
        self.length = 0
        return self

    def update(self, layer, k, v, positions):
        """Write k, v (B, nkv, T, hs) at positions (T,); return the whole buffers (B, nkv, capacity, hs)."""
        if self.k[layer] is None:
            B, nkv, _, hs = k.size()
            self.k[layer] = k.new_zeros(B, nkv, self.capacity, hs)  # zeros: masked entries must not be NaN
            self.v[layer] = v.new_zeros(B, nkv, self.capacity, hs)
            if k.is_cuda:  # CUDA graphs may replay on buffers that are written in place
                torch._dynamo.mark_static_address(self.k[layer])
                torch._dynamo.mark_static_address(self.v[layer])
        self.k[layer].index_copy_(2, positions, k)
        self.v[layer].index_copy_(2, positions, v)
        return self.k[layer], self.v[layer]


def sinusoids(n_pos, dim, base):
    """(n_pos, dim) table: sin on even, cos on odd features, wavelengths from 2*pi to base*2*pi."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


def rope_tables(n_pos, head_size, base, scaling=""):
    """cos and sin (n_pos, head_size/2) of each position times each rotary frequency."""
    freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    if scaling:
        freq = llama3_frequencies(freq, *(float(v) for v in scaling.split(",")))
    angles = torch.arange(n_pos, dtype=torch.float32)[:, None] * freq  # (n_pos, hs/2)
    return angles.cos(), angles.sin()


def llama3_frequencies(freq, factor, low_freq_factor, high_freq_factor, context):
    """Llama 3's long-context RoPE: wavelengths shorter than context/high_freq_factor stay, those longer than
    context/low_freq_factor are stretched by `factor`, and the ones between blend the two smoothly."""
    wavelen = 2 * math.pi / freq
    blend = ((context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0, 1)
    return (1 - blend) * freq / factor + blend * freq


def rotate(x, cos, sin):
    """Rotate feature pairs (i, i + hs/2) of x (B, nh, T, hs) by the angles of their positions (T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class RMSNorm(nn.RMSNorm):  # eps=None: float32's machine epsilon
    """nn.RMSNorm computed in fp32 and returned in the input's dtype, as autocast does for LayerNorm
    (PyTorch's fused kernel needs the input and the gain in one dtype: engine.py may cast the gain to bf16)."""

    def forward(self, x):
        return F.rms_norm(x.float(), self.normalized_shape, self.weight.float(), self.eps).type_as(x)


def make_norm(cfg, dim):
    return RMSNorm(dim, eps=cfg.norm_eps or None) if cfg.norm == "rmsnorm" else nn.LayerNorm(dim, bias=cfg.bias)


def causal_attention(q, k, v, dropout, gqa):
    """Causal scaled dot-product attention. A CPU step that will be differentiated runs it in fp32, out of
    autocast: the CPU flash kernel's backward is several times slower in bf16 than in fp32 (bench.py profile)."""
    if not (q.is_cpu and q.dtype == torch.bfloat16 and torch.is_grad_enabled()):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=gqa)
    with torch.autocast("cpu", enabled=False):
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, dropout_p=dropout,
                                           enable_gqa=gqa)
    return y.to(q.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.n_head, self.n_kv_head, self.layer = cfg.n_head, cfg.kv_heads, layer
        self.dropout = cfg.attention_dropout
        self.hs = cfg.hs
        # queries for every head, then keys and values for the n_kv_head shared heads
        self.qkv = nn.Linear(cfg.n_embd, (self.n_head + 2 * self.n_kv_head) * self.hs, bias=cfg.bias or cfg.qkv_bias)
        self.proj = nn.Linear(self.n_head * self.hs, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)
        if cfg.qk_norm:  # bounded attention logits: every head's queries and keys get unit RMS (times a gain)
            self.q_norm, self.k_norm = RMSNorm(self.hs, eps=cfg.norm_eps or None), RMSNorm(self.hs, eps=cfg.norm_eps or None)

    def forward(self, x, cache=None, rope=None, where=None):
        """where = (positions (T,), mask (T, capacity)) of the new tokens, with a cache."""
        B, T, C = x.size()
        kv = self.n_kv_head * self.hs
        q, k, v = self.qkv(x).split([self.n_head * self.hs, kv, kv], dim=2)
        q = q.view(B, T, self.n_head, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is None:  # a causal forward over the whole sequence
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0, self.n_kv_head != self.n_head)
        else:  # new queries against every cache slot, unwritten and future ones masked
            k, v = cache.update(self.layer, k, v, where[0])  # (B, nkv, capacity, hs)
            if T > 1:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=where[1], enable_gqa=self.n_kv_head != self.n_head)
            else:  # one query per head: two small products, each key head's query heads as the rows of one
                # (with a mask the fused CPU kernel measured 10x slower for this, ~0.5 ms per layer at 124M)
                q = q.view(B, self.n_kv_head, self.n_head // self.n_kv_head, self.hs)
                att = (q @ k.transpose(-2, -1)).float() * self.hs ** -0.5  # (B, nkv, group, capacity)
                att = torch.where(where[1], att, float("-inf")).softmax(dim=-1)
                y = (att.to(v.dtype) @ v).view(B, self.n_head, 1, self.hs)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.hs)  # (B, T, nh * hs)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = cfg.mlp_hidden or round(cfg.mlp_ratio * cfg.n_embd)
        self.gated = cfg.activation == "swiglu"  # then fc computes the gate and the up projection, in that order
        self.fc = nn.Linear(cfg.n_embd, 2 * hidden if self.gated else hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x):
        if self.gated:
            gate, up = self.fc(x).chunk(2, dim=-1)
            return self.drop(self.proj(self.act(gate) * up))
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.ln1 = make_norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln2 = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, rope=None, where=None):
        x = x + self.attn(self.ln1(x), cache, rope, where)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        # Every position encoding keeps the block_size window it was trained on: sinusoids and RoPE
        # could be computed further, but predictions past the trained length degrade, so engine.py's
        # stream() slides the window instead (see there).
        self.context_limit = cfg.block_size
        self.compiled_step = None  # a compiled _run for one-token steps: engine.compile_step sets it
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_emb == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.position_tables()
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight  # weight tying
        if cfg.x0_mix:  # starting from nanochat's values: 1.15 to 1.05, and 0.20 to 0.05, from the first block
            depth = torch.linspace(0, 1, cfg.n_layer)
            self.resid_scale, self.x0_scale = nn.Parameter(1.15 - 0.10 * depth), nn.Parameter(0.20 - 0.15 * depth)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections: keep the residual stream's variance flat
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * cfg.n_layer))
                if cfg.zero_init:  # every block starts as the identity
                    nn.init.zeros_(p)
        if cfg.zero_init and not cfg.tie_weights:  # and the untied output layer as a uniform prediction
            nn.init.zeros_(self.lm_head.weight)
        for block in self.blocks if cfg.qk_norm else ():  # the gains' start sets how sharp attention can begin
            nn.init.constant_(block.attn.q_norm.weight, cfg.qk_gain)
            nn.init.constant_(block.attn.k_norm.weight, cfg.qk_gain)

    def position_tables(self):
        """The fixed position tables: buffers outside the state_dict (computed, never loaded)."""
        cfg = self.cfg
        if cfg.pos_emb == "sinusoidal":
            self.register_buffer("pos_table", sinusoids(cfg.block_size, cfg.n_embd, SINUSOID_BASE), persistent=False)
        elif cfg.pos_emb == "rope":
            cos, sin = rope_tables(cfg.block_size, cfg.hs, cfg.rope_theta, cfg.rope_scaling)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=INIT_STD)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def _run(self, idx, cache=None):
        """Logits (B, T, V) of idx (B, T): the whole sequence, or the tokens after those in `cache`. With a
        cache every position is a tensor (no host value changes from step to step: compiles once)."""
        T = idx.size(1)
        pos, where = slice(0, T), None  # the rows of the position tables to use
        if cache is not None:
            pos = cache.pos + torch.arange(T, device=idx.device)
            where = pos, torch.arange(cache.capacity, device=idx.device) <= pos[:, None]  # (T, capacity)
        x, rope = self.wte(idx), None  # (B, T, C)
        if self.cfg.pos_emb == "learned":
            x = x + self.wpe.weight[pos]
        elif self.cfg.pos_emb == "sinusoidal":
            x = x + self.pos_table[pos].to(x.dtype)
        else:
            rope = self.rope_cos[pos], self.rope_sin[pos]  # (T, hs/2) each
        x0 = x = self.drop(x)
        for i, block in enumerate(self.blocks):
            if self.cfg.x0_mix:
                x = self.resid_scale[i] * x + self.x0_scale[i] * x0
            x = block(x, cache, rope, where)
        if cache is not None:
            cache.pos.add_(T)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def forward(self, idx, targets=None):
        if idx.size(1) > self.cfg.block_size:
            raise ValueError(f"sequence of {idx.size(1)} tokens is longer than block_size={self.cfg.block_size}")
        logits = self._run(idx)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_state(self, capacity=None):
        """An empty KV cache for `capacity` tokens or more: rounded up to a multiple of CACHE_ROUND (so
        prompts of other lengths reuse a compiled step), at most and by default block_size."""
        capacity = min(-(-(capacity or self.cfg.block_size) // CACHE_ROUND) * CACHE_ROUND, self.cfg.block_size)
        return KVCache(self.cfg.n_layer, capacity, self.wte.weight.device)

    def step(self, idx, state=None):
        """Forward only the new tokens idx (B, T), attending to the cached ones; returns (logits, cache).
        A one-token step runs compiled_step when engine.compile_step made one, once the cache's buffers
        exist (the first write allocates them, eagerly: a graph that allocates would be compiled twice)."""
        cache = state if state is not None else self.new_state()
        T = idx.size(1)
        if cache.length + T > cache.capacity:
            raise ValueError(f"{cache.length} cached + {T} new tokens do not fit the cache of {cache.capacity}")
        compiled = T == 1 and self.compiled_step is not None and cache.k[0] is not None
        run = self.compiled_step if compiled else self._run
        logits = run(idx, cache)
        cache.length += T
        return logits, cache


def build_model(kind, args):
    """The model named by the config key `model` ('gpt', 'lstm' or 'gru') from a dict of its config fields."""
    if kind == "gpt":
        return GPT(GPTConfig(**args))
    import rnn  # imported here so model.py stands alone
    return rnn.RNNLM(rnn.RNNConfig(cell=kind, **args))


def load_model(kind, args, state):
    """build_model's model holding `state` as it is: a GPT is built on the meta device and takes the tensors
    themselves (their dtype, e.g. bf16), so no randomly initialized fp32 copy is ever made."""
    if kind != "gpt":
        model = build_model(kind, args)
        model.load_state_dict(state)
        return model
    with torch.device("meta"):
        model = build_model(kind, args)
    model.load_state_dict(state, assign=True)
    if model.cfg.tie_weights:  # assign gave the head a parameter of its own: share the embedding's again
        model.lm_head.weight = model.wte.weight
    model.position_tables()
    return model


def config_fields(kind):
    """Names of the config fields the model `kind` is built from."""
    from dataclasses import fields
    if kind == "gpt":
        return [f.name for f in fields(GPTConfig)]
    import rnn
    return [f.name for f in fields(rnn.RNNConfig) if f.name != "cell"]
