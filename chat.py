"""
Conversations as tokens: reading instruction data (Alpaca or chat JSONL), the chat template that turns
a conversation into token ids with a loss mask, and the synthetic tasks the demo and the tests learn.

    examples = read_examples("alpaca.json")        # [[{"role": "user", ...}, {"role": "assistant", ...}], ...]
    template = Template(tok)                       # tok: tokenizer.Tokenizer; picks the end-of-turn token
    ids, mask = template.render(messages)          # mask 1 on the assistant's tokens and its end-of-turn
    ids = template.prompt(messages)                # a conversation so far, ready for the assistant to answer

The template (TEMPLATE_NAME), for every tokenizer of this project:

    System: {content}\n                (optional, first)
    User: {content}\n
    Assistant: {content}<eot>\n        (mask 1 on {content}<eot>: the loss falls there only)

and so on, turn by turn. Each piece is encoded on its own and the pieces are joined, so a prompt at
chat time is tokenized exactly as in training. An hf:NAME tokenizer that ships a chat template (in its
tokenizer_config.json) uses that instead, rendered in Jinja's sandbox; its assistant turns, end marker
included, are what the loss falls on. <eot> ends every assistant turn and is what generation
stops at: gpt2's <|endoftext|>, a byte vocabulary's 0x04 (end of transmission), a Hugging Face
tokenizer's eos token, and for a char vocabulary the first of EOT_CHARS it holds.
An Alpaca record {"instruction", "input"?, "output"} is the conversation [user: instruction (a blank
line, then the input, if any), assistant: output].
"""
import json
import random

from configurator import UserError

TEMPLATE_NAME = "smallgpt-chat-v1"
ROLES = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}
EOT_CHARS = ("\x04", "\x03", "¶", "§", "°", "~")  # char vocabularies: the end-of-turn is the first one present
EOT_BYTE = 0x04


# ----------------------------------------------------------------------------- reading instruction data

