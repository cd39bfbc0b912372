# a small character-level Shakespeare model, the original's recipe: a few minutes on one GPU,
# best val loss about 1.47; on a CPU use config/train_shakespeare_char_cpu.py instead

out_dir = 'out-shakespeare-char'
eval_interval = 250  # often, because this small dataset is overfit quickly
eval_iters = 200
log_interval = 10

# save only when val loss improves: the model overfits late in the run
always_save_checkpoint = False

wandb_log = False  # override on the command line if you like
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # context of up to 256 previous characters

# baby GPT: 6 layers, 6 heads, 384 wide (10.65M parameters)
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # small networks can take a larger learning rate
max_iters = 5000
lr_decay_iters = 5000  # usually equal to max_iters
min_lr = 1e-4  # usually learning_rate / 10
beta2 = 0.99  # a bit larger, because each iteration sees few tokens

warmup_iters = 100
