"""
Report a transformer-vs-LSTM comparison: two runs trained on the same data under the same budget.

    make compare                                   # quickstart GPT vs LSTM on pycode, 1.5 minutes each
    make compare DATASET=plwiki BUDGET=120         # seed 001's GPT vs LSTM (config/plwiki_{gpt,lstm}.py)
    python compare.py out/compare-pycode           # just the report, from runs already in gpt/ and lstm/

Reads each run's results.json and metrics.jsonl (written by train.py) and writes into the folder:
report.md (a table of parameters, tokens seen, tokens/s, train/val/test loss, perplexity, bits per
byte and generation tokens/s; then samples from both at the same temperatures), curves_tokens.png and
curves_time.png (val and train loss of both against tokens seen and against wall time).
"""
import json
import os
from dataclasses import dataclass

from configurator import UserError, cli, load_config
from dataloader import load_meta, open_split
from engine import GenerationConfig, Session, parse_temperatures
from tokenizer import Tokenizer

RUNS = ("gpt", "lstm")


@dataclass
class CompareConfig:
    out_dir: str = "out/compare-pycode"
    start: str = ""  # the prompt; "" = the start of the dataset's test split (up to a space)
    temperatures: str = "0.5,1.0,1.5"
    max_new_tokens: int = 300  # per sample; decode tokens/s is measured on these (batch 1, on the CPU)
    seed: int = 1337


def read_run(run_dir):
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir} has no results.json: train it first (make compare trains both runs)")
    with open(path) as f:
        results = json.load(f)
    if results.get("final_eval_cut"):
        raise UserError(f"{run_dir}'s evaluation was cut short: score it again with python evaluate.py "
                        f"--out_dir={run_dir}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        events = [json.loads(line) for line in f]
    return results, events


def plot(runs, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for x_key, x_label, name in (("tokens", "tokens seen", "curves_tokens.png"),
                                 ("elapsed_s", "wall time (s)", "curves_time.png")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for run, (_, events) in runs.items():
            train = [(e[x_key], e["loss"]) for e in events if e["event"] == "train"]
            val = [(e[x_key], e["val_loss"]) for e in events if e["event"] == "eval"]
            line, = ax.plot(*zip(*val), marker=".", label=f"{run} val") if val else (None,)
            if train:
                ax.plot(*zip(*train), alpha=0.4, color=line.get_color() if line else None, label=f"{run} train")
        ax.set_xlabel(x_label)
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.savefig(os.path.join(out_dir, name), dpi=100, bbox_inches="tight")
        plt.close(fig)


def test_prompt(data_dir, tokens=64):
    """The first `tokens` tokens of the test split as text, cut after its last space: a real context both
    models continue mid-line (after a bare newline a char model at a low temperature emits indentation)."""
    meta = load_meta(data_dir)
    split = "test" if "test" in meta["splits"] else "val"  # (instruction data has no test split)
    text = Tokenizer.from_meta(meta).decode(open_split(data_dir, split)[:tokens].tolist())
    return text[:text.rfind(" ") + 1] or text


def verdict(runs):
    """One line: which run reached the lower val loss at equal wall clock, and by how much."""
    (a, ra), (b, rb) = sorted(((run, runs[run][0]) for run in RUNS), key=lambda x: x[1]["val_loss"])
    return (f"**{a}** reaches the lower val loss in the same {ra['wall_time_s'] / 60:.1f} minutes: "
            f"{ra['val_loss']:.4f} against {b}'s {rb['val_loss']:.4f} ({rb['val_loss'] - ra['val_loss']:.4f} nats, "
            f"{ra['val_bpb']:.3f} against {rb['val_bpb']:.3f} bits/byte).")


def compare(cfg):
    runs = {run: read_run(os.path.join(cfg.out_dir, run)) for run in RUNS}
    samples, speeds = {}, {}
    temps = parse_temperatures(cfg.temperatures.split(","))  # with a clear error for a bad one
    with open(os.path.join(cfg.out_dir, "gpt", "config.json")) as f:
        trained = json.load(f)
    start = cfg.start or test_prompt(os.path.join(trained["data_dir"], trained["dataset"]))
    for run in RUNS:  # a Session, as sample.py generates: the same prompt, seed and temperatures for both
        gcfg = GenerationConfig(out_dir=os.path.join(cfg.out_dir, run), num_samples=1,
                                max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, eot=False, device="cpu")
        gcfg.validate()
        session = Session(gcfg)
        results = [session.generate(start, t) for t in temps]
        for t, r in zip(temps, results):
            samples[run, t] = start + r["samples"][0]
        speeds[run] = max(r["decode_tok_s"] or 0.0 for r in results)
    rows = [("parameters", lambda r, e: f"{r['params']:,}"),
            ("tokens seen", lambda r, e: f"{r['tokens_seen']:,}"),
            ("training tokens/s", lambda r, e: f"{r['tokens_seen'] / max(r['wall_time_s'], 1e-9):,.0f}"),
            ("train loss", lambda r, e: f"{r['train_loss']:.4f}"), ("val loss", lambda r, e: f"{r['val_loss']:.4f}"),
            ("test loss", lambda r, e: f"{r['test_loss']:.4f}"),
            ("test perplexity", lambda r, e: f"{r['test_perplexity']:.2f}"),
            ("test bits/byte", lambda r, e: f"{r['test_bpb']:.4f}"),
            ("wall time (s)", lambda r, e: f"{r['wall_time_s']:.0f}")]
    table = "| | " + " | ".join(RUNS) + " |\n|:---|" + "---:|" * len(RUNS) + "\n"
    for name, get in rows:
        table += f"| {name} | " + " | ".join(get(*runs[run]) for run in RUNS) + " |\n"
    table += "| generation tokens/s (batch 1, CPU) | " + " | ".join(f"{speeds[r]:,.0f}" for r in RUNS) + " |\n"
    plot(runs, cfg.out_dir)
    dataset = runs["gpt"][0]["dataset"]
    text = [f"# GPT vs LSTM on {dataset}\n", f"{verdict(runs)}\n\n", table,
            "\n![loss against tokens](curves_tokens.png)\n![loss against wall time](curves_time.png)\n",
            f"\n## Samples (prompt {start!r}, {cfg.max_new_tokens} new tokens, seed {cfg.seed})\n"]
    for t in temps:
        for run in RUNS:
            text.append(f"\n### {run}, temperature {t}\n\n```\n{samples[run, t]}\n```\n")
    path = os.path.join(cfg.out_dir, "report.md")
    with open(path, "w") as f:
        f.write("".join(text))
    print(f"{verdict(runs)}\n\n{table}")
    print(f"wrote {path}")
    return path


def main(argv):
    if argv and not argv[0].startswith("--") and not argv[0].endswith(".py"):
        argv = [f"--out_dir={argv[0]}", *argv[1:]]
    compare(load_config(CompareConfig(), argv))


if __name__ == "__main__":
    cli(main)