def read_examples(path):
    """Every record of a .json list or a .jsonl file as a conversation (a list of {role, content})."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not text.strip():
        raise UserError(f"{path} is empty: write one JSON object per line (JSONL) or a JSON list of them")
    if text.lstrip().startswith("["):
        try:
            records = list(enumerate(json.loads(text), 1))
        except ValueError as e:
            raise UserError(f"{path} is not valid JSON ({e})") from None
        where = "record"
    else:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append((n, json.loads(line)))
                except ValueError as e:
                    raise UserError(f"{path} line {n} is not valid JSON ({e.msg})") from None
        where = "line"
    return [conversation(record, f"{path} {where} {n}") for n, record in records]


def conversation(record, where):
    """An Alpaca or chat record as a checked conversation."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: messages must be a non-empty list of {{role, content}}")
    elif "instruction" in record or "output" in record:
        for key in ("instruction", "output"):
            if not isinstance(record.get(key), str):
                raise UserError(f"{where}: an Alpaca record needs a string '{key}' (and may have 'input')")
        user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    else:
        raise UserError(f"{where}: needs 'messages' (chat) or 'instruction' and 'output' (Alpaca)")
    check_turns(messages, where)
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def check_turns(messages, where, ends_with="assistant"):
    """An optional system message first, then user and assistant turns alternating, ending as asked."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: message {i + 1} needs a string 'content'")
        if m.get("role") not in ROLES:
            raise UserError(f"{where}: message {i + 1} has role {m.get('role')!r}; use system, user or assistant")
    roles = [m["role"] for m in messages]
    turns = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * len(turns)
    if not turns or turns != expected[:len(turns)] or turns[-1] != ends_with:
        raise UserError(f"{where}: turns out of order ({', '.join(roles)}): after an optional system message, "
                        f"user and assistant alternate, starting with user and ending with {ends_with}")


# ----------------------------------------------------------------------------- the template

def eot_of(tok):
    """The end-of-turn token id of a tokenizer (see the top of this file)."""
    if tok.kind == "char":
        for ch in EOT_CHARS:
            if ch in tok.vocab:
                return tok.vocab.index(ch)
        raise UserError(f"this char vocabulary has none of {', '.join(map(repr, EOT_CHARS))} to end a turn with; "
                        f"prepare the base run's data so that it has one")
    if tok.kind == "byte":
        return EOT_BYTE
    if tok.eot_token is None:
        raise UserError(f"the {tok.kind} tokenizer has no end-of-text token to end a turn with; "
                        f"use char, byte, gpt2 or an hf:NAME tokenizer with an eos token")
    return tok.eot_token


class Template:
    """A conversation template over a tokenizer: conversations to token ids and loss masks. TEMPLATE_NAME
    (see the top of this file), or the chat template an hf:NAME tokenizer ships (name "hf:NAME")."""

    def __init__(self, tok):
        self.tok, self.eot = tok, eot_of(tok)
        self.name = tok.kind if tok.chat_template else TEMPLATE_NAME
        self.jinja = sandboxed(tok.chat_template) if tok.chat_template else None
        self._pieces = {}

    def _encode(self, text):
        if text not in self._pieces:  # the role markers recur in every turn
            self._pieces[text] = self.tok.encode(text)
        return self._pieces[text]

    def render(self, messages):
        """(ids, mask) of a whole conversation: mask 1 on each assistant turn's content and end-of-turn."""
        if self.jinja:
            return self._render_jinja(messages)
        ids, mask = [], []
        for m in messages:
            head = self._encode(ROLES[m["role"]])
            body = self.tok.encode(m["content"])
            if self.eot in body:
                raise UserError(f"a {m['role']} message contains the end-of-turn token "
                                f"({self.tok.decode([self.eot])!r}); remove it from the data")
            trained = m["role"] == "assistant"
            tail = [self.eot] if trained else []
            ids += head + body + tail + self._encode("\n")
            mask += [0] * len(head) + [int(trained)] * (len(body) + len(tail)) + [0] * len(self._encode("\n"))
        return ids, mask

    def prompt(self, messages):
        """The ids of a conversation that ends with a user turn, then the assistant's marker: what the
        model continues (and stops at end-of-turn) to answer."""
        if self.jinja:
            return self.tok.encode(self._text(messages, True))
        return self.render(messages)[0] + self._encode(ROLES["assistant"])

    def _text(self, messages, generation_prompt):
        try:
            return self.jinja.render(messages=messages, add_generation_prompt=generation_prompt,
                                     bos_token="", eos_token=self.tok.decode([self.eot]))
        except Exception as e:  # the template's own raise_exception, or a template error
            raise UserError(f"the {self.name} chat template failed: {e}".splitlines()[0]) from None

    def _render_jinja(self, messages):
        """The whole conversation rendered once and tokenized once; a token is trained on when it starts
        inside an assistant turn: what the template adds between the conversation before that turn (with
        the generation prompt) and the conversation up to its end, its end-of-turn marker included."""
        text = self._text(messages, False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                before, upto = self._text(messages[:i], True), self._text(messages[:i + 1], False)
                if not (upto.startswith(before) and text.startswith(upto)):
                    raise UserError(f"the {self.name} chat template does not render a conversation as the turns "
                                    f"before it plus the new turn, so the assistant's tokens cannot be found")
                spans.append((len(before), len(upto)))
        encoding = self.tok._hf.encode(text, add_special_tokens=False)
        mask = [int(any(a <= start < b for a, b in spans)) for start, _ in encoding.offsets]
        return list(encoding.ids), mask


def sandboxed(source):
    """A chat template (Jinja code that came with a model) compiled in Jinja's immutable sandbox, as
    transformers renders it: it can read the conversation but call nothing unsafe."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise UserError(f"the tokenizer's chat template does not compile: {e}") from None


# ----------------------------------------------------------------------------- synthetic tasks

WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "house", "green", "night", "light",
         "water", "paper", "sugar", "ocean", "music", "table", "chair", "bread", "horse", "smile", "dream")


def synthetic_tasks(n, seed):
    """n Alpaca records of deterministic tasks a tiny model can learn in minutes: reverse a word, add two
    small numbers, upper-case a word, count a word's letters, and a two-turn task whose answer needs the
    first turn (repeat the word given before)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        task, w = rng.randrange(5), rng.choice(WORDS)
        if task == 0:
            out.append({"instruction": f"Reverse {w}", "output": w[::-1]})
        elif task == 1:
            a, b = rng.randrange(50), rng.randrange(50)
            out.append({"instruction": f"Add {a} and {b}", "output": str(a + b)})
        elif task == 2:
            out.append({"instruction": f"Upper {w}", "output": w.upper()})
        elif task == 3:
            out.append({"instruction": f"Count {w}", "output": str(len(w))})
        else:
            out.append({"messages": [{"role": "user", "content": f"Remember {w}"},
                                     {"role": "assistant", "content": "ok"},
                                     {"role": "user", "content": "Say it"},
                                     {"role": "assistant", "content": w}]})
    return out


def write_jsonl(records, path):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
