"""
Train a GPT or an LSTM language model on a dataset prepared by prepare.py.

    python train.py config/quickstart.py              # the quickstart: char-level GPT on pycode, CPU-friendly
    python train.py config/char_enwik8.py --lr=0.1    # an override file, then --key=value flags
    python train.py --dataset=mybook --time_budget=5  # any prepared dataset (out_dir: out/mybook)
    python train.py --time_budget=30 --auto_size=True # depth and width chosen for the budget (sizing.py)
    python train.py --out_dir=out/mybook --init_from=resume       # continue a run exactly where it stopped
    python train.py config/char_enwik8.py --lr_find=True          # LR range test: out_dir/lr_find.png
    python train.py --dataset=mine --init_from=out/quickstart     # fine-tune a run on new data, same tokenizer
    python train.py --dataset=mine --init_from=gpt2 --optimizer=adamw   # fine-tune OpenAI's GPT-2 (gpt2 tokens)
    torchrun --standalone --nproc_per_node=4 train.py config/plwiki_gpt.py   # DDP on one node
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        train.py config/plwiki_gpt.py                 # DDP on two nodes (run on each, R = 0 and 1)

Defaults are TrainConfig below (its optimization keys come from optim.OptimConfig): the recipe that
bought the lowest loss in a few CPU minutes (`python bench.py budget`): Muon for the hidden matrices and
AdamW for the rest, a warmup-stable-decay schedule, and a GPT with RoPE (base 100,000), RMSNorm, QK-norm, a SwiGLU MLP,
zero-initialized projections and an untied head (model.RECIPE_ARCH). The seed configs pin GPT-2's
architecture and their seeds' optimizers. A run ends at max_iters or when its wall-clock budget
(time_budget, minutes) is spent, whichever comes first (a budget given without max_iters: the budget
alone); the LR schedule runs on the further of the two, so it completes its shape when the run ends. A
budget of 5 minutes or more also buys a new GPT twice the context, on half as many windows a step, unless
block_size or batch_size is given, and a lower peak LR, unless lr or optimizer is given
(sizing.long_budget). Then
the best checkpoint is scored on the val and test splits (metrics.score_run, what `python evaluate.py`
runs). Under DDP, batch_size is per process and grad_accum counts micro-steps over all processes
together, so a config trains on the same windows whatever the number of processes.
out_dir ends up holding:
    ckpt.pt (best val loss), last.pt (latest state, for resume), config.json, metrics.jsonl,
    results.json, results.md, learning_curves.png, model_summary.txt; and run.lock while a run trains there
"""
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

import checkpoint
import sizing
from checkpoint import CKPT_BEST, CKPT_LAST, RunLock, model_args, save_atomic, write_config
from common import (Env, StopFlag, check_compile, fmt_time, gather_states, graphs_cached, graphs_key,
                    mark_graphs_cached, print0, resolve_compile, setup, teardown)
from configurator import UserError, cli, given_keys, given_where, load_config, replace
from chat import Template, read_examples
from dataloader import Batches, Examples, fixed_starts, load_meta, open_split, open_train_val
from metrics import (example_batches, exact_match, mean_loss, metrics_for, plot_curves, score_run, window_batches,
                     write_results)
from model import RECIPE_ARCH, build_model, config_fields
from tokenizer import Tokenizer
from optim import OptimConfig, get_lr, make_optimizers, make_scaler, progress_of, set_schedule, train_step

EVAL_SEED_OFFSET = 10_000  # the fixed eval windows come from seed + this, never from the training stream
LR_FIND_DIVERGED = 4.0  # the LR range test stops once the smoothed loss exceeds this multiple of its minimum
LR_FIND_SMOOTHING = 0.9  # its EMA of the loss; bias-corrected, so the first steps are not pulled toward zero


