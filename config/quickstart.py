# Quickstart: a small character-level GPT on `pycode` (the Python standard library's source, which
# prepare.py builds offline). Sized for a 2-core laptop CPU: a 2.5-minute wall-clock budget, after
# which the best checkpoint is scored on val/test and `make` prints samples that read like Python.
# On a GPU it finishes the same budget with far more tokens seen; raise the model size to use them.
dataset = "pycode"
out_dir = "out/quickstart"
model = "gpt"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
dropout = 0.0
batch_size = 32
lr = 2e-3
min_lr = 2e-4
warmup_iters = 50
max_iters = 100_000      # the time budget ends the run first
time_budget = 2.5        # minutes
eval_interval = 200
eval_iters = 10
log_interval = 50
final_eval_tokens = 200_000   # score 200k tokens of val/test at the end (the full splits take minutes on a CPU)
