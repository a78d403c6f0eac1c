"""
Throughput on this machine: training, tokenizers and generation.

    python bench.py                    # all of them (what `make bench` runs)
    python bench.py train              # training tokens/s, ms/step and MFU per precision / compile setting
    python bench.py tokenize           # python prepare.py bench: tokenizer MB/s, streaming peak memory
    python bench.py generate           # decode tokens/s of engine.py's settings against the memory-bandwidth limit
    python bench.py train --steps=5 --compile=False    # more timed steps; skip the compiled settings
    python bench.py profile            # where the default training step's time goes: its phases, the top ops
                                       # (a short run's eager step, then a long run's compiled one)
    python bench.py budget             # loss at equal wall clock: recipes trained on the same data and minutes
    python bench.py budget --dataset=wt2char --budget=10 --repeats=2    # (not part of `all`: it takes minutes)
    python bench.py budget --budget=30 --recipes=default,auto --parallel=True   # fixed 4 x 128 vs sized to 30 minutes
    python bench.py sft                # instruction fine-tuning demo: exact match on held-out synthetic tasks

The training benchmark times full optimizer steps (forward, backward, clipping, fused AdamW) of two
shapes with random tokens: the quickstart GPT (config/quickstart.py) and GPT-2 small (124M; on a CPU with
a short 256-token sequence and batch 1). Every setting (fp32 eager, bf16 autocast, torch.compile, and the
default train.py picks) shares one model and is measured interleaved, round by round, so a busy machine
slows them alike; the best round counts (bf16 only where the device has it: a CPU without AVX512-BF16 or
AMX emulates it, many times slower). MFU is model FLOPs (6 per parameter per token plus attention)
per second over the peak matmul throughput of the same dtype, measured here with a large matmul.

The generation benchmark times whole generations (batch x new tokens from a 1-token prompt, through
engine.py's stream) of two random-weight shapes, the quickstart GPT and GPT-2 small: fp32 weights under
autocast (sample.py's way before the fast-generation work), then engine.py's (weights cast once, the
step compiled, int8 weights). Each row is set against the memory bandwidth, measured in the same run,
over the bytes one decode step reads.

The budget benchmark runs `python train.py` once per recipe (and repeat, interleaved) on one prepared
dataset with one wall-clock budget, evaluating every EVAL_EVERY steps (the best checkpoint counts: long
runs on a small corpus overfit), and tabulates steps,
tokens seen, tokens/s and the best checkpoint's loss on the whole val split (train.py's final
evaluation: the same evaluator for every recipe). The recipes are RECIPES below: nanoGPT's CPU recipe,
our GPT-2-style baseline with its batch, context and LR tuned for short CPU budgets, the defaults, and
the defaults with the ReLU² MLP they had before SwiGLU (relu2), the defaults kept on 16 x 128-token batches
where a budget of 5 minutes or more would double their context (ctx128), the defaults at the LR they had
before a budget of 5 minutes or more lowered it (lr4e-3), the defaults with RoPE's base at the 10,000 they
had before 100,000 (rope1e4), the defaults with nanochat's weight decay, fading to 0 over the run by a cosine
(wdcos), the defaults with nanochat's x0 and residual scalars (x0mix: train.py
--x0_mix=True, which export.py refuses), and the defaults with the model sized to the budget (auto: train.py
--auto_size=True); relu2, ctx128, lr4e-3, rope1e4, wdcos, x0mix and auto are not in the default
list.
The README's tables run from 2 to 30 minutes.
"""
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, fields, replace
from types import SimpleNamespace

import torch

from common import (COMPILE_MIN_BUDGET, autocast, keep_freed_memory, resolve_compile, resolve_device, resolve_dtype,
                    sync)
from configurator import UserError, cli, load_config, read_override_file
from engine import compile_step, for_generation, generation_dtype, stream, window_slide
from model import GPT, GPT2_ARCH, RECIPE_ARCH, GPTConfig, config_fields, size_gated_mlp
from optim import OptimConfig, make_optimizers, make_scaler, objective, train_step
from sizing import LONG_BUDGET, LONG_LR, long_windows

WHAT = ("train", "profile", "tokenize", "generate", "budget", "sft")
ALL = ("train", "tokenize", "generate")  # what `python bench.py` runs; budget and sft take minutes per recipe
REPO = os.path.dirname(os.path.abspath(__file__))