@dataclass
class TrainConfig(OptimConfig):
    # data and run
    dataset: str = "pycode"  # a folder of data_dir that prepare.py wrote
    data_dir: str = "data"
    out_dir: str = ""  # where the run's files go; "" = out/<dataset>
    init_from: str = "scratch"  # scratch | resume | a run dir or checkpoint to fine-tune | gpt2* | hf:DIR (hf.py)
    # model
    model: str = "gpt"  # gpt | lstm | gru
    n_layer: int = 4
    n_head: int = 4  # gpt
    n_embd: int = 128
    block_size: int = 128  # tokens of context (256 for a new GPT with time_budget >= 5 unless given: sizing.py)
    dropout: float = 0.0
    attn_dropout: float | None = None  # gpt: on the attention weights; None = dropout (costly on a CPU)
    bias: bool = RECIPE_ARCH["bias"]  # gpt: biases in the linear layers and LayerNorms (GPT-2 has them)
    pos_emb: str = RECIPE_ARCH["pos_emb"]  # gpt: learned (GPT-2) | sinusoidal | rope
    n_kv_head: int = 0  # gpt: key/value heads; 0 = n_head, 1 = multi-query, else grouped-query
    mlp_ratio: float = 4.0  # gpt: MLP width / n_embd
    auto_size: bool = False  # gpt: n_layer/n_embd/n_head (and dropout) chosen for time_budget here (sizing.py)
    n_hidden: int = 512  # lstm/gru: units per layer
    tie_weights: bool = RECIPE_ARCH["tie_weights"]  # the output layer shares the embedding (lstm/gru: via a projection)
    norm: str = RECIPE_ARCH["norm"]  # gpt: layernorm (GPT-2) | rmsnorm
    qk_norm: bool = RECIPE_ARCH["qk_norm"]  # gpt: RMSNorm on each head's queries and keys
    qk_gain: float = 1.0  # gpt, qk_norm: the starting gain of queries and keys (attention logits scale by its square)
    activation: str = RECIPE_ARCH["activation"]  # gpt: the MLP's gelu | gelu_tanh (GPT-2's) | relu2 (ReLU squared) | swiglu (gated)
    zero_init: bool = RECIPE_ARCH["zero_init"]  # gpt: residual projections (and an untied head) start at zero
    # gpt: shapes imported models bring (hf.py); the defaults change nothing above
    mlp_hidden: int = 0  # exact MLP width (Llama's intermediate_size); 0 = mlp_ratio * n_embd (swiglu: 2/3 of it)
    head_dim: int = 0  # per-head width; 0 = n_embd // n_head
    qkv_bias: bool = False  # biases on queries, keys and values only (Qwen2)
    norm_eps: float = 0.0  # RMSNorm's epsilon; 0 = float32's machine epsilon
    rope_theta: float = RECIPE_ARCH["rope_theta"]  # RoPE's base wavelength (GPTConfig's 10,000 for imported shapes)
    rope_scaling: str = ""  # Llama 3's "factor,low_freq_factor,high_freq_factor,original_context"; "" = none
    x0_mix: bool = False  # gpt: each block's input a learned mix of the residual stream and the embeddings (no export)
    # batches
    batch_size: int = 16  # sequences per micro-step, in each process (8 where sizing.long_budget doubles block_size)
    grad_accum: int = 1  # micro-steps per step, summed over all processes (a multiple of their number; 1 = one each)
    # LR range test: python train.py CONFIG --lr_find=True
    lr_find: bool = False
    lr_find_min: float = 1e-7  # lr_find: the first LR...
    lr_find_max: float = 10.0  # lr_find: ...and the last
    lr_find_iters: int = 100  # lr_find: steps from one to the other
    # evaluation and logging
    eval_interval: int = 250  # steps between evaluations (and checkpoints)
    eval_iters: int = 20  # batches of fixed val (and train) windows each evaluation averages
    log_interval: int = 50  # steps between lines of training loss and speed
    final_eval_tokens: int = 0  # tokens of val/test the final evaluation scores; 0 = the whole splits
    eval_file: str = ""  # instruction data (Alpaca/chat): the greedy exact match of its answers at each evaluation
    wandb_log: bool = False  # also log to Weights & Biases
    wandb_project: str = "smallgpt"
    wandb_run_name: str = ""
    # system
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (auto: bf16 where the device has it, else fp32)
    compile: bool | None = None  # torch.compile; None = auto: CUDA, and a CPU for a long time_budget (resolve_compile)
    seed: int = 1337

    def validate(self):
        super().validate()
        checks = [
            (self.model in ("gpt", "lstm", "gru"), f"model must be gpt, lstm or gru, not '{self.model}'"),
            (self.init_from != "", "init_from must be scratch, resume or a run directory / checkpoint to fine-tune"),
            (0 < self.lr_find_min < self.lr_find_max and self.lr_find_iters >= 10,
             "lr_find needs 0 < lr_find_min < lr_find_max and lr_find_iters >= 10"),
            (self.dtype in ("auto", "float32", "bfloat16", "float16"),
             f"dtype must be auto, float32, bfloat16 or float16, not '{self.dtype}'"),
            (min(self.batch_size, self.grad_accum, self.block_size, self.eval_iters) > 0,
             "batch_size, grad_accum, block_size and eval_iters must be positive"),
            (self.eval_interval > 0 and self.log_interval > 0, "eval_interval and log_interval must be positive"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), not {self.dropout:g}"),
            (self.attn_dropout is None or 0 <= self.attn_dropout < 1,
             f"attn_dropout must be in [0, 1) (or None: dropout's), not {self.attn_dropout}"),
            (self.model != "gpt" or self.n_embd % self.n_head == 0,
             f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        self.note_options_of_model()
        self.out_dir = self.out_dir or os.path.join("out", self.dataset)

    def note_options_of_model(self):
        """A new model ignores a GPT-only key (n_head, pos_emb, x0_mix...) given with model=lstm or gru, and
        an RNN-only one (n_hidden) with a GPT: say so where a flag, or the file that chose the model, gave it.
        A note, not an error: `make compare` gives both of its models the same ARGS. A file layered on a
        GPT's config (config/plwiki_lstm.py on plwiki_gpt.py) may leave the GPT's keys unremarked. (A
        resumed or fine-tuned model takes its shape from its checkpoint: checkpoint.py.)"""
        if self.init_from != "scratch":
            return
        own = set(config_fields(self.model)) | {"block_size"}  # every model trains on windows of block_size
        other = set().union(*(config_fields(kind) for kind in ("gpt", "lstm"))) - own
        chose, where = given_where(self, "model"), {k: given_where(self, k) for k in other & given_keys(self)}
        ignored = sorted(k for k, w in where.items() if w.startswith("flag") or w == chose)
        if ignored:
            owner = "an LSTM/GRU" if self.model == "gpt" else "a GPT"
            print0(f"note: model={self.model} ignores {', '.join(ignored)} (options of {owner} only)")


@dataclass
class State:
    """Everything a run carries from step to step (and what its checkpoints save)."""
    env: Env
    meta: dict  # the dataset's meta.json (its tokenizer and split sizes)
    model: torch.nn.Module  # the raw model: checkpoints hold its state_dict, free of wrapper prefixes
    eval_model: torch.nn.Module  # what evaluation calls: the model, compiled where compile is on
    train_model: torch.nn.Module  # what training calls: under DDP, a wrapper that averages gradients
    optimizers: list
    scaler: torch.amp.GradScaler
    batches: Batches
    eval_batches: dict  # split name -> a function giving the fixed (x, y) batches every evaluation scores
    micro_steps: int  # this process's micro-batches per optimizer step
    it: int = 0
    tokens: int = 0
    elapsed_before: float = 0.0  # seconds spent by the runs this one resumes
    best_val: float = math.inf
    saved_at: int = 0  # the step of the latest checkpoint
    skipped: int = 0  # fp16: steps the GradScaler skipped (overflowing gradients)
    t_start: float = 0.0  # time.time() when this process started training
    t_log: float = 0.0  # where the next log line's speed is measured from
    it_log: int = 0
    tokens_log: int = 0
    exact: tuple = None  # eval_file's (template, conversations), scored by greedy exact match at each evaluation
    graphs: str = ""  # compiled: the key of its graphs (common.graphs_key), marked cached once they are built
    wandb: object = None

    def elapsed(self):
        """Seconds of training so far, including those of the runs this one resumes."""
        return self.elapsed_before + time.time() - self.t_start


# ----------------------------------------------------------------------------- setup

def micro_steps(cfg, env):
    """This process's micro-batches per optimizer step: grad_accum counts those of all processes together
    (1 = one each)."""
    accum = cfg.grad_accum if cfg.grad_accum > 1 else env.world
    if accum % env.world:
        raise UserError(f"grad_accum={cfg.grad_accum} must be a multiple of the number of processes ({env.world}): "
                        f"each runs grad_accum/{env.world} micro-steps of batch_size={cfg.batch_size} sequences")
    return accum // env.world


def build(cfg, env, micro, meta, train_data, val_data, ckpt):
    """The run's State: the model (with the checkpoint's weights, if any), its optimizers, loss scaler and
    batch stream; on resume also the step, the counters and every random stream, so the run goes on exactly."""
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    raw = build_model(cfg.model, model_args(cfg, meta["vocab_size"])).to(env.device)
    torch.manual_seed(cfg.seed + env.rank)  # but each process its own dropout masks
    optimizers = make_optimizers(cfg, raw, env.device)
    scaler = make_scaler(env.device, env.dtype)
    batches = Batches(train_data, cfg.block_size, cfg.batch_size, cfg.seed, micro * env.world, env.rank, env.world)
    if cfg.compile:
        check_compile(env.device)
    graphs = graphs_key(model=cfg.model, args=model_args(cfg, meta["vocab_size"]),
                        batch=(cfg.batch_size, cfg.block_size), dtype=env.dtype, device=env.device, world=env.world,
                        sft=meta.get("kind") == "sft", label_smoothing=cfg.label_smoothing > 0)
    model = torch.compile(raw) if resolve_compile(cfg.compile, env.device, env.dtype, cfg.time_budget, graphs) else raw
    wrapped = model
    if env.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(env.device).index] if env.device.startswith("cuda") else None)
    s = State(env, meta, raw, model, wrapped, optimizers, scaler, batches, eval_sets(cfg, train_data, val_data), micro)
    s.graphs = graphs if model is not raw else ""
    s.t_start = s.t_log = time.time()
    if ckpt:
        restore(cfg, s, ckpt)
    return s


