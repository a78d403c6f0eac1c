"""configurator: override files, flags, coercion to the default's type, strict keys with suggestions."""
from dataclasses import dataclass
from typing import Optional

import pytest

from configurator import UserError, load_config, parse_literal


@dataclass
class Cfg:
    lr: float = 1e-3
    n_layer: int = 4
    compile: bool = True
    dataset: str = "pycode"
    top_k: Optional[int] = None


def test_defaults_untouched_without_arguments():
    assert load_config(Cfg(), []) == Cfg()


def test_override_file_then_flags(tmp_path):
    f = tmp_path / "over.py"
    f.write_text("import math\nn_layer = 12\nlr = 0.5 * 2\n_private = 3\ndataset = 'enwik8'\n")
    cfg = load_config(Cfg(), [str(f), "--lr=0.1"])
    assert (cfg.n_layer, cfg.lr, cfg.dataset) == (12, 0.1, "enwik8")  # the flag wins over the file


def test_coercion_to_the_default_type():
    cfg = load_config(Cfg(), ["--lr=1", "--compile=False", "--dataset=wikitext2", "--top_k=50"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.compile is False
    assert cfg.dataset == "wikitext2"
    assert cfg.top_k == 50
    assert load_config(Cfg(), ["--top_k=None"]).top_k is None


def test_value_containing_equals_sign():
    assert load_config(Cfg(), ["--dataset=a=b"]).dataset == "a=b"


@pytest.mark.parametrize("arg, match", [
    ("--n_layers=3", r"unknown config key 'n_layers'.*did you mean 'n_layer'"),
    ("--lr=fast", r"lr must be float.*'fast'"),
    ("--n_layer=2.5", r"n_layer must be int"),
    ("--compile=1", r"compile must be bool"),
    ("--lr", r"has no value"),
    ("stray", r"unexpected argument 'stray'"),
    ("config/nope.py", r"config file config/nope.py does not exist"),
])
def test_bad_input_is_a_clear_user_error(arg, match):
    with pytest.raises(UserError, match=match):
        load_config(Cfg(), [arg])


def test_errors_in_override_files_name_the_file(tmp_path):
    typo = tmp_path / "typo.py"
    typo.write_text("learning_rat = 0.1\n")
    with pytest.raises(UserError, match=r"config file .*typo.py: unknown config key 'learning_rat'"):
        load_config(Cfg(), [str(typo)])
    broken = tmp_path / "broken.py"
    broken.write_text("n_layer = = 3\n")
    with pytest.raises(UserError, match=r"broken.py line 1: syntax error"):
        load_config(Cfg(), [str(broken)])


def test_parse_literal_keeps_bare_words_as_strings():
    assert parse_literal("1e-3") == 1e-3
    assert parse_literal("True") is True
    assert parse_literal("hello world") == "hello world"
    assert parse_literal("'quoted'") == "quoted"


def test_validate_hook_runs():
    @dataclass
    class Checked:
        n: int = 1

        def validate(self):
            if self.n < 1:
                raise UserError("n must be positive")

    with pytest.raises(UserError, match="n must be positive"):
        load_config(Checked(), ["--n=0"])


def test_importing_the_stages_does_nothing(capsys):
    import sample  # noqa: F401
    import train  # noqa: F401
    assert capsys.readouterr().out == ""


def test_help_lists_the_keys(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_config(Cfg(), ["--lr=0.1", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--lr=0.001  (float)" in out and "--top_k=None" in out


@dataclass
class Commented:
    lr: float = 1e-3  # the peak learning rate
    stop: tuple = ()  # stop strings
    quiet: bool = False


def test_help_shows_each_keys_comment(capsys):
    with pytest.raises(SystemExit):
        load_config(Commented(), ["--help"])
    out = capsys.readouterr().out
    assert "--lr=0.001  (float)" in out and out.split("--lr=0.001")[1].split("\n")[0].endswith("the peak learning rate")
    assert "--quiet=False  (bool)" in out


def test_a_bare_bool_flag_turns_it_on_and_tuple_flags_repeat():
    cfg = load_config(Commented(), ["--quiet", "--stop=a", "--stop=b"])
    assert cfg.quiet is True and cfg.stop == ("a", "b")
    with pytest.raises(UserError, match="flag --lr has no value: write --lr=VALUE"):
        load_config(Commented(), ["--lr"])


def test_given_keys_are_the_ones_set(tmp_path):
    from configurator import given_keys
    f = tmp_path / "over.py"
    f.write_text("n_layer = 4\n")  # the default's value, but set all the same
    assert given_keys(load_config(Cfg(), [str(f), "--lr=0.1"])) == {"n_layer", "lr"}


def test_given_where_names_the_last_place_a_key_was_set(tmp_path):
    from configurator import given_where, replace
    f = tmp_path / "over.py"
    f.write_text("n_layer = 4\nlr = 0.5\n")
    cfg = load_config(Cfg(), [str(f), "--lr=0.1"])
    assert (given_where(cfg, "n_layer"), given_where(cfg, "lr")) == (f"config file {f}", "flag --lr=0.1")
    assert given_where(cfg, "quiet") == ""  # left at its default
    assert given_where(replace(cfg, lr=0.2), "lr") == "flag --lr=0.1"  # replace keeps the record


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly():
    import subprocess
    import sys
    from conftest import REPO
    for stage in ("prepare.py", "train.py", "sample.py"):
        proc = subprocess.Popen([sys.executable, stage, "--help"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        err = proc.stderr.read().decode()
        assert proc.wait() == 0 and "Traceback" not in err and "BrokenPipeError" not in err, (stage, err)
