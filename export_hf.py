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

from nanogpt import checkpoints, models
from configurator import configure

out_dir = 'out'  # the run whose ckpt.pt to export
export_dir = ''  # where the Hugging Face folder goes; '' means out_dir/hf
configure(globals())

models.export_hf(os.path.join(out_dir, checkpoints.CKPT_NAME), export_dir or os.path.join(out_dir, 'hf'))
