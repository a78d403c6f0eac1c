"""Property-based tests (hypothesis): configurator parsing never raises anything but UserError and round-trips
every valid value of each field type, through flags and override files; tokenizers round-trip arbitrary
Unicode (char built from the text, byte, word up to whitespace, gpt2 offline, whose parallel pieces must
give exactly the tokens of the whole text).

    python -m pytest -q tests/test_fuzz.py
"""
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import tokenizer
import train
from configurator import UserError, load_config
from conftest import FEW, FUZZ

@dataclass
class Typed:
    """One field of each type the configs use."""
    n: int = 1
    x: float = 0.5
    flag: bool = False
    name: str = "a"
    k: Optional[int] = None
    p: Optional[float] = None


TYPES = {f.name: f.type for f in fields(Typed)}
finite = st.floats(allow_nan=False, allow_infinity=False)
VALUES = {"n": st.integers(-10 ** 12, 10 ** 12), "x": finite | st.integers(-1000, 1000), "flag": st.booleans(),
          "name": st.text(max_size=40), "k": st.none() | st.integers(), "p": st.none() | finite}

# an argv item: a --key=value flag with any key (known, misspelled, empty, odd characters) and any value text,
# a flag without '=', or a stray word (never a *.py path: those are read as override files, fuzzed below)
KEYS = st.sampled_from(sorted(TYPES) + [f.name for f in fields(train.TrainConfig)]) | st.text(max_size=12)
FLAG = st.builds(lambda key, eq, value: f"--{key}{eq}{value}", KEYS, st.sampled_from(["=", "", "=="]),
                 st.text(max_size=30) | st.sampled_from(["1e-3", "True", "None", "[1, 2]", "{[]: 1}", "(", "-0", "1_0",
                                                           "0x10", "'s'", "b'x'", "1j", "nan", "inf", "9" * 5000]))
ARGV = st.lists(FLAG | st.text(max_size=12).filter(lambda s: not s.endswith(".py")), max_size=4)


def check_types(cfg):
    for name, value in asdict(cfg).items():
        typ = type(getattr(train.TrainConfig, name, getattr(Typed, name, None)))
        if value is not None and typ is not type(None):
            assert type(value) is typ, (name, value)


@FUZZ
@given(ARGV)
def test_any_argv_gives_a_config_of_the_right_types_or_a_user_error(argv):
    for defaults in (Typed(), train.TrainConfig()):  # TrainConfig also runs its validate()
        try:
            cfg = load_config(defaults, argv)
        except UserError as e:
            assert str(e)
            continue
        check_types(cfg)


@FUZZ
@given(st.fixed_dictionaries({}, optional=VALUES))
def test_valid_values_round_trip_through_flags_and_override_files(values):
    expect = {**asdict(Typed()), **{k: float(v) if k in ("x", "p") and v is not None else v
                                    for k, v in values.items()}}
    assert asdict(load_config(Typed(), [f"--{k}={v!r}" for k, v in values.items()])) == expect
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "over.py"
        path.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()), encoding="utf-8")
        assert asdict(load_config(Typed(), [str(path)])) == expect


@FUZZ
@given(st.text(max_size=40).filter(lambda s: "'" not in s and '"' not in s))
def test_a_str_field_takes_any_unquoted_text_as_it_is(text):
    assert load_config(Typed(), [f"--name={text}"]).name == text  # "2024", "None", "1e3", "[1]" stay text


@FEW
@given(st.text(max_size=200))
def test_any_override_file_is_read_or_a_user_error(source):
    assume("*" not in source)  # keep 9**9**9 and friends out: the file is really executed
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "over.py"
        path.write_text(source, encoding="utf-8")
        try:
            check_types(load_config(Typed(), [str(path)]))
        except UserError:
            pass


# ----------------------------------------------------------------------------- tokenizers

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
