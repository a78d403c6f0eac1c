# Quickstart, recurrent edition: a character-level LSTM on `pycode` (the Python standard library's
# source, built offline by prepare.py), the same budget and data as config/quickstart.py's GPT so the
# two can be compared head to head on a 2-core laptop CPU (2.5 minutes of training, then val/test).
# Size-matched to that GPT: 2 tied layers of 224 units have 806,400 recurrent weights vs the GPT's
# 12 * 4 * 128^2 = 786,432 block weights (+2.5%); with a ~220-character vocabulary, ~0.86M parameters
# in all vs the GPT's ~0.84M. n_embd == n_hidden, so the tied output layer needs no projection.
#   python train.py config/quickstart_lstm.py
dataset = "pycode"
out_dir = "out/quickstart_lstm"
model = "lstm"
n_layer = 2
n_embd = 224
n_hidden = 224
tie_weights = True
dropout = 0.0            # a 2.5-minute run sees each character about once: nothing to regularise
block_size = 128
batch_size = 32
lr = 3e-3
min_lr = 3e-4
warmup_iters = 50
max_iters = 100_000      # the time budget ends the run first
time_budget = 2.5        # minutes
eval_interval = 200
eval_iters = 10
log_interval = 50
final_eval_tokens = 200_000   # score 200k tokens of val/test at the end (the full splits take minutes on a CPU)
