# Instruction fine-tuning of a run of ours on data from `prepare.py sft` (chat.py's template, the loss on
# the assistant's tokens only): python train.py config/sft.py --dataset=NAME --init_from=out/RUN.
# Chosen with `python bench.py sft` (the README's table): the optimizer and LR that reached the highest
# exact match on held-out synthetic instructions, from the quickstart's checkpoint.
out_dir = "out/sft"
init_from = "out/quickstart"
optimizer = "adamw"
lr = 1e-3
weight_decay = 0.1
decay_embeddings = True   # as bench.py sft measured it (the embeddings and head decayed too)
schedule = "wsd"
warmup_iters = 20
decay_frac = 0.3
batch_size = 32
max_iters = 600
eval_interval = 100
log_interval = 50
dropout = 0.0
