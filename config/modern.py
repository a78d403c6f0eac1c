# The modern recipe as a layer over any GPT config: its architecture, optimizer and schedule (TrainConfig's
# defaults, measured by `python bench.py budget`), keeping the size, data and budget of the config under it.
#   python train.py config/char_enwik8.py config/modern.py     # seed 004's model size, the modern recipe
# tests/test_train.py checks that these values are TrainConfig's. The peak LR, 4e-3, was measured on
# 4 x 128 models in 2-minute runs; bigger ones and longer runs usually want less (TrainConfig's defaults
# take 3e-3 from a time_budget of 5 minutes, sizing.long_budget; given here, lr stays 4e-3: try --lr=3e-3,
# --lr=1e-3 for a bigger model, or --lr_find=True).
pos_emb = "rope"
norm = "rmsnorm"
qk_norm = True
activation = "swiglu"
zero_init = True
tie_weights = False
bias = False
rope_theta = 100_000.0
optimizer = "muon"
lr = 4e-3
muon_lr_scale = 1.0
muon_momentum = 0.95
normuon = True
weight_decay = 0.5
decay_embeddings = False
beta1 = 0.9
beta2 = 0.99
schedule = "wsd"
warmup_iters = 50
decay_frac = 0.5
decay_shape = "linear"
