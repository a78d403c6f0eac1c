"""
Export a run as a Hugging Face model directory (GPT-2's format), which transformers and the Hub load.

    python export.py --out_dir=out/ft                  # -> out/ft/hf
    python export.py --out_dir=out/ft --to=my-model    # anywhere else

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("out/ft/hf")   # the same logits as ours
    tok = AutoTokenizer.from_pretrained("out/ft/hf")            # when the run used the gpt2 tokenizer

The directory holds config.json, model.safetensors and, for a gpt2-tokenized run, GPT-2's tokenizer
files (vocab.json, merges.txt, tokenizer_config.json). bias=False exports as zero biases; untied output
weights, the tanh GELU and mlp_ratio carry over. What GPT-2 cannot express (rotary or sinusoidal
positions, grouped-query attention, RMSNorm, QK-norm, ReLU², logit soft-capping, an LSTM, a char or
word vocabulary) is refused in one line naming it. hf.py does the conversion.
"""
import os
from dataclasses import dataclass

import hf
from configurator import UserError, cli, load_config
from checkpoint import CKPT_BEST, load_checkpoint, model_from_checkpoint


@dataclass
class ExportConfig:
    out_dir: str = "out/quickstart"  # the run to export
    ckpt: str = CKPT_BEST  # which of its checkpoints
    to: str = ""  # the Hugging Face directory to write; "" = out_dir/hf


def export(cfg):
    """Write the run's checkpoint as a Hugging Face directory; returns (directory, file names, tokenizer)."""
    path = os.path.join(cfg.out_dir, cfg.ckpt)
    ckpt = load_checkpoint(path)
    problems = hf.export_problems(ckpt["model_kind"], ckpt["model_args"], ckpt["meta"])
    if problems:
        raise UserError(f"{path} cannot be exported: GPT-2's Hugging Face format cannot express "
                        f"{'; '.join(problems)}")
    to = cfg.to or os.path.join(cfg.out_dir, "hf")
    try:
        files = hf.save_pretrained(model_from_checkpoint(ckpt), ckpt["meta"], to)
    except OSError as e:
        raise UserError(f"cannot write {to}: {e.strerror or e}; pick another --to") from None
    return to, files, ckpt["meta"]["tokenizer"]


def main(argv):
    to, files, tokenizer = export(load_config(ExportConfig(), argv))
    print(f"wrote {to}: {', '.join(files)}")
    if tokenizer == "byte":
        print("no tokenizer files: the token ids are the text's UTF-8 bytes")
    elif tokenizer != "gpt2":
        print(f"no tokenizer files: load the run's tokenizer with AutoTokenizer.from_pretrained({tokenizer[3:]!r})")
    print(f"load it with transformers.AutoModelForCausalLM.from_pretrained({to!r})")


if __name__ == "__main__":
    cli(main)
