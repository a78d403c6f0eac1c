"""
Sample text from a trained run (GPT or LSTM; the checkpoint says which).

    python sample.py                                   # out/quickstart, the run `make` trains
    python sample.py --temperature=1.5                 # hotter; 0 is greedy
    python sample.py --out_dir=out/enwik8 --start="The " --top_k=50 --top_p=0.9 --num_samples=5
    python sample.py --start=FILE:prompt.txt --max_new_tokens=1000 --seed=7

The tokenizer comes from the checkpoint (prepare.py's meta.json is stored in it). Temperature
divides the logits; top_k keeps the k likeliest tokens and top_p the smallest set whose probability
reaches p (0 and 1.0 turn them off).
"""
import os
from dataclasses import dataclass

import torch

import prepare
from configurator import UserError, cli, load_config
from model import generate
from train import CKPT_BEST, autocast, load_checkpoint, model_from_checkpoint, resolve_device, resolve_dtype


@dataclass
class SampleConfig:
    out_dir: str = "out/quickstart"
    ckpt: str = CKPT_BEST
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    num_samples: int = 3
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"

    def validate(self):
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.num_samples < 1 or self.max_new_tokens < 0:
            raise UserError("top_k and max_new_tokens must be >= 0 and num_samples >= 1")


def read_prompt(start):
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the prompt file {path}: {e}") from None


def sample(cfg):
    """Generate cfg.num_samples continuations of the prompt; returns them as strings (prompt included)."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    ckpt = load_checkpoint(os.path.join(cfg.out_dir, cfg.ckpt))
    tok = prepare.Tokenizer.from_meta(ckpt["meta"])
    model = model_from_checkpoint(ckpt).to(device).eval()
    ids = tok.encode(read_prompt(cfg.start))
    if not ids:
        raise UserError("the prompt is empty after tokenization; give --start some text")
    idx = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    with autocast(device, dtype):
        out = generate(model, idx, cfg.max_new_tokens, temperature=cfg.temperature,
                       top_k=cfg.top_k or None, top_p=cfg.top_p, generator=gen)
    return [tok.decode(row.tolist()) for row in out]


def main(argv):
    cfg = load_config(SampleConfig(), argv)
    for text in sample(cfg):
        print(text)
        print("-" * 40)


if __name__ == "__main__":
    cli(main)
