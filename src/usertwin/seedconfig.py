"""The research scripts' nested JSON configs (config_*.json: `model`, `data`, `training`, `ablation_configs`)
-> usertwin's flat settings, with one line for each key saying what it became or why it is left out.

Only the translation lives here: `config.resolve` reads the file, layers the result under the flags and prints
the lines. This module knows no setting's type or range (those are checked as for any YAML key), so it imports
nothing of usertwin but the error type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from usertwin.errors import UsertwinError

SECTIONS = ("model", "data", "training", "ablation_configs")

# seed key -> our key, value taken as it is
DIRECT = {
    "model.path": "model",
    "model.use_lora": "lora",
    "model.lora_config.r": "lora_r",
    "model.lora_config.lora_alpha": "lora_alpha",
    "model.lora_config.lora_dropout": "lora_dropout",
    "data.train_path": "data",
    "training.gradient_accumulation_steps": "gradient_accumulation_steps",
    "training.learning_rate": "learning_rate",
    "training.weight_decay": "weight_decay",
    "training.warmup_steps": "warmup_steps",
    "training.max_length": "max_length",
    "training.max_context_turns": "max_context_turns",
    "training.logging_steps": "logging_steps",
    "training.save_steps": "save_steps",
    "training.save_total_limit": "save_total_limit",
    "training.max_samples_per_user": "max_samples_per_user",
}

# seed key -> why it changes nothing here
IGNORED = {
    "model.name": "a display name; model.path is what the seeds loaded",
    "model.hf_model_name": "the hub id of the model at model.path; pass --model ID to load it from the hub instead",
    "model.checkpoint_dir": "where the seeds put a run when --output_dir was not given; usertwin writes to "
                            "--output_dir",
    "model.lora_config.task_type": "LoRA here is always for a causal language model",
    "data.test_path": "the seeds' separate test file for their inference scripts; usertwin's test targets are the "
                      "latest test_ratio of each user's timeline in data",
    "training.eval_batch_size": "validation in train uses the training micro-batches (batch_tokens); predict's "
                                "batch is predict --eval_batch_size (= --batch_size)",
    "training.dataloader_num_workers": "batches are built in the training process; there are no loader workers",
}

# what the seeds' scripts used for a key the file leaves out (train_config.get(KEY, DEFAULT), use_lora False):
# a seed config means the run the seeds made of it, so these apply, and say so
SEED_DEFAULTS = {"model.use_lora": False, "training.learning_rate": 1e-5, "training.weight_decay": 0.01,
                 "training.warmup_steps": 100, "training.gradient_accumulation_steps": 8, "training.batch_size": 2}


# the research systems (one inference_vllm_<SYSTEM>.py each), and other names their files give one
# (train_distributed_MovieReview.py trains DMSC's Douban reviews)
SYSTEMS = ("MovieLens", "DMSC", "Chameleons", "LovinkDialogue", "LovinkQuestionnaire", "PERSONA_Bench", "REALTALK",
           "RealPersonaChat")
_OTHER_NAMES = {"douban": "DMSC", "moviereview": "DMSC", "personabench": "PERSONA_Bench"}


def system_named(text: str) -> str | None:
    """The research system a file or folder name names (config_DMSC_30B.json, .../RealSelf/MovieLens), any case,
    the longest name first (RealPersonaChat before a shorter one it may contain); None when it names none."""
    low = str(text).lower().replace("_", "").replace("-", "")
    names = {**{n.lower().replace("_", ""): n for n in SYSTEMS}, **_OTHER_NAMES}
    return next((names[k] for k in sorted(names, key=len, reverse=True) if k in low), None)


# how each system's training script chose a user's targets (read from train_distributed_<SCRIPT>.py and its data
# loader): DMSC's (MovieReview) took the last --max_samples_per_user N reviews; every other drew N of the user's
# samples with Python's random seeded by --sample_seed, then split the drawn samples 1 - --val_ratio for training
# (int(n * (1 - v)), at least 1) and the rest for validation, with no test split
TRAINING_SCRIPTS = {s: f"train_distributed_{'MovieReview' if s == 'DMSC' else s}.py" for s in SYSTEMS}
LATEST_DRAW = ("DMSC",)
# the dialogue systems' extraction (data_loader.extract_training_samples, LovinkDialogue's copy of it) made no
# sample of a line whose context ends with the user's own turn
DIALOGUE_SYSTEMS = ("Chameleons", "LovinkDialogue", "PERSONA_Bench", "REALTALK", "RealPersonaChat")
SEED_VAL_RATIO = 0.1  # every training script's --val_ratio default (argparse)


def seed_training_targets(n: int, val_ratio: float) -> int:
    """Training targets the seeds kept of n drawn samples of a user: split_train_val's int(n * (1 - v)), at
    least 1 (the same float expression, so the same count)."""
    return max(1, int(n * (1 - val_ratio)))


@dataclass
class SeedConfig:
    """A seed config translated: our keys and values, the lines to print, and the seeds' per-device batch size
    (sequences per micro-batch), which becomes batch_tokens once max_length is final."""

    values: dict = field(default_factory=dict)
    lines: list = field(default_factory=list)
    batch_size: int | None = None
    chose_ablation: bool = False  # the ablation flag named an entry of ablation_configs


def is_seed_config(data) -> bool:
    """The seeds' nested layout: a section that is a mapping where usertwin has a plain value (or none)."""
    return isinstance(data, dict) and any(isinstance(data.get(k), dict) for k in SECTIONS)


