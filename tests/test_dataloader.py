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
