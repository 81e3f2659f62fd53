"""The research scripts' inference (`inference_vllm_<SYSTEM>.py`, one per seed system): what each one did when its
user gave no flag, and the bounds it put on a value its user did give.

Read from the scripts (github.com/Ricky513125/CompactSubset_experiements at c8d1bd1): the argparse defaults of
each script's main(), then the min()/max() its run_inference_vllm applies before building vLLM's SamplingParams
(MovieLens, for one, generates at most 32 tokens whatever --max_tokens says), the history cap of its prompt builder
(--max_history_ratings 50, --max_history_reviews 100) and the context-turn cut (--max_chars_per_turn 300) of the
dialogue scripts. `usertwin predict --scenario` applies them when the seeds' own flags say a seed user runs it
(cli/predict.py), and says so once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from usertwin import seedconfig
from usertwin.errors import UsertwinError

# every script's shared defaults: 5 samples per target, seed 42, top_k 50, repetition penalty 1.1
_COMMON = {"num_samples": 5, "seed": 42, "top_k": 50, "repetition_penalty": 1.1}


@dataclass(frozen=True)
class SeedScript:
    name: str  # the seed system: inference_vllm_<name>.py
    defaults: dict  # generation settings (usertwin's names) when no flag gives them
    at_most: dict = field(default_factory=dict)  # min(value, bound): the script's cap on a given value
    at_least: dict = field(default_factory=dict)  # max(value, bound)
    max_history_items: int | None = None  # the prompt's history cap (the latest N items), when the script had one
    max_chars_per_turn: int | None = None  # each context turn of the target cut to N characters ("..." at the end)
    script: str = ""  # how a message names it; empty: inference_vllm_<name>.py

    def __post_init__(self):
        if not self.script:
            object.__setattr__(self, "script", f"inference_vllm_{self.name}.py")


def _script(name, temperature, top_p, max_new_tokens, **rest) -> SeedScript:
    defaults = {**_COMMON, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
    return SeedScript(name, defaults, **rest)


def generic(system: str) -> SeedScript:
    """The older, shared inference_vllm.py run with --dataset SYSTEM: temperature at least 1.2, no repetition
    penalty, 512 tokens (RealPersonaChat at most 150), context turns cut to 300 characters."""
    at_most = {"max_new_tokens": 150} if system == "RealPersonaChat" else {}
    return SeedScript(system, {**_COMMON, "repetition_penalty": 1.0, "temperature": 1.2, "top_p": 0.9,
                               "max_new_tokens": 512}, at_most=at_most, at_least={"temperature": 1.2},
                      max_chars_per_turn=_DIALOGUE, script=f"inference_vllm.py --dataset {system}")


_DIALOGUE = 300  # --max_chars_per_turn of every dialogue / questionnaire script
SCRIPTS = {s.name: s for s in (
    _script("MovieLens", 0.7, 0.9, 32, at_most={"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 32},
            max_history_items=50),
    _script("DMSC", 0.9, 0.9, 256, at_most={"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 256},
            max_history_items=100),
    _script("Chameleons", 0.7, 0.85, 256, at_most={"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 256},
            max_chars_per_turn=_DIALOGUE),
    _script("LovinkDialogue", 0.7, 0.85, 512, at_most={"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 1024},
            at_least={"repetition_penalty": 1.15}, max_chars_per_turn=_DIALOGUE),
    _script("LovinkQuestionnaire", 0.9, 0.9, 256, at_most={"max_new_tokens": 256}, at_least={"temperature": 0.8},
            max_chars_per_turn=_DIALOGUE),
    _script("PERSONA_Bench", 0.7, 0.85, 1024, max_chars_per_turn=_DIALOGUE),
    _script("REALTALK", 1.0, 0.9, 256, at_most={"max_new_tokens": 256}, at_least={"temperature": 1.0},
            max_chars_per_turn=_DIALOGUE),
    _script("RealPersonaChat", 0.7, 0.85, 150, at_most={"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 150},
            max_chars_per_turn=_DIALOGUE),
)}
# a dialogue scenario that names no system: the argparse defaults the dialogue scripts share, none of their caps
DIALOGUE = _script("dialogue", 0.7, 0.85, 512, max_chars_per_turn=_DIALOGUE, script="the dialogue scripts")
# the seed system of a scenario whose name says none, by its collections' type (dialogue: five scripts, no guess)
BY_COLLECTION = {"movie_rating": "MovieLens", "movie_review": "DMSC", "questionnaire": "LovinkQuestionnaire"}


def named(text: str, flag: str = "--seed_script") -> SeedScript:
    """The system of --seed_script: a system name or a script's file name, any case (MovieLens,
    inference_vllm_MovieLens.py, path/to/it)."""
    found = in_name(Path(str(text)).name)
    if found is None:
        raise UsertwinError(f"{flag} {text}: not a seed system; one of {', '.join(SCRIPTS)} (or "
                            "inference_vllm_<system>.py)")
    return found


def in_name(text: str) -> SeedScript | None:
    """The script of the seed system a file or folder name names (config_MovieLens.json, .../RealSelf/DMSC)."""
    system = seedconfig.system_named(text)
    return SCRIPTS[system] if system else None


def in_path(path) -> SeedScript | None:
    """The seed system the last folder of `path` naming one names (the seeds' scenario_path ends in it)."""
    for part in reversed(Path(path).resolve().parts):
        found = in_name(part)
        if found is not None:
            return found
    return None


def bounded(script: SeedScript, values: dict) -> tuple[dict, list[str]]:
    """`values` (generation settings) within the script's caps, and a clause for each one changed."""
    out, said = dict(values), []
    for key, value in values.items():
        if value is None:
            continue
        low, high = script.at_least.get(key), script.at_most.get(key)
        if high is not None and value > high:
            out[key] = high
            said.append(f"{key} {value} -> {high} (it used at most {high})")
        elif low is not None and value < low:
            out[key] = low
            said.append(f"{key} {value} -> {low} (it used at least {low})")
    return out, said
