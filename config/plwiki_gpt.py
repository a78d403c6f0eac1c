# Seed 001's GPT on plwiki (100k high-quality Polish Wikipedia documents, 80/10/10 split, the Bielik/Llama
# 32,000-token tokenizer): GPT-2-style decoder, 12 layers, 768 wide, 12 heads, context 256, learned
# positions, an untied output layer: 134,404,608 parameters (the seed reports 134,367,744: its attention
# projections had no biases). Trained there on one A40 (48 GB) for 120 minutes: batch 32, Adam lr 5e-4,
# weight decay 0.1, losses every 100 steps with the best-val checkpoint kept, the test loss at the end.
#   python prepare.py plwiki --tokenizer=hf:speakleash/Bielik-4.5B-v3   # needs `transformers`
#   python train.py config/plwiki_gpt.py
# The seed's results table (test loss 4.73 / ppl 113 after 56.5M tokens) is what results.md compares with.
# Not stated by the seed, so our choices: a constant LR (no warmup or decay, as in config/plwiki_lstm.py;
# --schedule=cosine --warmup_iters=500 is likely better), Adam's beta2 = 0.999, clipping at 1.0, no dropout;
# bf16 autocast and torch.compile are on by default on a GPU.
dataset = "plwiki"
out_dir = "out/plwiki_gpt"
model = "gpt"
# The seed's architecture is GPT-2's, so it is pinned here (TrainConfig's defaults are the modern recipe).
# For the modern recipe at this size, layer config/modern.py on top: python train.py config/plwiki_gpt.py config/modern.py
from model import GPT2_ARCH as _gpt2_arch  # learned positions, LayerNorm, GELU, tied head, biases, no QK-norm
globals().update(_gpt2_arch)
n_layer = 12
n_head = 12
n_embd = 768
block_size = 256
tie_weights = False
dropout = 0.0
batch_size = 32
optimizer = "adamw"
lr = 5e-4
schedule = "constant"
warmup_iters = 0
weight_decay = 0.1
decay_embeddings = True  # on every weight matrix, as nanoGPT
beta2 = 0.999
max_iters = 0            # no iteration cap: the 120-minute budget ends the run
time_budget = 120.0      # minutes
eval_interval = 100
eval_iters = 20
