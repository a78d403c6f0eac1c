"""
Downloads that survive a bad network: resumed where they stopped (HTTP Range), retried with backoff
when a connection drops or times out, failing at once in one line when there is no way through
(offline: no name resolution, no route, nothing listening), checked against a sha256 or the size, and
renamed into place only when complete.

    path = download("https://host/file.zip", "data/x/raw/file.zip", sha256="...")
    path = hub_download("HuggingFaceTB/SmolLM2-135M", "config.json")   # a Hub file, cached (huggingface_hub)
"""
import errno
import hashlib
import io
import logging
import os
import socket
import sys
import time
import urllib.parse
from pathlib import Path

from configurator import UserError

RETRIES = 5                  # reconnects without progress before giving up
BACKOFF_S = 1.0              # wait before the first retry; doubles each time
TIMEOUT_S = 30.0
READ_BYTES = 1 << 20


def _unreachable(url, why):
    return UserError(f"could not download {url} ({why}): check the network, or fetch it yourself and "
                     f"pass --source=PATH (a local copy)")


NO_WAY = {errno.ECONNREFUSED: "connection refused", errno.ENETUNREACH: "network unreachable",
          errno.EHOSTUNREACH: "no route to host"}


def _no_way(exc, url):
    """Why a connection failed that no retry mends soon (offline: no name resolution, no route; nothing
    listening), else None: timeouts and dropped connections are worth their retries."""
    seen = set()
    while exc is not None and id(exc) not in seen:  # requests wraps urllib3's error, which wraps the socket's
        seen.add(id(exc))
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve {urllib.parse.urlsplit(url).hostname}"
        if isinstance(exc, OSError) and exc.errno in NO_WAY:
            return NO_WAY[exc.errno]
        exc = exc.__cause__ or exc.__context__
    return None


class RemoteFile(io.RawIOBase):
    """An HTTP GET read as a file that survives dropped connections: it reconnects at the current offset
    with a Range request, waiting BACKOFF_S, 2*BACKOFF_S, ... (RETRIES times without progress)."""

    def __init__(self, url, offset=0):
        super().__init__()
        self.url, self.offset, self.total, self._resp, self._failures = url, offset, None, None, 0
        self._reached = False  # whether the server has answered yet
        self._connect()

    def readable(self):
        return True

    def _connect(self):
        import requests
        import urllib3
        while True:
            headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={self.offset}-"} if self.offset else {})}
            try:
                resp = requests.get(self.url, stream=True, timeout=TIMEOUT_S, headers=headers)
            except requests.RequestException as e:
                why = None if isinstance(e, requests.Timeout) or self._reached else _no_way(e, self.url)
                if why:  # fail at once (but once the server has answered, a refusal may be a restart: retry it)
                    raise _unreachable(self.url, why) from None
                self._failed(type(e).__name__)
                continue
            self._reached, status = True, resp.status_code
            total = resp.headers.get("Content-Range", "").rpartition("/")[2]
            total = int(total) if total.isdigit() else None
            if status == 416:  # asked to start at the very end: nothing is left
                resp.close()
                if total != self.offset:
                    raise UserError(f"{self.url} is shorter than the partial download: delete it and run again")
                self.total = total
                return
            if status not in (200, 206):
                resp.close()
                if 400 <= status < 500 and status not in (408, 429):
                    raise _unreachable(self.url, f"HTTP {status}")
                self._failed(f"HTTP {status}")
                continue
            if status == 200:
                length = resp.headers.get("Content-Length", "")
                total = int(length) if length.isdigit() else None
                skip = self.offset  # the server ignored the Range: drop what we already have
                try:
                    while skip > 0 and (got := resp.raw.read(min(skip, READ_BYTES))):
                        skip -= len(got)
                except (OSError, urllib3.exceptions.HTTPError):
                    pass
                if skip > 0:
                    resp.close()
                    self._failed(f"connection lost before byte {self.offset}")
                    continue
            self.total, self._resp = total, resp
            return

    def _failed(self, why):
        self._failures += 1
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        if self._failures > RETRIES:
            raise _unreachable(self.url, why)
        wait = BACKOFF_S * 2 ** (self._failures - 1)
        print(f"{self.url}: {why}; retry {self._failures}/{RETRIES} in {wait:g} s", file=sys.stderr)
        time.sleep(wait)

    def readinto(self, buf):
        import http.client
        import requests
        import urllib3
        while True:
            if self._resp is None:
                if self.total is not None and self.offset >= self.total:
                    return 0
                self._connect()
                continue
            try:
                data = self._resp.raw.read(len(buf))
            except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError, requests.RequestException) as e:
                self._failed(f"connection lost at byte {self.offset}: {type(e).__name__}")
                continue
            if not data:
                if self.total is None or self.offset >= self.total:
                    return 0
                self._failed(f"connection closed at byte {self.offset} of {self.total}")
                continue
            self._failures = 0
            buf[:len(data)] = data
            self.offset += len(data)
            return len(data)

    def close(self):
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        super().close()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _problem(path, sha256, size):
    if size is not None and path.stat().st_size != size:
        return f"size {path.stat().st_size:,} bytes, expected {size:,}"
    if sha256 is not None and (got := file_sha256(path)) != sha256:
        return f"sha256 {got}, expected {sha256}"
    return None


def download(url, dest, sha256=None, size=None):
    """Fetch url to dest unless a verified copy is there already. Streams into dest.part (resuming a
    previous .part with a Range request), shows a progress bar, checks sha256 if known, else the size
    (given or Content-Length), and renames into place; a download that fails the check is deleted."""
    from tqdm import tqdm
    dest = Path(dest)
    if dest.exists():
        if _problem(dest, sha256, size) is None:
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    with RemoteFile(url, offset) as remote, open(part, "ab") as f, \
            tqdm(total=size or remote.total, initial=offset, unit="B", unit_scale=True, desc=dest.name) as bar:
        while chunk := remote.read(READ_BYTES):
            f.write(chunk)
            bar.update(len(chunk))
    problem = _problem(part, sha256, size or remote.total)
    if problem:
        part.unlink()
        raise UserError(f"download of {url} is corrupt ({problem}) and was deleted: run again, or pass "
                        "--source=PATH with a good local copy")
    os.replace(part, dest)
    return dest


def hub_download(repo, filename, optional=False):
    """The path of one file of a Hub repository: the cached copy if there is one, else downloaded (and cached).
    optional: a missing file is a short UserError (the caller tries something else)."""
    import huggingface_hub
    try:
        return huggingface_hub.hf_hub_download(repo, filename, local_files_only=True)
    except Exception:  # not cached yet
        pass
    quiet = logging.getLogger("huggingface_hub")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # no warnings about retries: what goes wrong is our one line
    try:
        return huggingface_hub.hf_hub_download(repo, filename)
    except Exception as e:
        if optional:
            raise UserError(f"{repo} has no {filename}") from None
        raise UserError(f"could not download {filename} of {repo} from the Hugging Face Hub ({type(e).__name__}) "
                        f"and it is not cached: connect to the network once, or download config.json and "
                        f"model.safetensors of {repo} where there is a network, then pass init_from=hf:DIR") from None
    finally:
        quiet.setLevel(level)
