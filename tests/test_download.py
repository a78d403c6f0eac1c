"""Tests for prepare.py's downloads against a local HTTP server (127.0.0.1, Range support, scripted
failures): resume after a cut or an interrupted run, checksum failures, 404s, reuse, --source, failing at
once offline (refused, unresolvable, unreachable; never leaving the machine) while timeouts are retried, and
whole datasets fetched and streamed over HTTP. Run: .venv/bin/pytest -q tests/test_download.py"""
import errno
import hashlib
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3.util.connection
import zstandard

import dataloader
import configurator
import download
import prepare
from configurator import UserError


class Handler(BaseHTTPRequestHandler):
    """Serves server.files; honours "Range: bytes=N-" unless server.ignore_range; server.cut[path] = N
    sends only N bytes of the next response for path, then drops the connection; server.fail[path] =
    status answers the next request for path with that status."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        status = srv.fail.pop(self.path, None) or (404 if body is None else None)
        if status:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, wanted = 0, self.headers.get("Range")
        if wanted and not srv.ignore_range:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = srv.cut.pop(self.path, None)
        self.wfile.write(body[start:start + cut] if cut is not None else body[start:])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(download, "BACKOFF_S", 0.01)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.log, httpd.cut, httpd.fail, httpd.ignore_range = {}, [], {}, {}, False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


BODY = os.urandom(300_000)
SHA = hashlib.sha256(BODY).hexdigest()


def test_cut_connection_resumes_with_range(server, tmp_path):
    server.files["/f.bin"] = BODY
    server.cut["/f.bin"] = 100_000
    dest = download.download(server.url + "/f.bin", tmp_path / "raw" / "f.bin", sha256=SHA)
    assert dest.read_bytes() == BODY
    assert server.log == [("/f.bin", None), ("/f.bin", "bytes=100000-")]
    assert not (tmp_path / "raw" / "f.bin.part").exists()


def test_interrupted_run_resumes_from_part_file(server, tmp_path):
    server.files["/f.bin"] = BODY
    (tmp_path / "f.bin.part").write_bytes(BODY[:123_456])
    assert download.download(server.url + "/f.bin", tmp_path / "f.bin").read_bytes() == BODY  # size checked
    assert server.log == [("/f.bin", "bytes=123456-")]


def test_server_ignoring_range_still_gives_the_file(server, tmp_path):
    server.files["/f.bin"], server.ignore_range = BODY, True
    (tmp_path / "f.bin.part").write_bytes(BODY[:50_000])
    server.cut["/f.bin"] = 200_000
    assert download.download(server.url + "/f.bin", tmp_path / "f.bin", sha256=SHA).read_bytes() == BODY
    assert len(server.log) == 2


def test_complete_part_file_gets_416_and_is_kept(server, tmp_path):
    server.files["/f.bin"] = BODY
    (tmp_path / "f.bin.part").write_bytes(BODY)
    assert download.download(server.url + "/f.bin", tmp_path / "f.bin", sha256=SHA).read_bytes() == BODY
    assert server.log == [("/f.bin", f"bytes={len(BODY)}-")]


def test_corrupt_download_fails_checksum_and_is_deleted(server, tmp_path):
    server.files["/f.bin"] = BODY[:-1] + bytes([BODY[-1] ^ 0xFF])  # (not + b"X": 1 in 256 random BODYs end in X)
    with pytest.raises(UserError, match=f"f.bin is corrupt \\(sha256 .*expected {SHA}\\) and was deleted"):
        download.download(server.url + "/f.bin", tmp_path / "f.bin", sha256=SHA)
    assert list(tmp_path.iterdir()) == []
    server.files["/f.bin"] = BODY[:-1]
    with pytest.raises(UserError, match="size 299,999 bytes, expected 300,000"):
        download.download(server.url + "/f.bin", tmp_path / "f.bin", size=len(BODY))
    assert list(tmp_path.iterdir()) == []


def test_verified_file_is_reused_and_a_bad_one_replaced(server, tmp_path):
    server.files["/f.bin"] = BODY
    download.download(server.url + "/f.bin", tmp_path / "f.bin", sha256=SHA)
    download.download(server.url + "/f.bin", tmp_path / "f.bin", sha256=SHA)
    assert len(server.log) == 1
    (tmp_path / "f.bin").write_bytes(b"garbage")
    assert download.download(server.url + "/f.bin", tmp_path / "f.bin", sha256=SHA).read_bytes() == BODY
    assert len(server.log) == 2


def test_retries_after_server_error(server, tmp_path):
    server.files["/f.bin"], server.fail["/f.bin"] = BODY, 503
    assert download.download(server.url + "/f.bin", tmp_path / "f.bin").read_bytes() == BODY
    assert len(server.log) == 2


def test_404_is_one_clear_user_error(server, tmp_path):
    with pytest.raises(UserError, match=f"could not download {server.url}/enwik8.zip \\(HTTP 404\\).*--source=PATH"):
        prepare.main(["enwik8", f"--url={server.url}", f"--data_dir={tmp_path}"])
    assert server.log == [("/enwik8.zip", None)]  # no retries on a 404
    assert not (tmp_path / "enwik8" / "raw" / "enwik8.zip").exists()


def free_port():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fail_to_connect(error):
    """A stand-in for urllib3's create_connection that fails as a machine without a network does."""
    def connect(*args, **kwargs):
        raise error
    return connect


