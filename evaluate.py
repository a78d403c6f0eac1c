"""
Score a run's checkpoint on the val and test splits (and as many train tokens as val has), and write
results.json, results.md and learning_curves.png: what train.py does at the end of every run.

    python evaluate.py --out_dir=out/quickstart                    # its best checkpoint, its own dataset
    python evaluate.py --out_dir=out/quickstart --ckpt=last.pt     # the latest state instead
    python evaluate.py --out_dir=out/quickstart --dataset=mybook   # another dataset with the same tokenizer
    python evaluate.py --out_dir=out/quickstart --max_tokens=100000   # the first 100k tokens of each split

On the run's own dataset the results replace out_dir/results.{json,md}; on another one they go to
out_dir/results-<dataset>.{json,md}. Every token of a split is scored once, in consecutive windows of the
run's block_size (see metrics.py). Ctrl-C cuts the scoring short and writes what was scored.
"""
import os
from dataclasses import dataclass

from checkpoint import CKPT_BEST, check_same_tokenizer, load_checkpoint
from common import print0, setup
from configurator import UserError, cli, load_config
from dataloader import load_meta
from metrics import plot_curves, score_run, write_results


@dataclass
class EvaluateConfig:
    out_dir: str = "out/quickstart"  # the run to score
    ckpt: str = CKPT_BEST  # which of its checkpoints: ckpt.pt (the best val loss) or last.pt
    dataset: str = ""  # a prepared dataset with the run's tokenizer; "" = the run's own
    data_dir: str = "data"
    max_tokens: int = 0  # tokens of each split to score; 0 = all
    eval_file: str = ""  # instruction data (Alpaca/chat): also the greedy exact match of its answers
    batch_size: int = 0  # windows per forward pass; 0 = the run's
    device: str = "auto"
    dtype: str = "auto"

    def validate(self):
        if self.max_tokens < 0 or self.batch_size < 0:
            raise UserError("max_tokens and batch_size must be >= 0 (0 = all, and the run's)")


def evaluate(cfg):
    """Score the checkpoint; write and return its results."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UserError("evaluate.py runs in one process: launch it with python, not torchrun")
    ckpt = load_checkpoint(os.path.join(cfg.out_dir, cfg.ckpt))
    run = ckpt["config"]
    dataset = cfg.dataset or run["dataset"]
    data_dir = os.path.join(cfg.data_dir, dataset)
    meta = load_meta(data_dir)
    check_same_tokenizer(ckpt, meta, data_dir)
    env = setup(cfg.device, cfg.dtype)
    info = {"model": ckpt["model_kind"], "iters": ckpt["iter"], "tokens_seen": ckpt.get("tokens"),
            "wall_time_s": round(ckpt.get("elapsed_s", 0.0), 1)}
    results = score_run(cfg.out_dir, data_dir, meta, cfg.batch_size or run["batch_size"], run["block_size"],
                        env.device, env.dtype, cfg.max_tokens, cfg.ckpt, run_info=info, eval_file=cfg.eval_file)
    del ckpt
    own = dataset == run["dataset"]
    stem = "results" if own else f"results-{dataset}"
    try:
        table = write_results(cfg.out_dir, results, f"{info['model']} ({run['dataset']}) on {dataset}", stem)
        if own and os.path.exists(os.path.join(cfg.out_dir, "metrics.jsonl")):
            plot_curves(cfg.out_dir)
    except OSError as e:
        raise UserError(f"could not write the results in {cfg.out_dir}: {e.strerror or e}") from None
    print0(f"{cfg.out_dir}/{stem}.md:\n{table}")
    return results


def main(argv):
    evaluate(load_config(EvaluateConfig(), argv))


if __name__ == "__main__":
    cli(main)
