# finetune OpenAI's largest GPT-2 (1.5B) on tiny Shakespeare (BPE): a few minutes on one big GPU
# $ python data/shakespeare/prepare.py
# $ python train.py config/finetune_shakespeare.py
# a smaller start: --init_from=gpt2 (124M), or a local Hugging Face GPT-2 folder
import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False  # switch on if you like
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())

dataset = 'shakespeare'
init_from = 'gpt2-xl'

# keep only the best model: with so little data, val loss soon turns up
always_save_checkpoint = False

# 1 sequence x 1024 tokens x 32 micro-steps = 32,768 tokens per step;
# shakespeare has 301,966 training tokens, so one epoch is about 9.2 steps
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# a small, constant learning rate
learning_rate = 3e-5
decay_lr = False
