"""Instruction fine-tuning (chat.py, prepare.py sft, dataloader.Examples, train.py on sft data, sample.py --chat):
reading Alpaca and chat records and their mistakes, the template's loss mask, the files prepare.py sft writes,
the mask in the loss and its gradients, a tiny model learning synthetic tasks, resume, and chatting through
piped stdin."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import chat
import checkpoint
import dataloader
import prepare
import train
from configurator import UserError, load_config
from optim import OptimConfig, train_step
from conftest import code_text, prepare_text
from tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=96", "--batch_size=16", "--eval_iters=2",
        "--log_interval=10", "--warmup_iters=10", "--final_eval_tokens=2000"]


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def base_text():
    """A pretraining corpus whose characters cover the synthetic tasks and the end-of-turn character."""
    tasks = chat.synthetic_tasks(400, seed=5)
    rendered = "".join(f"User: {r.get('instruction', 'Say it')}\nAssistant: {r.get('output', 'ok')}¶\n" for r in tasks)
    return code_text()[:60_000] + rendered + "".join(chat.WORDS).upper()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A briefly pretrained tiny char GPT (its vocabulary has the end-of-turn character ¶); returns (root, run)."""
    root = tmp_path_factory.mktemp("chat")
    data = prepare_text(root, "base", base_text())
    out = root / "base"
    train.train(load_config(train.TrainConfig(), [f"--data_dir={data}", "--dataset=base", f"--out_dir={out}", *TINY,
                                                  "--max_iters=60", "--eval_interval=60"]))
    return root, out


def prepare_sft(root, run, records, name="tasks", *extra):
    path = root / f"{name}.jsonl"
    chat.write_jsonl(records, path)
    prepare.main(["sft", f"--input={path}", f"--like={run}", f"--data_dir={root / 'data'}", f"--name={name}", *extra])
    return root / "data" / name


# ----------------------------------------------------------------------------- reading records

def test_alpaca_and_chat_records_become_conversations(tmp_path):
    path = write(tmp_path / "mixed.jsonl", [
        json.dumps({"instruction": "Add", "input": "2 and 3", "output": "5"}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                                 {"role": "assistant", "content": "Bye"}]})])
    first, second = chat.read_examples(path)
    assert first == [{"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user", "assistant"]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"instruction": "Hi", "output": "there"}]))
    assert chat.read_examples(listed) == [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "there"}]]


@pytest.mark.parametrize("lines, message", [
    (['{"instruction": "a", "output": "b"}', '{"instruction": "a", '], r"line 2 is not valid JSON"),
    (['{"instruction": "a"}'], r"line 1: an Alpaca record needs a string 'output'"),
    (['{"prompt": "a"}'], r"line 1: needs 'messages' \(chat\) or 'instruction' and 'output' \(Alpaca\)"),
    (['{"messages": [{"role": "bot", "content": "x"}]}'], r"message 1 has role 'bot'"),
    (['{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}'], r"turns out of order"),
    (['{"messages": [{"role": "user", "content": "x"}]}'], r"ending with assistant"),
    (["   "], r"is empty"),
])
def test_bad_records_are_one_line_with_where(tmp_path, lines, message):
    with pytest.raises(UserError, match=message):
        chat.read_examples(write(tmp_path / "bad.jsonl", lines))


# ----------------------------------------------------------------------------- the template

def test_the_mask_covers_each_assistant_turn_and_its_end_of_turn():
    tok = Tokenizer.build("char", ["User: Assistant: System: hello world 42\n¶"])
    template = chat.Template(tok)
    assert tok.decode([template.eot]) == "¶"
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"},
                {"role": "user", "content": "42"}, {"role": "assistant", "content": "24"}]
    ids, mask = template.render(messages)
    assert tok.decode(ids) == "User: hello\nAssistant: world¶\nUser: 42\nAssistant: 24¶\n"
    trained = "".join(tok.decode([i]) if m else "|" for i, m in zip(ids, mask))
    assert [p for p in trained.split("|") if p] == ["world¶", "24¶"]
    assert template.prompt(messages[:3]) == tok.encode("User: hello\nAssistant: world") + [template.eot] + \
        tok.encode("\nUser: 42\nAssistant: ")
    with pytest.raises(UserError, match="contains the end-of-turn token"):
        template.render([{"role": "user", "content": "a¶"}, {"role": "assistant", "content": "b"}])


def test_each_tokenizer_has_an_end_of_turn():
    assert chat.eot_of(Tokenizer("byte")) == chat.EOT_BYTE
    with pytest.raises(UserError, match="none of"):
        chat.eot_of(Tokenizer.build("char", ["abc"]))


# ----------------------------------------------------------------------------- prepare.py sft

