"""`usertwin export RUN -o DIR [--gguf]`: the run as a plain transformers model folder (LoRA merged)."""

from __future__ import annotations

NAME = "export"
HELP = "write a run as a plain transformers model folder: LoRA merged, tokenizer, chat template, model card"


def add_arguments(p) -> None:
    p.add_argument("run", help="a train run directory")
    p.add_argument("-o", "--output", required=True, help="the model folder to write (complete or absent)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="weights' dtype; auto: the base model's (float32 for a GGUF base). Merging is done in "
                        "float32 either way")
    p.add_argument("--gguf", action="store_true",
                   help="also DIR/model.gguf for llama.cpp, made by llama.cpp's convert_hf_to_gguf.py (found in "
                        "$LLAMA_CPP_DIR or on PATH; refused when absent)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")


def run(args) -> int:
    from usertwin.export import export_run

    out = export_run(args.run, args.output, args.dtype, args.overwrite, args.gguf, args.progress)
    print(f"wrote {out}: load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0
