"""
Sample text from a trained run (GPT or LSTM; the checkpoint says which).

    python sample.py                                   # out/quickstart, the run `make` trains
    python sample.py --temperature=1.5                 # hotter; 0 is greedy
    python sample.py --out_dir=out/enwik8 --start="The " --top_k=50 --top_p=0.9 --num_samples=5
    python sample.py --start=FILE:prompt.txt --max_new_tokens=1000 --seed=7 --stop='\\n\\n' --stop='def '
    python sample.py --prompts=prompts.txt --temperatures=0.5,1.0,1.5   # grid -> out_dir/generations.json
    python sample.py --compile=True --quantize=int8    # compiled one-token step, int8 weights (see README)
    python sample.py --slide=1 --max_new_tokens=2000   # past block_size, every token sees a full window (slower)
    python sample.py --init_from=gpt2 --start="Hello"  # OpenAI's GPT-2 (gpt2-medium, -large, -xl; hf:DIR offline)
    python sample.py --out_dir=out/sft --chat          # talk to an instruction-tuned run (stdin: a line a turn)
    python sample.py --out_dir=out/sft --instruction="Reverse apple"   # one turn: prints the answer

The tokenizer comes from the checkpoint (prepare.py's meta.json is stored in it). Temperature
divides the logits; top_k keeps the k likeliest tokens and top_p the smallest set whose probability
reaches p (0 and 1.0 turn them off). All num_samples are generated as one batch; each stops at the
first of the stop strings (backslash escapes understood; the string is trimmed off) or at the tokenizer's
end-of-text token, and generation ends when every sample has stopped. A single sample is printed
token by token as it is generated (each new token decoded once). Prefill and decode speeds are
reported after generating. The weights are cast once to the generation dtype (see
engine.generation_dtype); compile=None compiles the one-token step only when the generation is long
enough to pay for it. Past block_size the window drops its oldest `slide` tokens when full (default
half; see engine.window_slide). With --init_from (GPT-2's weights, see hf.py) there is no checkpoint:
the tokenizer is gpt2. Generation itself is engine.py's (a Session); the speed benchmark is
`python bench.py generate`.
"""
import dataclasses
import json
import os
import sys
from dataclasses import dataclass

from configurator import UserError, cli, load_config
from engine import GenerationConfig, Session, parse_temperatures

TABLE_WIDTH = 60  # characters of each generation shown in the grid's table


@dataclass
class SampleConfig(GenerationConfig):
    """engine.GenerationConfig's keys (the run, the batch, top_k/top_p, stop, cache, slide, compile,
    quantize, device, dtype), and these."""
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    temperature: float = 0.8
    prompts: str = ""  # a file with one prompt per line: generate for each (with --temperatures: the grid)
    temperatures: tuple = ()  # e.g. --temperatures=0.5,1.0,1.5: generate at each (the grid)
    output: str = ""  # where the grid's JSON goes; "" = out_dir/generations.json
    stream: bool = True  # print a single sample token by token as it is generated
    chat: bool = False  # talk to an instruction-tuned run: your lines (stdin) and its answers, turn by turn
    instruction: str = ""  # one instruction to an instruction-tuned run: prints its answer
    system: str = ""  # chat and instruction: a system message first

    def validate(self):
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        super().validate()
        self.temperatures = parse_temperatures(self.temperatures)
        self.stop = tuple(unescape(s) for s in self.stop if s)  # typed on a command line: '\n' is a newline


def unescape(text):
    r"""'\n' written on a command line (backslash, n) becomes a newline; other characters are kept."""
    if "\\" not in text:
        return text
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise UserError(f"bad backslash escape in {text!r}: {e.reason}") from None


def parse_args(argv):
    """load_config, letting --temperatures be one number or a comma list of anything (validate() checks)."""
    fixed = []
    for arg in argv:
        if arg.startswith("--temperatures="):
            raw = arg.partition("=")[2]
            arg = "--temperatures=" + repr(tuple(p.strip() for p in raw.strip("()[]").split(",") if p.strip()))
        fixed.append(arg)
    return load_config(SampleConfig(), fixed)


def read_prompt(start):
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the prompt file {path}: {e}") from None


def read_prompts(path):
    """The non-empty lines of a prompts file, newline removed."""
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the prompts file {path}: {getattr(e, 'strerror', None) or e}") from None
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise UserError(f"the prompts file {path} has no prompts: write one prompt per line")
    return prompts