PROFILE_STEPS = 40  # profile: timed steps
EVAL_EVERY = 500  # budget: steps between evaluations, which every recipe pays for out of its budget
# GPT-2's architecture, AdamW and a cosine schedule: train.py's recipe before the modern defaults
GPT2_RECIPE = [f"--{k}={v}" for k, v in GPT2_ARCH.items()] + ["--optimizer=adamw", "--schedule=cosine", "--beta2=0.99",
                                                               "--weight_decay=0.1", "--decay_embeddings=True",
                                                               "--grad_clip=1.0"]
# train.py flags on top of TrainConfig's defaults; every recipe but auto trains the same 4 x 128 model
RECIPES = {
    # nanoGPT's README CPU recipe (shakespeare_char on a laptop): batch 12 x 64, lr 1e-3 -> 1e-4, 100 warmup steps
    "nanogpt": GPT2_RECIPE + ["--batch_size=12", "--block_size=64", "--lr=1e-3", "--min_lr=1e-4",
                              "--warmup_iters=100", "--compile=False"],  # eager, as that README runs it on a CPU
    # the same architecture and optimizer with the batch, context and LR that did best at 1.5-10 CPU minutes
    "gpt2-tuned": GPT2_RECIPE + ["--batch_size=16", "--block_size=64", "--lr=2e-3", "--min_lr=2e-4",
                                 "--warmup_iters=50"],
    "default": [],  # TrainConfig as it is
    # the defaults with the plain ReLU² MLP they had before SwiGLU (as many weights: 2 matrices of 512, not 3 of 344)
    "relu2": ["--activation=relu2"],
    # the defaults on the 16 x 128-token batches they have under 5 minutes, at any budget (sizing.long_budget's
    # longer context not taken; its LR is)
    "ctx128": ["--block_size=128", "--batch_size=16"],
    # the defaults at the peak LR they have under 5 minutes, at any budget (sizing.long_budget's LR not taken)
    "lr4e-3": ["--lr=4e-3"],
    # the defaults with RoPE's base at RoFormer's 10,000, as they had before 100,000
    "rope1e4": ["--rope_theta=10000"],
    # the defaults with their weight decay fading to 0 over the run by a cosine, as nanochat's does
    "wdcos": ["--wd_schedule=cosine"],
    # the defaults with each block's input a learned mix of the residual stream and the embeddings (not exportable)
    "x0mix": ["--x0_mix=True"],
    # the defaults with the model sized to the budget on this machine (sizing.py), not fixed at 4 x 128
    "auto": ["--auto_size=True"],
}


# instruction fine-tuning recipes: config/sft.py, then these flags (bench.py sft compares them)
SFT_RECIPES = {
    "sft": [],
    "adamw-1e-3": ["--optimizer=adamw", "--lr=1e-3"],
    "adamw-3e-4": ["--optimizer=adamw", "--lr=3e-4"],
    "muon-4e-3": ["--optimizer=muon", "--lr=4e-3"],
    "muon-1e-3": ["--optimizer=muon", "--lr=1e-3"],
}
SFT_EVAL_EVERY = 100


@dataclass
class BenchConfig:
    device: str = "auto"
    steps: int = 3  # timed rounds; each setting takes one step per round
    compile: bool = True  # include the torch.compile settings (compiling takes ~1 min per model on a CPU)
    big: bool = True  # include the GPT-2 small shape
    dataset: str = "pycode"  # budget: the prepared dataset every recipe trains on
    budget: float = 2.5  # budget: minutes of training per run
    repeats: int = 1  # budget: runs per recipe (interleaved rounds, round r with seed + r; min and median reported)
    recipes: str = "nanogpt,gpt2-tuned,default"  # budget: comma-separated names from RECIPES
    parallel: bool = False  # budget: a round's recipes train at the same time, the CPU threads split between them
    threads: int = 0  # CPU intra-op threads; 0 = PyTorch's default (one per core)
    seed: int = 1337  # budget: the seed of the first round
    base: str = "out/quickstart"  # sft: the run to fine-tune (pretrained for a minute first if it is missing)
    sft_recipes: str = "sft"  # sft: comma-separated names from SFT_RECIPES
    sft_steps: int = 600  # sft: fine-tuning steps per recipe