def eval_sets(cfg, train_data, val_data):
    """The fixed batches each evaluation scores: eval_iters x batch_size windows drawn once from seed +
    EVAL_SEED_OFFSET (never from the training stream); of instruction data, the first as many examples."""
    count = cfg.eval_iters * cfg.batch_size
    sets = {}
    for name, d in (("train", train_data), ("val", val_data)):
        if isinstance(d, Examples):
            chosen = list(range(min(count, len(d))))
            sets[name] = lambda d=d, chosen=chosen: example_batches(d, chosen, cfg.batch_size)
        else:
            starts = fixed_starts(len(d), cfg.block_size, count, cfg.seed + EVAL_SEED_OFFSET)
            sets[name] = lambda d=d, starts=starts: window_batches(d, starts, cfg.batch_size, cfg.block_size)
    return sets


def restore(cfg, s, ckpt):
    """Load the checkpoint's weights; on resume also the optimizers, scaler, counters and random streams."""
    s.model.load_state_dict(ckpt["model"])  # (checkpoint.start checked that they fit)
    if cfg.init_from != "resume":
        print0(f"fine-tuning from {cfg.init_from} (step {ckpt['iter']} of {ckpt['config']['dataset']}) "
               f"with a fresh optimizer and schedule")
        return
    try:
        if len(ckpt["optimizer"]) != len(s.optimizers):
            raise ValueError("a different number of optimizers")
        for optimizer, state in zip(s.optimizers, ckpt["optimizer"]):
            optimizer.load_state_dict(state)
        s.scaler.load_state_dict(ckpt["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"the checkpoint's optimizer state does not fit its own optimizer ({type(e).__name__}): "
                        f"it is damaged; use the other checkpoint in {cfg.out_dir} or retrain") from None
    s.it = s.saved_at = s.it_log = ckpt["iter"]
    s.tokens, s.elapsed_before, s.best_val = ckpt["tokens"], ckpt["elapsed_s"], ckpt["best_val"]
    s.tokens_log = s.tokens
    per_step = s.batches.grad_accum * s.batches.batch_size  # a checkpoint made before epochs has no count: its steps' worth
    s.batches.drawn = ckpt.get("batches_drawn", s.it * per_step)
    if s.env.rank < len(ckpt["torch_rng"]):  # resumed under more processes: the new ones keep their fresh seeds
        torch.set_rng_state(ckpt["torch_rng"][s.env.rank])
        if ckpt.get("cuda_rng") and s.env.device.startswith("cuda"):
            torch.cuda.set_rng_state(ckpt["cuda_rng"][s.env.rank])
    print0(f"resuming {cfg.out_dir} at step {s.it} ({s.tokens:,} tokens, {fmt_time(s.elapsed_before)} spent)")


def announce(cfg, s):
    """The run's header line, model_summary.txt, and wandb when asked (rank 0)."""
    n_params, meta, env = s.model.num_params(), s.meta, s.env
    tokens_per_step = cfg.batch_size * s.micro_steps * env.world * cfg.block_size
    compiled = ""
    if s.graphs:  # compiled
        why = "its graphs are in Inductor's cache" if graphs_cached(s.graphs) else "its first steps compile"
        compiled = f" compiled ({why})"
    print0(f"{cfg.model}: {n_params / 1e6:.2f}M parameters | {meta['dataset']} ({meta['tokenizer']}, "
           f"vocab {meta['vocab_size']}) | device {env.device} {env.dtype}{compiled}"
           f"{f' x{env.world} processes' if env.world > 1 else ''} | {tokens_per_step:,} tokens/step | "
           f"{cfg.optimizer} {cfg.schedule} | {cfg.out_dir}")
    if not env.master:
        return
    with open(os.path.join(cfg.out_dir, "model_summary.txt"), "w") as f:
        f.write(f"{s.model}\n\nparameters: {n_params:,}\nmodel args: "
                f"{json.dumps(model_args(cfg, meta['vocab_size']))}\n")
    if cfg.wandb_log:
        import wandb
        s.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or None,
                             config=dataclasses.asdict(cfg), dir=cfg.out_dir)


