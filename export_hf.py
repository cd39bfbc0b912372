"""
Export a checkpoint of ours as a Hugging Face GPT2LMHeadModel folder (config.json + weights).

$ python export_hf.py --out_dir=out-shakespeare-char                 # writes out-shakespeare-char/hf
$ python export_hf.py --out_dir=out --export_dir=my-gpt2

transformers then loads it with GPT2LMHeadModel.from_pretrained('my-gpt2') and gives the same
logits as our model; train.py and sample.py take it back with --init_from=my-gpt2. Models trained
without biases get zero biases (HF's GPT-2 always has them), which changes nothing. For a model
trained on GPT-2 BPE data, GPT2TokenizerFast.from_pretrained('gpt2') is its tokenizer; a character
vocabulary is copied beside it as meta.pkl.
"""
import os
import pickle

import torch

from nanogpt import checkpoints, report
from configurator import configure
from model import HF_TRANSPOSED

out_dir = 'out'  # the run whose ckpt.pt to export
export_dir = ''  # where the Hugging Face folder goes; '' means out_dir/hf
configure(globals())

export_dir = export_dir or os.path.join(out_dir, 'hf')
ckpt_path = os.path.join(out_dir, checkpoints.CKPT_NAME)
checkpoint = checkpoints.load_checkpoint(ckpt_path)
model = checkpoints.model_from_checkpoint(checkpoint, ckpt_path)
if not model.config.is_classic():
    report.fail(f"{ckpt_path} is a modern-recipe model ({report.describe_choices(model.config)}), which Hugging Face's GPT2LMHeadModel cannot "
                f"express; sample it with sample.py")
try:
    from transformers import GPT2Config, GPT2LMHeadModel
except ImportError:
    report.fail("exporting needs transformers: pip install transformers")

c = model.config
eot = 50256  # GPT-2's <|endoftext|>, only meaningful with its vocabulary
hf_config = GPT2Config(
    vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
    activation_function={'tanh': 'gelu_new', 'none': 'gelu'}[c.gelu_approximate], layer_norm_epsilon=1e-5,
    resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout, tie_word_embeddings=True,
    bos_token_id=eot if c.vocab_size > eot else None, eos_token_id=eot if c.vocab_size > eot else None)
hf_model = GPT2LMHeadModel(hf_config)
ours = model.state_dict()
state = {}
for name, like in hf_model.state_dict().items():
    if name in ours:
        state[name] = ours[name].t() if name.endswith(HF_TRANSPOSED) else ours[name]
    elif name.endswith('.bias'):  # trained with bias=False: a zero bias is the same model
        state[name] = torch.zeros_like(like)
hf_model.load_state_dict(state, strict=True)
hf_model.save_pretrained(export_dir)
if checkpoint.get('meta'):
    with open(os.path.join(export_dir, 'meta.pkl'), 'wb') as f:
        pickle.dump(checkpoint['meta'], f)
print(f"exported {ckpt_path} (iteration {checkpoint['iter_num']}) to {export_dir}: "
      f"GPT2LMHeadModel.from_pretrained({export_dir!r})")
