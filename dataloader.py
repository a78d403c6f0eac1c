"""
Reading prepared data: a dataset folder's meta.json and its splits as token ids, and the batches
training and evaluation draw from them.

    meta = load_meta("data/pycode")                  # what prepare.py wrote: tokenizer, vocab, split sizes
    ids = open_split("data/pycode", "val")           # a read-only memmap of token ids, checked against meta.json
    batches = Batches(ids, block_size, batch_size, seed)   # (or Examples(dir, split, block_size): whole examples)
    x, y = batches.next()                            # (B, T) inputs and targets, int64

A split is raw little-endian uint16 token ids (prepare.py writes it), or uint32 where meta.json says
token_dtype=uint32 (vocabularies over 65,535 tokens). Batches draws in epochs, each a shuffled
tiling of the split, from its seed alone, so the stream is reproducible, resumable and the same under DDP.
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
    if not {"tokenizer", "vocab_size", "splits"} <= set(meta) or not set(splits_of(meta)) <= set(meta["splits"]):
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


def splits_of(meta):
    """The splits a prepared dataset has: instruction data (kind "sft") has no test split."""
    return SPLITS[:2] if meta.get("kind") == "sft" else SPLITS


def open_train_val(data_dir, block_size):
    """meta.json and the train and val splits, checked (test.bin too, though it is read only at the end).
    For instruction data (kind "sft") the splits are Examples."""
    meta = load_meta(data_dir)
    if meta.get("kind") == "sft":
        return meta, *(Examples(data_dir, s, block_size) for s in ("train", "val"))
    train_data, val_data = (open_split(data_dir, s, check_ids=True) for s in ("train", "val"))
    open_split(data_dir, "test")  # a missing test.bin should not wait for the end of the run
    for name, data in (("train", train_data), ("val", val_data)):
        if len(data) <= block_size:
            raise UserError(f"block_size={block_size} is too long for the {name} split of {len(data)} tokens; "
                            f"lower --block_size")
    return meta, train_data, val_data


class Batches:
    """Batches of a split, drawn in epochs: each epoch is a fresh order of all of the split's items, so
    every item is trained on once before any is seen again. Items are windows of block_size tokens that
    tile a token split from a random offset (Windows), or the whole examples of an instruction split
    (Examples). An epoch's order comes from (seed, epoch) alone, so the stream is reproducible, and its
    whole state is how many items were drawn (`drawn`, which goes into the checkpoint).

    Every process draws the same stream: each optimizer step takes grad_accum * batch_size items, and
    process `rank` of `world` trains on micro-batches rank*k .. rank*k+k-1 of them (k = grad_accum // world).
    So N processes see exactly the batches one process with the same grad_accum sees, and a run resumes
    under any number of processes. For the step drawn last, step_targets counts the tokens trained on (over
    every process: the loss of each micro-batch is weighted by its share of them) and step_tokens the input
    tokens, padding left out."""

    def __init__(self, data, block_size, batch_size, seed, grad_accum=1, rank=0, world=1):
        self.source = data if isinstance(data, Examples) else Windows(data, block_size)
        self.batch_size, self.seed = batch_size, seed
        self.grad_accum, self.rank, self.per_rank = grad_accum, rank, grad_accum // world
        self.drawn = 0  # items drawn so far, over all epochs
        self.epoch, self.order = None, None  # the current epoch and its order of items
        self.pending = []  # this process's micro-batches (their items) left in the current step
        self.step_targets = self.step_tokens = 0

    def next(self):
        if not self.pending:
            ix = [self.take(self.batch_size) for _ in range(self.grad_accum)]
            self.step_targets = sum(self.source.targets(row) for row in ix)
            self.step_tokens = sum(self.source.tokens(row) for row in ix)
            self.pending = ix[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        return self.source.batch(self.pending.pop(0))

    def take(self, n):
        """The next n items of the stream (an epoch that ends mid-batch is continued by the next)."""
        items = []
        while len(items) < n:
            epoch, i = divmod(self.drawn, len(self.source))
            if epoch != self.epoch:
                self.epoch, self.order = epoch, self.source.order(np.random.default_rng((self.seed, epoch)))
            got = self.order[i:i + n - len(items)].tolist()
            items += got
            self.drawn += len(got)
        return items


class Windows:
    """A token split as windows of block_size tokens (and their targets, one token on): each epoch tiles
    the split with them from a random offset, so epochs see different cuts of the text."""

    def __init__(self, data, block_size):
        if len(data) <= block_size:
            raise UserError(f"block_size={block_size} is too long for a split of {len(data)} tokens; "
                            f"lower --block_size")
        self.data, self.block_size = data, block_size
        self.n_starts = len(data) - block_size  # a window can start at 0 .. n_starts - 1

    def __len__(self):  # windows an epoch has
        return max(1, self.n_starts // self.block_size)

    def order(self, rng):
        """One epoch's window starts: a tiling from a random offset, shuffled."""
        offset = int(rng.integers(self.n_starts - (len(self) - 1) * self.block_size))
        return offset + rng.permutation(len(self)) * self.block_size

    def batch(self, starts):
        return windows(self.data, starts, self.block_size)

    def tokens(self, starts):  # every target of a window is trained on
        return len(starts) * self.block_size

    targets = tokens


def windows(data, starts, block_size):
    """Inputs data[s : s+T] and targets data[s+1 : s+T+1] for each start s, as int64 tensors (B, T)."""
    x = np.stack([data[s:s + block_size] for s in starts]).astype(np.int64)
    y = np.stack([data[s + 1:s + 1 + block_size] for s in starts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


class Examples:
    """The whole examples of an instruction split (prepare.py sft), each one row of a batch: inputs are
    its tokens but the last, targets the tokens after, -1 where the mask is 0 (the prompt) and where the
    row is padded to the batch's longest example (at most block_size). One example per row, so no
    example's tokens attend to another's; the loss falls on the assistant's tokens only."""

    def __init__(self, data_dir, split, block_size):
        self.ids = open_split(data_dir, split, check_ids=True)
        path = Path(data_dir)
        try:
            self.mask = np.memmap(path / f"{split}.mask", dtype=np.uint8, mode="r")
            self.starts = np.fromfile(path / f"{split}.idx", dtype=np.int64)
        except (OSError, ValueError):
            raise UserError(f"{path} lacks {split}.mask or {split}.idx: prepare it again with prepare.py sft") from None
        if len(self.mask) != len(self.ids) or len(self.starts) < 2 or self.starts[-1] != len(self.ids):
            raise UserError(f"{path}'s {split}.mask or {split}.idx does not match {split}.bin: prepare it again")
        self.block_size = block_size

    def __len__(self):
        return len(self.starts) - 1

    def order(self, rng):
        """One epoch's examples, shuffled."""
        return rng.permutation(len(self))

    def batch(self, indices):
        """(x, y) int64 (B, L) of these examples, L the longest's length - 1 (at most block_size)."""
        rows = [(self.starts[i], min(self.starts[i + 1], self.starts[i] + self.block_size + 1)) for i in indices]
        L = max(e - s for s, e in rows) - 1
        x = np.zeros((len(rows), L), dtype=np.int64)
        y = np.full((len(rows), L), -1, dtype=np.int64)
        for r, (s, e) in enumerate(rows):
            x[r, :e - s - 1] = self.ids[s:e - 1]
            y[r, :e - s - 1] = np.where(self.mask[s + 1:e] > 0, self.ids[s + 1:e].astype(np.int64), -1)
        return torch.from_numpy(x), torch.from_numpy(y)

    def tokens(self, indices):
        """The input tokens of these examples (at most block_size each), padding left out."""
        return sum(int(min(self.starts[i + 1] - self.starts[i] - 1, self.block_size)) for i in indices)

    def targets(self, indices):
        """How many tokens of these examples are trained on (their masked targets within block_size)."""
        return sum(int(self.mask[s + 1:min(e, s + self.block_size + 1)].sum())
                   for s, e in ((self.starts[i], self.starts[i + 1]) for i in indices))


def fixed_starts(n_tokens, block_size, count, seed):
    """The same `count` window starts every time: the deterministic estimate used during training."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(n_tokens - block_size, (count,), generator=gen).tolist()
