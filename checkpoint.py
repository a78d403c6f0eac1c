"""
A run's directory: its checkpoints, the lock a training run holds on it, and config.json; and the one
path by which training starts from a checkpoint (resume, fine-tune, or pretrained weights).

    ckpt = load_checkpoint("out/quickstart/ckpt.pt")   # a dict of tensors and plain values, or a UserError
    model = model_from_checkpoint(ckpt)                # the GPT or LSTM it holds, weights loaded
    with RunLock("out/x"): ...                         # one training run per out_dir at a time
    cfg, ckpt = start(cfg)                             # what train.py starts from (None for scratch)

A checkpoint holds the format version, the run's config, the model's kind and args and its raw
state_dict (never a compile/DDP wrapper's), the optimizers, the loss scaler, the step, tokens and time
spent, the best val loss, every random stream, and the dataset's meta (the tokenizer). It is written to
a temporary file and renamed into place, and loaded with weights_only=True: a checkpoint someone
shares cannot run code. ckpt.pt is the best val loss so far, last.pt the latest state (for resume).
"""
import contextlib
import dataclasses
import json
import os
import pickle
import re
import socket
import sys
import time
import warnings

import torch

import hf
from common import print0
from configurator import UserError, given_keys, replace
from dataloader import load_meta
from model import build_model, config_fields, load_model, size_gated_mlp

CKPT_FORMAT = 2  # 2: the optimizers as a list, every rank's RNG state (format 1 files are refused)
CKPT_BEST, CKPT_LAST = "ckpt.pt", "last.pt"
SCHEDULE_KEYS = ("max_iters", "time_budget", "schedule", "warmup_iters", "decay_frac", "decay_shape", "lr",
                 "min_lr", "step_every", "cycle_rise")  # what sets where the LR is at a given step


def model_args(cfg, vocab_size):
    """The model's constructor arguments from a config holding its fields (TrainConfig does). A SwiGLU MLP
    left to mlp_ratio holds as many weights as the plain MLP would (model.size_gated_mlp)."""
    args = {k: getattr(cfg, k) for k in config_fields(cfg.model) if k != "vocab_size"}
    return size_gated_mlp({**args, "vocab_size": vocab_size})


# ----------------------------------------------------------------------------- saving and loading

def save_atomic(obj, path):
    """torch.save to a temporary file, fsync, then rename over path: a crash leaves the old file intact."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise UserError(f"could not save {path}: {e.strerror or e}; the previous checkpoint is untouched") from None
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def load_checkpoint(path, map_location="cpu"):
    """A checkpoint saved by this project, or a clear UserError."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train one first (python train.py --out_dir=...)")
    try:
        # weights_only: tensors and plain Python values only, so a shared checkpoint cannot run code when loaded
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            calls = re.search(r"GLOBAL (\S+)", str(e))
            raise UserError(f"refused to load {path}: it holds Python objects, not only tensors and plain values"
                            f"{f' (it calls {calls[1]})' if calls else ''}, and loading them could run code; this "
                            f"project's checkpoints never do, so it was made elsewhere or tampered with (nothing in "
                            f"it was run)") from None
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); "
                        f"use the other checkpoint in its folder or retrain") from None
    needed = {"config", "model_kind", "model_args", "model", "meta"}
    if isinstance(ckpt, dict) and isinstance(ckpt.get("format"), int) and ckpt["format"] < CKPT_FORMAT:
        raise UserError(f"{path} is a format {ckpt['format']} checkpoint from an older version of this project; "
                        f"this one reads format {CKPT_FORMAT}: retrain it, or use the older version")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT or not needed <= set(ckpt):
        raise UserError(f"{path} is not a checkpoint of this project (format {CKPT_FORMAT})")
    return ckpt


def model_from_checkpoint(ckpt, dropout=None, check_only=False):
    """The checkpoint's model with its weights (in their dtype: bf16 stays bf16), on the CPU; dropout, if
    given, replaces the stored one (a fine-tune may change it). Weights that do not fit the stated architecture are a UserError. The model
    takes the checkpoint's tensors themselves (no copy): the caller hands the checkpoint over. check_only:
    only check that the weights fit, on the meta device, and return that weightless model."""
    args = ckpt["model_args"] if dropout is None else {**ckpt["model_args"], "dropout": dropout}
    try:
        if check_only:  # shapes only, on the meta device: no memory, and no model sharing the checkpoint's tensors
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op": as wanted
                shell = build_model(ckpt["model_kind"], args)
                shell.load_state_dict(ckpt["model"])
                return shell
        model = load_model(ckpt["model_kind"], args, ckpt["model"])  # in the weights' own dtype
    except (RuntimeError, TypeError, ValueError, KeyError) as e:
        raise UserError(f"the checkpoint's weights do not fit its {ckpt['model_kind']} architecture "
                        f"({type(e).__name__}): it is damaged or from another version; use the other checkpoint "
                        f"or retrain") from None
    return model


