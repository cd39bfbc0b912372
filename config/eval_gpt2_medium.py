# evaluate OpenAI's gpt2-medium (350M parameters: 24 layers, 16 heads, 1024 wide) on OpenWebText
# $ python train.py config/eval_gpt2_medium.py
batch_size = 8
eval_iters = 500  # more batches, for a steadier estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-medium'
