"""tokenizer.py: char, byte, word and gpt2 (offline) round trips, on a fixed sample and on arbitrary Unicode
(hypothesis; gpt2's parallel pieces must give exactly the tokens of the whole text), unknown characters and
tokenizers named, and incremental decoding for streaming."""
import json
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import prepare
import tokenizer
from configurator import UserError
from conftest import FEW, FUZZ


SAMPLE = "Zażółć gęślą jaźń!\n\tdef f(x):  return x ** 2  # ok\n\n\n  emoji 🙂 and CJK 漢字\r\n"



# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("kind", ["char", "byte"])
def test_round_trip_char_byte(kind):
    tok = tokenizer.Tokenizer.build(kind, [SAMPLE])
    ids = tok.encode(SAMPLE)
    assert isinstance(ids, list) and all(0 <= i < tok.vocab_size for i in ids)
    assert len(ids) == (len(SAMPLE) if kind == "char" else len(SAMPLE.encode()))
    assert tok.decode(ids) == SAMPLE


def test_round_trip_gpt2(gpt2_offline):
    tok = tokenizer.Tokenizer("gpt2")
    assert tok.encode("hello world") == [31373, 995]
    assert tok.vocab_size == 50257 and tok.eot_token == 50256
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE


def test_gpt2_pieces_give_the_tokens_of_the_whole_text(gpt2_offline, monkeypatch):
    text = Path(prepare.__file__).read_text() * 3  # code: blank lines, indentation, trailing spaces
    whole = tokenizer._load_gpt2().encode_ordinary(text)
    monkeypatch.setattr(tokenizer, "GPT2_CHUNK_CHARS", 500)
    assert len(list(tokenizer._bpe_pieces(text))) > 50
    assert tokenizer.Tokenizer("gpt2").encode(text) == whole


def test_word_tokenizer_follows_word_language_model():
    tok = tokenizer.Tokenizer.build("word", [" a b \n\n b c\n"])
    assert tok.vocab == ["a", "b", "<eos>", "c"]  # first appearance, <eos> after the first line
    assert tok.encode(" a b \n\n b c\n") == [0, 1, 2, 2, 1, 3, 2]
    assert tok.decode([0, 1, 2, 2, 1, 3, 2]) == "a b\n\nb c\n"
    with pytest.raises(UserError, match="'zzz' is not in"):
        tok.encode("a zzz")
    assert tokenizer.Tokenizer.build("word", ["x <unk>\n"]).encode("x y") == [0, 1]  # unknown words -> <unk>


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_char_round_trip_any_unicode(text):
    tok = tokenizer.Tokenizer.build("char", [text])
    assert tok.vocab_size == len(set(text))
    assert tok.decode(tok.encode(text)) == text
    assert tokenizer.Tokenizer.from_meta(json.loads(json.dumps(tok.to_meta()))).encode(text) == tok.encode(text)


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_byte_round_trip_any_unicode(text):
    tok = tokenizer.Tokenizer("byte")
    assert tok.decode(tok.encode(text)) == text


def test_char_outside_vocab_is_a_user_error():
    tok = tokenizer.Tokenizer.build("char", ["abc"])
    with pytest.raises(UserError, match=r"'é' \(U\+00E9\) is not in"):
        tok.encode("abé")
    with pytest.raises(UserError, match=r"'\\n' \(U\+000A\)"):
        tok.encode("a\n")


def test_unknown_tokenizer_and_missing_hf():
    with pytest.raises(UserError, match="char, byte, gpt2, word or hf:NAME"):
        tokenizer.Tokenizer("sentencepiece")
    try:
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install transformers"):
            tokenizer.Tokenizer("hf:gpt2")


def test_incremental_decoding_matches_decode_and_holds_back_partial_characters(gpt2_offline):
    """Streaming decodes each new token once (char, byte, gpt2): the pieces concatenate to decode(ids),
    and the bytes of a character split across tokens wait until it is complete; word has no piecewise form."""
    text = "żółw 🐢 naïve\tdone"
    for tok in (tokenizer.Tokenizer("byte"), tokenizer.Tokenizer("gpt2"), tokenizer.Tokenizer.build("char", [text])):
        ids = tok.encode(text)
        piece = tok.incremental_decoder()
        pieces = [piece(i) for i in ids]
        assert "".join(pieces) == tok.decode(ids) == text
        if tok.kind == "byte":  # the turtle is 4 bytes: nothing shows until its last one
            at = text.encode().index("🐢".encode())
            assert pieces[at:at + 4] == ["", "", "", "🐢"]
    assert tokenizer.Tokenizer.build("word", ["a b"]).incremental_decoder() is None



# ----------------------------------------------------------------------------- property-based (hypothesis)

ANY_CHAR = st.characters(codec=None, exclude_categories=())  # every code point, lone surrogates included
TEXT = st.text(st.sampled_from(" \n\t\r.'sx0\u00e9\u65e5\U0001F600") | st.characters(exclude_categories=["Cs"]),
               max_size=300)  # UTF-8 text: no lone surrogates


@FUZZ
@given(st.text(ANY_CHAR, max_size=200), st.text(ANY_CHAR, max_size=20))
def test_char_tokenizer_round_trips_and_names_unknown_characters(text, other):
    tok = tokenizer.Tokenizer.build("char", [text])
    ids = tok.encode(text)
    assert tok.decode(ids) == text and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.vocab_size == len(set(text))
    unknown = [c for c in other if c not in set(text)]
    if unknown:
        with pytest.raises(UserError, match=f"U\\+{ord(unknown[0]):04X}"):
            tok.encode(other)
    else:
        assert tok.decode(tok.encode(other)) == other


@FUZZ
@given(TEXT)
def test_byte_tokenizer_round_trips(text):
    tok = tokenizer.Tokenizer("byte")
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) == len(text.encode("utf-8")) and max(ids, default=0) < 256


@FUZZ
@given(TEXT)
def test_word_tokenizer_round_trips_up_to_whitespace(text):
    assume("<eos>" not in text.split())
    tok = tokenizer.Tokenizer.build("word", [text])
    assert tok.decode(tok.encode(text)) == "\n".join(" ".join(line.split()) for line in text.split("\n"))


@FEW
@given(TEXT, st.integers(1, 20))
def test_gpt2_round_trips_and_its_pieces_match_the_whole(gpt2_offline, text, size):
    tok = tokenizer.Tokenizer("gpt2")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    pieces = list(tokenizer._bpe_pieces(text, size))
    assert "".join(pieces) == text
    assert [i for p in pieces for i in tok._enc.encode_ordinary(p)] == tok._enc.encode_ordinary(text) == ids
