"""
A GPT sized to the wall clock it has: `python train.py --time_budget=30 --auto_size=True`.

The sizes are a ladder of depths, each ASPECT wide per layer (n_embd = ASPECT * n_layer, heads of
HEAD_DIM): 4 x 128, the fixed default, is one rung. A short throughput probe times a few training steps
of a rung on this machine, as the run will take them (same batch, dtype, optimizers), and predicts the
tokens the budget buys at that size. The rule then picks the rung whose tokens per block parameter come
nearest TOKENS_PER_PARAM, the ratio fitted on pycode (README, "A model sized to the budget"). A bigger
budget buys a bigger model, by the same ratio however small the corpus: no cap on passes over the data
climbs further (README, "A small corpus and a bigger model"). The probe climbs from the default rung only
as far as the choice needs, and its seconds count in the budget (the run's clock starts with them). It
times eager steps even where the run then compiles (compile=None does on a CPU for a budget of 5 minutes
or more in bf16 or 15 in fp32, or a shorter one whose graphs Inductor's cache holds): compiling every
probed size would cost more than the probe, so a compiled run sees more tokens per parameter than the rule
aims at. Where the chosen size will read its training data more than DROPOUT_PASSES times, it trains with
dropout (`small_corpus`).

Explicit shapes win: a shape key given in a config file or flag (n_layer, n_embd, n_head) keeps its value
and the probe chooses among the rungs that fit it (a given width: the depths; a given depth: the
widths). Both n_layer and n_embd given leaves nothing to choose, which is an error, as is a budget too
short to probe.

The context and the LR follow the budget too, without being asked (`long_budget`): a new GPT given
LONG_BUDGET minutes or more trains on windows of LONG_CONTEXT tokens, as many fewer per batch, unless
block_size or batch_size is given, at a peak LR of LONG_LR, unless lr (or the optimizer) is given.
"""
import math
import time

import torch

from checkpoint import model_args
from common import print0, sync
from configurator import UserError, given_keys, replace
from dataloader import Batches
from model import build_model
from optim import make_optimizers, make_scaler, set_schedule, train_step

ASPECT = 32  # n_embd per layer along the ladder (4 x 128 is a rung)
HEAD_DIM = 32  # attention head width where n_head is not given
MAX_LAYERS = 24  # the ladder's top rung
TOKENS_PER_PARAM = 6.0  # the rule: training tokens per block parameter, fitted on pycode (README)
MIN_BUDGET = 1.0  # minutes: below this the probe's seconds are too large a share of the run
PROBE_WARMUP = 2  # untimed steps per probed size (allocations, first-call overheads)
PROBE_SECONDS = 1.0  # then steps are timed until this much time has passed...
PROBE_MIN_STEPS = 3  # ...and at least this many
SHAPE_KEYS = ("n_layer", "n_embd", "n_head")
LONG_BUDGET = 5.0  # minutes: a run with at least this time_budget trains on longer windows...
LONG_CONTEXT = 256  # ...of this many tokens, fewer of them per batch (the same tokens a step)...
LONG_LR = 3e-3  # ...at this peak LR
DROPOUT_PASSES = 12.0  # a chosen size that will read the training data more than this many times (as probed)...
DROPOUT = 0.1  # ...trains with this dropout, none on the attention weights (README, "Dropout for a small corpus")


def check(cfg):
    """The input errors of an auto-sized run, before anything is written: one line each."""
    if not cfg.auto_size or cfg.init_from == "resume":  # a resumed run keeps the shape it was sized to
        return
    pinned = [k for k in SHAPE_KEYS if k in given_keys(cfg)]
    if cfg.model != "gpt":
        raise UserError(f"auto_size sizes GPTs; model={cfg.model} takes its shape from n_layer/n_hidden")
    if cfg.init_from != "scratch":
        raise UserError(f"auto_size sizes new models, but init_from={cfg.init_from} brings its shape: drop --auto_size")
    if cfg.time_budget <= 0:
        raise UserError("auto_size sizes the model to time_budget: set --time_budget=MINUTES (or drop --auto_size)")
    if cfg.time_budget < MIN_BUDGET:
        raise UserError(f"time_budget={cfg.time_budget:g} minutes is too short to probe sizes for auto_size "
                        f"(at least {MIN_BUDGET:g}): raise it, or drop --auto_size and give n_layer/n_embd")
    if "n_layer" in pinned and "n_embd" in pinned:
        raise UserError(f"auto_size chooses n_layer and n_embd, but both are given (n_layer={cfg.n_layer}, "
                        f"n_embd={cfg.n_embd}, by a flag or config file): drop --auto_size to train that shape, or "
                        f"give only one of them (the other is then chosen)")
    if not ladder(cfg):
        raise UserError(f"auto_size has no size that fits the given {', '.join(f'{k}={getattr(cfg, k)}' for k in pinned)}"
                        f" (each width must split into n_head equal heads; n_head left to it is n_embd // {HEAD_DIM}): "
                        f"change them, or drop --auto_size")


