"""
Prepare a dataset: download it if needed, tokenize it, and write data/<name>/{train,val,test}.bin
(raw little-endian uint16 token ids) plus data/<name>/meta.json.

    python prepare.py                                    # pycode: this Python's stdlib source, char-level, offline
    python prepare.py text --input=book.txt              # any UTF-8 file -> data/book, 90/5/5; --tokenizer=gpt2
    python prepare.py text --input=book.txt --like=out/quickstart   # tokenized exactly as a run's (to fine-tune it)
    python prepare.py enwik8                             # first 1e8 bytes of Wikipedia XML, byte-level (or char)
    python prepare.py wikitext2 --tokenizer=word         # WikiText-2 v1 (with <unk>); --variant=raw; gpt2 / char
    python prepare.py plwiki --n_docs=100000 --quality=HIGH   # SpeakLeash Polish Wikipedia, streamed, gpt2
    python prepare.py wikitext2 --source=wikitext-2-v1.zip    # any download can be replaced by a local copy
    python prepare.py sft --input=alpaca.json --like=out/quickstart   # instruction data for a run (see chat.py)
    python prepare.py bench                              # tokenizer MB/s and streaming peak memory

Keys (--key=value or a config/*.py file): data_dir, name, tokenizer (char | byte | gpt2 | word | hf:NAME),
token_dtype (uint16, or uint32 for vocabularies over 65,535 tokens, chosen by itself when left out),
source, input, url (download base URL), variant, n_val/n_test (enwik8 bytes), val_frac/test_frac, n_docs,
quality, seed. Each dataset is one small source function yielding (split, document) pairs; one Tokenizer and
one writer turn them into the files. Downloads go to data/<name>/raw/, resume after an interruption, are
retried with backoff (but fail at once offline: no name resolution, no route, connection refused) and kept
only once their sha256 (or size) checks out.

Reading what it wrote is dataloader.py's (load_meta, open_split); the tokenizers are tokenizer.py's.
"""
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, NamedTuple, Optional

import numpy as np

from configurator import UserError, cli, load_config
from chat import Template, read_examples
from checkpoint import CKPT_BEST, load_checkpoint
from dataloader import SPLITS, load_meta
from download import RemoteFile, download, file_sha256 as _sha256
from tokenizer import NUM_THREADS, Tokenizer

BATCH_CHARS = 1 << 20        # documents are tokenized in batches of about this many characters

