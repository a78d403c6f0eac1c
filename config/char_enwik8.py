# Seed 004's character-level GPT on enwik8 (the first 100 MB of English Wikipedia XML, one token per
# byte), shaped like Al-Rfou et al.'s T12: 12 layers, 512 wide, 8 heads, context 512, with dropout;
# trained with the 1cycle policy (Smith & Topin) and SGD: LR 1e-4 -> 0.1 -> 1e-4, momentum 0.9 -> 0.8 -> 0.9,
# weight decay 1e-5 (the seed's final model), then annihilation far below. The seed trained on one T4
# (Colab) and picked the peak LR with the LR range test:
#   python prepare.py enwik8
#   python train.py config/char_enwik8.py --lr_find=True     # suggests a peak LR (writes out/char_enwik8/lr_find.png)
#   python train.py config/char_enwik8.py --lr=0.1
# Not stated by the seed, so our choices: batch 16 x 512 bytes, 24k steps (the length of one of its runs),
# dropout 0.1, gradient clipping at 1.0. Our GPT keeps GELU, learned positions at the input only and no
# auxiliary losses (T12 used ReLU, per-layer positions and intermediate losses). About 38M parameters.
dataset = "enwik8"
out_dir = "out/char_enwik8"
model = "gpt"
# The seed's architecture is GPT-2's, so it is pinned here (TrainConfig's defaults are the modern recipe).
# For the modern recipe at this size, layer config/modern.py on top: python train.py config/char_enwik8.py config/modern.py
from model import GPT2_ARCH as _gpt2_arch  # learned positions, LayerNorm, GELU, tied head, biases, no QK-norm
globals().update(_gpt2_arch)
n_layer = 12
n_head = 8
n_embd = 512
block_size = 512
dropout = 0.1
batch_size = 16
max_iters = 24_000
optimizer = "sgd"
schedule = "onecycle"
lr = 0.1                 # the peak; the cycle starts at lr / cycle_div = 1e-4
cycle_div = 1000.0
cycle_final_div = 100.0  # annihilation ends at 1e-6
cycle_rise = 0.45        # 45% up, 45% down, the last 10% annihilating
momentum = 0.9
momentum_min = 0.8
weight_decay = 1e-5
eval_interval = 500
eval_iters = 40
log_interval = 100