# ----------------------------------------------------------------------------- the loop

def train(cfg):
    """Run training as configured; returns the results dict (rank 0) or None (other ranks)."""
    sizing.check(cfg)
    env = setup(cfg.device, cfg.dtype)
    micro = micro_steps(cfg, env)
    cfg, ckpt = checkpoint.start(cfg)  # resume: the run's own config; fine-tune: the checkpoint's shape
    cfg = budget_alone(cfg)
    meta, train_data, val_data = open_train_val(os.path.join(cfg.data_dir, cfg.dataset), cfg.block_size)
    probe_s = 0.0
    if ckpt is None:  # a new model: the context and LR for the budget (where not given), then its size if asked
        cfg = sizing.long_budget(cfg, meta, (train_data, val_data))
        if cfg.auto_size:  # the probe's seconds count in the budget
            cfg, probe_s = sizing.choose(cfg, env, meta["vocab_size"], train_data)
    exact = None  # (the template, the held-out conversations) of eval_file, read before anything is written
    if cfg.eval_file:
        exact = Template(Tokenizer.from_meta(meta)), read_examples(cfg.eval_file)
    with torch.device("meta"):  # the model's options are checked (no weights made) before anything is written
        build_model(cfg.model, model_args(cfg, meta["vocab_size"]))
    if env.master:
        write_config(cfg, env)
    s = build(cfg, env, micro, meta, train_data, val_data, ckpt)
    s.exact = exact
    s.elapsed_before += probe_s
    announce(cfg, s)
    # under DDP rank 0's clock and signals decide for all, through gloo on the CPU (no GPU sync per step)
    control = torch.distributed.new_group(backend="gloo") if env.world > 1 and env.device.startswith("cuda") else None
    bad_step = torch.full((), -1, dtype=torch.long, device=env.device)  # first step whose loss was nan/inf, else -1
    stop = StopFlag()
    start_it = s.it
    while True:
        elapsed, stopping = shared_clock(s.elapsed(), stop.requested, env.world, control)
        progress = progress_of(s.it, elapsed, cfg)
        last_step = progress >= 1.0 or stopping
        if s.it % cfg.eval_interval == 0 or last_step:
            evaluate_and_checkpoint(cfg, s, bad_step, elapsed)
        if last_step:
            break

        lr = get_lr(s.it, progress, cfg)
        set_schedule(s.optimizers, lr, progress, cfg)
        scale = s.scaler.get_scale() if s.scaler.is_enabled() else 0.0
        loss_sum = train_step(s.train_model, s.batches, s.micro_steps, s.optimizers, s.scaler, cfg,
                              env.device, env.dtype, raw=s.model, world=env.world)
        if s.scaler.is_enabled():  # a skipped step halves the scale (get_scale syncs; fp16 only)
            s.skipped += s.scaler.get_scale() < scale
        s.it += 1
        s.tokens += s.batches.step_tokens
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss_sum), s.it, bad_step)  # no sync
        if s.it % cfg.log_interval == 0:
            log_step(cfg, s, loss_sum, bad_step, lr)
    stop.restore()
    if s.graphs and s.it > start_it:  # a step and the evaluations compiled: the next short run compiles too
        mark_graphs_cached(s.graphs)
    s.train_model = control = None  # they hold process groups: dropped, destroy_process_group ends gloo's threads
    return finish(cfg, s)


