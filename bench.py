"""
Throughput on this machine: training, tokenizers and generation.

    python bench.py                    # all of them (what `make bench` runs)
    python bench.py train              # training tokens/s, ms/step and MFU per precision / compile setting
    python bench.py tokenize           # prepare.benchmark(): tokenizer MB/s, streaming peak memory
    python bench.py generate           # sample.benchmark(), where sample.py has one
    python bench.py train --steps=5 --compile=False    # more timed steps; skip the compiled settings
    python bench.py budget             # loss at equal wall clock: recipes trained on the same data and minutes
    python bench.py budget --dataset=wt2char --budget=10 --repeats=2    # (not part of `all`: it takes minutes)

The training benchmark times full optimizer steps (forward, backward, clipping, fused AdamW) of two
shapes with random tokens: the quickstart GPT (config/quickstart.py) and GPT-2 small (124M; on a CPU with
a short 256-token sequence and batch 1). Every setting (fp32 eager, bf16 autocast, torch.compile, and the
default train.py picks) shares one model and is measured interleaved, round by round, so a busy machine
slows them alike; the best round counts. MFU is model FLOPs (6 per parameter per token plus attention)
per second over the peak matmul throughput of the same dtype, measured here with a large matmul.

The budget benchmark runs `python train.py` once per recipe (and repeat, interleaved) on one prepared
dataset with one wall-clock budget, evaluating every EVAL_EVERY steps (the best checkpoint counts: long
runs on a small corpus overfit), and tabulates steps,
tokens seen, tokens/s and the best checkpoint's loss on the whole val split (train.py's final
evaluation: the same evaluator for every recipe). The recipes are RECIPES below: nanoGPT's CPU recipe,
our GPT-2-style baseline with its batch, context and LR tuned for short CPU budgets, and the defaults.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, fields

import torch

from common import resolve_compile, resolve_device, resolve_dtype, sync
from configurator import UserError, cli, load_config, read_override_file
from model import GPT, GPT2_ARCH, RECIPE_ARCH, GPTConfig, config_fields
from optim import OptimConfig, make_optimizers, train_step

WHAT = ("train", "tokenize", "generate", "budget")
ALL = ("train", "tokenize", "generate")  # what `python bench.py` runs; budget takes minutes per recipe
REPO = os.path.dirname(os.path.abspath(__file__))

EVAL_EVERY = 500  # budget: steps between evaluations, which every recipe pays for out of its budget
# GPT-2's architecture, AdamW and a cosine schedule: train.py's recipe before the modern defaults
GPT2_RECIPE = [f"--{k}={v}" for k, v in GPT2_ARCH.items()] + ["--optimizer=adamw", "--schedule=cosine", "--beta2=0.99",
                                                               "--weight_decay=0.1", "--grad_clip=1.0"]
# train.py flags on top of TrainConfig's defaults; every recipe trains the same 4 x 128 model
RECIPES = {
    # nanoGPT's README CPU recipe (shakespeare_char on a laptop): batch 12 x 64, lr 1e-3 -> 1e-4, 100 warmup steps
    "nanogpt": GPT2_RECIPE + ["--batch_size=12", "--block_size=64", "--lr=1e-3", "--min_lr=1e-4",
                              "--warmup_iters=100"],
    # the same architecture and optimizer with the batch, context and LR that did best at 1.5-10 CPU minutes
    "gpt2-tuned": GPT2_RECIPE + ["--batch_size=16", "--block_size=64", "--lr=2e-3", "--min_lr=2e-4",
                                 "--warmup_iters=50"],
    "default": [],  # TrainConfig as it is
}


@dataclass
class BenchConfig:
    device: str = "auto"
    steps: int = 3  # timed rounds; each setting takes one step per round
    compile: bool = True  # include the torch.compile settings (compiling takes ~1 min per model on a CPU)
    big: bool = True  # include the GPT-2 small shape
    dataset: str = "pycode"  # budget: the prepared dataset every recipe trains on
    budget: float = 2.5  # budget: minutes of training per run
    repeats: int = 1  # budget: runs per recipe (interleaved rounds; min and median reported)
    recipes: str = "nanogpt,gpt2-tuned,default"  # budget: comma-separated names from RECIPES
    parallel: bool = False  # budget: a round's recipes train at the same time, the CPU threads split between them
    threads: int = 0  # CPU intra-op threads; 0 = PyTorch's default (one per core)
    seed: int = 0


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


def shapes(device):
    """(name, GPTConfig, OptimConfig, batch, T) of the benchmarked models, with train.py's default recipe:
    the quickstart (config/quickstart.py) and GPT-2 small, cut down to batch 1 x 256 on a CPU."""
    quick = read_override_file(os.path.join(REPO, "config", "quickstart.py"))
    arch = {k: v for k, v in quick.items() if k in config_fields("gpt")}
    optim = OptimConfig(**{k: v for k, v in quick.items() if k in {f.name for f in fields(OptimConfig)}})
    cuda = device.startswith("cuda")
    return [("quickstart", GPTConfig(**{**RECIPE_ARCH, **arch, "vocab_size": 256}), optim, quick["batch_size"],
             arch["block_size"]),
            ("gpt2-124M", GPTConfig(**RECIPE_ARCH, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024),
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
        scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == "float16")
        optimizer = fused if engine else plain

        def step(model=model, dtype=dtype, scaler=scaler, optimizer=optimizer):  # train.py's step
            train_step(model, lambda: (x, y), 1, optimizer, scaler, ocfg, device, dtype, raw=raw)
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
    if bc.threads:
        torch.set_num_threads(bc.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as train.py does
    auto_dtype, auto_compile = resolve_dtype("auto", device), resolve_compile(None, device)
    low = "bfloat16" if not cuda or torch.cuda.is_bf16_supported() else "float16"
    peaks = {d: peak_flops(device, d) for d in ("float32", low)}
    threads = f"{torch.get_num_threads()} threads" if not cuda else torch.cuda.get_device_name()
    print(f"\ntraining throughput on {device} ({threads}); measured peak matmul: "
          + ", ".join(f"{d} {p / 1e12:.2f} TFLOP/s" for d, p in peaks.items()))
    print(f"train.py's default here: dtype={auto_dtype}, compile={auto_compile}")
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    # (label, dtype, compile, train.py's fused optimizer); the first is the plain baseline
    settings = [("fp32 eager, plain AdamW", "float32", False, False), ("fp32 eager", "float32", False, True),
                (f"{short[low]} eager", low, False, True)]
    if bc.compile:
        settings += [("fp32 compile", "float32", True, True), (f"{short[low]} compile", low, True, True)]
    settings = [(f"{label}{' = default' if (d, c, f) == (auto_dtype, auto_compile, True) else ''}", d, c, f)
                for label, d, c, f in settings]
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


def bench_tokenize(bc):
    import prepare
    print("\ntokenizers (prepare.benchmark):")
    results = prepare.benchmark()
    for key, value in results.items():
        print(f"  {key:28s} {value}")
    return results


def bench_generate(bc):
    import sample
    print("\ngeneration (sample.benchmark):")
    shapes = ("quickstart", "gpt2-124M") if bc.big else ("quickstart",)
    modes = tuple(sample.BENCH_MODES) if bc.compile else ("old", "eager")
    return sample.benchmark(None if bc.device == "auto" else bc.device, shapes=shapes, modes=modes)  # prints a table


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
                    "--log_interval=100", "--final_eval_tokens=0", *RECIPES[name]]
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
    lines = ["| recipe | steps | tokens seen | tokens/s | val loss (min) | val loss (median) | val bits/byte |",
             "|:---|--:|--:|--:|--:|--:|--:|"]
    for name, results in runs.items():
        best = min(results, key=lambda res: res["val_loss"])
        lines.append(f"| {name} | {best['iters']:,} | {best['tokens_seen']:,} | "
                     f"{best['tokens_seen'] / best['wall_time_s']:,.0f} | {best['val_loss']:.4f} | "
                     f"{statistics.median(res['val_loss'] for res in results):.4f} | {best['val_bpb']:.4f} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(root, "table.md"), "w") as f:
        f.write(f"{bc.dataset}, {bc.budget:g} minutes per run, {bc.repeats} run(s) per recipe{how}\n\n{table}\n")
    return runs


def main(argv):
    what = argv[0] if argv and not argv[0].startswith("--") else "all"
    if what not in WHAT + ("all",):
        raise UserError(f"unknown benchmark '{what}': use {', '.join(WHAT)} or all")
    bc = load_config(BenchConfig(), argv[1:] if argv and argv[0] == what else argv)
    for name in ALL if what == "all" else (what,):
        t = time.time()
        globals()[f"bench_{name}"](bc)
        print(f"({name}: {time.time() - t:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    cli(main)
