# GPT-2 (124M) on FineWeb-Edu as Karpathy's build-nanogpt trains it: ~10B tokens in 19,073 steps
# of 524,288 (2**19, ~0.5M) tokens, HellaSwag every 250 steps, for a node of 8 GPUs.
# Compare its HellaSwag acc_norm with OpenAI's GPT-2 124M, 0.2955 (docs/evaluation.md).
# $ python data/fineweb/prepare.py
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_fineweb.py

wandb_log = True
wandb_project = 'fineweb'
wandb_run_name = 'gpt2-124M-edu10B'
out_dir = 'out-gpt2-fineweb'

dataset = 'fineweb'
# 16 sequences x 1024 tokens x 32 micro-steps = 524,288 tokens per optimizer step, whatever the
# number of GPUs (with 8, each does 4 of the 32); on 80 GB GPUs batch_size = 64 with
# gradient_accumulation_steps = 8 is the same step and faster
batch_size = 16
block_size = 1024
gradient_accumulation_steps = 32

# the GPT-2 124M shape, with biases as in GPT-2 and build-nanogpt (vocabulary 50304: 50257 padded)
n_layer = 12
n_head = 12
n_embd = 768
bias = True
dropout = 0.0

# 19,073 steps x 524,288 tokens = 10.0B tokens, one pass over sample-10BT
max_iters = 19073
lr_decay_iters = 19073
warmup_iters = 715
learning_rate = 6e-4
min_lr = 6e-5
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

eval_interval = 250
eval_iters = 80  # 80 x 16 x 1024 tokens per split and GPU: ~10M tokens on 8 GPUs
hellaswag_interval = 250  # the 10,042 HellaSwag examples, split across the GPUs
log_interval = 10
always_save_checkpoint = True
