"""
The generation engine: sampling, the decode loop, a model made ready to generate, and a Session (a
loaded checkpoint with its tokenizer). sample.py, compare.py and bench.py all generate through it.

    out = generate(model, idx, 100, temperature=0.8, top_p=0.9)     # (B, T + 100)
    for nxt in stream(model, idx, 100): ...   # the same loop, one (B, 1) token at a time
    generate(model, idx, 500, slide=64)       # past block_size, the window drops 64 tokens when full
    model = for_generation(model, "cpu", "bfloat16", quantize="int8")   # weights cast once, int8 Linear layers
    compile_step(model, "cpu")                # one-token steps run torch.compile'd, set up for the device
    session = Session(GenerationConfig(out_dir="out/quickstart", num_samples=1))
    r = session.generate("def ", temperature=0.8)   # {"samples": [...], "decode_tok_s": ..., ...}

Every model here has the same cached step (model.py's GPT carries a KV cache, rnn.py's LSTM/GRU their
hidden state: `model.step(idx, model.new_state(capacity))`), so one `stream` serves them all. A model
with a context_limit (a GPT's block_size) slides its window past it. Generation settings that depend on
the device (the dtype, compiling the step) are decided here, once for every stage.
"""
import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import hf
from chat import Template
from checkpoint import CKPT_BEST, load_checkpoint, model_from_checkpoint
from common import check_compile, cpu_kernels_buildable, resolve_device, resolve_dtype
from configurator import UserError
from model import GPT
from tokenizer import Tokenizer

INT8_MAX_ROWS = 16  # Int8Linear: inputs of up to this many rows (tokens x batch) use the int8 kernel...
INT8_K_MULTIPLE = 32  # ...with an input width that is a multiple of this (torch 2.13's CPU bf16 kernel crashes otherwise)
CPU_FP32_BYTES = 32 * 2**20  # see generation_dtype: about a server CPU's last-level cache
COMPILE_AFTER = 8  # compile=None (auto) times this many eager decode steps, then decides
COMPILE_PAYS_S = 60.0  # auto compiles when the rest of the decode would take longer than this eagerly:
# compiling the step takes tens of seconds on a CPU in every run (freezing prepacks the weights, which
# keeps Inductor's disk cache out), so it pays off only for long decodes (README: the measured compile
# times and speedups this threshold comes from)
# Inductor on a CPU: freezing (weights become constants, prepacked), max-autotune (its own GEMM templates,
# measured faster than oneDNN's matrix-vector products, int8 weights most of all), the C++ wrapper (less
# Python per step); autotuning quietly
CPU_INDUCTOR = {"freezing": True, "max_autotune": True, "cpp_wrapper": True, "autotune_num_choices_displayed": 0,
                "max_autotune_report_choices_stats": False}


# ----------------------------------------------------------------------------- sampling

def filter_logits(logits, top_k=None, top_p=None):
    """Keep the top_k most likely tokens and the smallest set whose probability reaches top_p; -inf the rest."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # tokens after the nucleus is complete
        drop[..., 0] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def pick(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """The next token (B, 1) from last-position logits (B, V): argmax when temperature is 0, else a draw."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)
    return draw(probs, generator)


def draw(probs, generator=None):
    """One index (B, 1) per row of probs (B, V), drawn with those probabilities: the first index whose
    cumulative sum exceeds a uniform draw times the total (inverse transform sampling). A zero-probability
    index is never returned (the sum does not rise there). torch.multinomial samples the same distribution
    but measured far slower at GPT-2's vocabulary on a CPU; neither syncs a GPU."""
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=cdf.device, dtype=cdf.dtype)
    below = torch.minimum(u * total, total.nextafter(torch.zeros_like(total)))  # < total, even after rounding
    return torch.searchsorted(cdf, below, right=True)


# ----------------------------------------------------------------------------- the decode loop

@torch.no_grad()
def stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, cache=True,
           slide=1):
    """Yield max_new_tokens next tokens (B, 1), one per step, continuing idx (B, T); temperature 0 is greedy.

    Cached (the default): the prompt is prefilled once, then each new token costs one model.step on
    the state (KV cache or LSTM state). A model with a context_limit (a GPT's block_size) slides its
    window when it is full: the oldest `slide` tokens leave it and the rest are prefilled again into
    the same cache. slide=1 (exact) keeps every prediction's context a full block_size, as nanoGPT's
    crop does, at the price of a prefill of block_size tokens per new token; a larger slide prefills
    once per `slide` tokens, and the predictions right after it see block_size - slide + 1 tokens.
    cache=False recomputes the same window every step (nanoGPT's way with slide=1): the reference the
    cached path must match. Stop early by simply not asking for more (break out of the loop)."""
    limit = model.context_limit
    if limit is not None and not 1 <= slide <= limit:
        raise ValueError(f"slide={slide} must be between 1 and the context of {limit} tokens")
    n = idx.size(1) if limit is None else min(idx.size(1), limit)  # tokens the next prediction sees
    if cache:
        logits, state = model.step(idx[:, -n:], model.new_state(idx.size(1) + max_new_tokens))
    else:
        logits, _ = model(idx[:, -n:])
    for i in range(max_new_tokens):
        nxt = pick(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
        yield nxt
        if i == max_new_tokens - 1:
            break  # the last token needs no logits after it
        idx = torch.cat([idx, nxt], dim=1)
        full = limit is not None and n == limit
        n = limit + 1 - slide if full else n + 1
        if not cache:
            logits, _ = model(idx[:, -n:])
        elif full:  # slide the window, refilling the same cache
            logits, state = model.step(idx[:, -n:], state.reset())
        else:
            logits, state = model.step(nxt, state)


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, cache=True,
             slide=1):
    """idx (B, T) extended by max_new_tokens tokens from `stream` (same arguments): (B, T + max_new_tokens)."""
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator, cache, slide))
    return torch.cat([idx, *new], dim=1)


