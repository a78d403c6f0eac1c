"""
Sample text from a trained run (GPT or LSTM; the checkpoint says which), and benchmark generation speed.

    python sample.py                                   # out/quickstart, the run `make` trains
    python sample.py --temperature=1.5                 # hotter; 0 is greedy
    python sample.py --out_dir=out/enwik8 --start="The " --top_k=50 --top_p=0.9 --num_samples=5
    python sample.py --start=FILE:prompt.txt --max_new_tokens=1000 --seed=7 --stop='\\n\\n'
    python sample.py --prompts=prompts.txt --temperatures=0.5,1.0,1.5   # grid -> out_dir/generations.json
    python sample.py --compile=True --quantize=int8    # compiled one-token step, int8 weights (see README)
    python sample.py --slide=1 --max_new_tokens=2000   # past block_size, every token sees a full window (slower)
    python sample.py --bench=True                      # decode tokens/s vs the bandwidth limit (random weights)
    python sample.py --init_from=gpt2 --start="Hello"  # OpenAI's GPT-2 (gpt2-medium, -large, -xl; hf:DIR offline)

The tokenizer comes from the checkpoint (prepare.py's meta.json is stored in it). Temperature
divides the logits; top_k keeps the k likeliest tokens and top_p the smallest set whose probability
reaches p (0 and 1.0 turn them off). All num_samples are generated as one batch; each stops at the
stop string (backslash escapes understood; the string is trimmed off) or at the tokenizer's
end-of-text token, and generation ends when every sample has stopped. A single sample is printed
token by token as it is generated (each new token decoded once). Prefill and decode speeds are
reported after generating. The weights are cast once to the generation dtype (see
engine.generation_dtype); compile=None compiles the one-token step only when the generation is long
enough to pay for it. Past block_size the window drops its oldest `slide` tokens when full (default
half; see engine.window_slide). With --init_from (GPT-2's weights, see hf.py) there is no checkpoint:
the tokenizer is gpt2. Generation itself is engine.py's (a Session).
"""
import contextlib
import json
import os
import time
from dataclasses import dataclass

import torch

from configurator import UserError, cli, load_config
from engine import (GenerationConfig, Session, compile_step, for_generation, generation_dtype, parse_temperatures,
                    stream, window_slide)
from model import GPT, GPTConfig
from train import autocast, resolve_device, resolve_dtype, sync  # -> common/checkpoint

TABLE_WIDTH = 60  # characters of each generation shown in the grid's table


@dataclass
class SampleConfig(GenerationConfig):
    """engine.GenerationConfig's keys (the run, the batch, top_k/top_p, stop, cache, slide, compile,
    quantize, device, dtype), and these."""
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    temperature: float = 0.8
    prompts: str = ""  # a file with one prompt per line: generate for each (with --temperatures: the grid)
    temperatures: tuple = ()  # e.g. --temperatures=0.5,1.0,1.5: generate at each (the grid)
    output: str = ""  # where the grid's JSON goes; "" = out_dir/generations.json
    stream: bool = True  # print a single sample token by token as it is generated
    bench: bool = False  # run benchmark() instead of sampling

    def validate(self):
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        super().validate()
        self.temperatures = parse_temperatures(self.temperatures)
        self.stop = unescape(self.stop)  # typed on a command line: --stop='\n' is a newline


def unescape(text):
    r"""'\n' written on a command line (backslash, n) becomes a newline; other characters are kept."""
    if "\\" not in text:
        return text
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise UserError(f"bad backslash escape in {text!r}: {e.reason}") from None


def parse_args(argv):
    """load_config, letting --temperatures be one number or a comma list of anything (validate() checks)."""
    fixed = []
    for arg in argv:
        if arg.startswith("--temperatures="):
            raw = arg.partition("=")[2]
            arg = "--temperatures=" + repr(tuple(p.strip() for p in raw.strip("()[]").split(",") if p.strip()))
        fixed.append(arg)
    return load_config(SampleConfig(), fixed)


def read_prompt(start):
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the prompt file {path}: {e}") from None


def read_prompts(path):
    """The non-empty lines of a prompts file, newline removed."""
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the prompts file {path}: {getattr(e, 'strerror', None) or e}") from None
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise UserError(f"the prompts file {path} has no prompts: write one prompt per line")
    return prompts


def speed_line(r):
    """'prefill 12 tokens x 3 ... | decode ...' for one generation's result dict."""
    B = len(r["samples"])
    pre = f"prefill {r['prompt_tokens']} tokens x {B}: {r['prefill_tok_s']:,.0f} tok/s" if r["steps"] else "prefill -"
    dec = f"decode {r['steps'] - 1} steps x {B}: {r['decode_tok_s']:,.0f} tok/s" if r["decode_tok_s"] else "decode -"
    if r["compile_s"] is not None:
        dec += f" (compiled; its first step, compile included, took {r['compile_s']:.1f} s)"
    return f"{pre} | {dec}"


def sample(cfg, echo=None):
    """cfg.num_samples continuations of the prompt, as strings (prompt included)."""
    session = Session(cfg)
    prompt = read_prompt(cfg.start)
    r = session.generate(prompt, cfg.temperature, echo)
    return [prompt + s for s in r["samples"]]


