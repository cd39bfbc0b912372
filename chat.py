"""
Talk to a chat-finetuned model (data/prepare_chat.py, config/finetune_chat.py).

$ python chat.py --out_dir=out-chat                                  # a conversation in the terminal
$ python chat.py --out_dir=out-chat --system="Answer in one word."   # with a system message
$ python chat.py --out_dir=out-chat --prompt="reverse abc"           # answer one message, then exit
$ python chat.py --out_dir=out-chat --prompts_file=questions.txt      # answer each line on its own

Each reply streams token by token (the KV cache) and stops at the end-of-turn token or after
max_new_tokens. The history stays within the model's context: the oldest turns go first (the
system message stays), and a line on stderr says so. An empty line or Ctrl-D ends the conversation.
"""
import sys

import torch

from nanogpt import chat, checkpoints, data, report, runtime
from configurator import configure

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' loads out_dir/ckpt.pt; or a GPT-2 name or Hugging Face folder (finetuned for chat)
out_dir = 'out'  # where the checkpoint is (for init_from='resume')
system = ''  # a system message that opens the conversation
prompt = ''  # answer this one message and exit; '' for a conversation in the terminal
prompts_file = ''  # answer each line of this file as a conversation of its own, a reply per line, and exit
max_new_tokens = 200  # the longest reply, in tokens
temperature = 0.7  # lower is more conservative; 1.0 samples the model's distribution
top_k = 50  # sample among the top_k most likely tokens; None for all
seed = 1337
device = 'auto'  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'mps'
dtype = 'auto'
# -----------------------------------------------------------------------------
configure(globals(), nullable={'top_k'}, echo=None)  # stdout is for the conversation alone

rt = runtime.setup_runtime(device, dtype, False, seed=seed, onednn=False)
model, meta, _ = checkpoints.inference_model(init_from, out_dir)
tok = chat.ChatTokenizer(meta, model.config.vocab_size)
chat.check_content(system, '--system')
model.eval()
runtime.place_model(model, rt, rows=1, backward=False)
room = min(max_new_tokens, model.config.block_size // 2)  # the history leaves the reply this much context


def reply(messages):
    """The assistant's next message, printed as it is written."""
    ids, dropped = chat.prompt(messages, tok, model.config.block_size - room)
    if dropped:
        print(f"(the {dropped} oldest messages no longer fit in the context and are left out)", file=sys.stderr)
    x = torch.tensor([ids], dtype=torch.long, device=rt.device)
    answer = []

    def show(token):
        if token.item() != tok.ids['end']:
            answer.append(token.item())
            stream.push(token.item())
    stream = data.TextStream(tok.decode, [])
    with torch.no_grad(), rt.autocast:
        model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, slide_to=model.config.block_size,
                       on_token=show, stop_token=tok.ids['end'])
    print(flush=True)
    return tok.decode(answer)


opening = [{'role': 'system', 'content': system}] if system else []
if prompts_file:
    try:
        with open(prompts_file, encoding='utf-8') as f:
            questions = [line.rstrip('\n') for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        report.fail(f"cannot read {prompts_file} ({e.strerror if isinstance(e, OSError) else e})")
    for number, text in enumerate(questions, 1):
        chat.check_content(text, f"{prompts_file} line {number}")
        reply(opening + [{'role': 'user', 'content': text}])
    sys.exit(0)
messages = list(opening)
while True:
    if prompt:
        text = prompt
    else:
        try:
            text = input('> ')
        except EOFError:
            break
    if not text.strip():
        break
    if prompt:
        chat.check_content(text, '--prompt')
    elif token := chat.special_in(text):
        print(f"(not sent: the message contains the special token {token}; write it without)", file=sys.stderr)
        continue
    messages.append({'role': 'user', 'content': text})
    messages.append({'role': 'assistant', 'content': reply(messages)})
    if prompt:
        break
