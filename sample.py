"""
Sample text from a trained run (GPT or LSTM; the checkpoint says which), and benchmark generation speed.

    python sample.py                                   # out/quickstart, the run `make` trains
    python sample.py --temperature=1.5                 # hotter; 0 is greedy
    python sample.py --out_dir=out/enwik8 --start="The " --top_k=50 --top_p=0.9 --num_samples=5
    python sample.py --start=FILE:prompt.txt --max_new_tokens=1000 --seed=7 --stop='\\n\\n'
    python sample.py --prompts=prompts.txt --temperatures=0.5,1.0,1.5   # grid -> out_dir/generations.json
    python sample.py --bench=True                      # decode tokens/s, cached vs uncached (random weights)
    python sample.py --init_from=gpt2 --start="Hello"  # OpenAI's GPT-2 (gpt2-medium, -large, -xl; hf:DIR offline)

The tokenizer comes from the checkpoint (prepare.py's meta.json is stored in it). Temperature
divides the logits; top_k keeps the k likeliest tokens and top_p the smallest set whose probability
reaches p (0 and 1.0 turn them off). All num_samples are generated as one batch; each stops at the
stop string (backslash escapes understood; the string is trimmed off) or at the tokenizer's
end-of-text token, and generation ends when every sample has stopped. A single sample is printed
token by token as it is generated. Prefill and decode speeds are reported after generating.
With --init_from (GPT-2's weights, see hf.py) there is no checkpoint: the tokenizer is gpt2.
"""
import json
import os
import time
from dataclasses import dataclass

import torch

import hf
import prepare
from configurator import UserError, cli, load_config
from model import GPT, GPTConfig, KVCache, pick, stream
from train import CKPT_BEST, autocast, load_checkpoint, model_from_checkpoint, resolve_device, resolve_dtype

TABLE_WIDTH = 60  # characters of each generation shown in the grid's table


@dataclass
class SampleConfig:
    out_dir: str = "out/quickstart"
    ckpt: str = CKPT_BEST
    init_from: str = ""  # gpt2 | gpt2-medium | gpt2-large | gpt2-xl | hf:DIR: GPT-2's weights instead of a run
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    num_samples: int = 3
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int = 1337
    stop: str = ""  # stop a sample at this string (trimmed off); "" = none; \n etc. are understood
    eot: bool = True  # stop a sample at the tokenizer's end-of-text token, if it has one
    prompts: str = ""  # a file with one prompt per line: generate for each (with --temperatures: the grid)
    temperatures: tuple = ()  # e.g. --temperatures=0.5,1.0,1.5: generate at each (the grid)
    output: str = ""  # where the grid's JSON goes; "" = out_dir/generations.json
    stream: bool = True  # print a single sample token by token as it is generated
    cache: bool = True  # KV cache / carried state; False recomputes the whole context every step
    bench: bool = False  # run benchmark() instead of sampling
    device: str = "auto"
    dtype: str = "auto"

    def validate(self):
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.num_samples < 1 or self.max_new_tokens < 0:
            raise UserError("top_k and max_new_tokens must be >= 0 and num_samples >= 1")
        temps = []
        for t in self.temperatures:
            try:
                temps.append(float(t))
            except (TypeError, ValueError):
                raise UserError(f"temperatures must be numbers separated by commas (like 0.5,1.0,1.5), "
                                f"got {t!r}") from None
        if any(t < 0 for t in temps):
            raise UserError(f"temperatures must be >= 0 (0 is greedy), got {','.join(map(str, temps))}")
        self.temperatures = tuple(temps)
        self.stop = unescape(self.stop)


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


# ----------------------------------------------------------------------------- generation