def peak_flops(device, dtype, n=None):
    """Measured matmul throughput (FLOP/s) of an n x n product in this dtype: the roof MFU is taken against."""
    cuda = device.startswith("cuda")
    n = n or (8192 if cuda else 2048)
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    reps = 20 if cuda else 1
    best = float("inf")
    for _ in range(5 if cuda else 12):  # the best of many short trials: a shared CPU is rarely idle for long
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n ** 3 / best


def flops_per_token(model, cfg, T):
    """Training FLOPs per token: 6 per matmul weight (forward 2, backward 4) plus attention's QK^T and AV."""
    wpe = getattr(model, "wpe", None)  # a learned position table is a lookup, not a matmul
    n = model.num_params() - (wpe.weight.numel() if wpe is not None else 0)
    return 6 * n + 12 * cfg.n_layer * cfg.n_embd * T


def recipe_config(**shape):
    """train.py's recipe at this shape."""
    return GPTConfig(**size_gated_mlp({**RECIPE_ARCH, **shape}))


def shapes(device):
    """(name, GPTConfig, OptimConfig, batch, T) of the benchmarked models, with train.py's default recipe:
    the quickstart (config/quickstart.py) and GPT-2 small, cut down to batch 1 x 256 on a CPU."""
    quick = read_override_file(os.path.join(REPO, "config", "quickstart.py"))
    arch = {k: v for k, v in quick.items() if k in config_fields("gpt")}
    optim = OptimConfig(**{k: v for k, v in quick.items() if k in {f.name for f in fields(OptimConfig)}})
    cuda = device.startswith("cuda")
    return [("quickstart", recipe_config(**{**arch, "vocab_size": 256}), optim, quick["batch_size"],
             arch["block_size"]),
            ("gpt2-124M", recipe_config(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024),
             OptimConfig(), 16 if cuda else 1, 1024 if cuda else 256)]


