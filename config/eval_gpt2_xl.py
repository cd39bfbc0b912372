# evaluate OpenAI's gpt2-xl (1558M parameters: 48 layers, 25 heads, 1600 wide) on OpenWebText
# $ python train.py config/eval_gpt2_xl.py
batch_size = 8
eval_iters = 500  # more batches, for a steadier estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-xl'
