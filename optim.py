"""
Optimization: the optimizers, the learning-rate schedules, and the one training step that train.py,
its LR range test and bench.py all take.

    cfg = OptimConfig(optimizer="muon", lr=4e-3, schedule="wsd")
    optimizers = make_optimizers(cfg, model, device)
    set_schedule(optimizers, get_lr(it, progress, cfg), progress, cfg)
    loss = train_step(model, batches, 1, optimizers, scaler, cfg, device, dtype)

muon (the default) is Muon below (torch.optim.Muon's update stepped in batches, with NorMuon) for the
hidden weight matrices and AdamW for the rest; adamw and sgd are one optimizer each. Every schedule is a
pure function of the step and of progress, the fraction of the run done by steps or by the time budget,
whichever is further: the shape completes when the run ends, however it ends.
"""
import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common import autocast, resolve_dtype
from configurator import UserError

SCHEDULES = ("wsd", "cosine", "onecycle", "invsqrt", "step", "constant")
DECAY_SHAPES = ("linear", "sqrt")
WD_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("muon", "adamw", "sgd")
NOT_HIDDEN = ("wte.", "wpe.", "lm_head.")  # 2-D weights that are lookups or the output layer, not hidden matrices
NORMUON_BETA2 = 0.9  # Muon with normuon: the EMA of each neuron's mean squared update