# Every file prepare.py downloads: dataset key -> (base URL, {file name: sha256 or None}). --url=BASE replaces
# the base. Without a sha256 a download is checked against its Content-Length. WikiText-2 v1 comes from
# pytorch/examples pinned to a commit (its valid/test hashes are known); the same data is in the zip
# https://wikitext.smerity.com/wikitext-2-v1.zip, which --source accepts as it is.
DOWNLOADS = {
    "enwik8": ("http://mattmahoney.net/dc/", {"enwik8.zip": None}),
    "wikitext2-v1": (
        "https://raw.githubusercontent.com/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/"
        "word_language_model/data/wikitext-2/",
        {"train.txt": None,
         "valid.txt": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
         "test.txt": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"}),
    "wikitext2-raw": ("https://wikitext.smerity.com/", {"wikitext-2-raw-v1.zip": None}),
    "plwiki": ("https://d6t0.c15.e2-2.dev/speakleash-ds-pub/datasets_text/",
               {"plwiki.manifest": None, "plwiki.jsonl.zst": None}),
}


@dataclasses.dataclass
class PrepareConfig:
    dataset: str = "pycode"         # also accepted as the first positional argument
    data_dir: str = "data"
    name: str = ""                  # output folder data_dir/name; default: the dataset (text: the input's stem)
    tokenizer: str = ""             # default: the dataset's own (see DATASETS)
    like: str = ""                  # a run (out/RUN), checkpoint or prepared dataset: tokenize exactly as it did
    max_tokens: int = 0             # sft: longest example kept (tokens); 0 = the --like run's block_size + 1, else 1025
    overlong: str = "drop"          # sft: what happens to a longer example: drop | truncate
    token_dtype: str = ""           # uint16 | uint32: how .bin files store ids; "" = uint16 unless the vocabulary needs more
    source: str = ""                # local copy (file, folder or zip) used instead of downloading
    input: str = ""                 # text: the UTF-8 file to prepare
    url: str = ""                   # replaces the download base URL of DOWNLOADS
    variant: str = "v1"             # wikitext2: v1 (tokenized, <unk>) or raw
    n_val: int = 5_000_000          # enwik8: bytes of the val split (taken after train)
    n_test: int = 5_000_000         # enwik8: bytes of the test split (the last bytes)
    val_frac: Optional[float] = None    # text, pycode (0.05) and plwiki (0.1)
    test_frac: Optional[float] = None
    n_docs: int = 100_000           # plwiki: documents to keep
    quality: str = "HIGH"           # plwiki: HIGH, MEDIUM, LOW, a comma list of them, or ANY
    seed: int = 0                   # plwiki: seed of the by-document split

    def validate(self):
        if self.dataset not in DATASETS and self.dataset != "sft":
            raise UserError(f"unknown dataset '{self.dataset}': choose one of {', '.join(DATASETS)} or sft")
        for key in ("val_frac", "test_frac"):
            value = getattr(self, key)
            if value is not None and not 0 < value < 0.5:
                raise UserError(f"{key} must be between 0 and 0.5, got {value}")
        if self.variant not in ("v1", "raw"):
            raise UserError(f"variant must be v1 or raw, got '{self.variant}'")
        if self.n_docs < 3 or self.n_val < 1 or self.n_test < 1:
            raise UserError("n_docs must be at least 3, n_val and n_test at least 1")
        if self.overlong not in ("drop", "truncate") or self.max_tokens < 0:
            raise UserError(f"overlong must be drop or truncate (not '{self.overlong}') and max_tokens >= 0")


# ----------------------------------------------------------------------------- writing .bin

def _batches(docs, max_chars):
    batch, chars = [], 0
    for item in docs:
        batch.append(item)
        chars += len(item[1])
        if chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def write_dataset(out_dir, name, tok, docs, info, separate_docs=False):
    """Tokenize (split, document) pairs into out_dir/{split}.bin and write meta.json; returns meta.
    With separate_docs, the tokenizer's end-of-text token follows each document. Files appear only
    when complete (written as .tmp and renamed), so a failure never leaves a half dataset."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eot = tok.eot_token if separate_docs else None
    stats = {s: {"tokens": 0, "bytes": 0} for s in SPLITS}
    tmp = {s: out_dir / f"{s}.bin.tmp" for s in SPLITS}
    files = {s: open(tmp[s], "wb") for s in SPLITS}
    try:
        for batch in _batches(docs, BATCH_CHARS):
            for (split, doc), ids in zip(batch, tok.encode_many([d for _, d in batch])):
                if eot is not None:
                    ids = np.append(ids, ids.dtype.type(eot))
                ids.astype(tok.dtype.newbyteorder("<")).tofile(files[split])
                stats[split]["tokens"] += len(ids)
                stats[split]["bytes"] += len(doc) if isinstance(doc, bytes) else len(doc.encode("utf-8", "surrogatepass"))
    finally:
        for f in files.values():
            f.close()
    empty = [s for s in SPLITS if stats[s]["tokens"] == 0]
    if empty:
        for path in tmp.values():
            path.unlink()
        raise UserError(f"split {', '.join(empty)} came out empty: the input is too small to split")
    for s in SPLITS:
        os.replace(tmp[s], out_dir / f"{s}.bin")
    meta = {"format": 1, "dataset": name, **tok.to_meta(), "splits": stats, "source": info,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out_dir / "meta.json.tmp").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(out_dir / "meta.json.tmp", out_dir / "meta.json")
    return meta


# ----------------------------------------------------------------------------- downloads

def fetch(key, cfg, raw_dir, only=None):
    """Download the files of DOWNLOADS[key] (or those named in `only`) into raw_dir; {name: path}."""
    base, files = DOWNLOADS[key]
    base = cfg.url or base
    base = base if base.endswith("/") else base + "/"
    return {f: download(base + f, Path(raw_dir) / f, sha) for f, sha in files.items() if only is None or f in only}


# ----------------------------------------------------------------------------- sources

class Source(NamedTuple):
    docs: Iterable            # (split, str | bytes) pairs, train first
    info: dict                # goes to meta["source"]
    separate_docs: bool = False


def _fractions(cfg, default):
    val = cfg.val_frac if cfg.val_frac is not None else default
    test = cfg.test_frac if cfg.test_frac is not None else default
    return 1 - val - test, 1 - test


def _split_of(position, bounds):
    return SPLITS[sum(position >= b for b in bounds)]


def _read_utf8(path, what="file", data=None):
    """The text of a UTF-8 file (or of `data`, bytes read from `path`), or a UserError."""
    if data is None and not Path(path).is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return (Path(path).read_bytes() if data is None else data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): convert it first, e.g. iconv -t utf-8") from None


def source_pycode(cfg, raw_dir, kind):
    """Every .py of this interpreter's standard library (no tests, no site-packages), in path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
    texts = []
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in skip]
        for n in names:
            if n.endswith(".py"):
                path = Path(folder) / n
                body = path.read_bytes().decode("utf-8", errors="replace")
                texts.append((path.relative_to(root).as_posix(), body if body.endswith("\n") else body + "\n"))
    texts.sort()
    docs = [f"# ==== {rel} ====\n{body}" for rel, body in texts]
    total, start, bounds, pairs = sum(map(len, docs)), 0, _fractions(cfg, 0.05), []
    for doc in docs:  # a file goes to the split its first character falls in
        pairs.append((_split_of(start / total, bounds), doc))
        start += len(doc)
    return Source(pairs, {"python_version": sys.version.split()[0], "stdlib": str(root), "files": len(docs)})


def _cut(text, bounds):
    """Contiguous splits of text at the fractions in bounds, moved forward to the next line start."""
    cuts = []
    for b in bounds:
        at = int(len(text) * b)
        nl = text.find("\n", at, at + 1000)
        cuts.append(nl + 1 if nl >= 0 else at)
    return list(zip(SPLITS, (text[:cuts[0]], text[cuts[0]:cuts[1]], text[cuts[1]:])))


def source_text(cfg, raw_dir, kind):
    if not cfg.input:
        raise UserError("dataset text needs --input=FILE (a UTF-8 text file)")
    text = _read_utf8(cfg.input, "input file")
    return Source(_cut(text, _fractions(cfg, 0.05)),
                  {"input": str(Path(cfg.input).resolve()), "sha256": _sha256(cfg.input)})


def source_enwik8(cfg, raw_dir, kind):
    """The first 1e8 bytes of English Wikipedia XML; the last n_val + n_test bytes are val and test."""
    path = Path(cfg.source) if cfg.source else fetch("enwik8", cfg, raw_dir)["enwik8.zip"]
    if not path.is_file():
        raise UserError(f"--source {path} does not exist (give enwik8.zip or the unzipped enwik8 file)")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                data = z.read("enwik8")[:100_000_000]
        else:
            data = path.read_bytes()[:100_000_000]
    except (zipfile.BadZipFile, KeyError, OSError) as e:  # a CRC error too: the zip is corrupt
        if not cfg.source:
            path.unlink()
        raise UserError(f"{path} is not a readable enwik8 zip ({e}); it was deleted if downloaded: run again") from None
    n_train = len(data) - cfg.n_val - cfg.n_test
    if n_train <= 0:
        raise UserError(f"{path} has {len(data):,} bytes, not more than n_val + n_test = {cfg.n_val + cfg.n_test:,}")
    docs = [("train", data[:n_train]), ("val", data[n_train:n_train + cfg.n_val]), ("test", data[-cfg.n_test:])]
    return Source(docs, {"file": str(path), "sha256": _sha256(path), "url": None if cfg.source else
                         (cfg.url or DOWNLOADS["enwik8"][0]) + "enwik8.zip", "bytes": len(data)})


_WIKITEXT_FILES = {"train": ("train.txt", "wiki.train.tokens", "wiki.train.raw"),
                   "val": ("valid.txt", "wiki.valid.tokens", "wiki.valid.raw"),
                   "test": ("test.txt", "wiki.test.tokens", "wiki.test.raw")}
_ARTICLE = re.compile(r"^( \n)? = [^=\n].* = $", re.M)  # " = Title = " (not "= = Section = =") starts an article


def _read_wikitext(path):
    """{split: text} from a folder or zip holding train/valid/test (.txt, .tokens or .raw)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            found = {Path(n).name: n for n in z.namelist()}
            names = {s: next((n for n in c if n in found), None) for s, c in _WIKITEXT_FILES.items()}
            if None not in names.values():
                return {s: _read_utf8(f"{path}:{found[n]}", data=z.read(found[n])) for s, n in names.items()}
    elif path.is_dir():
        names = {s: next((n for n in c if (path / n).is_file()), None) for s, c in _WIKITEXT_FILES.items()}
        if None not in names.values():
            return {s: _read_utf8(path / n) for s, n in names.items()}
    wanted = " / ".join("|".join(c) for c in _WIKITEXT_FILES.values())
    raise UserError(f"--source {path} must be a folder or zip holding the three WikiText files ({wanted})")


def source_wikitext2(cfg, raw_dir, kind):
    """WikiText-2 (v1 with <unk>, or raw); for BPE each article is a document ended by <|endoftext|>."""
    key = f"wikitext2-{cfg.variant}"
    if cfg.source:
        where = cfg.source
    else:
        files = fetch(key, cfg, raw_dir)
        where = raw_dir if cfg.variant == "v1" else files["wikitext-2-raw-v1.zip"]
    texts = _read_wikitext(where)
    separate = kind not in ("word", "char", "byte")
    docs = []
    for split, text in texts.items():
        if separate:
            cuts = [0] + [m.start() for m in _ARTICLE.finditer(text)][1:] + [len(text)]
            docs += [(split, text[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a]
        else:
            docs.append((split, text))
    info = {"variant": cfg.variant, "source": str(where), "url": None if cfg.source else cfg.url or DOWNLOADS[key][0],
            "sha256": {s: hashlib.sha256(t.encode("utf-8")).hexdigest() for s, t in texts.items()}}
    if separate:
        info["articles"] = {s: sum(1 for d in docs if d[0] == s) for s in SPLITS}
    return Source(docs, info, separate)


def _open_stream(cfg, raw_dir):
    """The plwiki .jsonl.zst as a byte stream: the --source file, or the download read as it arrives."""
    if cfg.source:
        if not Path(cfg.source).is_file():
            raise UserError(f"--source {cfg.source} does not exist (give a plwiki.jsonl.zst file)")
        return open(cfg.source, "rb")
    base = cfg.url or DOWNLOADS["plwiki"][0]
    return RemoteFile((base if base.endswith("/") else base + "/") + "plwiki.jsonl.zst")


def source_plwiki(cfg, raw_dir, kind):
    """SpeakLeash plwiki: the first n_docs documents of the wanted quality, each put in train/val/test by
    a seeded RNG as they stream in; the archive is decompressed while it downloads and never stored."""
    import zstandard
    from tqdm import tqdm
    if kind in ("char", "word"):
        raise UserError(f"plwiki is streamed, so it needs a fixed vocabulary: use gpt2, byte or hf:NAME, not {kind}")
    wanted = {q.strip().upper() for q in cfg.quality.split(",")}
    if not wanted <= {"HIGH", "MEDIUM", "LOW", "ANY"}:
        raise UserError(f"quality must be HIGH, MEDIUM, LOW, a comma list of them, or ANY; got '{cfg.quality}'")
    manifest_path = (Path(cfg.source).with_name("plwiki.manifest") if cfg.source
                     else fetch("plwiki", cfg, raw_dir, only={"plwiki.manifest"})["plwiki.manifest"])
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    except ValueError:
        raise UserError(f"{manifest_path} is not valid JSON: delete it and run again") from None
    bounds = _fractions(cfg, 0.1)
    info = {"source": cfg.source or (cfg.url or DOWNLOADS["plwiki"][0]) + "plwiki.jsonl.zst",
            "quality": sorted(wanted), "seed": cfg.seed, "manifest_documents": manifest.get("stats", {}).get("documents"),
            "manifest_file_size": manifest.get("file_size"), "docs": {s: 0 for s in SPLITS}, "docs_seen": 0}

    def docs():  # fills info["docs"] as it goes; write_dataset writes info after the last document
        rng = random.Random(cfg.seed)
        with _open_stream(cfg, raw_dir) as raw, tqdm(total=cfg.n_docs, unit="doc", desc="plwiki") as bar:
            reader = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(raw)
            for line in io.TextIOWrapper(reader, encoding="utf-8"):
                info["docs_seen"] += 1
                try:
                    record = json.loads(line)
                    text, quality = record["text"], record.get("meta", {}).get("quality")
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise UserError(f"document {info['docs_seen']} is not a {{\"text\", \"meta\"}} JSON line") from None
                if "ANY" not in wanted and quality not in wanted:
                    continue
                split = _split_of(rng.random(), bounds)
                info["docs"][split] += 1
                bar.update()
                yield split, text
                if bar.n >= cfg.n_docs:
                    return
    return Source(docs(), info, separate_docs=True)


DATASETS = {  # name -> (source function, default tokenizer)
    "pycode": (source_pycode, "char"),
    "text": (source_text, "char"),
    "enwik8": (source_enwik8, "byte"),
    "wikitext2": (source_wikitext2, "gpt2"),
    "plwiki": (source_plwiki, "gpt2"),
}


# ----------------------------------------------------------------------------- main

def prepare(cfg):
    """Build data_dir/name from cfg (a PrepareConfig) and print what was written; returns meta."""
    t0 = time.time()
    source_fn, default_kind = DATASETS[cfg.dataset]
    name = cfg.name or (Path(cfg.input).stem if cfg.dataset == "text" and cfg.input else cfg.dataset)
    out_dir = Path(cfg.data_dir) / name
    tok = tokenizer_like(cfg.like) if cfg.like else None
    kind = tok.kind if tok else cfg.tokenizer or default_kind
    if tok and cfg.tokenizer and cfg.tokenizer != kind:
        raise UserError(f"--like={cfg.like} tokenizes with {kind}, not --tokenizer={cfg.tokenizer}: drop one of them")
    if tok is None and kind not in ("char", "word"):
        tok = Tokenizer(kind, token_dtype=cfg.token_dtype)  # fail early, before any download
    if tok:
        keep_other_datasets(out_dir, tok)
    src = source_fn(cfg, out_dir / "raw", kind)
    docs = src.docs
    if tok is None:
        docs = list(docs)
        tok = Tokenizer.build(kind, (d for _, d in docs)).set_token_dtype(cfg.token_dtype)
        keep_other_datasets(out_dir, tok)
    elif tok.kind == "char":
        docs = list(docs)
        check_chars(tok, (_text_of(d) for _, d in docs), cfg.like)
    changed = [f"--{k}={v}" for k, v in dataclasses.asdict(cfg).items()
               if k != "dataset" and v != getattr(PrepareConfig, k)]
    src.info["command"] = " ".join(["python prepare.py", cfg.dataset] + changed)  # for "run it again" hints
    meta = write_dataset(out_dir, name, tok, docs, src.info, src.separate_docs)
    print(f"{out_dir}: {kind} tokenizer, vocab_size {tok.vocab_size:,}")
    for s, st in meta["splits"].items():
        print(f"  {s:5s} {st['tokens']:>13,} tokens  {st['bytes'] / 1e6:8.2f} MB text  "
              f"{st['tokens'] * tok.dtype.itemsize / 1e6:8.2f} MB {s}.bin")
    print(f"  done in {time.time() - t0:.1f} s")
    return meta


def prepare_sft(cfg):
    """Instruction data (Alpaca or chat, .json or .jsonl) rendered with chat.py's template and tokenized as
    the base run was: data_dir/name/{train,val}.bin (tokens), .mask (uint8, 1 where the loss falls) and
    .idx (int64: where each example starts, then the end), and meta.json (kind "sft")."""
    t0 = time.time()
    if not cfg.input:
        raise UserError("sft needs --input=FILE (Alpaca or chat records, .json or .jsonl) and --like=out/RUN "
                        "(or --tokenizer=gpt2|byte|hf:NAME)")
    name = cfg.name or Path(cfg.input).stem
    out_dir = Path(cfg.data_dir) / name
    like = tokenizer_like(cfg.like) if cfg.like else None
    if like is None and cfg.tokenizer in ("", "char", "word"):
        raise UserError("sft: a char or word vocabulary comes from the run it fine-tunes: give --like=out/RUN")
    tok = like or Tokenizer(cfg.tokenizer)
    keep_other_datasets(out_dir, tok)
    template = Template(tok)
    examples = read_examples(cfg.input)
    if tok.kind == "char":
        check_chars(tok, (m["content"] for e in examples for m in e), cfg.like)
    limit = cfg.max_tokens or (_block_size_of(cfg.like) or 1024) + 1
    rng = random.Random(cfg.seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    n_val = max(1, round(len(examples) * (cfg.val_frac if cfg.val_frac is not None else 0.05)))
    if len(examples) < 2:
        raise UserError(f"{cfg.input} has {len(examples)} example: sft needs at least 2 (train and val)")
    splits = {"val": order[:n_val], "train": order[n_val:]}
    out_dir.mkdir(parents=True, exist_ok=True)
    stats, cut = {}, {"dropped": 0, "truncated": 0}
    for split, chosen in splits.items():
        ids, mask, starts = [], [], [0]
        for i in sorted(chosen):
            e_ids, e_mask = template.render(examples[i])
            if len(e_ids) > limit:
                cut["dropped" if cfg.overlong == "drop" else "truncated"] += 1
                if cfg.overlong == "drop":
                    continue
                e_ids, e_mask = e_ids[:limit], e_mask[:limit]
            ids += e_ids
            mask += e_mask
            starts.append(len(ids))
        if len(starts) == 1:
            raise UserError(f"every {split} example is longer than {limit} tokens (--max_tokens), so none is left: "
                            f"raise --max_tokens or use --overlong=truncate")
        for suffix, array in (("bin", np.array(ids, dtype=np.uint16)), ("mask", np.array(mask, dtype=np.uint8)),
                              ("idx", np.array(starts, dtype=np.int64))):
            array.tofile(out_dir / f"{split}.{suffix}.tmp")
            os.replace(out_dir / f"{split}.{suffix}.tmp", out_dir / f"{split}.{suffix}")
        stats[split] = {"tokens": len(ids), "bytes": len(tok.decode(ids).encode("utf-8")), "examples": len(starts) - 1,
                        "trained_tokens": int(sum(mask))}
    meta = {"format": 1, "dataset": name, "kind": "sft", **tok.to_meta(), "template": template.name,
            "eot": template.eot, "max_tokens": limit, "overlong": cfg.overlong, **cut, "splits": stats,
            "source": {"input": str(Path(cfg.input).resolve()), "sha256": _sha256(cfg.input), "like": cfg.like,
                       "command": f"python prepare.py sft --input={cfg.input}" + (f" --like={cfg.like}" if cfg.like else
                                                                                   f" --tokenizer={tok.kind}")},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out_dir / "meta.json.tmp").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(out_dir / "meta.json.tmp", out_dir / "meta.json")
    print(f"{out_dir}: {len(examples)} examples, {tok.kind} tokenizer, template {template.name}")
    for s, st in stats.items():
        print(f"  {s:5s} {st['examples']:>7,} examples {st['tokens']:>11,} tokens ({st['trained_tokens']:,} trained)")
    print(f"  over {limit} tokens: {cut['dropped']} dropped, {cut['truncated']} truncated (--overlong={cfg.overlong})")
    print(f"  done in {time.time() - t0:.1f} s")
    return meta


def _block_size_of(like):
    """The block_size of a run or checkpoint --like names (None for a prepared dataset or nothing)."""
    path = os.path.join(like, CKPT_BEST) if like and os.path.isdir(like) else like
    if not path or not os.path.isfile(path):
        return None
    return load_checkpoint(path)["config"]["block_size"]


def tokenizer_like(path):
    """The exact tokenizer of a run (its directory or a checkpoint file) or of a prepared dataset."""
    if os.path.isfile(os.path.join(path, "meta.json")):
        return Tokenizer.from_meta(load_meta(path))
    if os.path.isdir(path):
        path = os.path.join(path, CKPT_BEST)
    if not os.path.isfile(path):
        raise UserError(f"--like={path} is neither a run (with {CKPT_BEST}), a checkpoint nor a prepared dataset")
    meta = load_checkpoint(path)["meta"]
    if meta.get("tokenizer") is None:
        raise UserError(f"--like={path}: its checkpoint names no tokenizer this project has")
    return Tokenizer.from_meta(meta)


def check_chars(tok, texts, like):
    """A char vocabulary encodes only its own characters: name every one the texts have and it lacks."""
    missing = sorted(set().union(*map(set, texts)) - set(tok.vocab))
    if missing:
        shown = " ".join(repr(c) for c in missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise UserError(f"{len(missing)} character(s) of the input are not in {like}'s vocabulary of "
                        f"{tok.vocab_size}: {shown}; remove or replace them in the input (nothing was written)")


def keep_other_datasets(out_dir, tok):
    """Refuse to overwrite a prepared dataset with one tokenized differently: runs trained on it need it."""
    path = out_dir / "meta.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    new = tok.to_meta()
    if (old.get("tokenizer"), old.get("vocab_size"), old.get("vocab")) != (new["tokenizer"], new["vocab_size"],
                                                                              new.get("vocab")):
        raise UserError(f"{out_dir} already holds a dataset tokenized with {old.get('tokenizer')} (vocab "
                        f"{old.get('vocab_size')}), which runs trained on it need: pick another --name, or delete "
                        f"{out_dir} first")


def _text_of(doc):
    return doc.decode("utf-8", errors="replace") if isinstance(doc, bytes) else doc


def benchmark(mb=4.0, plwiki_mb=(8, 32)):
    """Tokenizer throughput (MB of source text per second) on `mb` MB of pycode text, and the peak RSS of
    a child process preparing streamed plwiki-shaped fixtures of the given sizes (it should stay flat)."""
    text = "".join(d for _, d in source_pycode(PrepareConfig(), None, "char").docs)[:int(mb * 1e6)]
    n_bytes = len(text.encode("utf-8"))
    results = {"text_MB": round(n_bytes / 1e6, 2), "threads": NUM_THREADS}
    for kind in ("char", "byte", "gpt2"):
        try:
            tok = Tokenizer.build(kind, [text])
        except UserError as e:
            results[f"{kind}_MB_per_s"] = f"unavailable: {e}"
            continue
        best = min(_timed(tok.encode_many, [text]) for _ in range(3))
        results[f"{kind}_MB_per_s"] = round(n_bytes / 1e6 / best, 1)
    here = os.path.dirname(os.path.abspath(__file__))
    child = "import prepare, sys\n{}\nprint('peak_rss_mb', prepare._peak_rss_mb())"
    with tempfile.TemporaryDirectory() as tmp:
        for size in (0,) + tuple(plwiki_mb):  # 0: the baseline, importing prepare and loading gpt2
            path = Path(tmp) / f"plwiki{size}.jsonl.zst"
            n_docs = _write_plwiki_fixture(path, text, size * 1e6) if size else 3
            code = child.format("prepare.main(sys.argv[1:])" if size else "prepare.Tokenizer('gpt2')")
            argv = ["plwiki", f"--source={path}", f"--data_dir={tmp}", f"--n_docs={n_docs}"]
            run = subprocess.run([sys.executable, "-c", code] + argv, cwd=here, capture_output=True, text=True)
            mb = [float(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("peak_rss_mb")]
            key = f"plwiki_{size}MB_peak_rss_MB" if size else "baseline_rss_MB"
            results[key] = round(mb[0], 1) if mb else f"failed: {run.stderr.strip()[-300:]}"
    return results


def _peak_rss_mb():
    """This process's peak resident memory: VmHWM on Linux (ru_maxrss there also counts the parent's
    memory at fork time, so it is useless in a child), ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1024 / 1024


def _timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _write_plwiki_fixture(path, text, n_chars):
    """A SpeakLeash-shaped .jsonl.zst of about n_chars characters cut from text, every doc HIGH."""
    import zstandard
    docs, written, pos = 0, 0, 0
    with open(path, "wb") as f, zstandard.ZstdCompressor().stream_writer(f) as z:
        while written < n_chars:
            doc = text[pos:pos + 5000] or text[:5000]
            pos = pos + 5000 if pos + 5000 < len(text) else 0
            z.write((json.dumps({"text": doc, "meta": {"quality": "HIGH"}}) + "\n").encode("utf-8"))
            docs, written = docs + 1, written + len(doc)
    return docs


def main(argv):
    if argv[:1] == ["bench"]:
        for key, value in benchmark().items():
            print(f"{key:28s} {value}")
        return
    if argv and not argv[0].startswith("--") and not argv[0].endswith(".py"):
        argv = [f"--dataset={argv[0]}"] + argv[1:]
    cfg = load_config(PrepareConfig(), argv)
    prepare_sft(cfg) if cfg.dataset == "sft" else prepare(cfg)


if __name__ == "__main__":
    cli(main)