def budget_alone(cfg):
    """cfg where a time_budget is given and max_iters is not: no step cap (max_iters=0), so the budget alone
    ends the run, as asked (the default's 2,000 steps take a 4 x 128 GPT about 5 minutes on a laptop CPU).
    Not on resume, which keeps the run's own horizon."""
    if cfg.time_budget <= 0 or cfg.max_iters <= 0 or "max_iters" in given_keys(cfg) or cfg.init_from == "resume":
        return cfg
    print0(f"max_iters: none (not {cfg.max_iters:,}), the {cfg.time_budget:g}-minute budget ends the run; "
           f"--max_iters caps the steps")
    return replace(cfg, max_iters=0)


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


def log_event(cfg, s, event, **values):
    """One line of metrics.jsonl (rank 0), and wandb when asked."""
    if not s.env.master:
        return
    path = os.path.join(cfg.out_dir, "metrics.jsonl")
    try:
        with open(path, "a") as f:
            f.write(json.dumps({"event": event, **values}) + "\n")
    except OSError as e:  # e.g. the disk filled up: stop with the checkpoints as they are
        raise UserError(f"cannot write {path}: {e.strerror or e}; the checkpoints in {cfg.out_dir} are "
                        f"untouched (resume with --init_from=resume)") from None
    if s.wandb is not None:
        s.wandb.log({f"{event}/{k}": v for k, v in values.items() if k != "step"}, step=values.get("step"))