# ----------------------------------------------------------------------------- a model ready to generate

class Int8Linear(nn.Module):
    """nn.Linear with int8 weights, for generation: one scale per output row (absmax / 127, symmetric),
    y = (x @ int8 weight^T) * scale + bias through torch._weight_int8pack_mm (CPU and CUDA kernels; on a
    CPU Inductor lowers it to its own GEMM template under max_autotune). Half the bytes of bf16."""

    def __init__(self, linear, dtype):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("weight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)

    def forward(self, x):
        rows = x.reshape(-1, x.size(-1))
        if rows.size(0) <= INT8_MAX_ROWS and rows.size(1) % INT8_K_MULTIPLE == 0:  # decode: the int8 weights streamed once
            y = torch._weight_int8pack_mm(rows, self.weight, self.scale)
        else:  # a prefill: the weights dequantized once serve all the rows (the int8 kernel measured far slower)
            y = F.linear(rows, self.weight.to(x.dtype)) * self.scale
        y = y.view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def quantize_int8(model, dtype):
    """Replace every nn.Linear of a GPT (attention, MLP, output layer) by an Int8Linear whose activations
    are `dtype`; a tied output layer gets its own int8 copy (the embedding stays a lookup table)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child, dtype))
    return model


def generation_dtype(dtype, device, model):
    """What dtype=auto (resolved by train.py to `dtype`) generates in: that, except on a CPU a model
    whose fp32 weights fit in the last-level cache stays float32. Measured on a CPU: such a small model
    decodes faster in fp32 than in bf16 (bf16 matrix-vector kernels cost more per call), while a large
    one (GPT-2 124M) decodes faster in bf16 (half the bytes to stream)."""
    if device == "cpu" and model.num_params() * 4 <= CPU_FP32_BYTES:
        return "float32"
    return dtype


def window_slide(slide, model):
    """How many tokens the window drops when it is full (stream's `slide`): slide=0 (auto) is half the
    context. With slide=1 every token past block_size costs a prefill of block_size tokens, many times
    the cost of a compiled one-token step; with half, one prefill of block_size / 2 + 1 tokens per
    block_size / 2 tokens. The shorter contexts that follow a slide cost little loss (measured on the
    quickstart checkpoint over its whole val split; README)."""
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


def compile_step(model, device, backend="inductor"):
    """torch.compile a GPT's one-token step (its _run with a cache) as model.compiled_step, which
    GPT.step runs, for generating from a model that no longer changes: Dynamo's guards on its modules
    are skipped (checking them every step costs time). On a GPU: CUDA graphs (mode="reduce-overhead"'s
    setting). On a CPU: CPU_INDUCTOR's settings, in force while a new shape traces and compiles
    (freezing is read outside torch.compile's options); the calls after a shape's first run without
    them (patching the config at every step costs time too). `backend`: torch.compile's (tests count
    compilations with their own)."""
    cuda = device.startswith("cuda")
    options = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    if cuda:
        options["triton.cudagraphs"] = True
    step = torch.compile(model._run, fullgraph=True, dynamic=False, backend=backend, options=options)
    if cuda:
        model.compiled_step = step
        return
    patched, compiled = torch._inductor.config.patch(CPU_INDUCTOR)(step), set()

    def run(idx, cache):
        key = (idx.shape, idx.device, cache.capacity, cache.k[0].dtype)  # what a new compile is keyed on
        if key in compiled:
            return step(idx, cache)
        logits = patched(idx, cache)
        compiled.add(key)
        return logits
    model.compiled_step = run


# ----------------------------------------------------------------------------- a session

def parse_temperatures(values):
    """Temperatures as floats from numbers or their text (like "0.5,1.0,1.5".split(",")), each >= 0."""
    temps = []
    for t in values:
        try:
            temps.append(float(t))
        except (TypeError, ValueError):
            raise UserError(f"temperatures must be numbers separated by commas (like 0.5,1.0,1.5), "
                            f"got {t!r}") from None
    if any(t < 0 for t in temps):
        raise UserError(f"temperatures must be >= 0 (0 is greedy), got {','.join(map(str, temps))}")
    return tuple(temps)


@dataclass
class GenerationConfig:
    """What a Session loads and how it generates (sample.py's SampleConfig adds its own flags to these)."""
    out_dir: str = "out/quickstart"
    ckpt: str = CKPT_BEST
    init_from: str = ""  # gpt2 | gpt2-medium | gpt2-large | gpt2-xl | hf:DIR | hf:owner/name: Hugging Face weights instead of a run
    num_samples: int = 3  # generated as one batch
    max_new_tokens: int = 500
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int = 1337
    stop: tuple = ()  # stop a sample at any of these strings (trimmed off); --stop=A --stop=B gives two
    eot: bool = True  # stop a sample at the tokenizer's end-of-text token, if it has one
    cache: bool = True  # KV cache / carried state; False recomputes the whole context every step
    slide: int = 0  # past block_size, the window drops this many oldest tokens when full (then one prefill);
    # 1 = exact (a full block_size of context for every token, a prefill per token); 0 = block_size // 2
    compile: bool | None = None  # torch.compile the one-token step; None = auto (when it pays off, see COMPILE_PAYS_S)
    quantize: str = ""  # int8: weight-only int8 (GPT; CPU or CUDA); "" = the weights in dtype
    device: str = "auto"
    dtype: str = "auto"

    def validate(self):
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        for key in ("top_k", "max_new_tokens", "slide"):
            if getattr(self, key) < 0:
                raise UserError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.num_samples < 1:
            raise UserError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.quantize not in ("", "int8"):
            raise UserError(f"quantize must be int8 or empty (off), not '{self.quantize}'")


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

    def find(self, stops):
        """Where the first of the stop strings starts in the text, or -1."""
        start = self._searched if self.piece else 0
        found = [at for at in (self.text.find(s, start) for s in stops) if at >= 0]
        self._searched = max(0, len(self.text) - max(map(len, stops)) + 1)
        return min(found, default=-1)

    def shown(self):
        """The text that can be shown: without the replacement characters an incomplete character decodes to."""
        return self.text if self.piece else self.text.rstrip("\ufffd")


class Session:
    """A loaded checkpoint with its tokenizer, on its device, ready to generate as cfg (a GenerationConfig) says."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        if cfg.init_from:
            if not cfg.init_from.startswith(("gpt2", "hf:")):
                raise UserError(f"init_from={cfg.init_from}: give gpt2, gpt2-medium, gpt2-large, gpt2-xl or hf:DIR "
                                f"(a run of yours is --out_dir=...)")
            self.path, self.ckpt = cfg.init_from, hf.load_pretrained(cfg.init_from)
            hf.require_tokenizer(self.ckpt)
        else:
            self.path = os.path.join(cfg.out_dir, cfg.ckpt)
            self.ckpt = load_checkpoint(self.path)
        self.tok = Tokenizer.from_meta(self.ckpt["meta"])
        tuned = bool(self.ckpt["meta"].get("template"))  # fine-tuned on instructions (prepare.py sft)
        self.template = Template(self.tok) if tuned else None
        self.eot = self.template.eot if tuned else self.tok.eot_token
        model = model_from_checkpoint(self.ckpt).to(self.device).eval()
        if cfg.dtype == "auto":
            self.dtype = generation_dtype(self.dtype, self.device, model)
        self.model = for_generation(model, self.device, self.dtype, cfg.quantize)
        self.slide = window_slide(cfg.slide, self.model)
        compilable = isinstance(self.model, GPT) and cfg.cache
        if cfg.compile:
            if not compilable:
                raise UserError("compile=True compiles a GPT's cached one-token step: not an LSTM's, nor with cache=False")
            check_compile(self.device)
            compile_step(self.model, self.device)
        # compile=None compiles a long generation's step only where Inductor can build the kernels
        self.can_compile = compilable and (self.device != "cpu" or cpu_kernels_buildable())

    def generate(self, prompt, temperature, echo=None, messages=None):
        """num_samples completions of prompt (text without the prompt) and the speeds, as a dict.
        echo(text) receives the first sample's text as it grows, piece by piece. An instruction-tuned run
        (self.template) answers prompt as a user's turn, or the conversation `messages` (ending with the
        user's turn), and stops at the end of its turn."""
        cfg, tok = self.cfg, self.tok
        if self.template:
            ids = self.template.prompt(messages or [{"role": "user", "content": prompt}])
        else:
            ids = tok.encode(prompt)
        if not ids:
            raise UserError("the prompt is empty after tokenization; give --start some text")
        B = cfg.num_samples
        idx = torch.tensor([ids] * B, dtype=torch.long, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        eot = self.eot if cfg.eot else None
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
            end = min(end, len(text.text) - max(map(len, self.cfg.stop)) + 1)  # could start a stop string
        if end > shown:
            echo(text.text[shown:end])
            return end
        return shown
