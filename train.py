"""
Train a GPT or an LSTM language model on a dataset prepared by prepare.py.

    python train.py                                   # the quickstart: char-level GPT on pycode, CPU-friendly
    python train.py config/char_enwik8.py --lr=0.1    # an override file, then --key=value flags
    python train.py --init_from=resume                # continue out_dir's run exactly where it stopped
    python train.py config/char_enwik8.py --lr_find=True          # LR range test: out_dir/lr_find.png
    python train.py --dataset=mine --init_from=out/quickstart     # fine-tune a run on new data, same tokenizer
    python train.py --dataset=mine --init_from=gpt2 --out_dir=out/ft   # fine-tune OpenAI's GPT-2 (gpt2 tokens)
    torchrun --standalone --nproc_per_node=4 train.py config/plwiki_gpt.py   # DDP on one node
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
        train.py config/plwiki_gpt.py                 # DDP on two nodes (run on each, R = 0 and 1)

Defaults are TrainConfig below: the recipe that bought the lowest loss in a few CPU minutes (bench.py
budget measures it against nanoGPT's): Muon for the hidden matrices and AdamW for the rest, a
warmup-stable-decay schedule, and a GPT with RoPE, RMSNorm, QK-norm, ReLU², zero-initialized projections
and an untied head. The seed configs pin GPT-2's architecture and their seeds' optimizers; see
configurator.py for how overrides apply. A run ends at max_iters or when its wall-clock budget
(time_budget, minutes) is spent, whichever comes first; the LR schedule (wsd, cosine, onecycle, invsqrt,
step, constant) runs on progress = the further of the two, so it completes its shape when the run ends.
Then the best checkpoint is evaluated on the full val and test splits (a signal cuts that short, keeping
what was scored).
Under DDP, batch_size is per process and grad_accum counts micro-steps over all processes together, so
a config trains on the same tokens per step (and the same windows) whatever the number of processes.
dtype=auto is bf16 autocast on CUDA (fp16 with a GradScaler where bf16 is missing) and on CPUs with
native bf16 (AVX512-BF16/AMX), else fp32; compile=None compiles on CUDA only (see bench.py for why).
out_dir ends up holding:
    ckpt.pt (best val loss), last.pt (latest state, for resume), config.json, metrics.jsonl,
    results.json, results.md, learning_curves.png, model_summary.txt; and run.lock while a run trains there
"""
import contextlib
import dataclasses
import json
import math
import os
import pickle
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import hf
import prepare
from configurator import UserError, cli, load_config
from model import build_model, config_fields

CKPT_FORMAT = 1
CKPT_BEST, CKPT_LAST = "ckpt.pt", "last.pt"
EVAL_SEED_OFFSET = 10_000  # the fixed eval windows come from seed + this, never from the training stream


