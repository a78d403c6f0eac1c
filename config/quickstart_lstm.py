# Quickstart, recurrent edition: a character-level LSTM on `pycode`, layered on config/quickstart.py so
# both models train on the same data, batches, eval and 2.5-minute budget on a 2-core laptop CPU
# (make compare trains both this way). Only what makes it an LSTM is here.
# Size-matched to that GPT: 2 tied layers of 224 units have 806,400 recurrent weights vs the GPT's
# 12 * 4 * 128^2 = 786,432 block weights (+2.5%); with a ~220-character vocabulary, ~0.86M parameters
# in all vs the GPT's ~0.84M. n_embd == n_hidden, so the tied output layer needs no projection.
#   python train.py config/quickstart.py config/quickstart_lstm.py
out_dir = "out/quickstart_lstm"
model = "lstm"
n_layer = 2
n_embd = 224
n_hidden = 224
tie_weights = True
lr = 3e-3
min_lr = 3e-4            # (cosine only)
# Muon (the default, inherited) helps the LSTM's gate matrices too: 90 s on pycode, batch 32 x 128, lr 3e-3,
# cosine, reached val loss 1.681 with Muon vs 1.799 with AdamW, though Muon's steps were 23% slower.
weight_decay = 0.1       # what its LR was tuned with (the GPT's 0.5 was measured on GPTs only)
decay_embeddings = True  # on its tied embedding too (the GPT's recipe spares them; measured on GPTs only)
