# evaluate OpenAI's gpt2 (124M parameters: 12 layers, 12 heads, 768 wide) on OpenWebText
# $ python train.py config/eval_gpt2.py
batch_size = 8
eval_iters = 500  # more batches, for a steadier estimate
eval_only = True
wandb_log = False
init_from = 'gpt2'
