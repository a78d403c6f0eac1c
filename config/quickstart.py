# Quickstart: a small character-level GPT on `pycode` (the Python standard library's source, which
# prepare.py builds offline), sized for a 2-core laptop CPU and a 2.5-minute wall-clock budget; then the
# best checkpoint is scored on val/test and `make` prints samples.
# The recipe is TrainConfig's defaults, the one that bought the lowest loss in 1.5-10 CPU minutes
# (`python bench.py budget` measures it against nanoGPT's): a 4 x 128 GPT with RoPE (base 100,000), RMSNorm, QK-norm,
# SwiGLU, zero-initialized projections and an untied head; Muon for the hidden matrices and AdamW for the
# rest at lr 4e-3, weight decay 0.5 on the hidden matrices; batches of 16 x 128 characters; warmup, then a
# flat LR decaying to 0 over the last half.
# On a GPU it finishes the same budget with far more tokens seen; raise the model size to use them.
dataset = "pycode"
out_dir = "out/quickstart"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
max_iters = 100_000      # the time budget ends the run first
time_budget = 2.5        # minutes
eval_interval = 200
eval_iters = 10
log_interval = 50
final_eval_tokens = 200_000   # score 200k tokens of val/test at the end (the full splits take minutes on a CPU)