@dataclass
class TrainConfig:
    # data and run
    dataset: str = "pycode"
    data_dir: str = "data"
    out_dir: str = "out/quickstart"
    init_from: str = "scratch"  # scratch | resume | a run dir or checkpoint to fine-tune | gpt2* | hf:DIR (hf.py)
    # model
    model: str = "gpt"  # gpt | lstm | gru
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    bias: bool = False  # gpt: biases in the linear layers and LayerNorms (GPT-2 has them)
    pos_emb: str = "rope"  # gpt: learned (GPT-2) | sinusoidal | rope
    n_kv_head: int = 0  # gpt: key/value heads; 0 = n_head, 1 = multi-query, else grouped-query
    mlp_ratio: float = 4.0  # gpt: MLP width / n_embd
    n_hidden: int = 512  # lstm/gru units per layer
    tie_weights: bool = False  # output layer shares the embedding (lstm/gru: through a projection if needed)
    norm: str = "rmsnorm"  # gpt: layernorm (GPT-2) | rmsnorm
    qk_norm: bool = True  # gpt: RMSNorm on each head's queries and keys
    activation: str = "relu2"  # gpt: the MLP's nonlinearity, gelu | gelu_tanh (GPT-2's) | relu2 (ReLU squared)
    zero_init: bool = True  # gpt: residual projections (and an untied head) start at zero
    logit_softcap: float = 0.0  # gpt: logits = c * tanh(logits / c) for c > 0; 0 = off
    # optimization
    batch_size: int = 16  # sequences per micro-step, in each process
    grad_accum: int = 1  # micro-steps per step, summed over all processes (a multiple of their number; 1 = one each)
    max_iters: int = 2000
    time_budget: float = 0.0  # minutes of training; 0 = no budget
    optimizer: str = "muon"  # muon (hidden matrices; AdamW for the rest) | adamw | sgd
    lr: float = 4e-3  # the peak learning rate (AdamW's or SGD's)
    muon_lr_scale: float = 1.0  # muon: its peak LR = lr * this (its updates are scaled to AdamW's RMS)
    muon_momentum: float = 0.95  # muon: Nesterov momentum
    weight_decay: float = 0.1
    beta1: float = 0.9  # adamw
    beta2: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.9  # sgd
    grad_clip: float = 1.0  # 0 = off
    label_smoothing: float = 0.0  # training loss only; evaluation always reports the plain cross-entropy
    # learning-rate schedule, a function of progress = max(step / max_iters, elapsed / time_budget)
    schedule: str = "wsd"  # wsd | cosine | onecycle | invsqrt | step | constant
    warmup_iters: int = 50  # linear warmup (wsd, cosine, step, constant) or the inverse-sqrt peak (invsqrt)
    decay_frac: float = 0.5  # wsd: the LR decays to 0 over this last fraction of the run...
    decay_shape: str = "linear"  # ...linear | sqrt (1 - sqrt)
    min_lr: float = 1e-4  # cosine: where it ends
    step_every: float = 0.25  # step: the LR drops every this fraction of the run...
    step_gamma: float = 0.1  # ...by this factor
    cycle_div: float = 25.0  # onecycle: starts (and ends its fall) at lr / cycle_div...
    cycle_final_div: float = 1e4  # ...then annihilates down to lr / cycle_div / cycle_final_div
    cycle_rise: float = 0.45  # fraction of the run spent rising (and as much falling); the rest annihilates
    momentum_min: float = 0.85  # onecycle: momentum (sgd) or beta1 (adamw) dips to this at the LR peak
    # LR range test: python train.py CONFIG --lr_find=True
    lr_find: bool = False
    lr_find_min: float = 1e-7
    lr_find_max: float = 10.0
    lr_find_iters: int = 100
    # evaluation and logging
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 50
    final_eval_tokens: int = 0  # tokens of val/test scored at the end; 0 = the whole split
    wandb_log: bool = False
    wandb_project: str = "smallgpt"
    wandb_run_name: str = ""
    # system
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool | None = None  # None = auto: on for CUDA, off elsewhere (see resolve_compile)
    seed: int = 1337

    def validate(self):
        checks = [
            (self.model in ("gpt", "lstm", "gru"), f"model must be gpt, lstm or gru, not '{self.model}'"),
            (self.init_from != "", "init_from must be scratch, resume or a run directory / checkpoint to fine-tune"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, not '{self.optimizer}'"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, not '{self.schedule}'"),
            (0 < self.decay_frac <= 1, f"decay_frac must be in (0, 1], not {self.decay_frac}"),
            (self.decay_shape in DECAY_SHAPES,
             f"decay_shape must be one of {', '.join(DECAY_SHAPES)}, not '{self.decay_shape}'"),
            (self.muon_lr_scale > 0 and 0 <= self.muon_momentum < 1,
             "muon_lr_scale must be > 0 and muon_momentum in [0, 1)"),
            (self.lr > 0 and self.min_lr >= 0 and self.cycle_div >= 1 and self.cycle_final_div >= 1,
             "lr must be > 0, min_lr >= 0, cycle_div and cycle_final_div >= 1"),
            (0 < self.cycle_rise <= 0.5, f"cycle_rise must be in (0, 0.5], not {self.cycle_rise}"),
            (0 < self.step_every and 0 < self.step_gamma <= 1, "step_every must be > 0 and step_gamma in (0, 1]"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), not {self.label_smoothing}"),
            (0 < self.lr_find_min < self.lr_find_max and self.lr_find_iters >= 10,
             "lr_find needs 0 < lr_find_min < lr_find_max and lr_find_iters >= 10"),
            (self.dtype in ("auto", "float32", "bfloat16", "float16"),
             f"dtype must be auto, float32, bfloat16 or float16, not '{self.dtype}'"),
            (self.max_iters > 0 or self.time_budget > 0, "set max_iters or time_budget (minutes) > 0"),
            (min(self.batch_size, self.grad_accum, self.block_size, self.eval_iters) > 0,
             "batch_size, grad_accum, block_size and eval_iters must be positive"),
            (self.eval_interval > 0 and self.log_interval > 0, "eval_interval and log_interval must be positive"),
            (self.model != "gpt" or self.n_embd % self.n_head == 0,
             f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)


# ----------------------------------------------------------------------------- devices and precision

def sync(device):
    """Wait for the device's queued work (timings of GPU work are meaningless without it); a CPU has none."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def resolve_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if name not in ("cpu", "mps", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise UserError(f"device must be auto, cpu, cuda, cuda:N or mps, not '{name}'")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is visible; use --device=cpu (or auto)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"device={name} but only {torch.cuda.device_count()} GPU(s) are visible")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device=mps but MPS is not available here; use --device=cpu (or auto)")
    return name


def cpu_has_native_bf16():
    """Whether this CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX; read from Linux's /proc/cpuinfo).
    There bf16 autocast measured 1.2x (quickstart) to 2.2x (GPT-2 small) the fp32 tokens/s (bench.py);
    elsewhere bf16 is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_dtype(name, device):
    """'auto' is bfloat16 where the device has it (CUDA, and CPUs with native bf16 matmuls), else float32;
    CUDA GPUs without bf16 get float16 (with a GradScaler)."""
    if name == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "bfloat16" if device == "cpu" and cpu_has_native_bf16() else "float32"
    if name == "float16" and not device.startswith("cuda"):
        raise UserError("dtype=float16 needs a CUDA GPU (it relies on a GradScaler); use bfloat16 or float32")
    return name


def resolve_compile(flag, device):
    """compile=None (auto) compiles on CUDA only: on a CPU it measured slower than eager for our models
    (bench.py measures it), and compiling costs a minute before the first step."""
    return device.startswith("cuda") if flag is None else flag


def autocast(device, dtype):
    """The mixed-precision context for the forward pass (a no-op for float32)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


# ----------------------------------------------------------------------------- learning rate

SCHEDULES = ("wsd", "cosine", "onecycle", "invsqrt", "step", "constant")
DECAY_SHAPES = ("linear", "sqrt")


def get_lr(it, progress, cfg):
    """LR at iteration `it` (0-based) and training progress in [0, 1] (see progress_of), per cfg.schedule.

    wsd:      warmup-stable-decay (a trapezoid): linear warmup over warmup_iters, flat at lr, then down to 0
              over the last decay_frac of the run, linearly or as 1 - sqrt (decay_shape)
    cosine:   linear warmup to lr over warmup_iters, then a cosine to min_lr that ends when progress is 1 (GPT)
    onecycle: 1cycle (Smith & Topin): linear rise lr/cycle_div -> lr over cycle_rise of the run, the mirror
              fall, then annihilation to lr/cycle_div/cycle_final_div; warmup_iters is not used
    invsqrt:  lr * min(s/w, sqrt(w/s)) with s = it+1, w = warmup_iters: the Transformer's warmup and decay
    step:     warmup, then lr times step_gamma for every step_every of the run completed (StepLR)
    constant: warmup, then lr
    """
    if cfg.schedule == "onecycle":
        low, rise = cfg.lr / cfg.cycle_div, cfg.cycle_rise
        if progress < rise:
            return low + (cfg.lr - low) * progress / rise
        if progress < 2 * rise:
            return cfg.lr - (cfg.lr - low) * (progress - rise) / rise
        tail = min((progress - 2 * rise) / max(1.0 - 2 * rise, 1e-9), 1.0)  # annihilation, linear to the floor
        return low - (low - low / cfg.cycle_final_div) * tail
    if cfg.schedule == "invsqrt":
        s, w = it + 1, max(cfg.warmup_iters, 1)
        return cfg.lr * min(s / w, math.sqrt(w / s))
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** math.floor(min(progress, 1.0) / cfg.step_every + 1e-9)
    if cfg.schedule == "wsd":
        left = min(max((1.0 - progress) / cfg.decay_frac, 0.0), 1.0)  # 1 until the decay starts, 0 at the end
        return cfg.lr * (left if cfg.decay_shape == "linear" else 1.0 - math.sqrt(1.0 - left))
    start = cfg.warmup_iters / cfg.max_iters if cfg.max_iters > 0 else 0.0  # progress when warmup ends
    ratio = min(max((progress - start) / max(1.0 - start, 1e-9), 0.0), 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * ratio))


def get_momentum(progress, cfg, top=None):
    """A momentum (SGD's, Muon's, or AdamW's beta1) at this progress: `top` (default: the optimizer's
    configured value), except under onecycle, where it moves opposite to the LR, down to momentum_min at
    the LR peak and back."""
    if top is None:
        top = {"sgd": cfg.momentum, "muon": cfg.muon_momentum}.get(cfg.optimizer, cfg.beta1)
    if cfg.schedule != "onecycle" or progress >= 2 * cfg.cycle_rise:
        return top
    frac = progress / cfg.cycle_rise if progress < cfg.cycle_rise else 2 - progress / cfg.cycle_rise
    return top - (top - cfg.momentum_min) * frac


def set_schedule(optimizers, lr, progress, cfg):
    """Set every parameter group's LR (lr times the group's lr_scale) and momentum (or beta1) for this step."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            momentum = get_momentum(progress, cfg, group.get("top_momentum"))
            if "betas" in group:
                group["betas"] = (momentum, group["betas"][1])
            else:
                group["momentum"] = momentum