@pytest.mark.parametrize("case", ["connection refused", "cannot resolve nonexistent.invalid", "network unreachable"])
def test_offline_fails_at_once_with_the_source_hint(tmp_path, monkeypatch, capsys, case):
    """No retry mends these soon, so none is made (offline, 5 retries spent 31 s before the message)."""
    monkeypatch.setattr(download, "BACKOFF_S", 5.0)  # a retry would wait 5 s
    monkeypatch.setattr(download, "RETRIES", 1)
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):  # a proxy would resolve the name itself
        monkeypatch.delenv(var, raising=False)
    base = f"http://127.0.0.1:{free_port()}/"
    if case.startswith("cannot resolve"):
        # .invalid never resolves (RFC 6761); answer so here, as a resolver does, so no query leaves the machine
        base, real_getaddrinfo = "http://nonexistent.invalid/", socket.getaddrinfo

        def getaddrinfo(host, *args, **kwargs):
            if str(host).endswith(".invalid"):
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return real_getaddrinfo(host, *args, **kwargs)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    if case == "network unreachable":
        monkeypatch.setattr(urllib3.util.connection, "create_connection",
                            fail_to_connect(OSError(errno.ENETUNREACH, "Network is unreachable")))
    monkeypatch.setattr(sys, "argv", ["prepare.py", "enwik8", f"--url={base}", f"--data_dir={tmp_path}"])
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as e:
        configurator.cli(prepare.main)
    assert time.monotonic() - t0 < 2.5  # generous, and still half of the one retry's wait
    assert e.value.code == 2 and capsys.readouterr().err == (
        f"error: could not download {base}enwik8.zip ({case}): check the network, or fetch it yourself and pass "
        f"--source=PATH (a local copy)\n")  # one line, and no retry announced
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_connect_timeouts_are_still_retried(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "BACKOFF_S", 0.01)
    tries = []

    def timeout(*args, **kwargs):
        tries.append(1)
        raise socket.timeout("timed out")
    monkeypatch.setattr(urllib3.util.connection, "create_connection", timeout)
    with pytest.raises(UserError, match="could not download .*ConnectTimeout.*--source=PATH"):
        download.download(f"http://127.0.0.1:{free_port()}/x", tmp_path / "x")
    assert len(tries) == download.RETRIES + 1 and f"retry {download.RETRIES}/{download.RETRIES}" in capsys.readouterr().err


def test_refused_reconnect_after_a_dropped_transfer_is_retried_and_resumes(server, tmp_path, monkeypatch):
    """Once the server has answered, a refusal may be a restart: retried, then resumed with a Range."""
    server.files["/f.bin"] = BODY
    server.cut["/f.bin"] = 100_000
    real, calls = urllib3.util.connection.create_connection, []

    def refuse_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        return real(*args, **kwargs)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", refuse_the_second)
    assert download.download(server.url + "/f.bin", tmp_path / "f.bin", sha256=SHA).read_bytes() == BODY
    assert len(calls) == 3 and server.log == [("/f.bin", None), ("/f.bin", "bytes=100000-")]


