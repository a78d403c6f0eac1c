"""Property-based tests (hypothesis) of configurator.py: parsing never raises anything but UserError and
round-trips every valid value of each field type, through flags and override files. (Apart from
test_configurator.py, which must not import train.py: it checks that importing the stages does nothing. The
tokenizers' property tests are test_tokenizer.py's.)

    python -m pytest -q tests/test_configurator_fuzz.py
"""
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

from hypothesis import assume, given
from hypothesis import strategies as st

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
