"""
Reading prepared data: a dataset folder's meta.json and its splits as token ids, and the batches
training and evaluation draw from them.

    meta = load_meta("data/pycode")                  # what prepare.py wrote: tokenizer, vocab, split sizes
    ids = open_split("data/pycode", "val")           # a read-only memmap of token ids, checked against meta.json
    batches = Batches(ids, block_size, batch_size, seed)
    x, y = batches.next()                            # (B, T) inputs and targets, int64

A split is raw little-endian uint16 token ids (prepare.py writes it), or uint32 where meta.json says
token_dtype=uint32 (vocabularies over 65,535 tokens). Batches draws random windows
from a generator of its own, so the stream is reproducible, resumable and the same under DDP.
"""
import json
from pathlib import Path

import numpy as np
import torch

from configurator import UserError

SPLITS = ("train", "val", "test")
NAMED_DATASETS = ("pycode", "enwik8", "wikitext2", "plwiki")  # prepare.py's own (the rest come from text)
CHECK_CHUNK = 1 << 24  # open_split(check_ids=True) reads this many tokens at a time


def load_meta(data_dir):
    """meta.json of a prepared dataset folder (e.g. data/pycode)."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        name = Path(data_dir).name
        how = f"python prepare.py {name}" if name in NAMED_DATASETS else f"python prepare.py text --input=FILE --name={name}"
        raise UserError(f"dataset not prepared: run `{how}` (no {path})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}): prepare the dataset again") from None
    if not isinstance(meta, dict) or meta.get("format") != 1:
        raise UserError(f"{path} is not format 1 meta.json (this code reads format 1): prepare it again")
    if not {"tokenizer", "vocab_size", "splits"} <= set(meta) or not set(SPLITS) <= set(meta["splits"]):
        raise UserError(f"{path} lacks tokenizer, vocab_size or a split's counts: prepare the dataset again")
    return meta


def open_split(data_dir, split, check_ids=False):
    """The token ids of one split as a read-only memmap (uint16, or meta.json's token_dtype), checked against it."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    meta = load_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    again = f"run `{meta.get('source', {}).get('command', 'python prepare.py ' + Path(data_dir).name)}` again"
    if not path.is_file():
        raise UserError(f"{path} is missing: {again}")
    name = meta.get("token_dtype", "uint16")  # older meta.json files have none: uint16
    if name not in ("uint16", "uint32"):
        raise UserError(f"{Path(data_dir) / 'meta.json'} has token_dtype={name}, not uint16 or uint32: {again}")
    dtype = np.dtype(name).newbyteorder("<")
    size = path.stat().st_size
    if size % dtype.itemsize:
        odd = "an odd size" if dtype.itemsize == 2 else "a size that is no multiple of 4"
        raise UserError(f"{path} has {odd} ({size} bytes), so it is not {name} tokens: {again}")
    expected = meta["splits"][split]["tokens"]
    if size // dtype.itemsize != expected:
        raise UserError(f"{path} holds {size // dtype.itemsize:,} tokens but meta.json says {expected:,}: {again}")
    if expected == 0:
        return np.zeros(0, dtype=dtype)
    ids = np.memmap(path, dtype=dtype, mode="r")
    top = max(int(ids[i:i + CHECK_CHUNK].max()) for i in range(0, len(ids), CHECK_CHUNK)) if check_ids else 0
    if top >= meta["vocab_size"]:  # a bigger id would crash the embedding (or assert on a GPU) mid-run
        raise UserError(f"{path} holds token id {top} >= vocab_size {meta['vocab_size']}: {again}")
    return ids


def open_train_val(data_dir, block_size):
    """meta.json and the train and val splits, checked (test.bin too, though it is read only at the end)."""
    meta = load_meta(data_dir)
    train_data, val_data = (open_split(data_dir, s, check_ids=True) for s in ("train", "val"))
    open_split(data_dir, "test")  # a missing test.bin should not wait for the end of the run
    for name, data in (("train", train_data), ("val", val_data)):
        if len(data) <= block_size:
            raise UserError(f"block_size={block_size} is too long for the {name} split of {len(data)} tokens; "
                            f"lower --block_size")
    return meta, train_data, val_data


class Batches:
    """Random windows of a memmapped split, drawn from a generator of their own so the stream is
    reproducible and resumable (its state goes into the checkpoint).

    Every process draws the same stream: each optimizer step takes grad_accum * batch_size window starts
    from the shared generator, and process `rank` of `world` trains on micro-batches rank*k .. rank*k+k-1
    of them (k = grad_accum // world). So N processes see exactly the windows one process with the same
    grad_accum sees, and a run resumes under any number of processes."""

    def __init__(self, data, block_size, batch_size, seed, grad_accum=1, rank=0, world=1):
        if len(data) <= block_size:
            raise UserError(f"block_size={block_size} is too long for a split of {len(data)} tokens; "
                            f"lower --block_size")
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.grad_accum, self.rank, self.per_rank = grad_accum, rank, grad_accum // world
        self.gen = torch.Generator().manual_seed(seed)
        self.pending = []  # this process's micro-batch starts left in the current step

    def next(self):
        if not self.pending:
            ix = torch.randint(len(self.data) - self.block_size, (self.grad_accum, self.batch_size), generator=self.gen)
            self.pending = ix[self.rank * self.per_rank:(self.rank + 1) * self.per_rank].tolist()
        return windows(self.data, self.pending.pop(0), self.block_size)


def windows(data, starts, block_size):
    """Inputs data[s : s+T] and targets data[s+1 : s+T+1] for each start s, as int64 tensors (B, T)."""
    x = np.stack([data[s:s + block_size] for s in starts]).astype(np.int64)
    y = np.stack([data[s + 1:s + 1 + block_size] for s in starts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def fixed_starts(n_tokens, block_size, count, seed):
    """The same `count` window starts every time: the deterministic estimate used during training."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(n_tokens - block_size, (count,), generator=gen).tolist()
