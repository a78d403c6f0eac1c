"""
A GPT-2-style decoder-only transformer, and the one `generate` that serves every model here.

    model = GPT(GPTConfig(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128))
    logits, loss = model(idx, targets)        # (B, T, V) logits, mean cross-entropy
    logits, cache = model.step(idx, cache)    # incremental: only the new tokens, KV cache carried

Token + learned position embeddings, pre-LayerNorm blocks (causal self-attention through
scaled_dot_product_attention, then a GELU MLP), dropout, final LayerNorm, output weights tied to the
token embedding, N(0, 0.02) init with the residual projections scaled by 1/sqrt(2 * n_layer).
rnn.py's models have the same interface, so train.py, sample.py and the tests never branch on it.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

INIT_STD = 0.02  # GPT-2's weight init


@dataclass
class GPTConfig:
    vocab_size: int = 256
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * n_embd
    tie_weights: bool = True  # the output layer shares the token embedding's weights

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")


class KVCache:
    """Keys and values of every layer for the tokens seen so far; `pos` is how many there are."""

    def __init__(self, n_layer):
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.pos = 0

    def update(self, layer, k, v):
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.n_head, self.layer, self.dropout = cfg.n_head, layer, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cache=None):
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, nh, past + T, hs)
        past = k.size(2) - T
        if past == 0:
            mask, causal = None, True
        else:  # new query i sees every cached key and the new keys up to itself
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            causal = False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = round(cfg.mlp_ratio * cfg.n_embd)
        self.fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.context_limit = cfg.block_size
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections: keep the residual stream's variance flat
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=INIT_STD)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def _run(self, idx, cache=None):
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size={self.cfg.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.pos += T
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def forward(self, idx, targets=None):
        logits = self._run(idx)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss

    def step(self, idx, state=None):
        """Forward only the new tokens idx (B, T), attending to the cached ones; returns (logits, cache)."""
        cache = state if state is not None else KVCache(self.cfg.n_layer)
        return self._run(idx, cache), cache


def build_model(kind, args):
    """The model named by the config key `model` ('gpt', 'lstm' or 'gru') from a dict of its config fields."""
    if kind == "gpt":
        return GPT(GPTConfig(**args))
    import rnn  # imported here so model.py stands alone
    return rnn.RNNLM(rnn.RNNConfig(cell=kind, **args))


def config_fields(kind):
    """Names of the config fields the model `kind` is built from."""
    from dataclasses import fields
    if kind == "gpt":
        return [f.name for f in fields(GPTConfig)]
    import rnn
    return [f.name for f in fields(rnn.RNNConfig) if f.name != "cell"]


def filter_logits(logits, top_k=None, top_p=None):
    """Keep the top_k most likely tokens and the smallest set whose probability reaches top_p; -inf the rest."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= top_p  # tokens after the nucleus is complete
        drop[..., 0] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Extend idx (B, T) by max_new_tokens sampled tokens; temperature 0 is greedy.

    The prompt is prefilled once, then each new token costs one cached step. A model with a
    context_limit slides its window: when the cache is full, the last context_limit - 1 tokens
    are prefilled again."""
    limit = model.context_limit
    context = idx if limit is None else idx[:, -limit:]
    logits, state = model.step(context)
    n_cached = context.size(1)
    for _ in range(max_new_tokens):
        logits = logits[:, -1, :].float()
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
        idx = torch.cat([idx, nxt], dim=1)
        if _ == max_new_tokens - 1:
            break  # the last token needs no logits after it
        if limit is not None and n_cached >= limit:
            logits, state = model.step(idx[:, -(limit - 1):])
            n_cached = limit - 1
        else:
            logits, state = model.step(nxt, state)
            n_cached += 1
    return idx