class Session:
    """A loaded checkpoint with its tokenizer, on its device, ready to generate."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        if cfg.init_from:
            if not cfg.init_from.startswith(("gpt2", "hf:")):
                raise UserError(f"init_from={cfg.init_from}: give gpt2, gpt2-medium, gpt2-large, gpt2-xl or hf:DIR "
                                f"(a run of yours is --out_dir=...)")
            self.path, self.ckpt = cfg.init_from, hf.load_pretrained(cfg.init_from)
            hf.require_gpt2_tokens(self.ckpt)
        else:
            self.path = os.path.join(cfg.out_dir, cfg.ckpt)
            self.ckpt = load_checkpoint(self.path)
        self.tok = prepare.Tokenizer.from_meta(self.ckpt["meta"])
        self.model = model_from_checkpoint(self.ckpt).to(self.device).eval()

    def generate(self, prompt, temperature, echo=None):
        """num_samples completions of prompt (text without the prompt) and the speeds, as a dict.
        echo(text) receives the first sample's text as it grows, piece by piece."""
        cfg, tok = self.cfg, self.tok
        ids = tok.encode(prompt)
        if not ids:
            raise UserError("the prompt is empty after tokenization; give --start some text")
        B = cfg.num_samples
        idx = torch.tensor([ids] * B, dtype=torch.long, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        eot = tok.eot_token if cfg.eot else None
        new = [[] for _ in range(B)]  # each sample's tokens, up to its stop
        texts = [None] * B  # set when a sample stops at the stop string: its text, trimmed
        done = [False] * B
        shown = 0  # characters of sample 0 already echoed
        steps, t0 = 0, time.perf_counter()
        t_first = t0
        with autocast(self.device, self.dtype):
            for nxt in stream(self.model, idx, cfg.max_new_tokens, temperature, cfg.top_k or None, cfg.top_p,
                              gen, cfg.cache):
                toks = nxt[:, 0].tolist()  # waits for the device: the timings below are real
                steps += 1
                if steps == 1:
                    t_first = time.perf_counter()
                for b, t in enumerate(toks):
                    if done[b]:
                        continue
                    if t == eot:
                        done[b] = True
                        continue
                    new[b].append(t)
                    if cfg.stop:
                        text = tok.decode(new[b])
                        cut = text.find(cfg.stop)
                        if cut >= 0:
                            texts[b], done[b] = text[:cut], True
                if echo is not None:
                    shown = self._echo(echo, new[0], texts[0], done[0], shown)
                if all(done):
                    break
        t_end = time.perf_counter()
        out = [texts[b] if texts[b] is not None else tok.decode(new[b]) for b in range(B)]
        if echo is not None and len(out[0]) > shown:
            echo(out[0][shown:])
        prefill_s, decode_s = t_first - t0, t_end - t_first
        return {"prompt": prompt, "temperature": temperature, "samples": out,
                "new_tokens": [len(n) for n in new], "stopped": done,
                "prompt_tokens": len(ids), "steps": steps,
                "prefill_tok_s": B * len(ids) / prefill_s if steps else None,
                "decode_tok_s": B * (steps - 1) / decode_s if steps > 1 and decode_s > 0 else None}

    def _echo(self, echo, ids, trimmed, done, shown):
        """Echo the part of sample 0 that can no longer change; returns how much is shown now."""
        if done:
            return shown  # the final text is echoed once generation ends
        text = self.tok.decode(ids)
        end = len(text.rstrip("\ufffd"))  # a multi-byte character may be incomplete
        if self.cfg.stop:
            end = min(end, len(text) - len(self.cfg.stop) + 1)  # could be the start of the stop string
        if end > shown:
            echo(text[shown:end])
            return end
        return shown


def speed_line(r):
    """'prefill 12 tokens x 3 ... | decode ...' for one generation's result dict."""
    B = len(r["samples"])
    pre = f"prefill {r['prompt_tokens']} tokens x {B}: {r['prefill_tok_s']:,.0f} tok/s" if r["steps"] else "prefill -"
    dec = f"decode {r['steps'] - 1} steps x {B}: {r['decode_tok_s']:,.0f} tok/s" if r["decode_tok_s"] else "decode -"
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

BENCH_SHAPES = {  # random weights: speed does not depend on them
    "quickstart": dict(vocab_size=222, block_size=128, n_layer=4, n_head=4, n_embd=128),
    "gpt2-124M": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
}
CPU_TAIL_STEPS = {True: 8, False: 1}  # on a CPU the 124M shape is timed over its last steps only (cached, uncached)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def _time_full(model, B, N, cached, device, seed):
    """Seconds for the N - 1 decode steps of an N-token generation from a 1-token prompt (through stream)."""
    idx = torch.randint(model.cfg.vocab_size, (B, 1), device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    t_first = None
    for i, _ in enumerate(stream(model, idx, N, 1.0, None, None, gen, cached)):
        if i == 0:
            _sync(device)
            t_first = time.perf_counter()
    _sync(device)
    return time.perf_counter() - t_first, N - 1


@torch.no_grad()
def _time_tail(model, B, m, cached, device, prefix, prefilled):
    """Seconds for the last m decode steps of an N-token generation (positions N - m .. N - 1), with the
    same model calls stream() makes; the context before them is `prefix` (1, N - m), whose KV cache
    `prefilled` (batch 1) is repeated for the batch. Needs N <= block_size (no sliding)."""
    idx = prefix.expand(B, -1)
    if cached:
        cache = KVCache(len(prefilled.k), prefilled.capacity)
        cache.pos = prefilled.pos
        cache.k = [k.repeat(B, 1, 1, 1) for k in prefilled.k]
        cache.v = [v.repeat(B, 1, 1, 1) for v in prefilled.v]
    _sync(device)
    t = time.perf_counter()
    nxt = idx[:, -1:]
    for _ in range(m):
        if cached:
            logits, cache = model.step(nxt, cache)
        else:
            logits, _ = model(idx)
        nxt = pick(logits[:, -1], 1.0)
        idx = torch.cat([idx, nxt], dim=1)
    _sync(device)
    return time.perf_counter() - t, m


@torch.no_grad()
def benchmark(device=None, shapes=("quickstart", "gpt2-124M"), batches=(1, 8), lengths=(256, 1024)):
    """Decode tokens/s, cached vs uncached, for each shape x batch x new tokens; prints a table and
    returns one dict per row. On a GPU every row times all N - 1 decode steps of an N-token generation
    (bfloat16 autocast). On a CPU the quickstart shape does too, but the 124M shape is timed over the
    last 8 (cached) / 1 (uncached) steps before position N, and uncached batch 8 is skipped (one step is
    a forward over 8 x N tokens: minutes). "timed" says which steps each row measured; tail rows are
    the slowest steps of their generation, so they understate the whole generation's rate."""
    device = resolve_device(device or "auto")
    dtype = resolve_dtype("auto", device)
    rows = []
    print(f"generation benchmark on {device} ({dtype}), {torch.get_num_threads()} CPU threads, random weights")
    print("| shape | batch | new tokens | mode | timed steps | decode tok/s | ms/step | cached speedup |")
    print("| :--- | ---: | ---: | :--- | :--- | ---: | ---: | ---: |")
    for name in shapes:
        torch.manual_seed(0)
        model = GPT(GPTConfig(**BENCH_SHAPES[name])).to(device).eval()
        tail = device == "cpu" and name == "gpt2-124M"
        with autocast(device, dtype):
            _time_full(model, 1, 8, True, device, 0)  # warm up kernels and allocator
            for N in lengths:
                if tail:  # one prefill (batch 1) for every batch size and mode
                    prefix = torch.randint(model.cfg.vocab_size, (1, N - CPU_TAIL_STEPS[True]), device=device)
                    _, prefilled = model.step(prefix)
                for B in batches:
                    rate = {}
                    for cached in (True, False):
                        mode = "cached" if cached else "uncached"
                        if tail and not cached and B > 1:
                            row = dict(shape=name, batch=B, new_tokens=N, mode=mode, timed="skipped on CPU")
                            rows.append(row)
                            print(f"| {name} | {B} | {N} | {mode} | skipped on CPU (a forward over 8 x N tokens per step) | - | - | - |")
                            continue
                        if tail:
                            m = CPU_TAIL_STEPS[cached]
                            m0 = CPU_TAIL_STEPS[True]  # the uncached tail starts m0 - m tokens later
                            seconds, steps = _time_tail(model, B, m, cached, device,
                                                        torch.cat([prefix, prefix[:, :m0 - m]], 1), prefilled)
                            timed = f"last {m} (pos {N - m}..{N - 1})"
                        else:
                            seconds, steps = _time_full(model, B, N, cached, device, 0)
                            timed = f"all {steps}" + (" (slides)" if N > model.context_limit else "")
                        rate[mode] = B * steps / seconds
                        row = dict(shape=name, params=model.num_params(), device=device, dtype=dtype, batch=B,
                                   new_tokens=N, mode=mode, timed=timed, steps=steps, seconds=seconds,
                                   tok_s=rate[mode], ms_per_step=1000 * seconds / steps)
                        speedup = ""
                        if not cached:
                            row["cached_speedup"] = rate["cached"] / rate[mode]
                            speedup = f"{row['cached_speedup']:.1f}x"
                        rows.append(row)
                        print(f"| {name} | {B} | {N} | {mode} | {timed} | {row['tok_s']:,.1f} | "
                              f"{row['ms_per_step']:.1f} | {speedup} |", flush=True)
    return rows


if __name__ == "__main__":
    cli(main)
