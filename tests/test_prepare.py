"""Tests for prepare.py: the .bin/meta.json writer, every dataset source on small local fixtures (no network),
its config errors and the tokenizer benchmark. Tokenizers are test_tokenizer.py's, reading splits
test_dataloader.py's, downloads test_download.py's. Run: .venv/bin/pytest -q tests/test_prepare.py"""
import json
import platform
import random
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zstandard

import dataloader
import tokenizer
import prepare
from configurator import UserError
from conftest import REPO


def run(*argv):
    prepare.main(list(argv))


def split_text(data_dir, split):
    meta = dataloader.load_meta(data_dir)
    return tokenizer.Tokenizer.from_meta(meta).decode(dataloader.open_split(data_dir, split))


# ----------------------------------------------------------------------------- pycode, text, writer

def test_pycode(tmp_path):
    run("pycode", f"--data_dir={tmp_path}")
    data = tmp_path / "pycode"
    meta = dataloader.load_meta(data)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    files = sorted(p.relative_to(stdlib).as_posix() for p in stdlib.rglob("*.py")
                   if not skip & set(p.relative_to(stdlib).parts[:-1]))
    assert meta["source"]["python_version"] == platform.python_version()
    assert meta["source"]["files"] == len(files) > 100
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == len(meta["vocab"]) and meta["eot_token"] is None
    texts = {s: split_text(data, s) for s in dataloader.SPLITS}
    for s, text in texts.items():
        ids = dataloader.open_split(data, s, check_ids=True)
        assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
        assert (data / f"{s}.bin").stat().st_size == 2 * meta["splits"][s]["tokens"] == 2 * len(text)
        assert meta["splits"][s]["bytes"] == len(text.encode())
    whole = "".join(texts.values())
    assert sorted(set(whole)) == meta["vocab"]
    first = (stdlib / files[0]).read_text(encoding="utf-8")
    assert texts["train"].startswith(f"# ==== {files[0]} ====\n{first}")
    assert whole.count("\n# ==== ") + 1 == len(files)
    for s in ("val", "test"):  # splits fall on file boundaries, about 90/5/5
        assert texts[s].startswith("# ==== ")
        assert 0.03 < len(texts[s]) / len(whole) < 0.07


def test_text_dataset(tmp_path, gpt2_offline):
    lines = [f"line {i}: {'ąbc' * (i % 7)} {i * i}\n" for i in range(2000)]
    path = tmp_path / "story.txt"
    path.write_text("".join(lines), encoding="utf-8")
    run("text", f"--input={path}", f"--data_dir={tmp_path}")
    data = tmp_path / "story"  # named after the input file
    texts = [split_text(data, s) for s in dataloader.SPLITS]
    assert "".join(texts) == path.read_text(encoding="utf-8")
    assert all(t.endswith("\n") for t in texts)  # cut at line ends
    assert 0.88 < len(texts[0]) / sum(map(len, texts)) < 0.92
    run("text", f"--input={path}", f"--data_dir={tmp_path}", "--tokenizer=gpt2", "--name=story_bpe")
    meta = dataloader.load_meta(tmp_path / "story_bpe")
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and "vocab" not in meta
    assert "".join(split_text(tmp_path / "story_bpe", s) for s in dataloader.SPLITS) == path.read_text(encoding="utf-8")


