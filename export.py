"""
Export a run as a Hugging Face model directory, in the standard transformers architecture that holds it
exactly, which transformers, the Hub, lm-eval and vLLM load (and llama.cpp's converter, for some).

    python export.py --out_dir=out/ft                  # -> out/ft/hf
    python export.py --out_dir=out/ft --to=my-model    # anywhere else

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("out/ft/hf")   # the same logits as ours
    tok = AutoTokenizer.from_pretrained("out/ft/hf")            # the run's tokenizer, the same ids

The architecture is picked per run (hf.export_plan) and named in the output:
    learned positions + LayerNorm (GPT-2's)                -> GPT2LMHeadModel
    RoPE + RMSNorm + QK-norm + SwiGLU (the recipe)         -> Qwen3ForCausalLM
    RoPE + RMSNorm + QK-norm + a plain MLP (relu2, gelu)   -> ApertusForCausalLM
    RoPE + RMSNorm, a plain MLP, no QK-norm                -> ArceeForCausalLM
    RoPE + RMSNorm + SwiGLU (+ q/k/v biases: Qwen2)        -> LlamaForCausalLM / Qwen2ForCausalLM
Grouped-query attention, tied or untied output weights, mlp width, head_dim, the RMSNorm epsilon and
RoPE's theta and scaling carry over. The tokenizer goes along (tokenizer.json for char, word and byte
runs; GPT-2's files; hf:NAME's own). What no architecture holds (sinusoidal positions, RoPE with
LayerNorm, an LSTM) is refused in one line naming it, and so is a --to that holds another model.
hf.py does the conversion.
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
    """Write the run's checkpoint as a Hugging Face directory; returns (directory, file names, architecture)."""
    path = os.path.join(cfg.out_dir, cfg.ckpt)
    ckpt = load_checkpoint(path)
    family, problems = hf.export_plan(ckpt["model_kind"], ckpt["model_args"], ckpt["meta"])
    if problems:
        raise UserError(f"{path} cannot be exported: no Hugging Face architecture this project writes "
                        f"({', '.join(hf.MODEL_TYPES)}) can express {'; '.join(problems)}")
    to = cfg.to or os.path.join(cfg.out_dir, "hf")
    try:
        files = hf.save_pretrained(model_from_checkpoint(ckpt), ckpt["meta"], to, family)
    except OSError as e:
        raise UserError(f"cannot write {to}: {e.strerror or e}; pick another --to") from None
    return to, files, hf.ARCHITECTURES[family]


def main(argv):
    to, files, architecture = export(load_config(ExportConfig(), argv))
    print(f"wrote {to} as {architecture}: {', '.join(files)}")
    print(f"load it with transformers.AutoModelForCausalLM.from_pretrained({to!r}) and "
          f"AutoTokenizer.from_pretrained({to!r})")


if __name__ == "__main__":
    cli(main)
