"""dataloader.py: training batches (targets shifted by one, a seeded stream) and reading a prepared split
(load_meta, open_split and every way a split can be missing or damaged). What train.py says about damaged
datasets is test_errors.py's."""
import numpy as np
import pytest
import torch

import dataloader
import prepare
from configurator import UserError


def test_batches_targets_shift_and_seeded_stream():
    data = np.arange(1000, dtype=np.uint16)
    a = dataloader.Batches(data, block_size=8, batch_size=4, seed=3)
    x, y = a.next()
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    b = dataloader.Batches(data, block_size=8, batch_size=4, seed=3)
    assert torch.equal(b.next()[0], x)
    assert not torch.equal(a.next()[0], x)  # the stream moves on
    with pytest.raises(UserError, match="block_size=2000 is too long"):
        dataloader.Batches(data, block_size=2000, batch_size=4, seed=0)


def test_an_epoch_trains_on_every_window_once_then_the_next_cuts_the_text_elsewhere():
    data = np.arange(1000, dtype=np.uint16)  # a window's first input token is its start
    a = dataloader.Batches(data, block_size=8, batch_size=4, seed=3)
    per_epoch = len(a.source)
    assert per_epoch == (1000 - 8) // 8
    epochs = []
    for _ in range(4):
        starts = []
        while len(starts) < per_epoch:
            starts += a.next()[0][:, 0].tolist()
        epochs.append(sorted(starts[:per_epoch]))
        assert starts[per_epoch:] == []  # 124 windows are 31 batches of 4
    for e in epochs:  # one tiling: every window once, none overlapping, from an offset under one window
        assert np.all(np.diff(e) == 8) and e[0] < 8 and e[-1] + 8 < 1000
    assert len({e[0] for e in epochs}) > 1
    b = dataloader.Batches(data, block_size=8, batch_size=4, seed=3)  # resumed mid-epoch from its count alone
    b.drawn = 3 * per_epoch + 40
    c = dataloader.Batches(data, block_size=8, batch_size=4, seed=3)
    for _ in range((3 * per_epoch + 40) // 4):
        c.next()
    assert all(torch.equal(b.next()[0], c.next()[0]) for _ in range(30))  # and on, across the next epoch


def test_a_split_barely_longer_than_a_window_still_has_an_epoch():
    data = np.arange(300, dtype=np.uint16)
    a = dataloader.Batches(data, block_size=256, batch_size=3, seed=0)
    assert len(a.source) == 1
    x, y = a.next()
    assert x.shape == (3, 256) and int(y.max()) < 300


def test_open_split_validation(tmp_path):
    with pytest.raises(UserError, match=r"dataset not prepared: run `python prepare.py pycode`"):
        dataloader.load_meta(tmp_path / "pycode")
    with pytest.raises(UserError, match=r"python prepare.py text --input=FILE --name=mine"):
        dataloader.open_split(tmp_path / "mine", "train")
    path = tmp_path / "t.txt"
    path.write_text("hello there\n" * 300, encoding="utf-8")
    prepare.main(["text", f"--input={path}", f"--data_dir={tmp_path}"])
    data = tmp_path / "t"
    with pytest.raises(UserError, match="unknown split 'valid'"):
        dataloader.open_split(data, "valid")
    good = (data / "val.bin").read_bytes()
    (data / "val.bin").write_bytes(good + b"\0")
    with pytest.raises(UserError, match=f"odd size.*run `python prepare.py text .*--input={path}` again"):
        dataloader.open_split(data, "val")
    (data / "val.bin").write_bytes(good[:-2])
    with pytest.raises(UserError, match="meta.json says"):
        dataloader.open_split(data, "val")
    (data / "val.bin").write_bytes(good[:-2] + np.uint16(999).tobytes())
    assert dataloader.open_split(data, "val")[-1] == 999
    with pytest.raises(UserError, match="token id 999 >= vocab_size"):
        dataloader.open_split(data, "val", check_ids=True)
    (data / "val.bin").unlink()
    with pytest.raises(UserError, match="val.bin is missing"):
        dataloader.open_split(data, "val")
