# the laptop recipe: character-level Shakespeare on a CPU in a few minutes, best val loss ~1.9
# $ python train.py config/train_shakespeare_char_cpu.py
# the original README's CPU settings: config/train_shakespeare_char.py, dialled down

out_dir = 'out-shakespeare-char'
eval_interval = 250
eval_iters = 20  # a noisier but much faster estimate than 200
log_interval = 10
always_save_checkpoint = False  # save only when val loss improves

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt-cpu'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64  # context of up to 64 previous characters

# 4 layers, 4 heads, 128 wide (0.80M parameters); no dropout, the network is too small to overfit
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = 'cpu'
compile = False