def evaluate_and_checkpoint(cfg, s, bad_step, elapsed):
    """Loss on the fixed train and val windows; then save last.pt, and ckpt.pt when val is the best yet."""
    env = s.env
    losses = {name: mean_loss(s.eval_model, batches(), env.device, env.dtype)[0] for name, batches in s.eval_batches.items()}
    val = metrics_for(losses["val"], s.meta["splits"]["val"])
    extra = {}
    if s.exact and env.master:  # greedy answers to held-out instructions
        extra["val_exact"] = exact_match(s.model, *s.exact, env.device, env.dtype)
    print0(f"eval step {s.it}: train {losses['train']:.4f} | val {losses['val']:.4f} | ppl {val['ppl']:.2f} | "
           + (f"exact match {extra['val_exact']:.1%}" if extra else f"{val['bpb']:.3f} bits/byte"))
    log_event(cfg, s, "eval", step=s.it, tokens=s.tokens, train_loss=losses["train"], val_loss=losses["val"],
              val_ppl=val["ppl"], val_bpb=val["bpb"], elapsed_s=round(elapsed, 2), **extra)
    stop_if_diverged(cfg, s, bad_step, losses["val"])  # never overwrite last.pt with a diverged model
    # every process's dropout RNG (a collective: every rank joins)
    rng = {"torch_rng": gather_states(torch.get_rng_state(), env.world, env.device)}
    if env.device.startswith("cuda"):
        rng["cuda_rng"] = gather_states(torch.cuda.get_rng_state(), env.world, env.device)
    s.saved_at = s.it
    if not env.master:
        return
    state = checkpoint.run_state(cfg, s.model, s.optimizers, s.scaler, s.batches, s.it, s.tokens, s.elapsed(),
                                 min(s.best_val, losses["val"]), rng, s.meta)
    save_atomic(state, os.path.join(cfg.out_dir, CKPT_LAST))  # first: a kill between the two saves must not
    if losses["val"] < s.best_val:                              # leave a best checkpoint newer than the latest
        s.best_val = losses["val"]
        save_atomic(state, os.path.join(cfg.out_dir, CKPT_BEST))


def log_step(cfg, s, loss_sum, bad_step, lr):
    """The training loss (the mean over every micro-step of every process), speed and time left."""
    if s.env.world > 1:
        torch.distributed.all_reduce(loss_sum)
    train_loss = loss_sum.item() / s.env.world
    stop_if_diverged(cfg, s, bad_step)
    now = time.time()
    dt = (now - s.t_log) / max(s.it - s.it_log, 1)
    tok_s = (s.tokens - s.tokens_log) / max(now - s.t_log, 1e-9)
    s.t_log, s.it_log, s.tokens_log = now, s.it, s.tokens
    elapsed = s.elapsed()
    left = f" | left {fmt_time(cfg.time_budget * 60 - elapsed)}" if cfg.time_budget > 0 else ""
    left += f" | {s.skipped} fp16 steps skipped" if s.skipped else ""
    print0(f"step {s.it} | loss {train_loss:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s | {dt * 1000:.1f} ms/step"
           f" | elapsed {fmt_time(elapsed)}{left}")
    log_event(cfg, s, "train", step=s.it, tokens=s.tokens, loss=train_loss, lr=lr, tokens_per_s=round(tok_s),
              ms_per_step=round(dt * 1000, 2), elapsed_s=round(elapsed, 2), skipped_steps=s.skipped)


def finish(cfg, s):
    """Tear down DDP, then (rank 0) score the best checkpoint on the splits and write the results."""
    wall = s.elapsed()
    teardown(s.env)
    if not s.env.master:
        return None
    info = {"model": cfg.model, "params": s.model.num_params(), "tokens_seen": s.tokens, "iters": s.it,
            "wall_time_s": round(wall, 1)}
    try:
        results = score_run(cfg.out_dir, os.path.join(cfg.data_dir, cfg.dataset), s.meta, cfg.batch_size,
                            cfg.block_size, s.env.device, s.env.dtype, cfg.final_eval_tokens, run_info=info,
                            eval_file=cfg.eval_file)
        table = write_results(cfg.out_dir, results, f"{cfg.model} on {cfg.dataset}")
        plot_curves(cfg.out_dir)
    except OSError as e:  # e.g. disk full: the checkpoints are saved, only the report is missing
        raise UserError(f"could not write the results in {cfg.out_dir}: {e.strerror or e}; the checkpoints are "
                        f"saved, so free some space and run python evaluate.py --out_dir={cfg.out_dir}") from None
    print0(f"\n{cfg.out_dir}/results.md:\n{table}")
    log_event(cfg, s, "final", step=s.it, tokens=s.tokens, **{k: v for k, v in results.items() if isinstance(v, float)})
    if s.wandb is not None:
        s.wandb.finish()
    return results


# ----------------------------------------------------------------------------- LR range test

def lr_find(cfg):
    """LR range test (Smith): train from scratch while the LR grows exponentially from lr_find_min to
    lr_find_max over lr_find_iters steps; stop when the smoothed loss diverges. Writes out_dir/lr_find.png
    and lr_find.json; returns {"lrs", "losses", "suggested_lr", "min_loss_lr", "diverged"}.
    The suggestion is the LR where the smoothed loss falls fastest (per log-LR), before its minimum."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UserError("lr_find runs in one process: launch it with python, not torchrun")
    env = setup(cfg.device, cfg.dtype)
    data_dir = os.path.join(cfg.data_dir, cfg.dataset)
    meta = load_meta(data_dir)
    train_data = Examples(data_dir, "train", cfg.block_size) if meta.get("kind") == "sft" else open_split(data_dir, "train")
    batches = Batches(train_data, cfg.block_size, cfg.batch_size, cfg.seed, cfg.grad_accum)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, model_args(cfg, meta["vocab_size"])).to(env.device)
    optimizers = make_optimizers(cfg, model, env.device)
    scaler = make_scaler(env.device, env.dtype)
    constant = dataclasses.replace(cfg, schedule="constant")
    growth = (cfg.lr_find_max / cfg.lr_find_min) ** (1 / (cfg.lr_find_iters - 1))
    lrs, losses, avg, best, diverged = [], [], 0.0, float("inf"), False
    print0(f"LR range test: {cfg.lr_find_min:.1e} -> {cfg.lr_find_max:.1e} over {cfg.lr_find_iters} steps")
    for i in range(cfg.lr_find_iters):
        lr = cfg.lr_find_min * growth ** i
        set_schedule(optimizers, lr, 0.0, constant)
        value = train_step(model, batches, cfg.grad_accum, optimizers, scaler, cfg, env.device, env.dtype).item()
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
