# Seed 003's small transformer on WikiText-2 (articles joined with <|endoftext|>, GPT-2 BPE): 4 layers,
# d_model 512, d_ff 1024 (mlp_ratio 2), context 256, no dropout, trained like "Attention Is All You Need":
# Adam with betas (0.9, 0.98) and eps 1e-9, the inverse-square-root schedule with linear warmup, label
# smoothing 0.1 (the training loss only: every reported loss/perplexity is the plain cross-entropy).
#   python prepare.py wikitext2 && python train.py config/wikitext2.py
# The peak LR is the Transformer's d_model^-0.5 * warmup^-0.5. Not stated by the seed, so our choices:
# 8 heads, warmup 2000 steps of 32 x 256 tokens, 10k steps (~35 passes over the ~2.4M training tokens), no
# weight decay, a GELU MLP with pre-LayerNorm (our GPT's) rather than ReLU/post-norm. About 35M parameters,
# most of them the 50,257 x 512 embedding; meant for one GPU (on a CPU, lower max_iters).
dataset = "wikitext2"
out_dir = "out/wikitext2"
model = "gpt"
# The seed's architecture is GPT-2's, so it is pinned here (TrainConfig's defaults are the modern recipe).
# For the modern recipe at this size, layer config/modern.py on top: python train.py config/wikitext2.py config/modern.py
from model import GPT2_ARCH as _gpt2_arch  # learned positions, LayerNorm, GELU, tied head, biases, no QK-norm
globals().update(_gpt2_arch)
n_layer = 4
n_head = 8
n_embd = 512
mlp_ratio = 2.0
block_size = 256
dropout = 0.0
batch_size = 32
max_iters = 10_000
optimizer = "adamw"
beta1 = 0.9
beta2 = 0.98
eps = 1e-9
weight_decay = 0.0
schedule = "invsqrt"
warmup_iters = 2000
lr = (512 * 2000) ** -0.5   # = 9.9e-4, the peak, reached at the end of warmup
label_smoothing = 0.1
eval_interval = 500
eval_iters = 40
log_interval = 100