def grid(cfg):
    """Generate for every prompt x temperature; write them with their settings as JSON; return that dict."""
    prompts = read_prompts(cfg.prompts) if cfg.prompts else [read_prompt(cfg.start)]
    temps = cfg.temperatures or (cfg.temperature,)
    session = Session(cfg)
    output = cfg.output or os.path.join(cfg.out_dir, "generations.json")
    results = [session.generate(p, t) for p in prompts for t in temps]  # each starts from cfg.seed
    doc = {"checkpoint": session.path, "model": session.ckpt["model_kind"], "model_args": session.ckpt["model_args"],
           "tokenizer": session.tok.kind, "device": session.device, "dtype": session.dtype,
           "settings": {k: getattr(cfg, k) for k in ("num_samples", "max_new_tokens", "top_k", "top_p", "seed",
                                                     "stop", "eot", "cache")},
           "prompts": prompts, "temperatures": list(temps), "generations": results}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, ensure_ascii=False)
    except OSError as e:
        raise UserError(f"cannot write {output}: {e.strerror}; pick another --output") from None
    return doc, output


def show(text, width=TABLE_WIDTH):
    """One table cell: newlines and pipes visible, cut to width."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= width else text[:width - 3] + "..."


def main(argv):
    cfg = parse_args(argv)
    if cfg.bench:
        benchmark(device=None if cfg.device == "auto" else cfg.device)
        return
    if cfg.prompts or cfg.temperatures:
        doc, output = grid(cfg)
        which = f" (first of {cfg.num_samples} samples)" if cfg.num_samples > 1 else ""
        print(f"| Temperature | Prompt | Truncated generation{which} |\n| :--- | :--- | :--- |")
        for r in doc["generations"]:
            print(f"| {r['temperature']} | `{show(r['prompt'], 30)}` | `{show(r['samples'][0])}` |")
        print(f"\n{len(doc['generations'])} generations written to {output}")
        return
    session = Session(cfg)
    prompt = read_prompt(cfg.start)
    if cfg.num_samples == 1 and cfg.stream:
        print(prompt, end="", flush=True)
        r = session.generate(prompt, cfg.temperature, echo=lambda s: print(s, end="", flush=True))
        print()
    else:
        r = session.generate(prompt, cfg.temperature)
        for text in r["samples"]:
            print(prompt + text)
            print("-" * 40)
    print(f"[{speed_line(r)}]")


# ----------------------------------------------------------------------------- benchmark

def bench_shapes():
    """Random weights (speed does not depend on them): the quickstart's model (train.py's defaults at
    config/quickstart.py's size) and GPT-2 124M."""
    from train import TrainConfig, model_args
    quick = {**model_args(TrainConfig(), 222), **dict(block_size=128, n_layer=4, n_head=4, n_embd=128)}
    return {"quickstart": quick, "gpt2-124M": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)}


BENCH_MODES = {  # name: (weights, quantize, compiled, slide)
    "old": ("autocast", "", False, 1),  # fp32 weights under autocast, eager, exact slides: sample.py before #14
    "eager": ("cast", "", False, 0),  # weights cast once to dtype; sample.py's slide (half the context)
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


def _bench_model(name, mode, device):
    """The random-weight model of shape `name`, prepared for generation as `mode` does; and its dtype."""
    weights, quantize, compiled, _ = BENCH_MODES[mode]
    torch.manual_seed(0)
    torch._dynamo.reset()  # a fresh compile per model, within the recompile limit
    model = GPT(GPTConfig(**bench_shapes()[name])).to(device).eval()
    dtype = resolve_dtype("auto", device)
    if weights == "cast":
        dtype = generation_dtype(dtype, device, model)
        model = for_generation(model, device, dtype, quantize)
    if compiled:
        compile_step(model, device)
    return model, dtype


def _bench_row(model, mode, dtype, B, N, device, bandwidth):
    """Time one whole generation of N tokens at batch B (compiling first, timed apart); its table row."""
    weights, _, compiled, slide = BENCH_MODES[mode]
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
def benchmark(device=None, shapes=("quickstart", "gpt2-124M"), batches=(1, 8), lengths=(256, 1024),
              modes=tuple(BENCH_MODES)):
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
            model, dtype = _bench_model(name, mode, device)
            for N in lengths:
                if mode == "exact" and N + 1 <= model.context_limit:
                    continue  # no slide: the same as compiled
                for B in batches:
                    r = {"shape": name, **_bench_row(model, mode, dtype, B, N, device, bandwidth)}
                    rows.append(r)
                    window = f" (slides by {r['slide']})" if r["slide"] else ""
                    compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
                    print(f"| {name} | {mode} | {dtype} | {B} | {N}{window} | {r['seconds']:.2f} | {r['tok_s']:,.1f} | "
                          f"{r['bytes_per_step'] / 1e6:,.1f} | {r['limit_tok_s']:,.0f} | {r['of_limit']:.0%} | "
                          f"{compile_s} |", flush=True)
    return rows


if __name__ == "__main__":
    cli(main)