def run_state(cfg, model, optimizers, scaler, batches, it, tokens, elapsed_s, best_val, rng, meta):
    """What a checkpoint holds (see the top of this file)."""
    return {"format": CKPT_FORMAT, "config": dataclasses.asdict(cfg), "model_kind": cfg.model,
            "model_args": model_args(cfg, meta["vocab_size"]), "model": model.state_dict(),
            "optimizer": [o.state_dict() for o in optimizers], "scaler": scaler.state_dict(), "iter": it,
            "tokens": tokens, "best_val": best_val, "elapsed_s": elapsed_s, "batches_drawn": batches.drawn,
            **rng, "meta": {k: v for k, v in meta.items() if k != "splits"}}


def write_config(cfg, env):
    """out_dir/config.json: the whole resolved config, with the versions and the device it ran on."""
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump({**dataclasses.asdict(cfg), "torch": torch.__version__, "python": sys.version.split()[0],
                       "world_size": env.world, "device": env.device, "dtype_resolved": env.dtype}, f, indent=2)
    except OSError as e:
        raise UserError(f"cannot write to out_dir {cfg.out_dir}: {e.strerror}; pick another --out_dir") from None


# ----------------------------------------------------------------------------- starting a run from a checkpoint

def start(cfg):
    """(the config the run trains with, the checkpoint it starts from or None), checked once.

    scratch: cfg as given; an out_dir that already holds a run is refused (a forgotten --init_from=resume
    must not overwrite hours of training).
    resume: the run's own stored config, with the keys given on this command line (or in its config file)
    on top; a different model shape or optimizer is refused, and a changed schedule horizon is announced.
    fine-tune (a run directory, a checkpoint file, gpt2*, hf:DIR): cfg as given, but the model's shape is
    the checkpoint's. The data (cfg.dataset, which resume takes from the run unless given) must be
    tokenized as the checkpoint's was."""
    resume = cfg.init_from == "resume"
    if not resume:
        for name in (CKPT_LAST, CKPT_BEST):
            if os.path.exists(os.path.join(cfg.out_dir, name)):
                raise UserError(f"{cfg.out_dir} already holds a run ({name}): continue it with --init_from=resume, "
                                f"or start a new one in another --out_dir (or delete that folder)")
    if cfg.init_from == "scratch":
        return cfg, None
    ckpt = _find(cfg)
    stored = model_from_checkpoint(ckpt, check_only=True).cfg  # the weights fit, before anything is written
    kind = ckpt["model_kind"]  # (stored: every field of the model's config, defaults filling in what args omit)
    shape = {k: getattr(stored, k) for k in config_fields(kind)
             if k != "vocab_size" and (resume or k not in ("dropout", "attn_dropout"))}  # (fine-tuning sets its own)
    shape = {**shape, "model": kind}
    if resume:
        cfg = _resumed_config(cfg, ckpt, shape)
    else:
        changed = {k: v for k, v in shape.items() if getattr(cfg, k, v) != v}
        if changed:
            print0(f"fine-tuning keeps the checkpoint's shape: {', '.join(f'{k}={v}' for k, v in changed.items())}")
        cfg = replace(cfg, **{k: v for k, v in shape.items() if hasattr(cfg, k)})  # (the given keys kept)
    data_dir = os.path.join(cfg.data_dir, cfg.dataset)
    check_same_tokenizer(ckpt, load_meta(data_dir), data_dir)
    return cfg, ckpt


def _find(cfg):
    """The checkpoint init_from names: out_dir's last.pt for resume (else its ckpt.pt), a run directory
    (its ckpt.pt) or file, or Hugging Face weights (gpt2*, hf:DIR: see hf.py) cropped to block_size."""
    if hf.is_pretrained(cfg.init_from):
        ckpt = hf.load_pretrained(cfg.init_from, block_size=cfg.block_size, dropout=cfg.dropout)
        full, kept = ckpt["config"]["n_positions"], ckpt["config"]["block_size"]
        if kept < full:
            print0(f"{cfg.init_from}: context cropped to block_size={kept} of its {full} positions "
                   f"(--block_size={full} keeps them all)")
        return ckpt
    if cfg.init_from == "resume":
        path, best = os.path.join(cfg.out_dir, CKPT_LAST), os.path.join(cfg.out_dir, CKPT_BEST)
        if not os.path.exists(path) and not os.path.exists(best):
            raise UserError(f"nothing to resume in {cfg.out_dir} (no {CKPT_LAST} or {CKPT_BEST}): give the run's "
                            f"--out_dir, or start a new run without --init_from=resume")
        try:
            return load_checkpoint(path if os.path.exists(path) else best)
        except UserError as e:
            if os.path.exists(path) and os.path.exists(best):
                raise UserError(f"{e}. To resume from the best checkpoint instead, move {path} aside") from None
            raise
    path = cfg.init_from
    if os.path.isdir(path):
        path = os.path.join(path, CKPT_BEST)
    elif not os.path.exists(path):
        raise UserError(f"init_from={cfg.init_from} is neither scratch, resume, a run directory nor a checkpoint file")
    return load_checkpoint(path)