def progress_of(it, elapsed_s, cfg):
    """Fraction of the run done: by iterations or by the time budget, whichever is further along."""
    p = it / cfg.max_iters if cfg.max_iters > 0 else 0.0
    if cfg.time_budget > 0:
        p = max(p, elapsed_s / (cfg.time_budget * 60))
    return p


# ----------------------------------------------------------------------------- optimization

OPTIMIZERS = ("muon", "adamw", "sgd")
NOT_HIDDEN = ("wte.", "wpe.", "lm_head.")  # 2-D weights that are lookups or the output layer, not hidden matrices


def make_optimizers(cfg, model, device):
    """The optimizers of a run, as a list (a checkpoint holds each one's state).

    adamw | sgd: one optimizer; weight decay on the matrices only (not biases, norms); fused kernels.
    muon: torch.optim.Muon for the hidden weight matrices (attention, MLP, LSTM gates), AdamW for the rest
    (embeddings, output layer, norms, biases). Muon's LR is scaled as its docs' "match_rms_adamw" (Moonshot):
    its updates then have AdamW's RMS, so its peak LR is lr * muon_lr_scale with muon_lr_scale near 1.
    Every group records its lr_scale and top momentum, which set_schedule reads each step."""
    fused = device.split(":")[0] in ("cuda", "cpu")
    named = list(model.named_parameters())  # a tied weight is listed once
    hidden = [p for n, p in named if cfg.optimizer == "muon" and p.dim() == 2 and not n.startswith(NOT_HIDDEN)]
    rest = [p for _, p in named if not any(p is h for h in hidden)]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return [torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)]
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)
    for group in adamw.param_groups:
        group.update(lr_scale=1.0, top_momentum=cfg.beta1)
    if cfg.optimizer != "muon":
        return [adamw]
    if not hidden:
        raise UserError(f"optimizer=muon needs 2-D hidden weight matrices, and this {cfg.model} has none: "
                        f"use --optimizer=adamw")
    muon = torch.optim.Muon(hidden, lr=cfg.lr * cfg.muon_lr_scale, weight_decay=cfg.weight_decay,
                            momentum=cfg.muon_momentum, adjust_lr_fn="match_rms_adamw")
    muon.param_groups[0].update(lr_scale=cfg.muon_lr_scale, top_momentum=cfg.muon_momentum)
    return [muon, adamw]


def objective(model, x, y, cfg):
    """The training loss: the model's mean cross-entropy, or, with label smoothing, one computed here."""
    if cfg.label_smoothing == 0:
        return model(x, y)[1]
    logits, _ = model(x)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), label_smoothing=cfg.label_smoothing)


def optimizer_step(optimizers, scaler, model, grad_clip):
    """Clip the gradients (unscaled first under fp16), step every optimizer, update the loss scale, clear
    the gradients. Under fp16 a step with inf/nan gradients is skipped by all of them alike."""
    if grad_clip > 0:
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for optimizer in optimizers:
        scaler.step(optimizer)
    scaler.update()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- data

class Batches:
    """Random windows of a memmapped split, drawn from a generator of their own so the stream is
    reproducible and resumable (its state goes into the checkpoint).

    Every process draws the same stream: each optimizer step takes grad_accum * batch_size window starts
    from the shared generator, and process `rank` of `world` trains on micro-batches rank*k .. rank*k+k-1
    of them (k = grad_accum // world). So N processes see exactly the windows one process with the same
    grad_accum sees, and a run resumes under any number of processes."""

    def __init__(self, data, block_size, batch_size, seed, grad_accum=1, rank=0, world=1):
        if len(data) <= block_size:
            raise UserError(f"block_size={block_size} is too long for a split of {len(data)} tokens; "
                            f"lower --block_size")
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.grad_accum, self.rank, self.per_rank = grad_accum, rank, grad_accum // world
        self.gen = torch.Generator().manual_seed(seed)
        self.pending = []  # this process's micro-batch starts left in the current step

    def next(self):
        if not self.pending:
            ix = torch.randint(len(self.data) - self.block_size, (self.grad_accum, self.batch_size), generator=self.gen)
            self.pending = ix[self.rank * self.per_rank:(self.rank + 1) * self.per_rank].tolist()
        return windows(self.data, self.pending.pop(0), self.block_size)


def windows(data, starts, block_size):
    """Inputs data[s : s+T] and targets data[s+1 : s+T+1] for each start s, as int64 tensors (B, T)."""
    x = np.stack([data[s:s + block_size] for s in starts]).astype(np.int64)
    y = np.stack([data[s + 1:s + 1 + block_size] for s in starts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def fixed_starts(n_tokens, block_size, count, seed):
    """The same `count` window starts every time: the deterministic estimate used during training."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(n_tokens - block_size, (count,), generator=gen).tolist()


@torch.no_grad()
def estimate_loss(model, data, starts, cfg, device, dtype):
    """Mean loss over fixed windows, in batches of batch_size."""
    model.eval()
    losses = []
    for i in range(0, len(starts), cfg.batch_size):
        x, y = windows(data, starts[i:i + cfg.batch_size], cfg.block_size)
        with autocast(device, dtype):
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item() * len(x))
    model.train()
    return sum(losses) / len(starts)


@torch.no_grad()
def evaluate_split(model, data, cfg, device, dtype, max_tokens=0, stop=None):
    """Mean loss over a whole split, every token scored once, in consecutive windows of block_size
    (a window's first tokens see less context). Returns (loss, tokens scored); once stop (a StopFlag) is
    requested, what was scored so far (loss None if nothing)."""
    model.eval()
    n = len(data) - 1 if max_tokens <= 0 else min(len(data) - 1, max_tokens)
    T = cfg.block_size
    starts = list(range(0, n - T + 1, T))
    total, count = 0.0, 0
    for i in range(0, len(starts), cfg.batch_size):
        if stop and stop.requested:
            break
        x, y = windows(data, starts[i:i + cfg.batch_size], T)
        total, count = _add_loss(model, x, y, device, dtype, total, count)
    tail = n - len(starts) * T
    if tail > 0 and not (stop and stop.requested):  # the last, shorter window
        s = len(starts) * T
        x, y = windows(data, [s], tail)
        total, count = _add_loss(model, x, y, device, dtype, total, count)
    model.train()
    return (total / count if count else None), count


def _add_loss(model, x, y, device, dtype, total, count):
    with autocast(device, dtype):
        _, loss = model(x.to(device), y.to(device))  # the mean over the batch's tokens
    return total + loss.item() * y.numel(), count + y.numel()


def metrics_for(loss, split_stats):
    """Perplexity, bits per token and bits per byte of the split's source text for a mean loss in nats."""
    tokens_per_byte = split_stats["tokens"] / max(split_stats["bytes"], 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bits_per_token": loss / math.log(2),
            "bpb": loss * tokens_per_byte / math.log(2)}


# ----------------------------------------------------------------------------- checkpoints

def save_atomic(obj, path):
    """torch.save to a temporary file, fsync, then rename over path: a crash leaves the old file intact."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise UserError(f"could not save {path}: {e.strerror or e}; the previous checkpoint is untouched") from None
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def load_checkpoint(path, map_location="cpu"):
    """A checkpoint saved by this file, or a clear UserError."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train one first (python train.py --out_dir=...)")
    try:
        # weights_only: tensors and plain Python values only, so a shared checkpoint cannot run code when loaded
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            calls = re.search(r"GLOBAL (\S+)", str(e))
            raise UserError(f"refused to load {path}: it holds Python objects, not only tensors and plain values"
                            f"{f' (it calls {calls[1]})' if calls else ''}, and loading them could run code; this "
                            f"project's checkpoints never do, so it was made elsewhere or tampered with (nothing in "
                            f"it was run)") from None
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); "
                        f"use the other checkpoint in its folder or retrain") from None
    needed = {"config", "model_kind", "model_args", "model", "meta"}
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT or not needed <= set(ckpt):
        raise UserError(f"{path} is not a checkpoint of this project (format {CKPT_FORMAT})")
    return ckpt


