# Seed 001's LSTM on plwiki (100k high-quality Polish Wikipedia documents, the Bielik/Llama 32,000-token
# tokenizer, 80/10/10 split): embedding 512, context 256, 10 LSTM layers of 1024 units, untied
# Linear(1024, 32000) output with bias = 131,054,848 parameters (tests/test_rnn.py checks the count).
# Trained there on one A40 (48 GB) for 120 minutes: batch 32, Adam lr 5e-4, weight decay 0.1, losses
# every 100 steps, best-val checkpoint kept, test loss at the end. The seed published no LSTM results.
# Not stated by the seed, so our choices: constant LR (no warmup/decay), no dropout, Adam's default
# beta2 = 0.999, our default gradient clipping at 1.0. train.py's AdamW decouples the weight decay
# (the seed's "Adam with weight decay" may have been the L2 form) and skips it on biases.
# Layered on config/plwiki_gpt.py, so the data, batch, optimizer, schedule and budget are the GPT's:
#   python prepare.py plwiki && python train.py config/plwiki_gpt.py config/plwiki_lstm.py
out_dir = "out/plwiki_lstm"
model = "lstm"
n_layer = 10
n_embd = 512
n_hidden = 1024
tie_weights = False