def read(path) -> dict:
    """A seed JSON config, parsed as JSON (so 1e-05 is a number, as the seeds read it)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsertwinError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None


def translate(data: dict, source: str, ablation: str | None, ablations: dict) -> SeedConfig:
    """The seed config `data` (from `source`) as our settings. `ablation`: the name given by --ablation_config
    (or --ablation), which picks an entry of `ablation_configs`; `ablations`: our ablation name -> (profile,
    history, context) shown."""
    out = SeedConfig()
    for key in data:
        if key not in SECTIONS:
            raise UsertwinError(f"{source}: unknown top-level key {key!r} of a seed config; the seeds' configs have "
                                f"{', '.join(SECTIONS)}")
    for key, value in _leaves(data, source):
        _one(out, key, value, source)
    _absent(out, data, source)
    if "ablation_configs" in data:
        _ablation(out, data["ablation_configs"], ablation, source, ablations)
    return out


def _leaves(data: dict, source: str):
    """(dotted key, value) of every setting, ablation_configs left for _ablation."""
    for section in ("model", "data", "training"):
        if section not in data:
            continue
        if not isinstance(data[section], dict):
            raise UsertwinError(f"{source}: {section} must be a mapping, got {type(data[section]).__name__}")
        for key, value in data[section].items():
            if key == "lora_config" and section == "model":
                if not isinstance(value, dict):
                    raise UsertwinError(f"{source}: model.lora_config must be a mapping, got {type(value).__name__}")
                yield from ((f"model.lora_config.{k}", v) for k, v in value.items())
            else:
                yield f"{section}.{key}", value


def _one(out: SeedConfig, key: str, value, source: str) -> None:
    if key in DIRECT:
        out.values[DIRECT[key]] = value
        out.lines.append(f"{source}: {key} -> {DIRECT[key]} = {value}")
    elif key in IGNORED:
        out.lines.append(f"{source}: {key} ignored: {IGNORED[key]}")
    elif key == "training.batch_size":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsertwinError(f"{source}: training.batch_size must be a whole number at least 1, got {value!r}")
        out.batch_size = value  # its line is written once max_length is final (config.resolve)
    elif key == "model.lora_config.target_modules":
        modules = ",".join(value) if isinstance(value, list) else value
        out.values["lora_target_modules"] = modules
        out.lines.append(f"{source}: {key} -> lora_target_modules = {modules}")
    elif key == "model.lora_config.bias":
        if value != "none":
            raise UsertwinError(f"{source}: model.lora_config.bias {value!r} cannot be honoured: usertwin's LoRA "
                                f"trains no bias terms (the seeds' configs all say \"none\")")
        out.lines.append(f"{source}: {key} ignored: \"none\" is what usertwin's LoRA does (no bias terms trained)")
    else:
        raise UsertwinError(f"{source}: unknown key {key!r} of a seed config; known: "
                            f"{', '.join(sorted([*DIRECT, *IGNORED, 'training.batch_size']))}")


def _absent(out: SeedConfig, data: dict, source: str) -> None:
    """A key the file leaves out: the seeds' scripts' default applies (usertwin's own defaults differ)."""
    for key, seeds in SEED_DEFAULTS.items():
        section, name = key.split(".", 1)
        if name in (data.get(section) or {}):
            continue
        if key == "training.batch_size":
            out.batch_size = seeds
            out.lines.append(f"{source}: {key} absent: the seeds' scripts' default {seeds} applies")
        else:
            out.values[DIRECT[key]] = seeds
            out.lines.append(f"{source}: {key} absent -> {DIRECT[key]} = {seeds} (the seeds' scripts' default)")


def _ablation(out: SeedConfig, entries, chosen: str | None, source: str, ablations: dict) -> None:
    if not isinstance(entries, dict):
        raise UsertwinError(f"{source}: ablation_configs must be a mapping of names to entries")
    names = ", ".join(entries)
    if chosen is None:
        out.lines.append(f"{source}: ablation_configs ignored: no --ablation_config NAME chose one of its entries "
                         f"({names}); the ablation setting applies")
        return
    if chosen not in entries:
        out.lines.append(f"{source}: ablation_configs has no entry {chosen!r} ({names}): --ablation_config "
                         f"{chosen} applies as usertwin defines it")
        return
    entry = entries[chosen]
    where = f"{source}: ablation_configs.{chosen}"
    if not isinstance(entry, dict):
        raise UsertwinError(f"{where} must be a mapping with use_profile, use_history, use_context")
    unknown = sorted(set(entry) - {"use_profile", "use_history", "use_context", "name"})
    if unknown:
        raise UsertwinError(f"{where}: unknown key {unknown[0]!r}; an entry has use_profile, use_history, "
                            f"use_context and name")
    # the seeds read each part with .get(part, True)
    shown = tuple(entry.get(f"use_{part}", True) for part in ("profile", "history", "context"))
    if not all(isinstance(v, bool) for v in shown):
        raise UsertwinError(f"{where}: use_profile, use_history and use_context must be true or false")
    ours = next(name for name, parts in ablations.items() if parts == shown)
    out.values["ablation"] = ours
    out.chose_ablation = True
    parts = ", ".join(f"{part} {'on' if on else 'off'}" for part, on in zip(("profile", "history", "context"), shown))
    out.lines.append(f"{where} (chosen by --ablation_config) -> ablation = {ours} ({parts})")
