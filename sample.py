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
reported after generating. The weights are cast once to the generation dtype (see generation_dtype);
compile=None compiles the one-token step only when the generation is long enough to pay for it. Past
block_size the window drops its oldest `slide` tokens when full (default half; see window_slide).
With --init_from (GPT-2's weights, see hf.py) there is no checkpoint: the tokenizer is gpt2.
"""
import contextlib
import json
import os
import time
from dataclasses import dataclass

import torch

import hf
from checkpoint import CKPT_BEST, load_checkpoint, model_from_checkpoint
from common import autocast, resolve_device, resolve_dtype, sync
from configurator import UserError, cli, load_config
from model import GPT, GPTConfig, quantize_int8, stream
from tokenizer import Tokenizer

TABLE_WIDTH = 60  # characters of each generation shown in the grid's table
QUANTIZE = ("", "int8")
CPU_FP32_BYTES = 32 * 2**20  # see generation_dtype: about a server CPU's last-level cache
COMPILE_AFTER = 8  # compile=None (auto) times this many eager decode steps, then decides
COMPILE_PAYS_S = 60.0  # auto compiles when the rest of the decode would take longer than this eagerly:
# compiling the step costs 12-22 s (quickstart) and 24-44 s (124M) on a 2-core CPU (freezing prepacks the
# weights, which keeps Inductor's disk cache out, so every run pays it), and the compiled step decodes
# 5.7x (quickstart) and 2.7x (124M) faster, so it pays off from ~25 s and ~65 s of eager decoding


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
    slide: int = 0  # past block_size, the window drops this many oldest tokens when full (then one prefill);
    # 1 = exact (a full block_size of context for every token, a prefill per token); 0 = block_size // 2
    compile: bool | None = None  # torch.compile the one-token step; None = auto (when it pays off, see COMPILE_PAYS_S)
    quantize: str = ""  # int8: weight-only int8 (GPT; CPU or CUDA); "" = the weights in dtype
    bench: bool = False  # run benchmark() instead of sampling
    device: str = "auto"
    dtype: str = "auto"

    def validate(self):
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.num_samples < 1 or self.max_new_tokens < 0 or self.slide < 0:
            raise UserError("top_k, max_new_tokens and slide must be >= 0 and num_samples >= 1")
        temps = []
        for t in self.temperatures:
            try:
                temps.append(float(t))
            except (TypeError, ValueError):
                raise UserError(f"temperatures must be numbers separated by commas (like 0.5,1.0,1.5), "
                                f"got {t!r}") from None
        if self.quantize not in QUANTIZE:
            raise UserError(f"quantize must be int8 or empty (off), not '{self.quantize}'")
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

def generation_dtype(dtype, device, model):
    """What dtype=auto (resolved by train.py to `dtype`) generates in: that, except on a CPU a model
    whose fp32 weights fit in the last-level cache stays float32. Measured on the quickstart model
    (0.84M parameters), fp32 decodes 1.2-1.7x faster than bf16 (bf16 matrix-vector kernels cost more
    per call); at 124M parameters bf16 is ~2x faster (half the bytes to stream)."""
    if device == "cpu" and model.num_params() * 4 <= CPU_FP32_BYTES:
        return "float32"
    return dtype


def window_slide(slide, model):
    """How many tokens the window drops when it is full (stream's `slide`): slide=0 (auto) is half the
    context. With slide=1 every token past block_size costs a prefill of block_size tokens (4.4 ms at the
    quickstart's 128 on a 2-core CPU, against a 0.13 ms compiled step); with half, one prefill of
    block_size / 2 + 1 tokens per block_size / 2 tokens. What the shorter contexts cost, measured on the
    quickstart checkpoint (pycode val, 18k windows): mean loss 1.3241 over contexts of 65-128 characters
    against 1.3227 at 128, +0.0014 nats."""
    limit = model.context_limit
    if limit is None:
        return 1  # an LSTM carries its state: no window
    if slide > limit:
        raise UserError(f"slide={slide} is more than the model's context of {limit} tokens; give 1 (exact) to {limit}, "
                        f"or 0 for half")
    return slide or max(1, limit // 2)


def for_generation(model, device, dtype, quantize=""):
    """The model ready to generate: its weights cast once to dtype (rather than autocast, which with
    frozen weights casts every weight again at every step), int8 weights with quantize="int8"."""
    dt = getattr(torch, dtype)
    for p in model.parameters():
        p.requires_grad_(False)
        p.data = p.data.to(dt)
    if quantize == "int8":
        if not isinstance(model, GPT):
            raise UserError("quantize=int8 is for GPT checkpoints (an LSTM's weights live inside nn.LSTM); "
                            "leave --quantize off")
        if device.split(":")[0] not in ("cpu", "cuda"):
            raise UserError(f"quantize=int8 runs on a CPU or a CUDA GPU, not on {device}; use --device=cpu")
        quantize_int8(model, dt)
    return model


def compile_step(model, device):
    """torch.compile the model's one-token step: CUDA graphs on a GPU (mode="reduce-overhead"'s setting);
    on a CPU, Inductor with freezing (weights become constants, prepacked), max-autotune (its own GEMM
    templates, which measured ~1.3x faster than oneDNN's bf16 matrix-vector products and ~2.5x for int8
    weights) and the C++ wrapper (the quickstart step: 0.16 -> 0.125 ms)."""
    if device.startswith("cuda"):
        model.compile_step(options={"triton.cudagraphs": True})
    else:
        model.compile_step(inductor={"freezing": True, "max_autotune": True, "cpp_wrapper": True,
                                     "autotune_num_choices_displayed": 0,  # (autotuning quietly)
                                     "max_autotune_report_choices_stats": False})


class Text:
    """One sample's text as its tokens arrive. Tokenizers whose text is the concatenation of their
    tokens' (char, byte, gpt2) decode only the new token, holding back the bytes of an incomplete UTF-8
    character; the others (word, hf) decode the whole sample again."""

    def __init__(self, tok):
        self.tok, self.ids, self.text = tok, [], ""
        self.piece = tok.incremental_decoder()
        self._searched = 0  # where a stop-string search starts: only text that is new can complete a match

    def add(self, token):
        self.ids.append(token)
        self.text = self.text + self.piece(token) if self.piece else self.tok.decode(self.ids)

    def find(self, stop):
        at = self.text.find(stop, self._searched if self.piece else 0)
        self._searched = max(0, len(self.text) - len(stop) + 1)
        return at

    def shown(self):
        """The text that can be shown: without the replacement characters an incomplete character decodes to."""
        return self.text if self.piece else self.text.rstrip("\ufffd")


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
        self.tok = Tokenizer.from_meta(self.ckpt["meta"])
        model = model_from_checkpoint(self.ckpt).to(self.device).eval()
        if cfg.dtype == "auto":
            self.dtype = generation_dtype(self.dtype, self.device, model)
        self.model = for_generation(model, self.device, self.dtype, cfg.quantize)
        self.slide = window_slide(cfg.slide, self.model)
        self.can_compile = isinstance(self.model, GPT) and cfg.cache
        if cfg.compile and not self.can_compile:
            raise UserError("compile=True compiles a GPT's cached one-token step: not an LSTM's, nor with cache=False")
        if cfg.compile:
            compile_step(self.model, self.device)

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
        texts = [Text(tok) for _ in range(B)]  # each sample's tokens and text, up to its stop
        cuts = [None] * B  # where a sample's text is cut at the stop string
        done = [False] * B
        shown = 0  # characters of sample 0 already echoed
        steps, t0 = 0, time.perf_counter()
        t_first = t_last = t0
        compile_s, first_compiled = None, None  # the token whose step ran compiled first (compiling, if needed)
        for nxt in stream(self.model, idx, cfg.max_new_tokens, temperature, cfg.top_k or None, cfg.top_p,
                          gen, cfg.cache, self.slide):
            toks = nxt[:, 0].tolist()  # waits for the device: the timings below are real
            steps += 1
            now = time.perf_counter()
            if steps == 1:
                t_first = now
            if steps == first_compiled:
                compile_s = now - t_last  # timed apart from the decode rate
            if steps == 1 + COMPILE_AFTER and self._compile_pays(now - t_first, cfg.max_new_tokens - steps):
                compile_step(self.model, self.device)
            if first_compiled is None and self.can_compile and self.model.compiled_step is not None:
                first_compiled = steps + 1  # the next token comes from a compiled step
            t_last = now
            for b, t in enumerate(toks):
                if done[b]:
                    continue
                if t == eot:
                    done[b] = True
                    continue
                texts[b].add(t)
                if cfg.stop:
                    cut = texts[b].find(cfg.stop)
                    if cut >= 0:
                        cuts[b], done[b] = cut, True
            if echo is not None:
                shown = self._echo(echo, texts[0], done[0], shown)
            if all(done):
                break
        t_end = time.perf_counter()
        out = [tok.decode(t.ids)[:cuts[b]] for b, t in enumerate(texts)]
        if echo is not None and len(out[0]) > shown:
            echo(out[0][shown:])
        prefill_s, decode_s = t_first - t0, t_end - t_first - (compile_s or 0)
        decode_steps = steps - 1 - (compile_s is not None)
        return {"prompt": prompt, "temperature": temperature, "samples": out,
                "new_tokens": [len(t.ids) for t in texts], "stopped": done,
                "prompt_tokens": len(ids), "steps": steps, "compile_s": compile_s,
                "prefill_tok_s": B * len(ids) / prefill_s if steps else None,
                "decode_tok_s": B * decode_steps / decode_s if decode_steps > 0 and decode_s > 0 else None}

    def _compile_pays(self, eager_s, steps_left):
        """compile=None (auto): after COMPILE_AFTER eager steps took eager_s, compile when the rest would
        take longer than COMPILE_PAYS_S eagerly."""
        if self.cfg.compile is not None or not self.can_compile or self.model.compiled_step is not None:
            return False
        return eager_s / COMPILE_AFTER * steps_left > COMPILE_PAYS_S

    def _echo(self, echo, text, done, shown):
        """Echo the part of sample 0 that can no longer change; returns how much is shown now."""
        if done:
            return shown  # the final text is echoed once generation ends
        end = len(text.shown())
        if self.cfg.stop:
            end = min(end, len(text.text) - len(self.cfg.stop) + 1)  # could be the start of the stop string
        if end > shown:
            echo(text.text[shown:end])
            return end
        return shown


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
    from model import RECIPE_ARCH
    quick = dict(**RECIPE_ARCH, vocab_size=222, block_size=128, n_layer=4, n_head=4, n_embd=128)
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