def bench_model(name, arch, ocfg, B, T, device, settings, rounds, peaks):
    """Rows of results for one shape, every setting timed round-robin on one shared model."""
    torch.manual_seed(0)
    raw = GPT(arch).to(device)
    fused = make_optimizers(ocfg, raw, device)  # what train.py uses
    plain = [torch.optim.AdamW(raw.parameters(), lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2))]  # PyTorch's default kernel
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(arch.vocab_size, (B, T), generator=gen).to(device)
    y = torch.randint(arch.vocab_size, (B, T), generator=gen).to(device)
    steps = {}
    for label, dtype, compiled, engine in settings:
        model = torch.compile(raw) if compiled else raw
        scaler = make_scaler(device, dtype)
        optimizer = fused if engine else plain

        def step(model=model, dtype=dtype, scaler=scaler, optimizer=optimizer):  # train.py's step
            train_step(model, SimpleNamespace(next=lambda: (x, y), step_targets=y.numel()), 1, optimizer, scaler,
                       ocfg, device, dtype, raw=raw)
        t = time.perf_counter()
        for _ in range(2 if compiled else 1):  # compile (forward and backward graphs), or warm the allocator
            step()
        sync(device)
        print(f"  {name} {label}: warm-up {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        steps[label] = step
    times = {label: [] for label in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            sync(device)
            t = time.perf_counter()
            step()
            sync(device)
            times[label].append(time.perf_counter() - t)
    fpt = flops_per_token(raw, arch, T)
    rows = []
    for label, dtype, _, _ in settings:
        best = min(times[label])
        tok_s = B * T / best
        peak = peaks["float32" if dtype == "float32" else dtype]
        rows.append({"model": name, "params": raw.num_params(), "setting": label, "tokens": B * T,
                     "tok_s": tok_s, "ms_step": best * 1000, "ms_median": statistics.median(times[label]) * 1000,
                     "tflops": fpt * tok_s / 1e12, "mfu": fpt * tok_s / peak})
    base = rows[0]["tok_s"]
    for r in rows:
        r["vs_plain"] = r["tok_s"] / base
    return rows


def bench_train(bc):
    device = resolve_device(bc.device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as train.py does
    auto_dtype = resolve_dtype("auto", device)
    long = COMPILE_MIN_BUDGET.get(auto_dtype, 0)  # minutes: a CPU run in its dtype compiles from this budget
    auto_compile = resolve_compile(None, device, auto_dtype)
    long_compile = resolve_compile(None, device, auto_dtype, long)  # a run with a time_budget that long
    low = "bfloat16" if not cuda or torch.cuda.is_bf16_supported() else "float16"
    # a CPU where dtype=auto stays fp32 has no native bf16: it emulates it, many times slower than fp32
    dtypes = ("float32", low) if device != "cpu" or auto_dtype == low else ("float32",)
    peaks = {d: peak_flops(device, d) for d in dtypes}
    threads = f"{torch.get_num_threads()} threads" if not cuda else torch.cuda.get_device_name()
    print(f"\ntraining throughput on {device} ({threads}); measured peak matmul: "
          + ", ".join(f"{d} {p / 1e12:.2f} TFLOP/s" for d, p in peaks.items()))
    print(f"train.py's default here: dtype={auto_dtype}, compile={auto_compile}"
          + (f" ({long_compile} with a time_budget of {long:g} minutes or more)"
             if long_compile != auto_compile else ""))
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    # (label, dtype, compile, train.py's fused optimizer); the first is the plain baseline
    settings = [("fp32 eager, plain AdamW", "float32", False, False), ("fp32 eager", "float32", False, True),
                (f"{short[low]} eager", low, False, True)]
    if bc.compile:
        settings += [("fp32 compile", "float32", True, True), (f"{short[low]} compile", low, True, True)]
    if low not in dtypes:
        print("bf16 settings skipped: this CPU has no native bf16 (AVX512-BF16 or AMX), so it emulates bf16 "
              "matrix products, many times slower than fp32")
        settings = [s for s in settings if s[1] in dtypes]

    def mark(d, c, f):
        if (d, c, f) == (auto_dtype, auto_compile, True):
            return " = default"
        return " = long runs" if (d, c, f) == (auto_dtype, long_compile, True) else ""
    settings = [(f"{label}{mark(d, c, f)}", d, c, f) for label, d, c, f in settings]
    if not any("default" in s[0] for s in settings):
        settings.append(("default", auto_dtype, auto_compile, True))
    rows = []
    for name, arch, ocfg, B, T in shapes(device):
        if name != "quickstart" and not bc.big:
            continue
        todo = settings
        if name != "quickstart" and not cuda:  # compiling GPT-2 small on a few CPU cores takes minutes
            todo = [s for s in settings if not s[2]] or settings[:1]
        rows += bench_model(name, arch, ocfg, B, T, device, todo, bc.steps, peaks)
    print(f"{'model':<12} {'setting':<26} {'batch':>11} {'tok/s':>9} {'ms/step':>9} {'median':>9} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'vs plain':>9}")
    for r in rows:
        print(f"{r['model']:<12} {r['setting']:<26} {r['tokens']:>11,} {r['tok_s']:>9,.0f} {r['ms_step']:>9.1f} "
              f"{r['ms_median']:>9.1f} {r['tflops']:>8.3f} {r['mfu'] * 100:>5.1f}% {r['vs_plain']:>8.2f}x")
    return rows


def bench_profile(bc):
    """Where the default training step's time goes, in its phases (the median of PROFILE_STEPS timed steps
    each) and torch.profiler's top operators over a few more steps: the step of a short run (the
    quickstart's shape and batch, train.py's dtype, eager), then, with --compile (the default), the step of
    a run of LONG_BUDGET minutes or more where such a run compiles (windows of LONG_CONTEXT, compiled)."""
    device = resolve_device(bc.device)
    dtype = resolve_dtype("auto", device)
    name, arch, ocfg, B, T = shapes(device)[0]
    profile_step(f"{name} ({B} x {T} tokens), {dtype}, eager", arch, ocfg, B, T, device, dtype, False)
    budget = max(LONG_BUDGET, COMPILE_MIN_BUDGET.get(dtype, 0))
    if not bc.compile or not resolve_compile(None, device, dtype, budget):
        return
    B, T = long_windows(B, T)  # the same tokens a step, in longer windows
    profile_step(f"{name} ({B} x {T} tokens), {dtype}, compiled: a run of {budget:g} minutes or more",
                 replace(arch, block_size=T), replace(ocfg, lr=LONG_LR), B, T, device, dtype, True)


def profile_step(what, arch, ocfg, B, T, device, dtype, compiled):
    """One training step's phases and top operators (bench_profile)."""
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    raw = GPT(arch).to(device)
    model = torch.compile(raw) if compiled else raw
    optimizers = make_optimizers(ocfg, raw, device)
    x, y = (torch.randint(arch.vocab_size, (B, T), device=device) for _ in range(2))

    def step():
        times = [time.perf_counter()]
        with autocast(device, dtype):
            loss = objective(model, x, y, ocfg)
        times.append(time.perf_counter())  # the forward...
        loss.backward()
        for work in (lambda: torch.nn.utils.clip_grad_norm_(raw.parameters(), ocfg.grad_clip), *optimizers):
            sync(device)
            times.append(time.perf_counter())
            work() if callable(work) else work.step()
        sync(device)
        times.append(time.perf_counter())
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        return [b - a for a, b in zip(times, times[1:])]
    for _ in range(3):  # (compiles the forward and backward graphs)
        step()
    rows = [step() for _ in range(PROFILE_STEPS)]
    phases = ["forward", "backward", "clip"] + [type(o).__name__ for o in optimizers]
    total = statistics.median(sum(r) for r in rows)
    print(f"\nthe default training step: {what}, {torch.get_num_threads()} threads: {total * 1e3:.1f} ms "
          f"({B * T / total:,.0f} tok/s), median of {PROFILE_STEPS} steps")
    for i, phase in enumerate(phases):
        ms = statistics.median(r[i] for r in rows) * 1e3
        print(f"  {phase:<10} {ms:7.2f} ms {100 * ms / (total * 1e3):5.1f}%")
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])) as prof:
        for _ in range(5):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def bench_tokenize(bc):
    """prepare.py's own benchmark (`python prepare.py bench`), run as that stage."""
    print("\ntokenizers (python prepare.py bench):", flush=True)
    run = subprocess.run([sys.executable, "prepare.py", "bench"], cwd=REPO, capture_output=True, text=True)
    if run.returncode:
        raise UserError(f"python prepare.py bench failed: {run.stderr.strip().splitlines()[-1:]}")
    print(run.stdout, end="")
    return dict(line.split(None, 1) for line in run.stdout.splitlines() if line.strip())