# ----------------------------------------------------------------------------- whole datasets over HTTP

@pytest.fixture
def wikitext_files(shared_dir):
    wt = shared_dir / "data" / "wikitext-2"
    valid, test = (wt / "valid.txt").read_bytes(), (wt / "test.txt").read_bytes()
    return {"/wt/train.txt": valid + test, "/wt/valid.txt": valid, "/wt/test.txt": test}


def test_wikitext2_download_verify_reuse(server, tmp_path, wikitext_files):
    server.files.update(wikitext_files)
    argv = ["wikitext2", "--tokenizer=word", f"--url={server.url}/wt", f"--data_dir={tmp_path}"]
    prepare.main(argv)
    meta = dataloader.load_meta(tmp_path / "wikitext2")
    assert (meta["splits"]["val"]["tokens"], meta["splits"]["test"]["tokens"]) == (217_646, 245_569)
    assert sorted(p.name for p in (tmp_path / "wikitext2" / "raw").iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    assert len(server.log) == 3
    prepare.main(argv)  # verified files are reused
    assert len(server.log) == 3


def test_wikitext2_source_skips_the_network(server, tmp_path, wikitext_files):
    for path, body in wikitext_files.items():
        (tmp_path / path.rpartition("/")[2]).write_bytes(body)
    prepare.main(["wikitext2", "--tokenizer=word", f"--source={tmp_path}", f"--url={server.url}/wt",
                  f"--data_dir={tmp_path / 'data'}"])
    assert dataloader.load_meta(tmp_path / "data" / "wikitext2")["splits"]["test"]["tokens"] == 245_569
    assert server.log == []


def test_wikitext2_corrupt_file_is_refused(server, tmp_path, wikitext_files):
    server.files.update(wikitext_files)
    server.files["/wt/valid.txt"] = wikitext_files["/wt/valid.txt"].replace(b"lobster", b"crab")
    with pytest.raises(UserError, match="valid.txt is corrupt"):
        prepare.main(["wikitext2", "--tokenizer=word", f"--url={server.url}/wt", f"--data_dir={tmp_path}"])
    raw = tmp_path / "wikitext2" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == ["train.txt"]  # the bad valid.txt is gone
    assert not (tmp_path / "wikitext2" / "meta.json").exists()


def test_plwiki_streams_over_http_through_a_dropped_connection(server, tmp_path):
    lines = [json.dumps({"text": f"Artykuł {i}: " + "ślimak " * (i % 50), "meta": {"quality": ["HIGH", "LOW"][i % 2]}})
             for i in range(3000)]
    blob = zstandard.ZstdCompressor(level=1).compress("\n".join(lines).encode("utf-8"))
    (tmp_path / "plwiki.jsonl.zst").write_bytes(blob)
    server.files["/sl/plwiki.jsonl.zst"] = blob
    server.files["/sl/plwiki.manifest"] = json.dumps({"file_size": len(blob), "stats": {"documents": 3000}}).encode()
    server.cut["/sl/plwiki.jsonl.zst"] = len(blob) // 3
    common = ["plwiki", "--n_docs=1200", "--tokenizer=byte", f"--data_dir={tmp_path}"]
    prepare.main(common + [f"--url={server.url}/sl/", "--name=web"])
    prepare.main(common + [f"--source={tmp_path / 'plwiki.jsonl.zst'}", "--name=local"])
    assert server.log == [("/sl/plwiki.manifest", None), ("/sl/plwiki.jsonl.zst", None),
                          ("/sl/plwiki.jsonl.zst", f"bytes={len(blob) // 3}-")]
    for s in dataloader.SPLITS:
        assert (tmp_path / "web" / f"{s}.bin").read_bytes() == (tmp_path / "local" / f"{s}.bin").read_bytes()
    meta = dataloader.load_meta(tmp_path / "web")
    assert sum(meta["source"]["docs"].values()) == 1200 and meta["source"]["manifest_documents"] == 3000
    assert [p.name for p in (tmp_path / "web" / "raw").iterdir()] == ["plwiki.manifest"]  # archive not stored