def load_start_checkpoint(cfg):
    """The checkpoint init_from names: out_dir's last.pt for resume (else its ckpt.pt), or for a fine-tune
    a checkpoint file or a run directory (its best checkpoint, ckpt.pt), or GPT-2's weights (gpt2*, hf:DIR: see
    hf.py) with their context cropped to block_size."""
    if hf.is_pretrained(cfg.init_from):
        ckpt = hf.load_pretrained(cfg.init_from, block_size=cfg.block_size, dropout=cfg.dropout)
        full, kept = ckpt["config"]["n_positions"], ckpt["config"]["block_size"]
        if kept < full:
            print0(f"{cfg.init_from}: context cropped to block_size={kept} of its {full} positions "
                   f"(--block_size={full} keeps them all)")
        return ckpt
    if cfg.init_from == "resume":
        path, best = os.path.join(cfg.out_dir, CKPT_LAST), os.path.join(cfg.out_dir, CKPT_BEST)
        try:
            return load_checkpoint(path if os.path.exists(path) else best)
        except UserError as e:
            if os.path.exists(path) and os.path.exists(best):
                raise UserError(f"{e}. To resume from the best checkpoint instead, move {path} aside") from None
            raise
    path = cfg.init_from
    if os.path.isdir(path):
        path = os.path.join(path, CKPT_BEST)
    elif not os.path.exists(path):
        raise UserError(f"init_from={cfg.init_from} is neither scratch, resume, a run directory nor a checkpoint file")
    return load_checkpoint(path)


def check_same_tokenizer(ckpt, meta, data_dir):
    """A checkpoint only continues on data tokenized the same way (same kind, size and, if listed, vocabulary)."""
    old = ckpt["meta"]
    if old.get("pretrained"):  # Hugging Face weights read GPT-2's tokens
        hf.require_gpt2_tokens(ckpt)
        if meta["tokenizer"] != "gpt2":
            raise UserError(f"{old['pretrained']}'s weights read GPT-2's tokens, but {data_dir} is tokenized with "
                            f"{meta['tokenizer']}: prepare it with --tokenizer=gpt2 "
                            f"(python prepare.py text --input=FILE --tokenizer=gpt2)")
    if (old["tokenizer"], old["vocab_size"], old.get("vocab")) != (meta["tokenizer"], meta["vocab_size"], meta.get("vocab")):
        same_kind = old["tokenizer"] == meta["tokenizer"] and old["vocab_size"] == meta["vocab_size"]
        raise UserError(f"the checkpoint was trained on a {old['tokenizer']} vocabulary of {old['vocab_size']}"
                        f" ({old['dataset']}), but {data_dir} has {meta['tokenizer']} with {meta['vocab_size']}"
                        f"{' listing different tokens' if same_kind else ''}: prepare the new data with the same "
                        f"tokenizer (char vocabularies must match exactly)")


def model_from_checkpoint(ckpt):
    try:
        model = build_model(ckpt["model_kind"], ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, ValueError, KeyError) as e:  # weights that do not fit the stated architecture
        raise UserError(f"the checkpoint's weights do not fit its {ckpt['model_kind']} architecture "
                        f"({type(e).__name__}): it is damaged or from another version; use the other checkpoint "
                        f"or retrain") from None
    return model


def model_args(cfg, vocab_size):
    args = {k: getattr(cfg, k) for k in config_fields(cfg.model) if k != "vocab_size"}
    return {**args, "vocab_size": vocab_size}


# ----------------------------------------------------------------------------- the run

class Run:
    """A run's constants (meta, the fixed eval windows, tokens per step, the speed clock) and its files
    (rank 0 only): model_summary.txt, metrics.jsonl, and wandb when asked."""

    def __init__(self, cfg, env, meta, s, eval_data):
        self.cfg, self.master, self.meta, self.wandb = cfg, env.master, meta, None
        self.metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.block_size
        self.eval_starts = {name: fixed_starts(len(d), cfg.block_size, cfg.eval_iters * cfg.batch_size,
                                               cfg.seed + EVAL_SEED_OFFSET) for name, d in eval_data.items()}
        self.t_start = self.t_last = time.time()  # the wall clock, and where the next log's speed is measured from
        self.it_last, self.elapsed_before = s.it, s.elapsed_before
        n_params = s.model.num_params()
        if self.master:
            with open(os.path.join(cfg.out_dir, "model_summary.txt"), "w") as f:
                f.write(f"{s.model}\n\nparameters: {n_params:,}\nmodel args: {json.dumps(model_args(cfg, meta['vocab_size']))}\n")
        if self.master and cfg.wandb_log:
            import wandb
            self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or None,
                                    config=dataclasses.asdict(cfg), dir=cfg.out_dir)
        compiled = " compiled" if s.eval_model is not s.model else ""
        print0(f"{cfg.model}: {n_params / 1e6:.2f}M parameters | {meta['dataset']} ({meta['tokenizer']}, "
               f"vocab {meta['vocab_size']}) | device {env.device} {env.dtype}{compiled}"
               f"{f' x{env.world} processes' if env.world > 1 else ''} | {self.tokens_per_step:,} tokens/step | "
               f"{cfg.optimizer} {cfg.schedule}")

    def elapsed(self):
        """Seconds of training so far, including those of the runs this one resumes."""
        return self.elapsed_before + time.time() - self.t_start

    def log(self, event, **values):
        if not self.master:
            return
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps({"event": event, **values}) + "\n")
        except OSError as e:  # e.g. the disk filled up: stop with the checkpoints as they are
            raise UserError(f"cannot write {self.metrics_path}: {e.strerror or e}; the checkpoints in "
                            f"{self.cfg.out_dir} are untouched (resume with --init_from=resume)") from None
        if self.wandb is not None:
            self.wandb.log({f"{event}/{k}": v for k, v in values.items() if k != "step"}, step=values.get("step"))

    def finish(self):
        if self.wandb is not None:
            self.wandb.finish()