def generation_shapes():
    """The generation benchmark's models, with random weights (speed does not depend on them): the
    quickstart's (the recipe's architecture at config/quickstart.py's size, 222 characters) and GPT-2
    124M."""
    return {"quickstart": recipe_config(vocab_size=222, block_size=128, n_layer=4, n_head=4, n_embd=128),
            "gpt2-124M": GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)}


GENERATION_MODES = {  # name: (weights, quantize, compiled, slide)
    "old": ("autocast", "", False, 1),  # fp32 weights under autocast, eager, exact slides: sample.py before #14
    "eager": ("cast", "", False, 0),  # weights cast once to dtype; engine.py's slide (half the context)
    "compiled": ("cast", "", True, 0),  # and the one-token step compiled
    "exact": ("cast", "", True, 1),  # compiled, exact slides (only run where the window slides)
    "int8": ("cast", "int8", True, 0),  # int8 weights, compiled
}


def memory_bandwidth(device, gib=1.0, repeats=5):
    """Bytes/s of the best of `repeats` sums over a `gib` GiB fp32 tensor: the roof decode is held to."""
    x = torch.ones(int(gib * 2**30) // 4, device=device)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        x.sum().item()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def bytes_per_step(model, B, capacity, itemsize=None):
    """What one decode step must read from memory: every weight but the embedding lookups (one row
    each), and the whole static KV cache (B, n_kv_head, capacity, head_size) of every layer. itemsize:
    the bytes of a float weight as computed (autocast reads its cached bf16 copies of fp32 weights)."""
    skip = {id(model.wte.weight)} - {id(getattr(model.lm_head, "weight", None))}  # a tied head reads it
    skip |= {id(model.wpe.weight)} if hasattr(model, "wpe") else set()
    seen = {id(t): t for t in [*model.parameters(), *(b for n, b in model.named_buffers() if "rope" not in n and
                                                        "pos_table" not in n)] if id(t) not in skip}
    cfg = model.cfg

    def size(t):
        return itemsize if itemsize and t.is_floating_point() else t.element_size()

    kv = 2 * cfg.n_layer * B * cfg.kv_heads * capacity * (cfg.n_embd // cfg.n_head) * size(model.wte.weight)
    return sum(t.numel() * size(t) for t in seen.values()) + kv


@torch.no_grad()
def _time_generation(model, B, N, device, weights, dtype, slide):
    """Seconds for a whole N-token generation (batch B, from a 1-token prompt) through stream()."""
    idx = torch.randint(model.cfg.vocab_size, (B, 1), device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    ctx = autocast(device, dtype) if weights == "autocast" else contextlib.nullcontext()
    with ctx:
        sync(device)
        t = time.perf_counter()
        for nxt in stream(model, idx, N, 1.0, None, None, gen, slide=slide):
            nxt.tolist()  # as Session.generate: one sync per token
        sync(device)
    return time.perf_counter() - t


def _generation_model(name, mode, device):
    """The random-weight model of shape `name`, prepared for generation as `mode` does; and its dtype."""
    weights, quantize, compiled, _ = GENERATION_MODES[mode]
    torch.manual_seed(0)
    torch._dynamo.reset()  # a fresh compile per model, within the recompile limit
    model = GPT(generation_shapes()[name]).to(device).eval()
    dtype = resolve_dtype("auto", device)
    if weights == "cast":
        dtype = generation_dtype(dtype, device, model)
        model = for_generation(model, device, dtype, quantize)
    if compiled:
        compile_step(model, device)
    return model, dtype


def _generation_row(model, mode, dtype, B, N, device, bandwidth):
    """Time one whole generation of N tokens at batch B (compiling first, timed apart); its table row."""
    weights, _, compiled, slide = GENERATION_MODES[mode]
    slide = window_slide(slide, model)
    compile_s, capacity = None, model.new_state(1 + N).capacity
    if compiled:  # compile (or find) the step for this batch and cache size, and warm it up
        t = time.perf_counter()
        _, state = model.step(torch.zeros(B, 1, dtype=torch.long, device=device), model.new_state(capacity))
        for _ in range(3):
            model.step(torch.zeros(B, 1, dtype=torch.long, device=device), state)
        sync(device)
        compile_s = time.perf_counter() - t
    else:
        _time_generation(model, B, 8, device, weights, dtype, slide)  # warm up kernels and allocator
    seconds = _time_generation(model, B, N, device, weights, dtype, slide)
    itemsize = getattr(torch, dtype).itemsize if weights == "autocast" else None
    step_bytes = bytes_per_step(model, B, capacity, itemsize)
    limit = B * bandwidth / step_bytes
    return dict(params=model.num_params(), device=device, dtype=dtype, mode=mode, batch=B, new_tokens=N,
                slide=slide if N + 1 > model.context_limit else None, seconds=seconds, tok_s=B * N / seconds,
                bytes_per_step=step_bytes, limit_tok_s=limit, of_limit=B * N / seconds / limit,
                bandwidth=bandwidth, compile_s=compile_s)


@torch.no_grad()
def generation_benchmark(device=None, shapes=("quickstart", "gpt2-124M"), batches=(1, 8),
                         lengths=(256, 1024), modes=tuple(GENERATION_MODES)):
    """Decode tok/s of whole generations (batch x N new tokens from a 1-token prompt, timed end to end,
    sampling at temperature 1) for each shape x mode; the memory bandwidth is measured in the same run
    and each row gives the fraction of the bandwidth limit (bytes one step reads / bandwidth). Compiled
    modes are compiled (and warmed up) before timing; the compile time is its own column. Prints a
    table; returns one dict per row."""
    device = resolve_device(device or "auto")
    bandwidth = memory_bandwidth(device)
    rows = []
    print(f"generation benchmark on {device}, {torch.get_num_threads()} CPU threads, random weights; "
          f"memory bandwidth {bandwidth / 1e9:.1f} GB/s (a 1 GiB sum)")
    print("| shape | mode | dtype | batch | new tokens | seconds | decode tok/s | MB read per step | bandwidth limit tok/s | "
          "of limit | compile s |")
    print("| :--- | :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in shapes:
        for mode in modes:
            model, dtype = _generation_model(name, mode, device)
            for N in lengths:
                if mode == "exact" and N + 1 <= model.context_limit:
                    continue  # no slide: the same as compiled
                for B in batches:
                    r = {"shape": name, **_generation_row(model, mode, dtype, B, N, device, bandwidth)}
                    rows.append(r)
                    window = f" (slides by {r['slide']})" if r["slide"] else ""
                    compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
                    print(f"| {name} | {mode} | {dtype} | {B} | {N}{window} | {r['seconds']:.2f} | {r['tok_s']:,.1f} | "
                          f"{r['bytes_per_step'] / 1e6:,.1f} | {r['limit_tok_s']:,.0f} | {r['of_limit']:.0%} | "
                          f"{compile_s} |", flush=True)
    return rows


def bench_generate(bc):
    print("\ngeneration (engine.py's settings against the memory-bandwidth limit):")
    shapes = ("quickstart", "gpt2-124M") if bc.big else ("quickstart",)
    modes = tuple(GENERATION_MODES) if bc.compile else ("old", "eager")
    device = None if bc.device == "auto" else bc.device
    return generation_benchmark(device, shapes=shapes, modes=modes)  # prints a table


def bench_budget(bc):
    """Every recipe trained for bc.budget minutes on bc.dataset; one table of what each bought."""
    names = [n for n in bc.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not names or bc.budget <= 0 or bc.repeats < 1:
        raise UserError(f"budget needs --recipes from {', '.join(RECIPES)} (got {bc.recipes!r}), --budget > 0 "
                        f"minutes and --repeats >= 1")
    if not os.path.isfile(os.path.join(REPO, "data", bc.dataset, "meta.json")):
        if bc.dataset != "pycode":
            raise UserError(f"dataset {bc.dataset} is not prepared: run python prepare.py ... first (see README)")
        subprocess.run([sys.executable, "prepare.py", "pycode"], cwd=REPO, check=True)
    root = os.path.join(REPO, "out", f"bench-budget-{bc.dataset}-{bc.budget:g}m")
    threads = max(1, (os.cpu_count() or 1) // len(names)) if bc.parallel else 0
    how = f", the recipes side by side ({threads} CPU thread(s) each)" if bc.parallel else ""
    print(f"\nloss at equal wall clock: {bc.dataset}, {bc.budget:g} minutes per run, {bc.repeats} run(s) per recipe"
          f"{how} -> {root}", flush=True)
    runs = {n: [] for n in names}
    for r in range(bc.repeats):  # interleaved: a slow spell of a shared machine hits every recipe alike
        started = []
        for name in names:
            out = os.path.join(root, f"{name}-{r}")
            shutil.rmtree(out, ignore_errors=True)
            argv = [sys.executable, "train.py", f"--dataset={bc.dataset}", f"--out_dir={out}", f"--device={bc.device}",
                    f"--time_budget={bc.budget}", "--max_iters=100000000", f"--eval_interval={EVAL_EVERY}",
                    "--log_interval=100", "--final_eval_tokens=0", f"--seed={bc.seed + r}", *RECIPES[name]]
            env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            started.append((name, out, proc))
            if not bc.parallel:
                proc.communicate()
        for name, out, proc in started:
            _, err = proc.communicate()
            if proc.returncode:
                raise UserError(f"recipe {name} failed: {err.strip().splitlines()[-1:]}")
            with open(os.path.join(out, "results.json")) as f:
                runs[name].append(json.load(f))
            res = runs[name][-1]
            print(f"  {name} run {r}: {res['iters']} steps, val loss {res['val_loss']:.4f}", file=sys.stderr, flush=True)
    lines = ["| recipe | params | steps | tokens seen | tokens/s | val loss (min) | val loss (median) | val bits/byte |",
             "|:---|--:|--:|--:|--:|--:|--:|--:|"]
    for name, results in runs.items():
        best = min(results, key=lambda res: res["val_loss"])
        lines.append(f"| {name} | {best['params'] / 1e6:.2f}M | {best['iters']:,} | {best['tokens_seen']:,} | "
                     f"{best['tokens_seen'] / best['wall_time_s']:,.0f} | {best['val_loss']:.4f} | "
                     f"{statistics.median(res['val_loss'] for res in results):.4f} | {best['val_bpb']:.4f} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(root, "table.md"), "w") as f:
        f.write(f"{bc.dataset}, {bc.budget:g} minutes per run, {bc.repeats} run(s) per recipe{how}\n\n{table}\n")
    return runs


def bench_sft(bc):
    """The instruction fine-tuning demo: synthetic tasks (chat.synthetic_tasks), a base run, each recipe
    fine-tuned for sft_steps, and the greedy exact match on held-out instructions every SFT_EVAL_EVERY steps."""
    import chat
    names = [n for n in bc.sft_recipes.split(",") if n]
    if not names or any(n not in SFT_RECIPES for n in names):
        raise UserError(f"sft needs --sft_recipes from {', '.join(SFT_RECIPES)}, got {bc.sft_recipes!r}")
    root = os.path.join(REPO, "out", "bench-sft")
    os.makedirs(root, exist_ok=True)
    chat.write_jsonl(chat.synthetic_tasks(4000, seed=0), os.path.join(root, "tasks.jsonl"))
    held_out = os.path.join(root, "held_out.jsonl")
    chat.write_jsonl(chat.synthetic_tasks(200, seed=1), held_out)
    base = bc.base if os.path.isfile(os.path.join(REPO, bc.base, "ckpt.pt")) else os.path.join(root, "base")

    def run(*argv):
        r = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True)
        if r.returncode:
            raise UserError(f"{argv[0]} failed: {r.stderr.strip().splitlines()[-1:]}")
    if base != bc.base and not os.path.isfile(os.path.join(base, "ckpt.pt")):
        print(f"pretraining {base} for a minute (no {bc.base} to fine-tune)", flush=True)
        run("train.py", "config/quickstart.py", f"--out_dir={base}", "--time_budget=1")
    shutil.rmtree(os.path.join(root, "data"), ignore_errors=True)
    run("prepare.py", "sft", f"--input={os.path.join(root, 'tasks.jsonl')}", f"--like={base}",
        f"--data_dir={os.path.join(root, 'data')}")
    curves = {}
    for name in names:
        out = os.path.join(root, name)
        shutil.rmtree(out, ignore_errors=True)
        t = time.time()
        run("train.py", "config/sft.py", f"--data_dir={os.path.join(root, 'data')}", "--dataset=tasks",
            f"--init_from={base}", f"--out_dir={out}", f"--eval_file={held_out}", f"--max_iters={bc.sft_steps}",
            f"--eval_interval={SFT_EVAL_EVERY}", "--time_budget=0", *SFT_RECIPES[name])
        with open(os.path.join(out, "metrics.jsonl")) as f:
            curves[name] = {e["step"]: e["val_exact"] for e in map(json.loads, f) if e["event"] == "eval"}
        print(f"  {name}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    steps = sorted(set().union(*curves.values()))
    lines = ["| step | " + " | ".join(names) + " |", "|--:|" + "--:|" * len(names)]
    lines += [f"| {s} | " + " | ".join(f"{curves[n].get(s, float('nan')):.1%}" for n in names) + " |" for s in steps]
    table = "\n".join(lines)
    print(f"\ngreedy exact match on 200 held-out synthetic instructions, fine-tuning {base}:\n{table}")
    with open(os.path.join(root, "table.md"), "w") as f:
        f.write(table + "\n")
    return curves


def main(argv):
    what = argv[0] if argv and not argv[0].startswith("--") else "all"
    if what not in WHAT + ("all",):
        raise UserError(f"unknown benchmark '{what}': use {', '.join(WHAT)} or all")
    bc = load_config(BenchConfig(), argv[1:] if argv and argv[0] == what else argv)
    if bc.threads < 0 or bc.steps < 1:
        raise UserError(f"threads must be >= 0 (0: PyTorch's default) and steps >= 1, got {bc.threads} and {bc.steps}")
    if bc.threads:
        torch.set_num_threads(bc.threads)
    if resolve_device(bc.device) == "cpu":
        keep_freed_memory()  # as train.py's setup does: the steps timed here are its steps
    for name in ALL if what == "all" else (what,):
        t = time.time()
        globals()[f"bench_{name}"](bc)
        print(f"({name}: {time.time() - t:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    cli(main)