@dataclass
class OptimConfig:
    """The optimization keys of TrainConfig (train.py), which extends this: the run's length, the
    optimizer and the schedule."""
    max_iters: int = 2000  # 0 = no cap; train.py: none where a time_budget is given and max_iters is not
    time_budget: float = 0.0  # minutes of training; 0 = no budget
    optimizer: str = "muon"  # muon (hidden matrices; AdamW for the rest) | adamw | sgd
    lr: float = 4e-3  # the peak learning rate (AdamW's or SGD's); train.py: 3e-3 from time_budget >= 5 (sizing.py)
    muon_lr_scale: float = 1.0  # muon: its peak LR = lr * this (its updates are scaled to AdamW's RMS)
    muon_momentum: float = 0.95  # muon: Nesterov momentum
    normuon: bool = True  # muon: NorMuon: each output neuron's share of the update normalized by its running RMS
    weight_decay: float = 0.5  # decoupled (lr x this per step), on the hidden weight matrices only (not biases,
    # norms); 0.5, not GPT-2's 0.1: a small corpus read many times over then overfits later (README, the recipe)
    decay_embeddings: bool = False  # weight decay on the embeddings and the output layer too (GPT-2's, nanoGPT's)
    wd_schedule: str = "constant"  # constant | cosine: weight_decay times 0.5 (1 + cos(pi progress)), to 0 (nanochat's)
    beta1: float = 0.9  # adamw
    beta2: float = 0.99  # adamw
    eps: float = 1e-8  # adamw
    momentum: float = 0.9  # sgd
    grad_clip: float = 1.0  # clip the gradients' global norm to this; 0 = off
    label_smoothing: float = 0.0  # training loss only; evaluation always reports the plain cross-entropy
    # the LR schedule, a function of progress = max(step / max_iters, elapsed / time_budget)
    schedule: str = "wsd"  # wsd | cosine | onecycle | invsqrt | step | constant
    warmup_iters: int = 50  # linear warmup (wsd, cosine, step, constant) or the inverse-sqrt peak (invsqrt)
    decay_frac: float = 0.5  # wsd: the LR decays to 0 over this last fraction of the run...
    decay_shape: str = "linear"  # wsd: ...linear | sqrt (1 - sqrt)
    min_lr: float = 1e-4  # cosine: where it ends
    step_every: float = 0.25  # step: the LR drops every this fraction of the run...
    step_gamma: float = 0.1  # step: ...by this factor
    cycle_div: float = 25.0  # onecycle: starts (and ends its fall) at lr / cycle_div...
    cycle_final_div: float = 1e4  # onecycle: ...then annihilates down to lr / cycle_div / cycle_final_div
    cycle_rise: float = 0.45  # onecycle: fraction of the run spent rising (as much falling); the rest annihilates
    momentum_min: float = 0.85  # onecycle: momentum (sgd) or beta1 (adamw) dips to this at the LR peak

    def validate(self):
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, not '{self.optimizer}'"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, not '{self.schedule}'"),
            (0 < self.decay_frac <= 1, f"decay_frac must be in (0, 1], not {self.decay_frac}"),
            (self.wd_schedule in WD_SCHEDULES,
             f"wd_schedule must be one of {', '.join(WD_SCHEDULES)}, not '{self.wd_schedule}'"),
            (self.decay_shape in DECAY_SHAPES,
             f"decay_shape must be one of {', '.join(DECAY_SHAPES)}, not '{self.decay_shape}'"),
            (self.muon_lr_scale > 0 and 0 <= self.muon_momentum < 1,
             f"muon_lr_scale must be > 0 and muon_momentum in [0, 1), not {self.muon_lr_scale:g} and "
             f"{self.muon_momentum:g}"),
            (self.lr > 0 and self.min_lr >= 0 and self.cycle_div >= 1 and self.cycle_final_div >= 1,
             "lr must be > 0, min_lr >= 0, cycle_div and cycle_final_div >= 1"),
            (0 < self.cycle_rise <= 0.5, f"cycle_rise must be in (0, 0.5], not {self.cycle_rise}"),
            (0 < self.step_every and 0 < self.step_gamma <= 1, "step_every must be > 0 and step_gamma in (0, 1]"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), not {self.label_smoothing}"),
            (self.max_iters >= 0 and self.time_budget >= 0,
             f"max_iters and time_budget must be >= 0 (0 = no cap, no budget), "
             f"not {self.max_iters} and {self.time_budget:g}"),
            (self.max_iters > 0 or self.time_budget > 0, "set max_iters or time_budget (minutes) > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)


# ----------------------------------------------------------------------------- learning rate

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


def get_wd_factor(progress, cfg):
    """The share of weight_decay in effect at this progress: 1 throughout (constant), or a cosine from 1 to 0
    over the run (cosine, nanochat's), so the decay, already times the LR, fades out before the LR does."""
    if cfg.wd_schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


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
    """Set every parameter group's LR (lr times the group's lr_scale), momentum (or beta1) and weight decay
    (its top_weight_decay times get_wd_factor) for this step."""
    wd_factor = get_wd_factor(progress, cfg)
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            # a checkpoint from before top_weight_decay had a constant weight_decay: that is its top
            group["weight_decay"] = group.setdefault("top_weight_decay", group["weight_decay"]) * wd_factor
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



# ----------------------------------------------------------------------------- optimizers and the step

class Muon(torch.optim.Muon):
    """torch.optim.Muon, its step done for all matrices of one shape at once: the momentum with foreach
    ops, and Newton-Schulz as batched matrix products (a transformer's layers share their shapes), which
    is where a small model's step spends its time otherwise, in per-matrix calls. The same update, state
    (momentum_buffer) and hyperparameters as PyTorch's (a test holds them equal), so checkpoints carry over;
    only where the device has no native bf16 it orthogonalizes in fp32 (ns_dtype).

    A group with normuon=True (make_optimizers sets it from the config) also takes NorMuon's step: the
    orthogonalized update's rows (the columns of a wide matrix) are scaled by the inverse of their running
    RMS (neuron_sq, an EMA with NORMUON_BETA2), then the whole update back to its norm."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
            grads = [p.grad for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
            updates = torch._foreach_lerp(grads, bufs, group["momentum"]) if group["nesterov"] else bufs
            lr, wd = group["lr"], group["weight_decay"]
            dtype = ns_dtype(params[0].device) if params else None  # once a step, not once a shape
            by_shape = {}
            for p, u in zip(params, updates):
                by_shape.setdefault(p.shape, []).append((p, u))
            for shape, pairs in by_shape.items():
                ortho = newton_schulz(torch.stack([u for _, u in pairs]), group["ns_coefficients"], group["ns_steps"],
                                      group["eps"], dtype)
                ps = [p for p, _ in pairs]
                if group.get("normuon"):
                    ortho = self.normalize_neurons(ps, ortho.float())
                torch._foreach_mul_(ps, 1 - lr * wd)
                torch._foreach_add_(ps, list(ortho.to(ps[0].dtype).unbind(0)),
                                    alpha=-torch.optim._muon._adjust_lr(lr, group["adjust_lr_fn"], shape))
        return loss

    def normalize_neurons(self, params, g):
        """NorMuon's per-neuron normalization of a stack of updates g (N, A, B), its norm kept."""
        dim = -1 if g.size(1) >= g.size(2) else -2  # a neuron: a row of a tall matrix, a column of a wide one
        sq = g.square().mean(dim=dim, keepdim=True)  # (N, A, 1) or (N, 1, B)
        state = [self.state[p].setdefault("neuron_sq", torch.zeros_like(s)) for p, s in zip(params, sq)]
        torch._foreach_lerp_(state, list(sq.unbind(0)), 1 - NORMUON_BETA2)
        scaled = g * torch.stack(state).clamp(min=1e-10).rsqrt()
        return scaled * (g.norm(dim=(1, 2), keepdim=True) / scaled.norm(dim=(1, 2), keepdim=True).clamp(min=1e-10))


def ns_dtype(device):
    """The dtype Muon orthogonalizes in: bf16, as torch.optim.Muon does, where the device multiplies bf16
    natively (what dtype=auto picks bf16 for); elsewhere fp32, since an AVX2-only CPU emulates bf16 matrix
    products, many times slower than fp32's (README, "The training step on a CPU")."""
    return torch.bfloat16 if resolve_dtype("auto", device.type) == "bfloat16" else torch.float32


def newton_schulz(g, coefficients, steps, eps, dtype=torch.bfloat16):
    """torch.optim.Muon's orthogonalization (quintic Newton-Schulz, in bf16 unless dtype says) of a stack
    of matrices (N, A, B)."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(1) > g.size(2)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def make_scaler(device, dtype):
    """The loss scaler: a GradScaler that works under float16 only (a pass-through otherwise)."""
    return torch.amp.GradScaler(device.split(":")[0], enabled=dtype == "float16")


def make_optimizers(cfg, model, device):
    """The optimizers of a run, as a list (a checkpoint holds each one's state).

    adamw | sgd: one optimizer; weight decay on the hidden matrices only (not biases, norms, and not the
    embeddings and output layer unless decay_embeddings); fused kernels.
    muon: torch.optim.Muon for the hidden weight matrices (attention, MLP, LSTM gates), AdamW for the rest
    (embeddings, output layer, norms, biases). Muon's LR is scaled as its docs' "match_rms_adamw" (Moonshot):
    its updates then have AdamW's RMS, so its peak LR is lr * muon_lr_scale with muon_lr_scale near 1.
    Every group records its lr_scale and top momentum, which set_schedule reads each step."""
    fused = device.split(":")[0] in ("cuda", "cpu")
    named = list(model.named_parameters())  # a tied weight is listed once
    hidden = [p for n, p in named if cfg.optimizer == "muon" and p.dim() == 2 and not n.startswith(NOT_HIDDEN)]
    rest = [(n, p) for n, p in named if not any(p is h for h in hidden)]

    def decays(n, p):
        return p.dim() >= 2 and (cfg.decay_embeddings or not n.startswith(NOT_HIDDEN))
    groups = [{"params": [p for n, p in rest if decays(n, p)], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in rest if not decays(n, p)], "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return [torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)]
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)
    for group in adamw.param_groups:
        group.update(lr_scale=1.0, top_momentum=cfg.beta1)
    if cfg.optimizer != "muon":
        return [adamw]
    if not hidden:
        raise UserError(f"optimizer=muon needs 2-D hidden weight matrices, and this {type(model).__name__} has none: "
                        f"use --optimizer=adamw")
    muon = Muon(hidden, lr=cfg.lr * cfg.muon_lr_scale, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                adjust_lr_fn="match_rms_adamw")
    muon.param_groups[0].update(lr_scale=cfg.muon_lr_scale, top_momentum=cfg.muon_momentum, normuon=cfg.normuon)
    return [muon, adamw]


def objective(model, x, y, cfg):
    """The training loss: the model's mean cross-entropy, or, with label smoothing, one computed here."""
    if cfg.label_smoothing == 0:
        return model(x, y)[1]
    logits, _ = model(x)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), label_smoothing=cfg.label_smoothing,
                           ignore_index=-1)


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




def train_step(model, batches, micro_steps, optimizers, scaler, cfg, device, dtype, raw=None, world=1):
    """One optimizer step: micro_steps forward and backward passes on batches.next() (under DDP the
    gradients are averaged in the last one only), then clip, step and clear (optimizer_step). `raw` is the
    model whose gradients are clipped when `model` is a wrapper (DDP, compile). Each micro-batch's mean
    loss counts by its share of the step's trained tokens (batches.step_targets, over all `world`
    processes): the step's loss is the mean over all of them (1 / micro_steps each where no target is
    masked). Returns this process's share of the step's loss, a device tensor (reading it would wait for
    the device)."""
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    loss_sum = torch.zeros((), device=device)
    for micro in range(micro_steps):
        x, y = batches.next()
        share = int((y >= 0).sum()) * world / batches.step_targets  # DDP averages processes: * world sums them
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with model.no_sync() if ddp and micro < micro_steps - 1 else contextlib.nullcontext():
            with autocast(device, dtype):
                loss = objective(model, x, y, cfg)
            scaler.scale(loss * share).backward()
        loss_sum += loss.detach() * share
    optimizer_step(optimizers, scaler, raw if raw is not None else model, cfg.grad_clip)
    return loss_sum