def _resumed_config(cfg, ckpt, shape):
    """The stored config with the keys given now on top; shape and optimizer cannot change."""
    given = given_keys(cfg)
    stored = {k: v for k, v in ckpt["config"].items() if k in {f.name for f in dataclasses.fields(cfg)}}
    stored.setdefault("decay_embeddings", True)  # a run saved before the key decayed them (its optimizer's groups)
    fixed = {**shape, "block_size": stored["block_size"], "optimizer": stored["optimizer"]}
    clash = [k for k, v in fixed.items() if k in given and getattr(cfg, k, v) != v]
    if clash:
        has, asked = (", ".join(f"{k}={d[k]}" for k in clash) for d in (fixed, dataclasses.asdict(cfg)))
        raise UserError(f"resume keeps the model and optimizer of the checkpoint in {cfg.out_dir} ({has}), not "
                        f"{asked}: drop those flags, or train a new model in another --out_dir")
    new = dataclasses.replace(cfg, **{**stored, **{k: getattr(cfg, k) for k in given}, "init_from": "resume",
                                      "out_dir": cfg.out_dir})
    moved = [f"{k} {stored[k]} -> {getattr(new, k)}" for k in SCHEDULE_KEYS if stored.get(k) != getattr(new, k)]
    if moved:
        print0(f"note: resuming with {', '.join(moved)}: the LR schedule's horizon changes, so the LR at step "
               f"{ckpt['iter']} is where the new schedule puts it (a run that had decayed may warm up again)")
    return new


def check_same_tokenizer(ckpt, meta, data_dir):
    """A checkpoint only continues on data tokenized the same way (same kind, size and, if listed, vocabulary)."""
    old = ckpt["meta"]
    if old.get("pretrained"):  # Hugging Face weights read their own tokens: gpt2, or hf:DIR's tokenizer.json
        hf.require_tokenizer(ckpt)
        if meta["tokenizer"] != old["tokenizer"]:
            name = "GPT-2's" if old["tokenizer"] == "gpt2" else f"{old['tokenizer']}'s"
            raise UserError(f"{old['pretrained']}'s weights read {name} tokens, but {data_dir} is tokenized with "
                            f"{meta['tokenizer']}: prepare it with --tokenizer={old['tokenizer']} "
                            f"(python prepare.py text --input=FILE --tokenizer={old['tokenizer']})")
    if (old["tokenizer"], old["vocab_size"], old.get("vocab")) != (meta["tokenizer"], meta["vocab_size"], meta.get("vocab")):
        same_kind = old["tokenizer"] == meta["tokenizer"] and old["vocab_size"] == meta["vocab_size"]
        raise UserError(f"the checkpoint was trained on a {old['tokenizer']} vocabulary of {old['vocab_size']}"
                        f" ({old['dataset']}), but {data_dir} has {meta['tokenizer']} with {meta['vocab_size']}"
                        f"{' listing different tokens' if same_kind else ''}: prepare the new data with the same "
                        f"tokenizer (char vocabularies must match exactly)")


# ----------------------------------------------------------------------------- the run lock

class RunLock:
    """out_dir/run.lock while a run trains there, taken by rank 0 before anything else (and before DDP starts):
    a second train.py on the same out_dir stops with one line, having written nothing. The lock is a flock on
    the file, which the system drops when its process dies; the file says who holds it ({pid, host, started}).
    One left behind (kill -9, a power cut) is taken over, with a note. sample.py only reads: it takes no lock."""

    def __init__(self, out_dir):
        self.out_dir, self.path, self.fd, self.made = out_dir, os.path.join(out_dir, "run.lock"), None, []

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): runs go unlocked
            return self
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 holds it for all
            return self
        path = os.path.abspath(self.out_dir)
        while not os.path.exists(path):  # the folders this creates, removed again if the run writes nothing
            self.made.append(path)
            path = os.path.dirname(path)
        try:
            os.makedirs(self.out_dir, exist_ok=True)
            while self.fd is None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    held = self._holder(fd)
                    os.close(fd)
                    self.__exit__()
                    who = f" (pid {held['pid']} on {held['host']}, started {held['started']})" if held else ""
                    raise UserError(f"{self.out_dir} is in use by another training run{who}: wait for it to end, "
                                    f"or pick another --out_dir") from None
                if os.path.exists(self.path) and os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    self.fd = fd
                else:  # its holder removed the file while we opened it: lock the new one
                    os.close(fd)
            if held := self._holder(self.fd):
                print0(f"note: taking over {self.path} from pid {held['pid']} on {held['host']} (started "
                       f"{held['started']}), which ended without releasing it")
            mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, json.dumps(mine).encode(), 0)
        except OSError as e:
            self.__exit__()
            raise UserError(f"cannot write to out_dir {self.out_dir}: {e.strerror}; pick another --out_dir") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.remove(self.path)
            os.close(self.fd)  # drops the flock
            self.fd = None
        for path in self.made:  # deepest first; only while still empty
            with contextlib.suppress(OSError):
                os.rmdir(path)

    @staticmethod
    def _holder(fd):
        try:
            held = json.loads(os.pread(fd, 1000, 0))
        except (OSError, ValueError):
            return None
        return held if isinstance(held, dict) and {"pid", "host", "started"} <= held.keys() else None
