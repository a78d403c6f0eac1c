"""
Typed configuration: dataclass defaults, then an optional Python override file, then --key=value flags.

    cfg = load_config(TrainConfig(), ["config/char_enwik8.py", "--lr=0.1"])

An override file is plain Python (`n_layer = 12`) run in a fresh namespace; only its public,
non-module names count. Flags are `--key=value`, the value parsed as a Python literal when it is
one and kept as a string otherwise. Every value is coerced to the type of its default (an int
where a float is expected is fine, `--compile=False` is a bool). An unknown key or a value of the
wrong type raises UserError naming where it came from and, for a typo, the closest known key.
given_keys(cfg) are the keys a file or flag set, and given_where(cfg, key) says which one set it last.

UserError is the one exception the entry points turn into a single line on stderr and exit code 2
(see `cli`): every mistake a user can make is raised as one.
"""
import ast
import dataclasses
import difflib
import inspect
import os
import re
import sys
import types
import typing


class UserError(Exception):
    """A problem with the user's input: printed as one line, never as a traceback."""


def cli(main):
    """Run main(argv); a UserError becomes one line on stderr and exit code 2. Output piped into a
    command that stops reading early (`| head`) ends the program quietly."""
    try:
        return main(sys.argv[1:])
    except UserError as e:
        print("error: " + " ".join(str(e).split("\n")), file=sys.stderr)  # always one line
        sys.exit(2)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python flushes stdout again at exit
        sys.exit(0)


def _suggest(key, known):
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    words = key.lower().split("_")
    close += [k for k in known if k == "".join(w[:1] for w in words)]  # learning_rate -> lr
    close += [k for k in known if "_" in k and all(any(w.startswith(p) for w in words) for p in k.split("_"))]
    return f" (did you mean '{close[0]}'?)" if close else ""


def _field_types(cfg):
    hints = typing.get_type_hints(type(cfg))
    return {f.name: hints[f.name] for f in dataclasses.fields(cfg)}


def coerce(key, value, typ, where):
    """Return value as type typ (a plain type or Optional[...]), or raise UserError."""
    origin_args = typing.get_args(typ)
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        if value is None and type(None) in origin_args:
            return None
        (typ,) = [a for a in origin_args if a is not type(None)]
    ok = False
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typ is str:
        ok = isinstance(value, str)
    elif typing.get_origin(typ) in (tuple, list):
        ok = isinstance(value, (tuple, list))
        value = typing.get_origin(typ)(value) if ok else value
    else:
        ok = isinstance(value, typ)
    if not ok:
        name = getattr(typ, "__name__", str(typ))
        raise UserError(f"{where}: {key} must be {name}, got {value!r} ({type(value).__name__})")
    return value


def parse_literal(raw):
    """'3' -> 3, 'False' -> False, '1e-3' -> 0.001, 'hello' -> 'hello' (a bare word stays a string)."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: {[]: 1}
        return raw


def read_override_file(path):
    """The public names a Python override file defines, as a dict."""
    if not os.path.isfile(path):
        raise UserError(f"config file {path} does not exist (see config/ for the ones we ship)")
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None
    namespace = {}
    try:
        exec(compile(source, path, "exec"), namespace)
    except SyntaxError as e:
        raise UserError(f"config file {path} line {e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:  # an override file that raises is the user's input, not our bug
        raise UserError(f"config file {path} failed: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, types.ModuleType)}


def field_comments(cls):
    """{field: its end-of-line comment} from the source of a dataclass and the ones it extends."""
    comments = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        for line in lines:
            m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)", line)
            if m:
                comments[m[1]] = m[2]
    return comments


def print_help(defaults):
    """The running script's docstring, then every config key with its default, type and comment."""
    doc = getattr(sys.modules.get("__main__"), "__doc__", None)
    if doc:
        print(doc.strip() + "\n")
    print(f"{type(defaults).__name__} keys (--key=value):")
    comments, types_ = field_comments(type(defaults)), _field_types(defaults)
    own_first = [n for klass in type(defaults).__mro__ for n in getattr(klass, "__annotations__", {}) if n in types_]
    for name in dict.fromkeys(own_first):
        typ = types_[name]
        kind = " | ".join(a.__name__ for a in typing.get_args(typ)) or getattr(typ, "__name__", str(typ))
        flag = f"--{name}={getattr(defaults, name)!r}  ({kind})"
        print(f"  {flag:<40} {comments.get(name, '')}".rstrip())


def load_config(defaults, argv):
    """Apply override files then --key=value flags from argv to a copy of the dataclass `defaults`."""
    types_ = _field_types(defaults)
    values = dataclasses.asdict(defaults)
    given, repeated = {}, set()  # given: key -> where it was last set ("flag --k=v" or "config file F")

    def apply(key, value, where):
        if key not in types_:
            raise UserError(f"{where}: unknown config key '{key}'{_suggest(key, list(types_))}")
        if typing.get_origin(types_[key]) in (tuple, list) or types_[key] in (tuple, list):
            if isinstance(value, str) and where.startswith("flag"):  # --stop=a --stop=b: a repeatable flag
                value = (*(values[key] if key in repeated else ()), value)
                repeated.add(key)
        values[key] = coerce(key, value, types_[key], where)
        given[key] = where

    for arg in argv:
        if arg in ("-h", "--help"):
            print_help(defaults)
            sys.exit(0)
        if arg.startswith("--"):
            key, eq, raw = arg[2:].partition("=")
            key = key.replace("-", "_")
            if not eq and types_.get(key) not in (bool, bool | None):
                raise UserError(f"flag {arg} has no value: write --{key}=VALUE")
            value = parse_literal(raw) if eq else True  # a bare --flag of a bool key turns it on
            if types_.get(key) is str and not isinstance(value, str):
                value = raw  # a str field takes the text as it is: --wandb_run_name=2024, --dataset=None
            apply(key, value, f"flag {arg}")
        elif arg.endswith(".py"):
            for key, value in read_override_file(arg).items():
                apply(key, value, f"config file {arg}")
        else:
            raise UserError(f"unexpected argument '{arg}': pass a config/*.py file or --key=value flags")
    cfg = type(defaults)(**values)
    cfg._given = given
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def given_keys(cfg):
    """The keys load_config set from an override file or a flag (not left at their defaults)."""
    return frozenset(getattr(cfg, "_given", {}))


def given_where(cfg, key):
    """Where load_config last set `key`: "flag --key=value", "config file PATH", or "" (its default)."""
    return getattr(cfg, "_given", {}).get(key, "")


def replace(cfg, **changes):
    """dataclasses.replace, keeping the record of the keys that were given (given_keys)."""
    new = dataclasses.replace(cfg, **changes)
    new._given = dict(getattr(cfg, "_given", {}))
    return new
