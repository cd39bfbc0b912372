# the modern recipe: the GPT-2 speedrun's model and optimizer changes, on top of any training config
# $ python train.py config/train_shakespeare_char_cpu.py config/modern.py --out_dir=out-modern
# $ python train.py config/train_gpt2.py config/modern.py --out_dir=out-gpt2-modern
# Each line can be switched back on its own (--rotary=False, ...) to see what it is worth;
# benchmarks/ablate.py does that for the laptop recipe (benchmarks/README.md).

rotary = True  # rotary position embeddings, not learned ones
norm = 'rmsnorm'  # RMSNorm with a gain (measured a little better than without: benchmarks/README.md)
qk_norm = True  # queries and keys RMS-normalised per head
mlp = 'relu2'  # ReLU squared
tie_weights = False  # an output head of its own
zero_init = True  # residual projections and the head start at zero
optimizer = 'muon'  # Muon for the blocks' matrices, AdamW (at learning_rate) for the rest
muon_learning_rate = 0.02