class RunLock:
    """out_dir/run.lock while a run trains there, taken by rank 0 before anything else (and before DDP starts):
    a second train.py on the same out_dir stops with one line, having written nothing. The lock is a flock on
    the file, which the system drops when its process dies; the file says who holds it ({pid, host, started}).
    One left behind (kill -9, a power cut) is taken over, with a note. sample.py only reads: it takes no lock."""

    def __init__(self, out_dir):
        self.out_dir, self.path, self.fd, self.made = out_dir, os.path.join(out_dir, "run.lock"), None, []

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): runs go unlocked
            return self
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 holds it for all
            return self
        path = os.path.abspath(self.out_dir)
        while not os.path.exists(path):  # the folders this creates, removed again if the run writes nothing
            self.made.append(path)
            path = os.path.dirname(path)
        try:
            os.makedirs(self.out_dir, exist_ok=True)
            while self.fd is None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    held = self._holder(fd)
                    os.close(fd)
                    self.__exit__()
                    who = f" (pid {held['pid']} on {held['host']}, started {held['started']})" if held else ""
                    raise UserError(f"{self.out_dir} is in use by another training run{who}: wait for it to end, "
                                    f"or pick another --out_dir") from None
                if os.path.exists(self.path) and os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    self.fd = fd
                else:  # its holder removed the file while we opened it: lock the new one
                    os.close(fd)
            if held := self._holder(self.fd):
                print0(f"note: taking over {self.path} from pid {held['pid']} on {held['host']} (started "
                       f"{held['started']}), which ended without releasing it")
            mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, json.dumps(mine).encode(), 0)
        except OSError as e:
            self.__exit__()
            raise UserError(f"cannot write to out_dir {self.out_dir}: {e.strerror}; pick another --out_dir") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.remove(self.path)
            os.close(self.fd)  # drops the flock
            self.fd = None
        for path in self.made:  # deepest first; only while still empty
            with contextlib.suppress(OSError):
                os.rmdir(path)

    @staticmethod
    def _holder(fd):
        try:
            held = json.loads(os.pread(fd, 1000, 0))
        except (OSError, ValueError):
            return None
        return held if isinstance(held, dict) and {"pid", "host", "started"} <= held.keys() else None


def print0(*args, **kwargs):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def fmt_time(seconds):
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step (it then saves and evaluates), or the final
    evaluation to stop scoring (action says which); a second SIGINT exits at once."""

    def __init__(self, action="stopping after this step"):
        self.requested, self.action = False, action
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            print0("\nsecond interrupt: exiting now without saving")
            os._exit(130)
        self.requested = True
        print0(f"\n{signal.Signals(signum).name}: {self.action} (Ctrl-C again to quit at once)")

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- training: setup

@dataclass
class Env:
    """Where this process trains: rank `rank` of `world` processes, on `device` in `dtype`."""
    rank: int
    world: int
    device: str
    dtype: str

    @property
    def master(self):
        return self.rank == 0


@dataclass
class State:
    """What a run carries from step to step, and what its checkpoints save."""
    model: torch.nn.Module  # the raw model: checkpoints hold its state_dict, free of wrapper prefixes
    eval_model: torch.nn.Module  # what evaluation calls: the model, compiled where compile is on
    train_model: torch.nn.Module  # what training calls: under DDP, a wrapper that averages gradients
    optimizers: list
    scaler: torch.amp.GradScaler
    batches: "Batches"
    it: int = 0
    tokens: int = 0
    elapsed_before: float = 0.0  # seconds spent by the runs this one resumes
    best_val: float = math.inf
    saved_at: int = 0  # the step of the latest checkpoint
    skipped: int = 0  # fp16: steps the GradScaler skipped (overflowing gradients)


def setup_distributed(cfg):
    """(rank, world_size, device) from torchrun's environment; (0, 1, device) without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", 1))
        int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    except ValueError:
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them); unset them "
                        "to train on one device") from None
    if world == 1:
        return 0, 1, resolve_device(cfg.device)
    rank, local_rank = int(os.environ.get("RANK", -1)), int(os.environ.get("LOCAL_RANK", 0))
    if not 0 <= rank < world:
        raise UserError(f"WORLD_SIZE={world} needs RANK in 0..{world - 1}: launch with torchrun, not by hand")
    if cfg.grad_accum % world and cfg.grad_accum != 1:
        raise UserError(f"grad_accum={cfg.grad_accum} must be a multiple of the number of processes ({world}): "
                        f"each runs grad_accum/{world} micro-steps of batch_size={cfg.batch_size} sequences")
    device = resolve_device(cfg.device)
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    # torch.distributed.nn's functions take group=WORLD as a default argument, evaluated on first import. DDP imports
    # it (through torch._dynamo); imported after init_process_group it would pin the default group for good, so
    # destroy_process_group could not stop gloo's threads, and one of them freeing a tensor of the last collective
    # as the interpreter exits aborts the process ("terminate called without an active exception")
    import torch.distributed.nn  # noqa: F401
    torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def gather_states(state, world, device):
    """Every rank's generator state, in rank order (just this one without DDP)."""
    if world == 1:
        return [state]
    state = state.to(device)  # NCCL gathers GPU tensors only
    states = [torch.empty_like(state) for _ in range(world)]
    torch.distributed.all_gather(states, state)
    return [s.cpu() for s in states]


def open_data(cfg, data_dir):
    """meta.json and the train and val splits, checked (test.bin too, though it is read only at the end)."""
    meta = prepare.load_meta(data_dir)
    train_data, val_data = (prepare.open_split(data_dir, s, check_ids=True) for s in ("train", "val"))
    prepare.open_split(data_dir, "test")  # a missing test.bin should not wait for the end of the run
    if len(val_data) <= cfg.block_size:  # (train's length is checked by Batches)
        raise UserError(f"block_size={cfg.block_size} is too long for the val split of {len(val_data)} tokens; "
                        f"lower --block_size")
    return meta, train_data, val_data


def start_checkpoint(cfg, meta, data_dir):
    """(cfg, the checkpoint to start from or None). The model's shape (and, on resume, the optimizer) is
    the checkpoint's whatever the defaults say; flags that ask for another one are an error on resume."""
    resume = cfg.init_from == "resume"
    if not resume:  # a forgotten --init_from=resume must not overwrite hours of training
        for name in (CKPT_LAST, CKPT_BEST):
            if os.path.exists(os.path.join(cfg.out_dir, name)):
                raise UserError(f"{cfg.out_dir} already holds a run ({name}): continue it with --init_from=resume, "
                                f"or start a new one in another --out_dir (or delete that folder)")
    if cfg.init_from == "scratch":
        return cfg, None
    ckpt = load_start_checkpoint(cfg)
    check_same_tokenizer(ckpt, meta, data_dir)
    kind = ckpt["model_kind"]
    with torch.device("meta"):  # the weights must fit the model before anything is written (costs no memory)
        shell = build_model(kind, ckpt["model_args"])
    if {k: v.shape for k, v in shell.state_dict().items()} != {k: getattr(v, "shape", None) for k, v in ckpt["model"].items()}:
        raise UserError(f"the weights in {cfg.init_from}'s checkpoint do not fit its own {kind} "
                        f"architecture: it is damaged or from another version")
    # every model field, with the defaults of its time filling in for options added since (a fine-tune may change dropout)
    shape = {k: getattr(shell.cfg, k) for k in config_fields(kind) if k != "vocab_size" and (resume or k != "dropout")}
    stored = {**shape, "model": kind, "block_size": ckpt["config"]["block_size"]}
    if resume:
        stored["optimizer"] = ckpt["config"].get("optimizer", "adamw")
        clash = [k for k, v in stored.items() if getattr(cfg, k) not in (v, getattr(TrainConfig, k))]
        if clash:  # a shape the user asked for (not a default) that the checkpoint does not have
            has, asked = (", ".join(f"{k}={d[k]}" for k in clash) for d in (stored, dataclasses.asdict(cfg)))
            raise UserError(f"resume keeps the model and optimizer of the checkpoint in {cfg.out_dir} ({has}), not "
                            f"{asked}: drop those flags, or train a new model in another --out_dir")
    else:
        changed = {k: v for k, v in stored.items() if getattr(cfg, k, v) != v}
        if changed:
            print0(f"fine-tuning keeps the checkpoint's shape: {', '.join(f'{k}={v}' for k, v in changed.items())}")
    return dataclasses.replace(cfg, **stored), ckpt


def write_config(cfg, env):
    """out_dir/config.json: the whole resolved config, with the versions and the device it ran on."""
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump({**dataclasses.asdict(cfg), "torch": torch.__version__, "python": sys.version.split()[0],
                       "world_size": env.world, "device": env.device, "dtype_resolved": env.dtype}, f, indent=2)
    except OSError as e:
        raise UserError(f"cannot write to out_dir {cfg.out_dir}: {e.strerror}; pick another --out_dir") from None


def build_state(cfg, env, vocab_size, train_data, ckpt):
    """The model (restored from ckpt if any), its optimizers and loss scaler, and the batch stream (on
    resume, also the step, the counters and every random stream, so the run goes on exactly)."""
    resume = cfg.init_from == "resume"
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    raw = build_model(cfg.model, ckpt["model_args"] if resume else model_args(cfg, vocab_size)).to(env.device)
    torch.manual_seed(cfg.seed + env.rank)  # but each process its own dropout masks
    optimizers = make_optimizers(cfg, raw, env.device)
    scaler = torch.amp.GradScaler(env.device.split(":")[0], enabled=(env.dtype == "float16"))
    batches = Batches(train_data, cfg.block_size, cfg.batch_size, cfg.seed, cfg.grad_accum, env.rank, env.world)
    model = torch.compile(raw) if resolve_compile(cfg.compile, env.device) else raw
    wrapped = model
    if env.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(env.device).index] if env.device.startswith("cuda") else None)
    s = State(raw, model, wrapped, optimizers, scaler, batches)
    if ckpt:
        restore(s, ckpt, cfg, env)
    return s


def restore(s, ckpt, cfg, env):
    """Load the checkpoint's weights; on resume also the optimizers, scaler, counters and random streams."""
    resume = cfg.init_from == "resume"
    try:
        s.model.load_state_dict(ckpt["model"])
        if resume:
            saved = ckpt["optimizer"] if isinstance(ckpt["optimizer"], list) else [ckpt["optimizer"]]  # (older)
            if len(saved) != len(s.optimizers):
                raise ValueError("a different number of optimizers")
            for optimizer, state in zip(s.optimizers, saved):
                optimizer.load_state_dict(state)
            s.scaler.load_state_dict(ckpt["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"the checkpoint does not fit its own model or optimizer ({type(e).__name__}): it is "
                        f"damaged or from another version") from None
    if not resume:
        print0(f"fine-tuning from {cfg.init_from} (step {ckpt['iter']} of {ckpt['config']['dataset']}) "
               f"with a fresh optimizer and schedule")
        return
    s.it, s.tokens, s.elapsed_before, s.best_val = ckpt["iter"], ckpt["tokens"], ckpt["elapsed_s"], ckpt["best_val"]
    s.saved_at = s.it
    s.batches.gen.set_state(ckpt["batch_rng"][0])
    torch_rng = ckpt["torch_rng"] if isinstance(ckpt["torch_rng"], list) else [ckpt["torch_rng"]]  # (older)
    if env.rank < len(torch_rng):  # resumed under more processes: the new ones keep their fresh seeds
        torch.set_rng_state(torch_rng[env.rank])
        if ckpt.get("cuda_rng") and env.device.startswith("cuda"):
            torch.cuda.set_rng_state(ckpt["cuda_rng"][env.rank])
    print0(f"resuming {cfg.out_dir} at step {s.it} ({s.tokens:,} tokens, {fmt_time(s.elapsed_before)} spent)")


# ----------------------------------------------------------------------------- training: the loop

def train(cfg):
    """Run training as configured; returns the results dict (rank 0) or None (other ranks)."""
    rank, world, device = setup_distributed(cfg)
    if world > 1 and cfg.grad_accum == 1:  # no accumulation asked for: one micro-batch in each process
        cfg = dataclasses.replace(cfg, grad_accum=world)
    env = Env(rank, world, device, resolve_dtype(cfg.dtype, device))
    if device.startswith("cuda"):  # fp32 matmuls (outside autocast) on tensor cores: TF32's 10-bit mantissa
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    data_dir = os.path.join(cfg.data_dir, cfg.dataset)
    meta, train_data, val_data = open_data(cfg, data_dir)
    cfg, ckpt = start_checkpoint(cfg, meta, data_dir)
    if env.master:
        write_config(cfg, env)
    s = build_state(cfg, env, meta["vocab_size"], train_data, ckpt)
    eval_data = {"train": train_data, "val": val_data}
    run = Run(cfg, env, meta, s, eval_data)
    # the per-step broadcast of rank 0's clock goes through gloo on the CPU: no GPU sync in every step
    control = torch.distributed.new_group(backend="gloo") if world > 1 and device.startswith("cuda") else None
    micro_steps = cfg.grad_accum // world
    bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first step whose loss was nan/inf, else -1
    stop = StopFlag()
    while True:
        elapsed, stopping = shared_clock(run.elapsed(), stop.requested, world, control)
        progress = progress_of(s.it, elapsed, cfg)
        last_step = progress >= 1.0 or stopping
        if s.it % cfg.eval_interval == 0 or last_step:
            evaluate_and_checkpoint(cfg, env, s, run, eval_data, bad_step, elapsed)
        if last_step:
            break

        # one optimizer step: set the LR, run the micro-steps (DDP averages gradients in the last one), step
        lr = get_lr(s.it, progress, cfg)
        set_schedule(s.optimizers, lr, progress, cfg)
        loss_sum = torch.zeros((), device=device)
        for micro in range(micro_steps):
            x, y = (t.to(device, non_blocking=True) for t in s.batches.next())
            no_sync = world > 1 and micro < micro_steps - 1
            with s.train_model.no_sync() if no_sync else contextlib.nullcontext():
                with autocast(device, env.dtype):
                    loss = objective(s.train_model, x, y, cfg)
                s.scaler.scale(loss / micro_steps).backward()
            loss_sum += loss.detach()
        scale = s.scaler.get_scale() if s.scaler.is_enabled() else 0.0
        optimizer_step(s.optimizers, s.scaler, s.model, cfg.grad_clip)
        if s.scaler.is_enabled():  # a skipped step halves the scale (get_scale syncs; fp16 only)
            s.skipped += s.scaler.get_scale() < scale
        s.it += 1
        s.tokens += run.tokens_per_step
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss_sum), s.it, bad_step)  # no sync

        if s.it % cfg.log_interval == 0:
            log_step(cfg, env, s, run, loss_sum, bad_step, lr)
    stop.restore()
    s.train_model = control = None  # they hold process groups: dropped, destroy_process_group ends gloo's threads
    return finish(cfg, env, s, run, meta, data_dir)


def shared_clock(elapsed, stopping, world, control):
    """Under DDP rank 0's clock and signals decide for all, so every process takes the same steps and LRs."""
    if world == 1:
        return elapsed, stopping
    shared = torch.tensor([elapsed, float(stopping)], dtype=torch.float64)
    torch.distributed.broadcast(shared, 0, group=control)
    return shared[0].item(), bool(shared[1].item())


def stop_if_diverged(cfg, s, bad_step, val_loss=0.0):
    """A non-finite loss since the last check ends the run before anything is saved from it."""
    step = int(bad_step)  # a GPU sync, but only where we read a loss anyway (log and eval)
    if step >= 0 or not math.isfinite(val_loss):
        where = f"training loss at step {step}" if step >= 0 else f"val loss at step {s.it}"
        raise UserError(f"the {where} is nan or inf: stopped without saving; the last good checkpoint (step "
                        f"{s.saved_at}) is in {cfg.out_dir}. Lower --lr or use --dtype=float32, then "
                        f"--init_from=resume")


def evaluate_and_checkpoint(cfg, env, s, run, eval_data, bad_step, elapsed):
    """Loss on the fixed train and val windows; then save last.pt, and ckpt.pt when val is the best yet."""
    losses = {name: estimate_loss(s.eval_model, data, run.eval_starts[name], cfg, env.device, env.dtype)
              for name, data in eval_data.items()}
    val = metrics_for(losses["val"], run.meta["splits"]["val"])
    print0(f"eval step {s.it}: train {losses['train']:.4f} | val {losses['val']:.4f} | "
           f"ppl {val['ppl']:.2f} | {val['bpb']:.3f} bits/byte")
    run.log("eval", step=s.it, tokens=s.tokens, train_loss=losses["train"], val_loss=losses["val"],
            val_ppl=val["ppl"], val_bpb=val["bpb"], elapsed_s=round(elapsed, 2))
    stop_if_diverged(cfg, s, bad_step, losses["val"])  # never overwrite last.pt with a diverged model
    # every process's dropout RNG (a collective: every rank joins)
    rng = {"torch_rng": gather_states(torch.get_rng_state(), env.world, env.device)}
    if env.device.startswith("cuda"):
        rng["cuda_rng"] = gather_states(torch.cuda.get_rng_state(), env.world, env.device)
    s.saved_at = s.it
    if not env.master:
        return
    state = {"format": CKPT_FORMAT, "config": dataclasses.asdict(cfg), "model_kind": cfg.model,
             "model_args": model_args(cfg, run.meta["vocab_size"]), "model": s.model.state_dict(),
             "optimizer": [o.state_dict() for o in s.optimizers], "scaler": s.scaler.state_dict(), "iter": s.it,
             "tokens": s.tokens, "best_val": min(s.best_val, losses["val"]), "elapsed_s": run.elapsed(),
             "batch_rng": [s.batches.gen.get_state()], **rng,
             "meta": {k: v for k, v in run.meta.items() if k != "splits"}}
    save_atomic(state, os.path.join(cfg.out_dir, CKPT_LAST))  # first: a kill between the two saves must not
    if losses["val"] < s.best_val:                              # leave a best checkpoint newer than the latest
        s.best_val = losses["val"]
        save_atomic(state, os.path.join(cfg.out_dir, CKPT_BEST))


def log_step(cfg, env, s, run, loss_sum, bad_step, lr):
    """The training loss (the mean over every micro-step of every process), speed and time left."""
    if env.world > 1:
        torch.distributed.all_reduce(loss_sum)
    train_loss = loss_sum.item() / cfg.grad_accum
    stop_if_diverged(cfg, s, bad_step)
    now = time.time()
    dt = (now - run.t_last) / max(s.it - run.it_last, 1)
    tok_s = run.tokens_per_step / dt
    run.t_last, run.it_last = now, s.it
    elapsed = run.elapsed()
    left = f" | left {fmt_time(cfg.time_budget * 60 - elapsed)}" if cfg.time_budget > 0 else ""
    left += f" | {s.skipped} fp16 steps skipped" if s.skipped else ""
    print0(f"step {s.it} | loss {train_loss:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s | {dt * 1000:.1f} ms/step"
           f" | elapsed {fmt_time(elapsed)}{left}")
    run.log("train", step=s.it, tokens=s.tokens, loss=train_loss, lr=lr, tokens_per_s=round(tok_s),
            ms_per_step=round(dt * 1000, 2), elapsed_s=round(elapsed, 2), skipped_steps=s.skipped)


def finish(cfg, env, s, run, meta, data_dir):
    """Tear down DDP, then (rank 0) score the best checkpoint on the full splits and write the results."""
    wall = run.elapsed()
    if env.world > 1:
        torch.distributed.barrier()  # no process tears down its connections while another still uses them
        torch.distributed.destroy_process_group()
    if not env.master:
        return None
    try:
        results = final_evaluation(cfg, meta, data_dir, env.device, env.dtype, s.tokens, s.it, wall,
                                   s.model.num_params())
    except OSError as e:  # e.g. disk full: the checkpoints are saved, only the report is missing
        raise UserError(f"could not write the results in {cfg.out_dir}: {e.strerror or e}; the checkpoints are "
                        f"saved, so free some space and run again with --init_from=resume to evaluate") from None
    run.log("final", step=s.it, tokens=s.tokens, **{k: v for k, v in results.items() if isinstance(v, float)})
    run.finish()
    return results


def final_evaluation(cfg, meta, data_dir, device, dtype, tokens_seen, it, wall, n_params):
    """Score the best checkpoint on the whole train sample, val and test splits; write results.json/.md.
    SIGINT/SIGTERM cut the scoring short: the results then hold what was scored (see *_tokens_scored; a
    split not reached scores null) with final_eval_cut true, and --init_from=resume evaluates again."""
    model = model_from_checkpoint(load_checkpoint(os.path.join(cfg.out_dir, CKPT_BEST))).to(device)
    results = {"dataset": cfg.dataset, "model": cfg.model, "params": n_params, "tokens_seen": tokens_seen,
               "iters": it, "wall_time_s": round(wall, 1)}
    stop = StopFlag("cutting the final evaluation short, keeping what was scored")
    print0(f"final evaluation: scoring {CKPT_BEST} on the train sample, val and test (Ctrl-C or SIGTERM cuts it short)")
    for split in ("train", "val", "test"):
        data = prepare.open_split(data_dir, split)
        # the train split is large; score as many tokens of it as of val, to compare like with like
        cap = cfg.final_eval_tokens if split != "train" else (cfg.final_eval_tokens or meta["splits"]["val"]["tokens"])
        loss, n = evaluate_split(model, data, cfg, device, dtype, cap, stop)
        m = metrics_for(loss, meta["splits"][split]) if n else dict.fromkeys(("ppl", "bpb", "bits_per_token"))
        results.update({f"{split}_loss": loss, f"{split}_perplexity": m["ppl"], f"{split}_bpb": m["bpb"],
                        f"{split}_bits_per_token": m["bits_per_token"], f"{split}_tokens_scored": n})
    results["final_eval_cut"] = stop.requested
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    rows = [("test_loss", "test_loss"), ("test_perplexity", "test_perplexity"), ("test bits/byte", "test_bpb"),
            ("tokens_seen", "tokens_seen"), ("train_loss", "train_loss"), ("train_perplexity", "train_perplexity"),
            ("val_loss", "val_loss"), ("val_perplexity", "val_perplexity"), ("val bits/byte", "val_bpb"),
            ("parameters", "params"), ("wall time (s)", "wall_time_s")]
    table = "| Metric | Value |\n|:---|:---|\n" + "".join(f"| {name} | {_cell(results[key])} |\n" for name, key in rows)
    cut = (f"the final evaluation was cut short: {cfg.out_dir}/results.json holds what was scored (see "
           f"*_tokens_scored); `python train.py ... --init_from=resume` evaluates again") if stop.requested else ""
    with open(os.path.join(cfg.out_dir, "results.md"), "w") as f:
        f.write(f"# {cfg.model} on {cfg.dataset}\n\n" + (f"**{cut}**\n\n" if cut else "") + table)
    plot_curves(cfg.out_dir)
    stop.restore()
    print0(f"\nbest checkpoint on the full splits ({cfg.out_dir}/results.md):\n{table}{cut}")
    return results


def _cell(value):
    return "not scored" if value is None else f"{value:,.4f}" if isinstance(value, float) else f"{value:,}"


def plot_curves(out_dir):
    """learning_curves.png: train and val loss against tokens seen."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    events = []
    for line in open(os.path.join(out_dir, "metrics.jsonl")):
        with contextlib.suppress(ValueError):  # a line torn by a crash or a full disk is skipped
            events.append(json.loads(line))
    train = [(e["tokens"], e["loss"]) for e in events if e["event"] == "train"]
    val = [(e["tokens"], e["val_loss"]) for e in events if e["event"] == "eval"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for points, label in ((train, "train"), (val, "val")):
        if points:
            ax.plot(*zip(*points), label=label, marker="." if label == "val" else None)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(os.path.join(out_dir, "learning_curves.png"), dpi=100, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------- LR range test

LR_FIND_DIVERGED = 4.0  # the sweep stops once the smoothed loss exceeds this multiple of its minimum
LR_FIND_SMOOTHING = 0.9  # EMA of the loss; bias-corrected, so the first steps are not pulled toward zero


def lr_find(cfg):
    """LR range test (Smith): train from scratch while the LR grows exponentially from lr_find_min to
    lr_find_max over lr_find_iters steps; stop when the smoothed loss diverges. Writes out_dir/lr_find.png
    and lr_find.json; returns {"lrs", "losses", "suggested_lr", "min_loss_lr", "diverged"}.
    The suggestion is the LR where the smoothed loss falls fastest (per log-LR), before its minimum."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UserError("lr_find runs in one process: launch it with python, not torchrun")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    data_dir = os.path.join(cfg.data_dir, cfg.dataset)
    meta = prepare.load_meta(data_dir)
    batches = Batches(prepare.open_split(data_dir, "train"), cfg.block_size, cfg.batch_size, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, model_args(cfg, meta["vocab_size"])).to(device)
    optimizers = make_optimizers(cfg, model, device)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=(dtype == "float16"))
    constant = dataclasses.replace(cfg, schedule="constant")
    growth = (cfg.lr_find_max / cfg.lr_find_min) ** (1 / (cfg.lr_find_iters - 1))
    lrs, losses, avg, best, diverged = [], [], 0.0, float("inf"), False
    print0(f"LR range test: {cfg.lr_find_min:.1e} -> {cfg.lr_find_max:.1e} over {cfg.lr_find_iters} steps")
    for i in range(cfg.lr_find_iters):
        lr = cfg.lr_find_min * growth ** i
        set_schedule(optimizers, lr, 0.0, constant)
        for _ in range(cfg.grad_accum):
            x, y = (t.to(device) for t in batches.next())
            with autocast(device, dtype):
                loss = objective(model, x, y, cfg)
            scaler.scale(loss / cfg.grad_accum).backward()
        optimizer_step(optimizers, scaler, model, cfg.grad_clip)
        value = loss.item()
        if not math.isfinite(value):
            diverged = True
            break
        avg = LR_FIND_SMOOTHING * avg + (1 - LR_FIND_SMOOTHING) * value
        smooth = avg / (1 - LR_FIND_SMOOTHING ** (i + 1))
        lrs.append(lr)
        losses.append(smooth)
        best = min(best, smooth)
        if smooth > LR_FIND_DIVERGED * best:
            diverged = True
            break
    if len(losses) < 3:
        raise UserError(f"the loss diverged within {len(losses)} steps of lr_find_min={cfg.lr_find_min}: lower it")
    lowest = int(np.argmin(losses))
    slope = np.gradient(np.array(losses), np.log(np.array(lrs)))
    steepest = int(np.argmin(slope[:max(lowest, 1)]))
    result = {"lrs": lrs, "losses": losses, "suggested_lr": lrs[steepest], "min_loss_lr": lrs[lowest],
              "diverged": diverged}
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(os.path.join(cfg.out_dir, "lr_find.json"), "w") as f:
            json.dump(result, f, indent=2)
        plot_lr_find(result, os.path.join(cfg.out_dir, "lr_find.png"))
    except OSError as e:
        raise UserError(f"cannot write the LR range test to {cfg.out_dir}: {e.strerror or e}; "
                        f"pick another --out_dir") from None
    print0(f"{'diverged' if diverged else 'did not diverge'} after {len(lrs)} steps (at lr {lrs[-1]:.2e}); "
           f"loss lowest at lr {lrs[lowest]:.2e}\nsuggested lr: {lrs[steepest]:.2e} (steepest descent; "
           f"for onecycle, the peak lr can go up to about {lrs[lowest]:.2e}) | plot: {cfg.out_dir}/lr_find.png")
    return result


def plot_lr_find(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(result["lrs"], result["losses"])
    ax.axvline(result["suggested_lr"], color="tab:green", linestyle="--",
               label=f"suggested {result['suggested_lr']:.1e}")
    ax.axvline(result["min_loss_lr"], color="tab:red", linestyle=":", label=f"lowest loss {result['min_loss_lr']:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv):
    cfg = load_config(TrainConfig(), argv)
    if cfg.lr_find:  # writes only lr_find.json/.png, never a run's files: it may run beside training, unlocked
        lr_find(cfg)
    else:
        with RunLock(cfg.out_dir):
            train(cfg)


if __name__ == "__main__":
    cli(main)
