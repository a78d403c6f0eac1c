"""
LSTM and GRU language models with the same interface as model.py's GPT.

    model = RNNLM(RNNConfig(vocab_size=256, n_layer=2, n_embd=128, n_hidden=256, cell="lstm"))
    logits, loss = model(idx, targets)        # (B, T, V) logits; every window starts from a zero state
    logits, state = model.step(idx, state)    # incremental: only the new tokens, (h, c) carried (h for GRU)
    state = model.new_state()                 # the zero state (None), as GPT's empty KV cache

Token embedding -> dropout -> n_layer stacked recurrent layers of n_hidden units (PyTorch's fused
nn.LSTM / nn.GRU: cuDNN on a GPU, never a Python loop over time; dropout between layers) -> dropout ->
output projection to the vocabulary. With tie_weights the output weights are the embedding matrix,
reached through a Linear(n_hidden, n_embd) projection when n_hidden != n_embd; without it the output is
Linear(n_hidden, vocab_size) with bias (seed 001's 131,054,848-parameter LSTM is that shape).
There is no context limit: the state summarises everything seen so far.

train.py builds it through model.build_model("lstm" | "gru", args) with args picked from its config
by this dataclass's field names; `python -m pytest tests/test_rnn.py` tests it.
"""
from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from configurator import UserError

EMBED_INIT_RANGE = 0.1  # token embeddings ~ U(-0.1, 0.1): small inputs keep the gates unsaturated at init
FORGET_BIAS = 1.0       # LSTM forget-gate bias: remember by default early in training
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class RNNConfig:
    vocab_size: int = 256
    n_layer: int = 4          # defaults: the same as train.py's TrainConfig
    n_embd: int = 128
    n_hidden: int = 512
    dropout: float = 0.0
    cell: str = "lstm"        # "lstm" | "gru"; train.py passes its `model` key
    tie_weights: bool = True

    def __post_init__(self):
        if self.cell not in CELLS:
            raise UserError(f"unknown recurrent cell '{self.cell}': use one of {', '.join(CELLS)}")
        for name in ("vocab_size", "n_layer", "n_embd", "n_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout!r}")


class RNNLM(nn.Module):
    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.cfg = cfg
        self.context_limit = None
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        # nn.LSTM/GRU apply their own dropout only between layers (and warn if asked to with one layer)
        self.rnn = CELLS[cfg.cell](cfg.n_embd, cfg.n_hidden, num_layers=cfg.n_layer, batch_first=True,
                                   dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.proj = None
        if cfg.tie_weights:
            if cfg.n_hidden != cfg.n_embd:
                self.proj = nn.Linear(cfg.n_hidden, cfg.n_embd, bias=False)
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size)
            self.lm_head.weight = self.wte.weight  # weight tying
        else:
            self.lm_head = nn.Linear(cfg.n_hidden, cfg.vocab_size)
        self._init_weights()

    def _init_weights(self):
        nn.init.uniform_(self.wte.weight, -EMBED_INIT_RANGE, EMBED_INIT_RANGE)
        H = self.cfg.n_hidden
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_hh"):  # one orthogonal (H, H) block per gate
                for gate in p.data.split(H, dim=0):
                    nn.init.orthogonal_(gate)
            elif name.startswith("bias"):  # LSTM gates are ordered (input, forget, cell, output)
                nn.init.zeros_(p)
                if self.cfg.cell == "lstm" and name.startswith("bias_ih"):
                    nn.init.constant_(p.data[H:2 * H], FORGET_BIAS)
        nn.init.zeros_(self.lm_head.bias)  # weight_ih, proj and an untied head keep PyTorch's U(+-1/sqrt(fan_in))

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # a tied weight is counted once

    def new_state(self, capacity=None):
        """The zero state (None: nn.LSTM/GRU start from zeros); no capacity, the state is fixed-size."""
        return None

    def step(self, idx, state=None):
        """Forward the new tokens idx (B, T) from `state` (None = zero state); returns (logits, state)."""
        x = self.drop(self.wte(idx))    # (B, T, n_embd)
        y, state = self.rnn(x, state)   # (B, T, n_hidden); state: (h, c) each (n_layer, B, n_hidden), or h
        y = self.drop(y)
        if self.proj is not None:
            y = self.proj(y)            # (B, T, n_embd)
        return self.lm_head(y), state   # (B, T, V)

    def forward(self, idx, targets=None):
        logits, _ = self.step(idx)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss
