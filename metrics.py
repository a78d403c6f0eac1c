"""
Scoring a model: the loss on fixed windows that training logs, the loss over whole splits that a
run's results report, what those losses mean (perplexity, bits per token, bits per byte), and the
files that hold them (results.json, results.md, learning_curves.png).

    loss = mean_loss(model, window_batches(data, starts, batch_size, block_size), device, dtype)  # fixed windows
    loss, n = evaluate_split(model, data, batch_size, block_size, device, dtype)      # every token once
    results = score_run(out_dir, data_dir, ...)       # a run's best checkpoint on train sample, val, test

The two losses estimate different things. mean_loss over fixed windows (the `eval` lines, the curves)
averages eval_iters x batch_size windows drawn once at random, each prediction seeing its window's
context so far. evaluate_split scores every token of a split once, in consecutive windows of block_size
(a window's first tokens see less context), and is what results report, for the best checkpoint.
"""
import contextlib
import json
import math
import os

import torch

from checkpoint import CKPT_BEST, load_checkpoint, model_from_checkpoint
from common import StopFlag, autocast, fmt_time, print0
from chat import Template, read_examples
from dataloader import Examples, open_split, splits_of, windows
from engine import stream
from tokenizer import Tokenizer


@torch.no_grad()
def mean_loss(model, batches, device, dtype, stop=None):
    """(the mean loss over every target token (>= 0) of an iterable of (x, y) batches, how many were
    scored); once stop (a StopFlag) is requested, what was scored so far (None if nothing)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        if stop and stop.requested:
            break
        with autocast(device, dtype):
            _, loss = model(x.to(device), y.to(device))  # the mean over the batch's target tokens
        n = int((y >= 0).sum())
        total, count = total + loss.item() * n, count + n
    model.train()
    return (total / count if count else None), count


def window_batches(data, starts, batch_size, block_size):
    """The (x, y) batches of windows starting at `starts` (estimate_loss's fixed windows)."""
    return (windows(data, starts[i:i + batch_size], block_size) for i in range(0, len(starts), batch_size))


def example_batches(examples, indices, batch_size):
    """The (x, y) batches of these whole examples (instruction data)."""
    return (examples.batch(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size))


def evaluate_split(model, data, batch_size, block_size, device, dtype, max_tokens=0, stop=None):
    """Mean loss over a whole split (or its first max_tokens), every token scored once, in consecutive
    windows of block_size (the last one shorter). Returns (loss, tokens scored), as mean_loss."""
    n = len(data) - 1 if max_tokens <= 0 else min(len(data) - 1, max_tokens)
    full = list(range(0, n - block_size + 1, block_size))

    def batches():  # made as they are scored: a whole split at once would be a copy of it in int64
        yield from window_batches(data, full, batch_size, block_size)
        if n % block_size:
            yield windows(data, [n - n % block_size], n % block_size)
    return mean_loss(model, batches(), device, dtype, stop)


@torch.no_grad()
def exact_match(model, template, examples, device, dtype, extra_tokens=2):
    """The fraction of conversations whose last assistant turn the model reproduces exactly, greedily, from
    the turns before it: generation stops at the end-of-turn token or extra_tokens past the answer's length."""
    model.eval()
    hits = 0
    for messages in examples:
        answer = messages[-1]["content"]
        idx = torch.tensor([template.prompt(messages[:-1])], device=device)
        got = []
        with autocast(device, dtype):
            for nxt in stream(model, idx, len(template.tok.encode(answer)) + extra_tokens, temperature=0):
                if nxt.item() == template.eot:
                    break
                got.append(nxt.item())
        hits += template.tok.decode(got).strip() == answer.strip()
    model.train()
    return hits / max(len(examples), 1)


def metrics_for(loss, split_stats):
    """Perplexity, bits per token and bits per byte of the split's source text for a mean loss in nats."""
    tokens_per_byte = split_stats["tokens"] / max(split_stats["bytes"], 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bits_per_token": loss / math.log(2),
            "bpb": loss * tokens_per_byte / math.log(2)}


# ----------------------------------------------------------------------------- a run's results

def score_run(out_dir, data_dir, meta, batch_size, block_size, device, dtype, max_tokens=0, ckpt_name=CKPT_BEST,
              run_info=None, eval_file=""):
    """Score out_dir's checkpoint on the train sample, val and test splits of data_dir. The train split is
    large: as many of its tokens are scored as of val. max_tokens > 0 caps each split. Instruction data
    (kind "sft") is scored on its assistant tokens, val and as many train examples, and with an eval_file
    on the greedy exact match of its answers. SIGINT/SIGTERM cut the scoring short: the results then hold
    what was scored (a split not reached scores null) with final_eval_cut true. Returns the results dict
    (run_info's entries first)."""
    ckpt = load_checkpoint(os.path.join(out_dir, ckpt_name))
    model = model_from_checkpoint(ckpt).to(device)
    results = {"params": model.num_params(), **(run_info or {}), "dataset": meta["dataset"], "checkpoint": ckpt_name,
               "checkpoint_step": ckpt["iter"]}
    stop = StopFlag("cutting the evaluation short, keeping what was scored")
    print0(f"evaluating {ckpt_name} (step {ckpt['iter']}) on {meta['dataset']}: the train sample, val and test "
           f"(Ctrl-C or SIGTERM cuts it short)")
    sft = meta.get("kind") == "sft"
    try:
        for split in splits_of(meta):
            if sft:
                examples = Examples(data_dir, split, block_size)
                chosen = list(range(len(examples) if split != "train" else min(len(examples), meta["splits"]["val"]["examples"])))
                loss, n = mean_loss(model, example_batches(examples, chosen, batch_size), device, dtype, stop)
                total = examples.targets(range(len(examples)))
            else:
                data = open_split(data_dir, split)
                cap = max_tokens if split != "train" else (max_tokens or meta["splits"]["val"]["tokens"])
                loss, n = evaluate_split(model, data, batch_size, block_size, device, dtype, cap, stop)
                total = max(len(data) - 1, 0)
            m = metrics_for(loss, meta["splits"][split]) if n else dict.fromkeys(("ppl", "bpb", "bits_per_token"))
            if sft:  # the assistant's tokens are not the split's text: no bytes to divide by
                m["bpb"] = None
            results.update({f"{split}_loss": loss, f"{split}_perplexity": m["ppl"], f"{split}_bpb": m["bpb"],
                            f"{split}_bits_per_token": m["bits_per_token"], f"{split}_tokens_scored": n,
                            f"{split}_tokens": total})
        if eval_file and not stop.requested:
            template = Template(Tokenizer.from_meta(meta))
            results["exact_match"] = exact_match(model, template, read_examples(eval_file), device, dtype)
            results["exact_match_file"] = eval_file
    finally:
        stop.restore()
    results["final_eval_cut"] = stop.requested
    return results


def results_table(results):
    """results.md's tables: the splits (val first: the one runs are compared on), then the run."""
    rows = ["| split | loss (nats/token) | perplexity | bits/byte | tokens scored |", "|:---|--:|--:|--:|--:|"]
    for split, name in (("val", "val"), ("test", "test"), ("train", "train (sample)")):
        if f"{split}_tokens" not in results:
            continue  # instruction data has no test split
        n, total = results[f"{split}_tokens_scored"], results[f"{split}_tokens"]
        share = "all" if n >= total else f"{n / max(total, 1):.0%}"
        rows.append(f"| {name} | {_cell(results[f'{split}_loss'])} | {_cell(results[f'{split}_perplexity'], 2)} | "
                    f"{_cell(results[f'{split}_bpb'])} | {n:,} of {total:,} ({share}) |")
    if "exact_match" in results:
        rows.append(f"\nGreedy exact match on {results['exact_match_file']}: **{results['exact_match']:.1%}**")
    run = [("model", results.get("model")), ("parameters", results.get("params")),
           ("checkpoint", f"{results['checkpoint']} (step {results['checkpoint_step']:,})"),
           ("steps", results.get("iters")), ("tokens seen", results.get("tokens_seen")),
           ("wall time", fmt_time(results["wall_time_s"]) if "wall_time_s" in results else None)]
    rows += ["", "| run | |", "|:---|:---|"] + [f"| {k} | {_cell(v)} |" for k, v in run if v is not None]
    return "\n".join(rows) + "\n"


def write_results(out_dir, results, title, stem="results"):
    """out_dir/{stem}.json and {stem}.md; returns the markdown."""
    partial = [s for s in ("val", "test") if f"{s}_tokens" in results and results[f"{s}_tokens_scored"] < results[f"{s}_tokens"]]
    notes = []
    if results["final_eval_cut"]:
        notes.append(f"**The evaluation was cut short**: {stem}.json holds what was scored; `python evaluate.py "
                     f"--out_dir={out_dir}` scores it again.")
    elif partial:
        notes.append(f"Only part of {' and '.join(partial)} was scored (a cap: final_eval_tokens in training, "
                     f"--max_tokens in evaluate.py); `python evaluate.py --out_dir={out_dir}` scores the whole splits.")
    notes.append("These losses score every token of a split once, in consecutive windows (a window's first "
                 "tokens see less context). The val loss logged during training (metrics.jsonl, "
                 "learning_curves.png) is another estimate: fixed random windows of val, at each evaluation.")
    text = f"# {title}\n\n{results_table(results)}\n" + "\n\n".join(notes) + "\n"
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(text)
    return text


def _cell(value, digits=4):
    if value is None:
        return "not scored"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def read_events(out_dir):
    """metrics.jsonl's events; a line torn by a crash or a full disk is skipped."""
    events = []
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def plot_curves(out_dir):
    """learning_curves.png: train and val loss against tokens seen (and the exact match, if evaluated)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    events = read_events(out_dir)
    train = [(e["tokens"], e["loss"]) for e in events if e["event"] == "train"]
    val = [(e["tokens"], e["val_loss"]) for e in events if e["event"] == "eval"]
    exact = [(e["tokens"], e["val_exact"]) for e in events if e["event"] == "eval" and "val_exact" in e]
    fig, ax = plt.subplots(figsize=(8, 5))
    for points, label in ((train, "train"), (val, "val (fixed windows)")):
        if points:
            ax.plot(*zip(*points), label=label, marker="." if label != "train" else None)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.legend(loc="upper left")
    if exact:  # instruction fine-tuning with an eval_file: the greedy exact match, on its own axis
        right = ax.twinx()
        right.plot(*zip(*exact), color="tab:green", marker="o", label="exact match (eval_file)")
        right.set_ylabel("greedy exact match")
        right.set_ylim(0, 1)
        right.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.savefig(os.path.join(out_dir, "learning_curves.png"), dpi=100, bbox_inches="tight")
    plt.close(fig)