def test_prepare_sft_writes_tokens_mask_and_boundaries(base):
    root, run = base
    records = chat.synthetic_tasks(60, seed=1) + [{"instruction": "Reverse " + "x" * 200, "output": "y"}]
    data = prepare_sft(root, run, records, "few")
    meta = json.loads((data / "meta.json").read_text())
    assert meta["kind"] == "sft" and meta["template"] == chat.TEMPLATE_NAME and meta["dropped"] == 1
    assert meta["max_tokens"] == 97  # the run's block_size + 1
    assert meta["splits"]["val"]["examples"] == 3 and meta["splits"]["train"]["examples"] == 57
    examples = dataloader.Examples(data, "train", 96)
    x, y = examples.batch([0, 1])
    ids, mask = np.fromfile(data / "train.bin", dtype=np.uint16), np.fromfile(data / "train.mask", dtype=np.uint8)
    s, e = examples.starts[0], examples.starts[1]
    n = e - s - 1
    assert x[0, :n].tolist() == ids[s:e - 1].tolist()
    assert y[0, :n].tolist() == [int(i) if m else -1 for i, m in zip(ids[s + 1:e], mask[s + 1:e])]
    assert (y[0, n:] == -1).all()  # padding is never a target
    with pytest.raises(UserError, match="already holds a dataset tokenized"):  # nothing overwritten
        prepare.main(["sft", f"--input={root / 'few.jsonl'}", "--tokenizer=byte", f"--data_dir={root / 'data'}",
                      "--name=few"])


def test_sft_refuses_what_cannot_work(base, tmp_path, capsys):
    root, run = base
    records = tmp_path / "r.jsonl"
    chat.write_jsonl(chat.synthetic_tasks(10, 0), records)
    with pytest.raises(UserError, match="give --like=out/RUN"):
        prepare.main(["sft", f"--input={records}", f"--data_dir={tmp_path}"])
    chat.write_jsonl([{"instruction": "Say ☃", "output": "ok"}] * 3, tmp_path / "snow.jsonl")
    with pytest.raises(UserError, match=r"1 character\(s\) of the input are not in"):
        prepare.main(["sft", f"--input={tmp_path / 'snow.jsonl'}", f"--like={run}", f"--data_dir={tmp_path}"])
    assert not (tmp_path / "snow").exists()
    prepare_text(tmp_path, "other", code_text()[:20_000] + "¶")  # another char vocabulary
    prepare.main(["sft", f"--input={records}", f"--like={tmp_path / 'data' / 'other'}", f"--data_dir={tmp_path / 'data'}"])
    with pytest.raises(UserError, match="the checkpoint was trained on a char vocabulary"):
        train.main([f"--data_dir={tmp_path / 'data'}", "--dataset=r", f"--init_from={run}", f"--out_dir={tmp_path / 'x'}"])
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- the mask in the loss

def test_prompt_and_padding_targets_change_neither_loss_nor_gradients(base):
    root, run = base
    data = prepare_sft(root, run, chat.synthetic_tasks(40, seed=2), "mask")
    examples = dataloader.Examples(data, "train", 96)
    x, y = examples.batch([0, 1, 2, 3])
    model = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(run / "ckpt.pt"))

    def loss_and_grads(x, y):
        model.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = loss_and_grads(x, y)
    lengths = [int(examples.starts[i + 1] - examples.starts[i]) - 1 for i in range(4)]
    short = int(np.argmin(lengths))
    x2 = x.clone()
    x2[short, lengths[short]:] = 7  # what the padding holds, after the example's last token
    for a, b in zip(loss_and_grads(x2, y), (loss, grads)):
        assert all(torch.equal(u, v) for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]))
    assert y[0, 0] == -1  # the prompt's first target is masked ...
    y2 = y.clone()
    y2[0, 0] = 5  # ... and were it not, the loss would change
    assert not torch.equal(loss_and_grads(x, y2)[0], loss)
    answer = (y[0] >= 0).nonzero()[0, 0]
    y3 = y.clone()
    y3[0, answer] = (y[0, answer] + 1) % model.cfg.vocab_size  # an answer token's target
    loss3, grads3 = loss_and_grads(x, y3)
    assert not torch.equal(loss3, loss) and any(not torch.equal(a, b) for a, b in zip(grads3, grads))


def test_a_step_weights_micro_batches_by_their_trained_tokens(base):
    """Micro-batches of 1 and 3 examples step the weights as one batch of all 4: the mean over every trained
    token of the step, not the mean of the micro-batches' means."""
    root, run = base
    data = prepare_sft(root, run, chat.synthetic_tasks(40, seed=3), "accum")
    examples = dataloader.Examples(data, "train", 96)
    vocab = json.loads((data / "meta.json").read_text())["vocab_size"]
    ix = [0, 1, 2, 3]
    stepped = []
    for parts in ([ix], [ix[:1], ix[1:]]):
        torch.manual_seed(0)
        model = train.build_model("gpt", dict(vocab_size=vocab, block_size=96, n_layer=1, n_head=2, n_embd=16))
        queue = [examples.batch(p) for p in parts]
        batches = SimpleNamespace(next=lambda: queue.pop(0), step_targets=examples.targets(ix))
        optimizers = [torch.optim.SGD(model.parameters(), lr=1.0)]
        train_step(model, batches, len(parts), optimizers, torch.amp.GradScaler("cpu", enabled=False),
                   OptimConfig(grad_clip=0.0), "cpu", "float32")
        stepped.append([p.detach().clone() for p in model.parameters()])
    assert examples.targets(ix[:1]) != examples.targets(ix[1:]) / 3  # the micro-batches are unequal
    for a, b in zip(*stepped):
        assert torch.allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- learning and chatting