def test_text_errors(tmp_path):
    with pytest.raises(UserError, match="needs --input"):
        run("text")
    with pytest.raises(UserError, match="does not exist"):
        run("text", f"--input={tmp_path / 'nope.txt'}")
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        run("text", f"--input={tmp_path / 'latin1.txt'}", f"--data_dir={tmp_path}")
    (tmp_path / "tiny.txt").write_text("ab", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        run("text", f"--input={tmp_path / 'tiny.txt'}", f"--data_dir={tmp_path}")
    assert not list((tmp_path / "tiny").glob("*"))  # nothing half-written


def test_vocab_over_65535_refused(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c < 0xE000]
    path = tmp_path / "big.txt"
    path.write_text("".join(chars), encoding="utf-8")
    with pytest.raises(UserError, match=f"{len(chars):,} entries.*token_dtype=uint16 holds at most 65,535"):
        run("text", f"--input={path}", f"--data_dir={tmp_path}", "--token_dtype=uint16")
    assert not (tmp_path / "big").exists()
    run("text", f"--input={path}", f"--data_dir={tmp_path}")  # by default such a vocabulary is stored as uint32
    assert json.loads((tmp_path / "big" / "meta.json").read_text())["token_dtype"] == "uint32"


def test_config_errors():
    with pytest.raises(UserError, match="pycode, text, enwik8, wikitext2, plwiki"):
        run("wikitext3")
    with pytest.raises(UserError, match="did you mean 'n_docs'"):
        run("plwiki", "--ndocs=5")
    with pytest.raises(UserError, match="variant must be v1 or raw"):
        run("wikitext2", "--variant=v2")


@pytest.mark.slow
def test_cli_prints_one_line_error():
    proc = subprocess.run([sys.executable, "prepare.py", "nope"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown dataset 'nope'") and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- enwik8

def enwik8_bytes(n=40_000):
    rng = random.Random(8)
    words = ["<page>", "<title>", "Wikipedia", "ünïcödé", "日本", "[[link]]", "&amp;", "\n", " "]
    data = "".join(rng.choice(words) for _ in range(n)).encode("utf-8")[:n]
    return data[:1000] + b"\xff\xfe" + data[1002:]  # a little invalid UTF-8, like any byte stream may hold


def test_enwik8_zip_byte_and_char(tmp_path):
    data = enwik8_bytes()
    zpath = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("enwik8", data)
    run("enwik8", f"--source={zpath}", f"--data_dir={tmp_path}", "--n_val=3000", "--n_test=2000")
    out = tmp_path / "enwik8"
    meta = dataloader.load_meta(out)
    parts = {"train": data[:35_000], "val": data[35_000:38_000], "test": data[38_000:]}
    assert meta["tokenizer"] == "byte" and meta["vocab_size"] == 256 and meta["eot_token"] is None
    for s, raw in parts.items():
        assert dataloader.open_split(out, s).tobytes()[::2] == raw  # one little-endian uint16 per byte
        assert meta["splits"][s] == {"tokens": len(raw), "bytes": len(raw)}
    assert split_text(out, "train") == parts["train"].decode("utf-8", errors="replace")

    run("enwik8", f"--source={zpath}", f"--data_dir={tmp_path}", "--n_val=3000", "--n_test=2000",
        "--tokenizer=char", "--name=enwik8_char")
    out = tmp_path / "enwik8_char"
    meta = dataloader.load_meta(out)
    decoded = {s: raw.decode("utf-8", errors="replace") for s, raw in parts.items()}
    assert meta["vocab"] == sorted(set("".join(decoded.values())))
    for s in parts:
        assert split_text(out, s) == decoded[s]
        assert meta["splits"][s] == {"tokens": len(decoded[s]), "bytes": len(parts[s])}


def test_enwik8_unzipped_source_and_errors(tmp_path):
    data = enwik8_bytes(10_000)
    src = tmp_path / "download" / "enwik8"
    src.parent.mkdir()
    src.write_bytes(data)
    run("enwik8", f"--source={src}", f"--data_dir={tmp_path}", "--n_val=100", "--n_test=100")
    assert dataloader.open_split(tmp_path / "enwik8", "test").tobytes()[::2] == data[-100:]
    with pytest.raises(UserError, match="not more than n_val"):
        run("enwik8", f"--source={src}", f"--data_dir={tmp_path}")
    with pytest.raises(UserError, match="does not exist"):
        run("enwik8", f"--source={tmp_path / 'nope.zip'}", f"--data_dir={tmp_path}")


# ----------------------------------------------------------------------------- WikiText-2

WIKI = {"train": " \n = Alpha = \n \n The alpha <unk> is here . \n \n = = Early life = = \n \n It was 1 @,@ 000 . \n"
                  " \n = Beta = \n \n Beta is <unk> too . \n",
        "val": " \n = Gamma = \n \n Alpha and beta . \n",
        "test": " \n = Delta = \n \n It is here . \n \n = Epsilon = \n \n The end . \n"}


def wiki_zip(path, names=("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")):
    with zipfile.ZipFile(path, "w") as z:
        for name, text in zip(names, WIKI.values()):
            z.writestr(f"wikitext-2/{name}", text)
    return path


def test_wikitext_shaped_word_and_char(tmp_path):
    src = wiki_zip(tmp_path / "wikitext-2-v1.zip")
    run("wikitext2", f"--source={src}", f"--data_dir={tmp_path}", "--tokenizer=word")
    out = tmp_path / "wikitext2"
    meta = dataloader.load_meta(out)
    words = [w for text in WIKI.values() for line in text.split("\n")[:-1] for w in line.split() + ["<eos>"]]
    assert meta["vocab"] == list(dict.fromkeys(words)) and meta["vocab"][0] == "<eos>"
    assert meta["eot_token"] == 0
    for s, text in WIKI.items():
        assert meta["splits"][s]["tokens"] == len(text.split()) + text.count("\n")
        assert split_text(out, s) == "\n".join(" ".join(line.split()) for line in text.split("\n"))
    run("wikitext2", f"--source={src}", f"--data_dir={tmp_path}", "--tokenizer=char", "--name=wt_char")
    assert "".join(split_text(tmp_path / "wt_char", s) for s in dataloader.SPLITS) == "".join(WIKI.values())


def test_wikitext_shaped_gpt2_articles(tmp_path, gpt2_offline):
    src = tmp_path / "folder"
    src.mkdir()
    for name, text in zip(("train.txt", "valid.txt", "test.txt"), WIKI.values()):
        (src / name).write_text(text, encoding="utf-8")
    run("wikitext2", f"--source={src}", f"--data_dir={tmp_path}")
    out = tmp_path / "wikitext2"
    meta = dataloader.load_meta(out)
    assert meta["source"]["articles"] == {"train": 2, "val": 1, "test": 2}
    for s, text in WIKI.items():
        ids = dataloader.open_split(out, s)
        assert int((ids == 50256).sum()) == meta["source"]["articles"][s] and ids[-1] == 50256
        assert split_text(out, s).replace("<|endoftext|>", "") == text
    assert "<|endoftext|> \n = Beta = " in split_text(out, "train")  # "= = Early life = =" starts none


def test_wikitext_source_must_hold_three_files(tmp_path):
    (tmp_path / "train.txt").write_text("a\n")
    with pytest.raises(UserError, match="must be a folder or zip holding the three WikiText files"):
        run("wikitext2", f"--source={tmp_path}", f"--data_dir={tmp_path}")


def test_real_wikitext2_word_counts(tmp_path, shared_dir):
    wt = shared_dir / "data" / "wikitext-2"
    valid, test = (wt / "valid.txt").read_text(encoding="utf-8"), (wt / "test.txt").read_text(encoding="utf-8")
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.txt").write_text(valid + test, encoding="utf-8")  # the train split is not in shared/
    (src / "valid.txt").write_text(valid, encoding="utf-8")
    (src / "test.txt").write_text(test, encoding="utf-8")
    run("wikitext2", f"--source={src}", f"--data_dir={tmp_path}", "--tokenizer=word")
    meta = dataloader.load_meta(tmp_path / "wikitext2")
    assert meta["splits"]["val"]["tokens"] == 217_646
    assert meta["splits"]["test"]["tokens"] == 245_569
    assert meta["splits"]["train"]["tokens"] == 217_646 + 245_569
    assert meta["source"]["sha256"]["val"] == prepare.DOWNLOADS["wikitext2-v1"][1]["valid.txt"]
    assert meta["source"]["sha256"]["test"] == prepare.DOWNLOADS["wikitext2-v1"][1]["test.txt"]
    val = dataloader.open_split(tmp_path / "wikitext2", "val")
    vocab = meta["vocab"]
    assert len({vocab[i] for i in np.unique(val)}) == 13_777  # distinct tokens incl. <eos>, shared README
    assert int((val == vocab.index("<unk>")).sum()) == 11_718


# ----------------------------------------------------------------------------- plwiki (SpeakLeash)

def plwiki_fixture(folder, n=400):
    """n documents, quality cycling HIGH/MEDIUM/LOW, as zstd JSON lines, plus a manifest beside them."""
    qualities = ["HIGH", "MEDIUM", "LOW"]
    lines = [json.dumps({"text": f"Dokument {i} ({qualities[i % 3]}): zażółć {'gęś ' * (i % 5)}\nkoniec {i}.",
                         "meta": {"title": f"T{i}", "quality": qualities[i % 3], "words": 4}}, ensure_ascii=False)
             for i in range(n)]
    blob = zstandard.ZstdCompressor(level=3).compress(("\n".join(lines) + "\n").encode("utf-8"))
    (folder / "plwiki.jsonl.zst").write_bytes(blob)
    manifest = {"name": "plwiki", "file_size": len(blob),
                "stats": {"documents": n, "quality": {"HIGH": 1 / 3, "MEDIUM": 1 / 3, "LOW": 1 / 3}}}
    (folder / "plwiki.manifest").write_text(json.dumps(manifest))
    return folder / "plwiki.jsonl.zst"


def test_plwiki_quality_count_split(tmp_path):
    src = plwiki_fixture(tmp_path, n=1200)
    argv = ["plwiki", f"--source={src}", f"--data_dir={tmp_path}", "--n_docs=300", "--tokenizer=byte"]
    run(*argv, "--name=a")
    meta = dataloader.load_meta(tmp_path / "a")
    assert meta["source"]["docs_seen"] == 898  # stopped at the 300th HIGH document (line 3 * 299 + 1)
    assert meta["source"]["manifest_documents"] == 1200
    docs = meta["source"]["docs"]
    assert sum(docs.values()) == 300
    assert 210 <= docs["train"] <= 270 and 15 <= docs["val"] <= 45 and 15 <= docs["test"] <= 45
    texts = {s: split_text(tmp_path / "a", s) for s in dataloader.SPLITS}
    found = {s: [int(x.split()[0]) for x in t.split("Dokument ")[1:]] for s, t in texts.items()}
    assert sorted(sum(found.values(), [])) == list(range(0, 900, 3))  # exactly the first 300 HIGH docs
    assert all("(HIGH)" in t and "(LOW)" not in t and "(MEDIUM)" not in t for t in texts.values())
    assert {s: len(v) for s, v in found.items()} == docs
    run(*argv, "--name=b")  # deterministic
    run(*argv, "--name=c", "--seed=1", "--quality=low,MEDIUM")
    for s in dataloader.SPLITS:
        assert (tmp_path / "a" / f"{s}.bin").read_bytes() == (tmp_path / "b" / f"{s}.bin").read_bytes()
    other = split_text(tmp_path / "c", "train")
    assert "(HIGH)" not in other and "(LOW)" in other and "(MEDIUM)" in other


def test_plwiki_gpt2_ends_docs_with_eot(tmp_path, gpt2_offline):
    src = plwiki_fixture(tmp_path, n=60)
    run("plwiki", f"--source={src}", f"--data_dir={tmp_path}", "--n_docs=50", "--quality=ANY")
    out = tmp_path / "plwiki"
    meta = dataloader.load_meta(out)
    assert meta["tokenizer"] == "gpt2" and meta["source"]["docs_seen"] == 50
    for s in dataloader.SPLITS:
        ids = dataloader.open_split(out, s)
        assert int((ids == 50256).sum()) == meta["source"]["docs"][s]
    assert "Dokument 0 (HIGH): zażółć \nkoniec 0.<|endoftext|>" in "".join(
        split_text(out, s) for s in dataloader.SPLITS)


def test_plwiki_errors(tmp_path):
    src = plwiki_fixture(tmp_path, n=30)
    with pytest.raises(UserError, match="fixed vocabulary"):
        run("plwiki", f"--source={src}", "--tokenizer=char")
    with pytest.raises(UserError, match="quality must be"):
        run("plwiki", f"--source={src}", "--quality=GOOD", "--tokenizer=byte")
    (tmp_path / "bad.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"txt": 1}\n'))
    with pytest.raises(UserError, match="document 1 is not"):
        run("plwiki", f"--source={tmp_path / 'bad.jsonl.zst'}", f"--data_dir={tmp_path}", "--tokenizer=byte")


@pytest.mark.slow
def test_benchmark_reports_speeds_and_flat_streaming_memory(gpt2_offline):
    results = prepare.benchmark(mb=0.3, plwiki_mb=(1, 8))
    assert results["text_MB"] >= 0.3
    for kind in ("char", "byte", "gpt2"):
        assert isinstance(results[f"{kind}_MB_per_s"], float) and results[f"{kind}_MB_per_s"] > 0
    small, big = results["plwiki_1MB_peak_rss_MB"], results["plwiki_8MB_peak_rss_MB"]
    assert isinstance(big, float) and big > results["baseline_rss_MB"] > 0
    assert big < small + 20  # streamed: holding 8 MB of text and its token lists would take ~80 MB more




def test_like_tokenizes_new_text_as_a_run_did_and_names_missing_characters(data, tmp_path):
    """prepare.py --like=DIR takes a prepared dataset's (or a run's) exact tokenizer: a char vocabulary
    keeps its ids, and characters it lacks are all named in one refusal that writes nothing."""
    base = json.loads((data / "code" / "meta.json").read_text())
    book = tmp_path / "book.txt"
    book.write_text("def f(x):\n    return x\n" * 200, encoding="utf-8")
    prepare.main(["text", f"--input={book}", f"--like={data / 'code'}", f"--data_dir={tmp_path / 'd'}"])
    meta = json.loads((tmp_path / "d" / "book" / "meta.json").read_text())  # named after the file
    assert (meta["tokenizer"], meta["vocab"]) == ("char", base["vocab"])
    bad = tmp_path / "bad.txt"
    bad.write_text("caf\u00e9 \u2603 \u00e9\n" * 50, encoding="utf-8")
    with pytest.raises(UserError, match=r"character\(s\) of the input are not in .*: .*'\u2603'"):
        prepare.main(["text", f"--input={bad}", f"--like={data / 'code'}", f"--data_dir={tmp_path / 'd'}"])
    assert not (tmp_path / "d" / "bad").exists()
    with pytest.raises(UserError, match="neither a run"):
        prepare.main(["text", f"--input={book}", f"--like={tmp_path / 'nothing'}", f"--data_dir={tmp_path / 'd'}"])


def test_a_dataset_is_never_overwritten_by_another_tokenization(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("hello world\n" * 300, encoding="utf-8")
    args = ["text", f"--input={book}", f"--data_dir={tmp_path}"]
    prepare.main(args)
    before = (tmp_path / "book" / "train.bin").read_bytes()
    prepare.main(args)  # the same tokenization again is fine
    with pytest.raises(UserError, match=r"book already holds a dataset tokenized with char \(vocab 9\)"):
        prepare.main(args + ["--tokenizer=byte"])
    assert (tmp_path / "book" / "train.bin").read_bytes() == before
