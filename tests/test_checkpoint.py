"""checkpoint.py: the atomic save, the start path (fine-tuning from a run onto new data with the same tokenizer;
resume refusing flags for another architecture or optimizer), the tokenizer check, and checkpoints free of
compile/DDP wrapper prefixes. The run lock and damaged or mismatched checkpoints as users meet them are
test_errors.py's; kills and full disks during a run, test_train_faults.py's."""
import json

import pytest
import torch

import checkpoint
import train
from configurator import UserError
from conftest import SMALL, cfg_of, events, run_small, run_small_log5
from model import build_model


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    checkpoint.save_atomic({"a": 1}, str(path))

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint is untouched"):
        checkpoint.save_atomic({"a": 2}, str(path))
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"a": 1}
    assert not (tmp_path / "ckpt.pt.tmp").exists()



# ----------------------------------------------------------------------------- start path: fine-tune and resume

def test_fine_tune_from_a_run_dir_onto_new_data_with_the_same_tokenizer(corpus, tmp_path, capsys):
    base = tmp_path / "base"
    run_small(corpus, base, "--max_iters=30", "--eval_interval=30", dataset="code_b")
    base_ckpt = torch.load(base / "ckpt.pt", weights_only=True)
    tuned = tmp_path / "tuned"
    results = run_small(corpus, tuned, "--max_iters=6", "--eval_interval=3", f"--init_from={base}",
                        "--n_layer=3", "--lr=1e-3", dataset="other_b")
    assert "fine-tuning keeps the checkpoint's shape: n_layer=2" in capsys.readouterr().out
    assert results["iters"] == 6 and results["dataset"] == "other_b"  # a fresh schedule: step 0 to 6
    first_eval = events(tuned, "eval")[0]
    scratch = tmp_path / "scratch"
    run_small(corpus, scratch, "--max_iters=1", "--eval_interval=1", dataset="other_b")
    assert first_eval["val_loss"] < events(scratch, "eval")[0]["val_loss"] - 0.5  # started from trained weights
    ckpt = torch.load(tuned / "last.pt", weights_only=True)
    assert ckpt["optimizer"][-1]["state"][0]["step"] == 6  # a fresh optimizer (the base's had 30 steps)
    assert base_ckpt["optimizer"][-1]["state"][0]["step"] == 30
    with pytest.raises(UserError, match="trained on a byte vocabulary of 256.*has char with"):
        run_small(corpus, tmp_path / "bad", "--max_iters=2", f"--init_from={base}", dataset="code")
    with pytest.raises(UserError, match="init_from=nowhere is neither"):
        run_small(corpus, tmp_path / "bad", "--max_iters=2", "--init_from=nowhere")


def test_char_vocabularies_must_match_exactly(corpus, tmp_path):
    """Same tokenizer kind and size but other characters: the ids mean different things, so it is refused."""
    meta = json.loads((corpus / "data" / "code" / "meta.json").read_text())
    ckpt = {"meta": {**meta, "vocab": meta["vocab"][::-1]}}
    with pytest.raises(UserError, match="listing different tokens"):
        checkpoint.check_same_tokenizer(ckpt, meta, "data/code")
    checkpoint.check_same_tokenizer({"meta": meta}, meta, "data/code")


def test_resume_refuses_flags_for_another_architecture_or_optimizer(corpus, tmp_path):
    out = tmp_path / "run"
    run_small_log5(corpus, out, "--max_iters=5", "--eval_interval=5")  # TrainConfig's defaults
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".pt"}
    d = train.TrainConfig()
    other = {"norm": "layernorm" if d.norm == "rmsnorm" else "rmsnorm", "qk_norm": not d.qk_norm,
             "optimizer": "sgd", "activation": "gelu_tanh", "zero_init": not d.zero_init}
    for key, value in other.items():  # (a flag equal to the default cannot be told apart from no flag)
        with pytest.raises(UserError, match=f"resume keeps the model and optimizer of the checkpoint.*{key}"):
            run_small_log5(corpus, out, "--max_iters=10", "--init_from=resume", f"--{key}={value}")
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".pt"}


def test_a_run_saved_before_decay_embeddings_resumes_with_its_optimizer(corpus, tmp_path):
    out = tmp_path / "run"
    run_small_log5(corpus, out, "--max_iters=5", "--eval_interval=5", "--decay_embeddings=True")
    for name in ("ckpt.pt", "last.pt"):  # as saved before the key, when AdamW decayed the embedding and head
        ckpt = torch.load(out / name, weights_only=True)
        del ckpt["config"]["decay_embeddings"]
        torch.save(ckpt, out / name)
    run_small_log5(corpus, out, "--max_iters=8", "--eval_interval=4", "--init_from=resume")
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["iter"] == 8 and ckpt["config"]["decay_embeddings"] is True
    assert len(ckpt["optimizer"][1]["param_groups"][0]["params"]) == 2  # AdamW decays the embedding and head


# ----------------------------------------------------------------------------- what a checkpoint holds

def test_compiled_model_checkpoints_have_no_wrapper_prefix(corpus, tmp_path, monkeypatch):
    compile_ = torch.compile
    monkeypatch.setattr(train.torch, "compile", lambda m: compile_(m, backend="eager"))  # dynamo's wrapper, no codegen
    out = tmp_path / "run"
    run_small(corpus, out, "--max_iters=2", "--eval_interval=2", "--compile=True")
    keys = set(torch.load(out / "ckpt.pt", weights_only=True)["model"])
    fresh = build_model("gpt", checkpoint.model_args(cfg_of(*SMALL), 94))
    assert keys == set(fresh.state_dict()) and not any(k.startswith(("_orig_mod.", "module.")) for k in keys)
