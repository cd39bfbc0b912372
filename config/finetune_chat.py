# chat finetuning: learn to answer from conversations (docs/chat.md)
# $ python data/prepare_chat.py --input=chats.jsonl --tokenizer=gpt2 --out_dir=data/chat
# $ python train.py config/finetune_chat.py
# $ python sample.py --out_dir=out-chat --chat=True
# From a run of ours instead of OpenAI's GPT-2: --init_from=out-mine, with the chat data prepared
# in its tokenizer (data/prepare_chat.py --tokenizer=out-mine).

out_dir = 'out-chat'
init_from = 'gpt2'  # OpenAI's 124M; its vocabulary is padded to 50304 for the chat tokens
dataset = 'chat'  # data/chat: train.bin and train_mask.bin, from data/prepare_chat.py
eval_interval = 50
eval_iters = 20  # val loss on the assistant's tokens of held-out conversations
log_interval = 5
always_save_checkpoint = False  # keep the best val loss

# a row is a conversation (or its later turns), only the assistant's tokens are learned
batch_size = 4
gradient_accumulation_steps = 8
block_size = 1024

# finetuning: a small constant learning rate, a few hundred steps
learning_rate = 3e-5
decay_lr = False
max_iters = 500
dropout = 0.1