@pytest.mark.slow
def test_fine_tuning_learns_the_synthetic_tasks_and_chats(base, tmp_path):
    """From a briefly pretrained tiny model: greedy exact match on held-out instructions rises from ~0."""
    root, run = base
    data = prepare_sft(root, run, chat.synthetic_tasks(2000, seed=10), "learn")
    held_out = tmp_path / "held_out.jsonl"
    chat.write_jsonl(chat.synthetic_tasks(60, seed=11), held_out)
    out = tmp_path / "sft"
    results = train.train(load_config(train.TrainConfig(), [
        f"--data_dir={data.parent}", "--dataset=learn", f"--init_from={run}", f"--out_dir={out}", *TINY,
        "--max_iters=300", "--eval_interval=100", f"--eval_file={held_out}", "--lr=3e-3"]))
    curve = [e["val_exact"] for e in map(json.loads, open(out / "metrics.jsonl")) if e["event"] == "eval"]
    assert curve[0] <= 0.05 and curve[-1] >= 0.4, curve
    assert results["exact_match"] >= 0.4 and "Greedy exact match" in (out / "results.md").read_text()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "sample.py", f"--out_dir={out}", "--chat", "--temperature=0"], cwd=REPO,
                       input="Reverse apple\nUpper stone\n", capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    answers = [line for line in r.stdout.splitlines() if line.startswith("assistant: ")]
    assert len(answers) == 2 and "¶" not in r.stdout
    r = subprocess.run([sys.executable, "sample.py", f"--out_dir={out}", "--instruction=Say ☃"], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: character '☃'") and len(r.stderr.splitlines()) == 1
    r = subprocess.run([sys.executable, "sample.py", f"--out_dir={run}", "--chat"], cwd=REPO, input="hi\n",
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "was not fine-tuned on instructions" in r.stderr


def test_sft_resume_is_bit_exact(base, tmp_path):
    root, run = base
    data = prepare_sft(root, run, chat.synthetic_tasks(200, seed=12), "resume")
    flags = [f"--data_dir={data.parent}", "--dataset=resume", *TINY, "--eval_interval=4", "--dropout=0.1",
             "--grad_accum=2"]
    straight = train.train(load_config(train.TrainConfig(), [*flags, f"--out_dir={tmp_path / 'a'}", "--max_iters=8",
                                                             f"--init_from={run}"]))
    train.train(load_config(train.TrainConfig(), [*flags, f"--out_dir={tmp_path / 'b'}", "--max_iters=4",
                                                  f"--init_from={run}"]))
    resumed = train.train(load_config(train.TrainConfig(), [*flags, f"--out_dir={tmp_path / 'b'}", "--max_iters=8",
                                                             "--init_from=resume"]))
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a) and straight["val_loss"] == resumed["val_loss"]


def test_an_hf_tokenizers_own_chat_template_is_rendered_sandboxed_with_its_mask(tmp_path):
    """A ChatML-like template shipped in tokenizer_config.json: its assistant turns and their end marker
    are trained on, the rest is not; the prompt ends with its generation prompt; and code that reaches
    past the conversation is stopped by the sandbox."""
    from tokenizers import Tokenizer as Fast, decoders, models, pre_tokenizers, trainers
    fast = Fast(models.BPE())
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    fast.decoder = decoders.ByteLevel()
    fast.train_from_iterator(["hello there, how are you? fine thanks. reverse apple elppa"] * 20,
                             trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast.save(str(tmp_path / "tokenizer.json"))
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    config = {"eos_token": "<|im_end|>", "chat_template": chatml}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer(f"hf:{tmp_path}")
    template = chat.Template(tok)
    assert template.name == f"hf:{tmp_path}" and tok.decode([template.eot]) == "<|im_end|>"
    messages = [{"role": "user", "content": "reverse apple"}, {"role": "assistant", "content": "elppa"},
                {"role": "user", "content": "how are you?"}, {"role": "assistant", "content": "fine thanks."}]
    ids, mask = template.render(messages)
    assert tok.decode(ids) == "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "elppa<|im_end|>\nfine thanks.<|im_end|>\n"
    assert tok.decode(template.prompt(messages[:1])) == "<|im_start|>user\nreverse apple<|im_end|>\n<|im_start|>assistant\n"
    config["chat_template"] = "{{ messages.__class__.__mro__[1].__subclasses__() }}"  # reaching for Python's classes
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="chat template failed"):
        chat.Template(Tokenizer(f"hf:{tmp_path}")).render(messages)
