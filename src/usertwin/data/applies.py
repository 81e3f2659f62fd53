"""Which settings take effect where: the one table that keeps a setting from being silently ignored.

A setting given a value (anything but its default) must change what happens. Where it would not -- a sample
unit setting under the timeline unit, a setting of a strategy that is not chosen, a LoRA setting without
LoRA -- the table says what happens instead: the run switches to the unit that supports it, with a one-line
notice (`SWITCH`), or stops with a message that names the setting and what it needs (`STOP`), or says in a
notice that it draws nothing (`NOTE`, for a seed only). `settle` applies the table; prepare calls it, so
every command that builds data (prepare, inspect, train, predict) sees the settled config, and a run's
config.yaml records the unit it really trained with -- predict then builds prompts with the same history.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from usertwin.config import Config
from usertwin.data.crowd import rating_value
from usertwin.errors import UsertwinError

SWITCH, STOP, NOTE = "switch to unit sample", "stop", "notice"
_SHAPING = ("random", "fixed_ratio", "fixed_count")  # strategies that pick a subset of the earlier items


@dataclass(frozen=True)
class Facts:
    """What the rules need to know about the data."""

    has_context: bool = False  # some item has context turns
    dialogue: bool = False  # some timeline holds dialogue lines
    ratings: bool = False  # some item is a rating (records.is_rating)
    rated: bool = False  # some item carries a rating (a rating item, or metadata rating / stars): crowd context


@dataclass(frozen=True)
class Rule:
    key: str
    applies: Callable  # (cfg, facts) -> bool: the setting takes effect
    needs: str  # what it needs, for the message
    action: str = STOP
    given: Callable | None = None  # (cfg) -> bool; default: the value differs from the default


def _draws(cfg: Config) -> bool:
    """Whether anything is drawn at random from sample_seed."""
    drawn = cfg.max_samples_per_user is not None and cfg.target_draw == "random"
    return drawn or (cfg.unit == "sample" and cfg.history_strategy == "random")


RULES = (
    # -- history shaping: a timeline window shows each target every earlier item of the window
    Rule("history_strategy", lambda c, f: c.unit == "sample",
         "--unit sample (a timeline window shows each target every earlier item in it)", SWITCH,
         given=lambda c: c.history_strategy in _SHAPING),
    Rule("max_history_items", lambda c, f: c.unit == "sample",
         "--unit sample (a timeline window shows each target every earlier item in it)", SWITCH),
    Rule("history_strategy", lambda c, f: c.parts()[1], "history shown (the ablation or --no_history hides it)",
         given=lambda c: c.history_strategy in _SHAPING),
    Rule("max_history_items", lambda c, f: c.parts()[1], "history shown (the ablation or --no_history hides it)"),
    Rule("history_ratio", lambda c, f: c.history_strategy in ("random", "fixed_ratio"),
         "--history_strategy random or fixed_ratio"),
    Rule("fixed_history_count", lambda c, f: c.history_strategy == "fixed_count", "--history_strategy fixed_count"),
    Rule("history_layout", lambda c, f: c.unit == "sample",
         "--unit sample (a timeline window renders earlier items as turns)"),
    Rule("window_history_fraction", lambda c, f: c.unit == "timeline" or (f.dialogue and c.parts()[2]),
         "--unit timeline (or dialogue data with context shown, whose long contexts it cuts)"),
    # -- which targets carry loss
    Rule("min_history_length", lambda c, f: c.temporal_augmentation, "--temporal_augmentation"),
    Rule("max_samples_per_user", lambda c, f: not c.one_sample_per_user,
         "--one_sample_per_user off (that keeps one target per user already)"),
    Rule("target_draw", lambda c, f: c.max_samples_per_user is not None and not c.one_sample_per_user,
         "--max_samples_per_user N (the targets it draws)"),
    Rule("skip_own_turn_targets", lambda c, f: f.has_context, "items with context turns (dialogue)", NOTE),
    Rule("sample_seed", lambda c, f: _draws(c),
         "a random draw (--max_samples_per_user, or --history_strategy random)", NOTE),
    Rule("resample_every_epoch", lambda c, f: _draws(c),
         "a random draw to repeat (--max_samples_per_user, or --history_strategy random with --unit sample)"),
    Rule("max_context_turns", lambda c, f: f.has_context and c.parts()[2], "items with context turns (dialogue) and the context shown"),
    # -- training
    Rule("pad_packed_rows", lambda c, f: c.packing, "--packing"),
    Rule("step_tokens", lambda c, f: c.batch_tokens == "auto", "--batch_tokens auto"),
    *(Rule(key, lambda c, f: c.lora, "--lora") for key in ("lora_r", "lora_alpha", "lora_dropout",
                                                          "lora_precision", "lora_target_modules")),
    Rule("warmup_ratio", lambda c, f: c.lr_scheduler != "constant", "a --lr_scheduler with warm-up"),
    Rule("early_stopping_threshold", lambda c, f: bool(c.early_stopping_patience), "--early_stopping_patience"),
    Rule("wandb_run_name", lambda c, f: bool(c.wandb_project), "--wandb_project"),
    Rule("disable_flash_attn", lambda c, f: c.attention == "auto", "--attention auto"),
    Rule("rating_loss_weight", lambda c, f: f.ratings,
         "rating targets (items of a rating collection, e.g. movie_rating); this data has none"),
    Rule("select_by", lambda c, f: f.ratings, "rating targets in the validation split (a rating collection, e.g. "
         "movie_rating); this data has none", given=lambda c: c.select_by == "rating_rmse"),
    Rule("val_rating_targets", lambda c, f: c.select_by == "rating_rmse", "--select_by rating_rmse"),
    # the default (item) shows nothing on data without ratings; asking for the user's statistics there is refused
    Rule("crowd_context", lambda c, f: f.rated, "items that carry a rating (a rating collection, or metadata "
         "rating / stars); this data has none", given=lambda c: c.crowd_context == "item_and_user"),
)

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def _given(rule: Rule, cfg: Config) -> bool:
    if rule.given is not None:
        return rule.given(cfg)
    return getattr(cfg, rule.key) != _DEFAULTS[rule.key]


def _flag(cfg: Config, key: str) -> str:
    value = getattr(cfg, key)
    return f"--{key}" if value is True else f"--{key} {value}"


def facts_of(timelines) -> Facts:
    return Facts(has_context=any(it.context for tl in timelines for it in tl.items),
                 dialogue=any(tl.is_dialogue for tl in timelines),
                 ratings=any(it.is_rating for tl in timelines for it in tl.items),
                 rated=any(rating_value(it) is not None for tl in timelines for it in tl.items))


def switched_unit(cfg: Config, facts: Facts = Facts()) -> tuple[Config, list[str]]:
    """The config with the unit the run will really use (a setting only the sample unit honours switches to it),
    and the notice saying so. The switching rules read the settings only, not the data: --print_config shows the
    unit the run will train with before any data is read."""
    switching = [r for r in RULES if r.action == SWITCH and _given(r, cfg) and not r.applies(cfg, facts)]
    if not switching:
        return cfg, []
    flags = " and ".join(dict.fromkeys(_flag(cfg, r.key) for r in switching))
    return dataclasses.replace(cfg, unit="sample"), [
        f"{flags}: needs {switching[0].needs}; switched to --unit sample (one sequence per target: more tokens "
        "than timeline windows)"]


def settle(cfg: Config, facts: Facts = Facts()) -> tuple[Config, list[str]]:
    """The config that takes effect and one-line notices; stops (UsertwinError) on a setting that would be
    ignored. Idempotent: a settled config settles to itself, with no notices."""
    cfg, notices = switched_unit(cfg, facts)
    for rule in RULES:
        if rule.action == SWITCH or not _given(rule, cfg) or rule.applies(cfg, facts):
            continue
        if rule.action == NOTE:
            notices.append(f"{_flag(cfg, rule.key)} changes nothing here: it needs {rule.needs}")
            continue
        raise UsertwinError(f"{_flag(cfg, rule.key)} would be ignored: it needs {rule.needs}")
    return cfg, notices