def ladder(cfg):
    """The sizes to choose from, smallest first: (n_layer, n_embd, n_head), keeping every given shape key."""
    pinned = given_keys(cfg)
    rungs = []
    for d in range(1, MAX_LAYERS + 1):
        n_layer = cfg.n_layer if "n_layer" in pinned else d
        n_embd = cfg.n_embd if "n_embd" in pinned else ASPECT * d
        n_head = cfg.n_head if "n_head" in pinned else n_embd // HEAD_DIM
        if n_head > 0 and n_embd % n_head == 0 and (n_layer, n_embd, n_head) not in rungs:
            rungs.append((n_layer, n_embd, n_head))
    return rungs


def block_params(args):
    """The parameters of the transformer blocks (what the rule counts: embeddings and head left out): one
    block's, built on the meta device (no memory), times n_layer (every block has the same shape)."""
    with torch.device("meta"):
        model = build_model("gpt", {**args, "n_layer": 1})
    return args["n_layer"] * sum(p.numel() for p in model.blocks.parameters())


def probe(cfg, env, args, data):
    """Training tokens/s of one process at this shape: PROBE_WARMUP steps, then timed ones."""
    model = build_model("gpt", args).to(env.device)
    optimizers = make_optimizers(cfg, model, env.device)
    set_schedule(optimizers, cfg.lr, 0.5, cfg)
    scaler = make_scaler(env.device, env.dtype)
    batches = Batches(data, cfg.block_size, cfg.batch_size, cfg.seed, cfg.grad_accum)
    steps, t0 = 0, None
    while True:
        train_step(model, batches, cfg.grad_accum, optimizers, scaler, cfg, env.device, env.dtype)
        steps += 1
        if t0 is None:
            if steps == PROBE_WARMUP:
                sync(env.device)
                steps, t0 = 0, time.perf_counter()
        elif steps >= PROBE_MIN_STEPS:
            sync(env.device)
            if time.perf_counter() - t0 >= PROBE_SECONDS:
                break
    return steps * batches.step_tokens / (time.perf_counter() - t0)


def choose(cfg, env, vocab_size, data):
    """(cfg with the chosen shape, the probe's seconds). Every process probes (they share the machine as
    the run will); rank 0's choice is broadcast, so all build the same model."""
    t0 = time.time()
    rungs = ladder(cfg)
    budget_s, unique = cfg.time_budget * 60, len(getattr(data, "ids", data))  # (instruction data: its tokens)
    sized = lambda r: replace(cfg, n_layer=r[0], n_embd=r[1], n_head=r[2])
    seen = {}  # rung -> (tokens/s, block params, tokens the rest of the budget buys)

    def predict(i):
        if i not in seen:
            args = model_args(sized(rungs[i]), vocab_size)
            rate = probe(cfg, env, args, data) * env.world
            seen[i] = (rate, block_params(args), rate * (budget_s - (time.time() - t0)))
        return seen[i]

    def bigger(i):  # the budget buys this size more tokens than the rule asks
        _, params, tokens = predict(i)
        return tokens / params > TOKENS_PER_PARAM

    i = min(range(len(rungs)), key=lambda j: abs(rungs[j][0] * rungs[j][1] - cfg.n_layer * cfg.n_embd))
    if bigger(i):  # climb to the first rung that wants no more...
        while i + 1 < len(rungs) and bigger(i):
            i += 1
    else:  # ...or descend to the smallest that wants no more
        while i > 0 and not bigger(i - 1):
            i -= 1
    best = i  # the rung below it may sit nearer the ratio
    if i > 0 and (i - 1) in seen:
        best = min((i - 1, i), key=lambda j: abs(math.log(seen[j][2] / seen[j][1] / TOKENS_PER_PARAM)))
    passes = seen[best][2] / unique
    if env.world > 1:
        box = [best, passes]
        torch.distributed.broadcast_object_list(box, src=0)
        best, passes = box  # (another rank prints nothing: what it probed need not include it)
    spent = time.time() - t0
    for j in sorted(seen):
        rate, params, tokens = seen[j]
        print0(f"auto_size: {rungs[j][0]} x {rungs[j][1]} ({params / 1e6:.2f}M block params): {rate:,.0f} tok/s -> "
               f"{tokens / 1e6:.1f}M tokens, {tokens / params:.1f} per param, {tokens / unique:.1f} epochs"
               f"{' <- chosen' if j == best else ''}")
    print0(f"auto_size: chose {rungs[best][0]} x {rungs[best][1]}, {rungs[best][2]} heads: the size whose tokens per "
           f"param come nearest {TOKENS_PER_PARAM:g} (probe {spent:.1f} s, counted in the budget)")
    return small_corpus(sized(rungs[best]), passes), spent