def speed_line(r):
    """'prefill 12 tokens x 3 ... | decode ...' for one generation's result dict."""
    B = len(r["samples"])
    pre = f"prefill {r['prompt_tokens']} tokens x {B}: {r['prefill_tok_s']:,.0f} tok/s" if r["steps"] else "prefill -"
    dec = f"decode {r['steps'] - 1} steps x {B}: {r['decode_tok_s']:,.0f} tok/s" if r["decode_tok_s"] else "decode -"
    if r["compile_s"] is not None:
        dec += f" (compiled; its first step, compile included, took {r['compile_s']:.1f} s)"
    return f"{pre} | {dec}"


def sample(cfg, echo=None):
    """cfg.num_samples continuations of the prompt, as strings (prompt included)."""
    session = Session(cfg)
    prompt = read_prompt(cfg.start)
    r = session.generate(prompt, cfg.temperature, echo)
    return [prompt + s for s in r["samples"]]


def grid(cfg):
    """Generate for every prompt x temperature; write them with their settings as JSON; return that dict."""
    prompts = read_prompts(cfg.prompts) if cfg.prompts else [read_prompt(cfg.start)]
    temps = cfg.temperatures or (cfg.temperature,)
    session = Session(cfg)
    output = cfg.output or os.path.join(cfg.out_dir, "generations.json")
    results = [session.generate(p, t) for p in prompts for t in temps]  # each starts from cfg.seed
    doc = {"checkpoint": session.path, "model": session.ckpt["model_kind"], "model_args": session.ckpt["model_args"],
           "tokenizer": session.tok.kind, "device": session.device, "dtype": session.dtype,
           "settings": {k: getattr(cfg, k) for k in ("num_samples", "max_new_tokens", "top_k", "top_p", "seed",
                                                     "stop", "eot", "cache")},
           "prompts": prompts, "temperatures": list(temps), "generations": results}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, ensure_ascii=False)
    except OSError as e:
        raise UserError(f"cannot write {output}: {e.strerror}; pick another --output") from None
    return doc, output


def show(text, width=TABLE_WIDTH):
    """One table cell: newlines and pipes visible, cut to width."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= width else text[:width - 3] + "..."


def chat(cfg, lines, say=print):
    """A conversation with an instruction-tuned run: each line is the user's turn, and the model answers
    it, seeing every turn before (generation stops at its end-of-turn token). Returns the messages."""
    session = Session(dataclasses.replace(cfg, num_samples=1, stop=cfg.stop))
    if session.template is None:
        raise UserError(f"{session.path} was not fine-tuned on instructions (its data has no chat template), so "
                        f"it only continues text: fine-tune it first (prepare.py sft, README), or drop --chat/--instruction")
    messages = [{"role": "system", "content": cfg.system}] if cfg.system else []
    interactive = sys.stdin.isatty() and lines is sys.stdin
    for line in lines:
        if interactive and line.strip() in ("/quit", "/exit"):
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\r\n")})
        r = session.generate("", cfg.temperature, messages=messages)
        messages.append({"role": "assistant", "content": r["samples"][0]})
        say(f"assistant: {r['samples'][0]}")
        if interactive:
            print("you: ", end="", flush=True)
    return messages


def main(argv):
    cfg = parse_args(argv)
    if cfg.chat or cfg.instruction:
        if sys.stdin.isatty() and cfg.chat:
            print("Chat with the model (an empty line is skipped; /quit or Ctrl-D ends it).\nyou: ", end="", flush=True)
        chat(cfg, [cfg.instruction] if cfg.instruction else sys.stdin,
             say=(lambda text: print(text.removeprefix("assistant: "))) if cfg.instruction else print)
        return
    if cfg.prompts or cfg.temperatures:
        doc, output = grid(cfg)
        which = f" (first of {cfg.num_samples} samples)" if cfg.num_samples > 1 else ""
        print(f"| Temperature | Prompt | Truncated generation{which} |\n| :--- | :--- | :--- |")
        for r in doc["generations"]:
            print(f"| {r['temperature']} | `{show(r['prompt'], 30)}` | `{show(r['samples'][0])}` |")
        print(f"\n{len(doc['generations'])} generations written to {output}")
        return
    session = Session(cfg)
    prompt = read_prompt(cfg.start)
    if cfg.num_samples == 1 and cfg.stream:
        print(prompt, end="", flush=True)
        r = session.generate(prompt, cfg.temperature, echo=lambda s: print(s, end="", flush=True))
        print()
    else:
        r = session.generate(prompt, cfg.temperature)
        for text in r["samples"]:
            print(prompt + text)
            print("-" * 40)
    print(f"[{speed_line(r)}]")


if __name__ == "__main__":
    cli(main)
