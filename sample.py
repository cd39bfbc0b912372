"""
Sample text from a trained model.

$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=200
$ python sample.py --start=FILE:prompt.txt
$ python sample.py --out_dir=out-chat --chat=True                       # talk to a chat-finetuned model
$ python sample.py --out_dir=out-chat --chat=True --prompt="reverse a b c"   # one answer, then exit

Decodes with the tokenizer the model was trained on (kept in the checkpoint, or the dataset's
meta.pkl), and with GPT-2's BPE tokenizer when there is none.

With --chat=True it is a conversation instead (docs/chat.md): each reply streams token by token and
stops at the end-of-turn token or after max_new_tokens; the history stays within the model's
context, the oldest turns going first (the system message stays) with a line on stderr. An empty
line or Ctrl-D ends it; --prompt answers one message and --prompts_file each of its lines alone.
"""

import sys

import torch

from nanogpt import chat as chats, download, models, report, runtime, tokens
from configurator import configure

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' loads out_dir/ckpt.pt; or 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or a Hugging Face folder
out_dir = 'out'  # where the checkpoint is (for init_from='resume')
start = "\n"  # the prompt: text, or FILE:path to read it from a file
num_samples = 10  # how many samples to draw
max_new_tokens = 500  # tokens generated per sample
temperature = 0.8  # 1.0 samples the model's distribution; lower is more conservative, higher more random
top_k = 200  # sample only among the top_k most likely tokens; None for all
kv_cache = True  # reuse each layer's keys and values, feeding one new token per step; False recomputes the context
slide_to = 0  # past block_size keep the last slide_to tokens: 0 is block_size//2 (fast); block_size slides as the original
seed = 1337
device = 'auto'  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (bfloat16 on CUDA where supported, else float16; float32 elsewhere), 'float32', 'bfloat16', 'float16'
compile = False  # torch.compile the KV cache's one-token step over a fixed-size cache: compiled once (benchmarks/README.md)
onednn = 'auto'  # CPU, float32: Linear layers in oneDNN (see train.py)
chat = False  # a conversation with a chat-finetuned model (start and num_samples do not apply)
system = ''  # chat: a system message that opens the conversation
prompt = ''  # chat: answer this one message and exit; '' for a conversation in the terminal
prompts_file = ''  # chat: answer each line of this file as a conversation of its own, a reply per line
# -----------------------------------------------------------------------------
configure(globals(), nullable={'top_k'}, echo=None)  # stdout is for the samples alone

if temperature <= 0:
    report.fail(f"--temperature must be greater than 0, not {temperature}")
if top_k is not None and top_k < 1:
    report.fail(f"--top_k must be at least 1 (or None for no limit), not {top_k}")
if num_samples < 1 or max_new_tokens < 0:
    report.fail("--num_samples must be at least 1 and --max_new_tokens at least 0")
if start.startswith('FILE:'):
    try:
        with open(start[5:], encoding='utf-8') as f:
            start = f.read()
    except (OSError, UnicodeDecodeError) as e:
        report.fail(f"cannot read the prompt file {start[5:]} ({e.strerror if isinstance(e, OSError) else e})")
rt = runtime.setup_runtime(device, dtype, compile, seed=seed, onednn=onednn)
if rt.compile and not kv_cache:
    report.fail("compile compiles the KV cache's one-token step; use --kv_cache=True, or --compile=False")

model, meta, _ = models.inference_model(init_from, out_dir)  # meta: a character vocabulary, or None
encode, decode = tokens.load_tokenizer(meta)

model.eval()
runtime.place_model(model, rt)

sampling = dict(temperature=temperature, top_k=top_k, use_cache=kv_cache, slide_to=slide_to or model.config.block_size // 2,
                decode_step=torch.compile(model) if rt.compile else None)
if chat:
    tok = chats.ChatTokenizer(meta, model.config.vocab_size)
    chats.check_content(system, '--system')
    opening = [{'role': 'system', 'content': system}] if system else []
    if prompt or prompts_file:  # for scripts: each message a conversation of its own
        questions = [prompt] if prompt else download.read_text(prompts_file).splitlines()
        for number, text in enumerate((q for q in questions if q.strip()), 1):
            chats.check_content(text, '--prompt' if prompt else f"{prompts_file} line {number}")
            chats.reply(model, tok, opening + [{'role': 'user', 'content': text}], max_new_tokens, rt, **sampling)
        sys.exit(0)
    messages = list(opening)
    while True:
        try:
            text = input('> ')
        except EOFError:
            break
        if not text.strip():
            break
        if token := chats.special_in(text):
            print(f"(not sent: the message contains the special token {token}; write it without)", file=sys.stderr)
            continue
        messages.append({'role': 'user', 'content': text})
        answer = chats.reply(model, tok, messages, max_new_tokens, rt, **sampling)
        messages.append({'role': 'assistant', 'content': answer})
    sys.exit(0)

start_ids = encode(start)
if not start_ids:
    report.fail("the prompt is empty; give at least one token with --start")
x = torch.tensor(start_ids, dtype=torch.long, device=rt.device)[None, ...]
with torch.no_grad(), rt.autocast:
    if num_samples == 1:  # one sample: print it as it is written
        stream = report.TextStream(decode, start_ids)
        model.generate(x, max_new_tokens, on_token=lambda token: stream.push(token.item()), **sampling)
        print('\n---------------')
    else:  # several: all at once, as one batch, then each followed by the original's separator line
        for sample in model.generate(x.expand(num_samples, -1), max_new_tokens, **sampling):
            print(decode(sample.tolist()))
            print('---------------')
if rt.compile:
    print(runtime.describe_compile(), file=sys.stderr)  # stdout is the samples'