def small_corpus(cfg, passes):
    """cfg with dropout where the chosen size will read its training data more than DROPOUT_PASSES times:
    DROPOUT on the embeddings and the residual branches, none on the attention weights (on a CPU the fused
    attention kernel has no dropout, and the step without it is far faster), each unless given. Fewer passes
    train better without (README, "Dropout for a small corpus")."""
    given = given_keys(cfg)
    if passes <= DROPOUT_PASSES or "dropout" in given:
        return cfg
    changes = {"dropout": DROPOUT, **({} if "attn_dropout" in given else {"attn_dropout": 0.0})}
    print0(f"auto_size: {', '.join(f'{k}={v:g}' for k, v in changes.items())}: the chosen size reads its training data "
           f"{passes:.1f} times in the budget, more than {DROPOUT_PASSES:g}; --dropout chooses it")
    return replace(cfg, **changes)


def long_windows(batch_size, block_size):
    """(batch_size, block_size) of a long budget: windows of LONG_CONTEXT, as many as keep the tokens a step."""
    return max(1, batch_size * block_size // LONG_CONTEXT), LONG_CONTEXT


def long_budget(cfg, meta, splits):
    """cfg with what a budget of LONG_BUDGET minutes or more changes in the recipe of a new GPT on token
    data (instruction data keeps its examples and LR), each unless given:
    - the context: in the first minutes the defaults' 16 windows of 128 tokens a step learn fastest; given
      longer, 8 windows of 256 (the same 2,048 tokens, each predicted from twice the context) end lower
      (README, "A longer context for a longer budget"). Not where block_size or batch_size is given, or
      where a split holds no such window.
    - the peak LR: the default's was tuned on 2-minute runs; the longer ones end lower, and spread less
      from seed to seed, at LONG_LR (README, "A lower LR for a longer budget"). Not where lr or optimizer
      is given (another optimizer wants its own LR)."""
    if cfg.time_budget < LONG_BUDGET or cfg.model != "gpt" or meta.get("kind") == "sft":
        return cfg
    given, changes = given_keys(cfg), {}
    why = f"for a budget of {cfg.time_budget:g} minutes (at least {LONG_BUDGET:g})"
    if not {"block_size", "batch_size"} & given and min(len(s) for s in splits) > LONG_CONTEXT:
        batch, _ = long_windows(cfg.batch_size, cfg.block_size)  # (both are TrainConfig's defaults here)
        changes.update(block_size=LONG_CONTEXT, batch_size=batch)
        print0(f"context: windows of {LONG_CONTEXT} tokens, {batch} a batch, {why}; --block_size and "
               f"--batch_size choose them")
    if not {"lr", "optimizer"} & given:
        changes.update(lr=LONG_LR)
        print0(f"lr: {LONG_LR:g} (not {cfg.lr:g}), {why}; --lr chooses it")
    return replace(cfg, **changes)
