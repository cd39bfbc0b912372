# evaluate OpenAI's gpt2-large (774M parameters: 36 layers, 20 heads, 1280 wide) on OpenWebText
# $ python train.py config/eval_gpt2_large.py
batch_size = 8
eval_iters = 500  # more batches, for a steadier estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-large'
