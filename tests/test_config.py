"""Settings declared once (usertwin.config): flags, YAML keys, aliases, choices, ranges, the prepare cache key
and the flag reference are all derived from the fields, and the seeds' names keep working. The command line
shows one spelling of each flag (underscores) and still takes the dashed one."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
import runpy
from dataclasses import dataclass, fields

import pytest
from helpers import ROOT

from usertwin import config
from usertwin.cli import COMMANDS, Parser, build_parser, main
from usertwin.config import (
    SECTIONS,
    UNREAD_FLAGS,
    Config,
    GenerateSettings,
    add_config_flags,
    choices_of,
    from_mapping,
    generate_settings,
    load_yaml,
    read_keys,
    resolve,
    setting,
)
from usertwin.errors import UsertwinError
from usertwin.sequences.prepare import cache_key

# the names the seeds use and the choices, as they were before the settings were declared in one place
SEED_ALIASES = {"ablation_config": "ablation", "data_path": "data", "train_data": "data", "model_name_or_path": "model",
                "model_path": "model", "max_seq_length": "max_length", "random_seed": "seed",
                "history_max_items": "max_history_items", "num_train_epochs": "max_epochs", "lr": "learning_rate",
                "gradient_accumulation": "gradient_accumulation_steps", "lora_rank": "lora_r",
                "data_file": "data"}
SEED_NEGATIONS = {"no_profile": "use_profile", "no_history": "use_history", "no_context": "use_context",
                  "no_lora": "lora"}
@dataclass
class _Extended(Config):
    knob: int = setting(7, "a test setting that shapes the data", aliases=("seed_knob",), shapes_data=True)
    switch: bool = setting(False, "a test setting that does not", negations=("no_switch",))


def _parse(*argv) -> argparse.Namespace:
    parser = Parser(exit_on_error=False)
    add_config_flags(parser)
    return parser.parse_args(list(argv))


def _other_value(f: dataclasses.Field):
    """A valid value of the field's type other than its default."""
    if choices_of(f):
        return next(c for c in choices_of(f) if c != f.default)
    if f.default is None:
        return {"str | None": "x", "bool | None": True, "int | None": 3, "float | None": 0.3}[f.type]
    if isinstance(f.default, bool):
        return not f.default
    return f.default + ("-other" if isinstance(f.default, str) else 1)


def test_a_setting_added_in_one_place_is_a_flag_a_yaml_key_and_part_of_the_cache_key(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "Config", _Extended)
    cfg = resolve(_parse("--seed_knob", "9", "--switch"))
    assert isinstance(cfg, _Extended) and (cfg.knob, cfg.switch) == (9, True)
    assert build_parser().parse_args(["train", "--knob", "4", "--no_switch"]).cfg__knob == 4  # train reads all
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "a test setting that shapes the data (default 7)" in " ".join(help_text.split())
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("knob: 3\nno_switch: false\n")
    cfg = from_mapping(load_yaml(yaml_file), str(yaml_file))
    assert (cfg.knob, cfg.switch) == (3, True) and cfg.to_dict()["knob"] == 3
    with pytest.raises(UsertwinError, match="key 'knob' must be int, got str 'x'"):
        from_mapping({"knob": "x"}, "test")
    base = cache_key(cfg, "h", "t")
    assert cache_key(dataclasses.replace(cfg, knob=4), "h", "t") != base  # marked: shapes the data
    assert cache_key(dataclasses.replace(cfg, switch=False), "h", "t") == base  # not marked


def test_the_cache_key_covers_exactly_the_settings_that_shape_data():
    cfg = Config(data="d.jsonl")
    base = cache_key(cfg, "h", "t")
    for f in fields(Config):
        changed = cache_key(dataclasses.replace(cfg, **{f.name: _other_value(f)}), "h", "t")
        assert (changed != base) == f.metadata["shapes_data"], f.name


def test_every_flag_has_a_help_that_says_what_it_does():
    for cls in [*SECTIONS.values(), GenerateSettings]:
        assert not cls.__doc__.startswith(cls.__name__ + "("), f"{cls.__name__}: a docstring heads its docs"
        for f in fields(cls):
            assert f.metadata["help"].strip(), f.name
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("train", "predict"):
        for action in commands[name]._actions:
            if action.help == argparse.SUPPRESS:
                continue
            words = re.sub(r"\(default [^)]*\)", "", action.help or "").strip()
            assert words, f"{name} {action.option_strings}: no help beyond its default"


def test_the_seeds_aliases_and_negations_map_to_their_fields(tmp_path):
    for alias, key in SEED_ALIASES.items():
        value = "history_only" if key == "ablation" else "x" if key in ("data", "model") else 3
        assert getattr(from_mapping({alias: value}, "test"), key) == value, alias
        assert getattr(resolve(_parse(f"--{alias}", str(value))), key) == value, alias
    for negation, key in SEED_NEGATIONS.items():
        assert getattr(from_mapping({negation: True}, "test"), key) is False
        assert getattr(from_mapping({negation: False}, "test"), key) is True
        assert getattr(resolve(_parse(f"--{negation}")), key) is False
    for flags, value in ((["--packing", "off"], False), (["--no-packing"], False), (["--no_packing"], False),
                         (["--packing"], True), (["--packing", "on"], True)):
        assert resolve(_parse("--packing", "off", *flags)).packing is value


def test_a_setting_not_marked_as_shaping_leaves_the_prepared_data_alone(tmp_path, tokenizer_dir):
    """The cache key holds the settings marked shapes_data: any other setting, changed, must build the same
    samples and windows (else a stale cache would be reused)."""
    from helpers import write_rating_users

    from usertwin.sequences.prepare import prepare
    from usertwin.text.tokens import load_tokenizer

    data = write_rating_users(tmp_path / "r.jsonl", (14, 9, 6), lambda u, i: f"Movie {u}{i} (2000) (Drama): ",
                              lambda u, i: 1 + (u + i) % 5)
    tok = load_tokenizer(str(tokenizer_dir))
    base = Config(data=str(data), model=str(tokenizer_dir), max_length=200, cache_dir=str(tmp_path / "c"))

    def built(cfg):
        prep = prepare(cfg, tokenizer=tok, use_cache=False, progress=False)
        return repr((prep.splits, prep.sequences, prep.stats))

    want, compared = built(base), 0
    for f in fields(Config):
        if f.metadata["shapes_data"] or f.name in ("data", "model"):  # data and model: their hashes are in the key
            continue
        try:
            cfg = from_mapping({f.name: _other_value(f)}, "test", base)
            got = built(cfg)
        except UsertwinError:  # a value this data cannot take (a setting that would be ignored, say)
            continue
        assert got == want, f"{f.name} changes the prepared data but is not marked shapes_data"
        compared += 1
    assert compared >= 30


def test_the_prompt_style_choices_are_the_style_registry():
    from usertwin.text.styles import style_names

    (f,) = [f for f in fields(Config) if f.name == "prompt_style"]
    assert choices_of(f) == style_names() and len(style_names()) >= 3


def test_choices_are_enforced_in_yaml_and_on_the_command_line():
    declared = {f.name: choices_of(f) for f in fields(Config) if choices_of(f)}
    assert len(declared) >= 10 and all(f.default in choices_of(f) for f in fields(Config) if choices_of(f))
    for key, choices in declared.items():
        for choice in choices:
            assert getattr(from_mapping({key: choice}, "test"), key) == choice
        with pytest.raises(UsertwinError, match=f"key '{key}' must be one of {', '.join(choices)}, got 'bogus'"):
            from_mapping({key: "bogus"}, "test")
        with pytest.raises(argparse.ArgumentError):
            _parse(f"--{key}", "bogus")


def test_keys_keep_their_order_so_a_runs_config_yaml_is_unchanged():
    assert list(SECTIONS) == ["data", "split", "sampling", "render", "model", "train", "output"]
    assert list(Config().to_dict()) == [f.name for cls in SECTIONS.values() for f in fields(cls)]
    assert list(Config().to_dict())[:5] == ["data", "on_error", "model", "max_length", "unit"]


def test_train_ratio_defaults_to_what_val_and_test_leave():
    assert Config().train_share() == 0.7
    assert Config(train_ratio=0.5, val_ratio=0.25, test_ratio=0.25).train_share() == 0.5


def test_generation_flags_belong_to_predict_only(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--temperature", "0.5"])
    assert "unrecognized arguments: --temperature" in capsys.readouterr().err
    assert generate_settings(build_parser().parse_args(["predict"])) == GenerateSettings(
        max_new_tokens=64, temperature=None, top_p=1.0, top_k=0, repetition_penalty=1.0, num_samples=1, seed=None,
        batch_size="auto", pick=3, generate=True, limit=None)
    args = build_parser().parse_args(["predict", "--no-generate", "--temperature", "0.7", "--pick", "0", "--limit", "5"])
    gen = generate_settings(args)
    assert (gen.generate, gen.temperature, gen.pick, gen.limit) == (False, 0.7, 0, 5)


def test_docs_flags_md_is_what_scripts_flags_prints():
    markdown = runpy.run_path(str(ROOT / "scripts" / "flags.py"))["markdown"]()
    assert (ROOT / "docs" / "flags.md").read_text(encoding="utf-8") == markdown, \
        "regenerate: PYTHONPATH=src python scripts/flags.py > docs/flags.md"
    for f in fields(Config):
        assert f"`--{f.name}`" in markdown


def test_config_yaml_float_without_a_dot_is_a_float(tmp_path):
    """YAML 1.1 reads `2e-4` as a string; usertwin takes it as the number the user meant."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 2e-4\n")
    assert from_mapping(load_yaml(cfg), str(cfg)).learning_rate == 2e-4


@pytest.mark.parametrize("text,message", [
    ("histroy_strategy: random\n", "unknown key 'histroy_strategy'; did you mean 'history_strategy'?"),
    ("max_length: long\n", "key 'max_length' must be int, got str 'long'"),
    ("history_strategy: latest\n", "key 'history_strategy' must be one of all_previous, random"),
    ("one_sample_per_user: 3\n", "key 'one_sample_per_user' must be bool"),
    ("- a\n- b\n", "a config is a mapping of keys to values"),
    ("max_length: [1,\n", "not valid YAML"),
])
def test_bad_config_is_a_clear_error(tmp_path, tokenizer_dir, capsys, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    data = tmp_path / "r.jsonl"
    items = [{"continuation_prefix": "Movie (2000): ", "continuation": "4.0", "timestamp": 1_000_000 + i}
             for i in range(3)]
    data.write_text(json.dumps({"user_hash": "u0", "task": {"task_behavior_collections": [
        {"type": "movie_rating", "data": items}]}}) + "\n")
    rc = main(["prepare", "--config", str(cfg), "--data", str(data), "--model", str(tokenizer_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and str(cfg) in err and "Traceback" not in err


def _outside(cls, f) -> list:
    """Values just outside the field's range, of its type."""
    tp, r = config._types(cls)[f.name][0], config.range_of(f)
    step = 1 if tp is int else 0.5
    return [tp(v) for v in (r.minimum is not None and r.minimum - step, r.maximum is not None and r.maximum + step,
                            r.above, r.below) if v is not None and v is not False]


def _edges(f) -> list:
    r = config.range_of(f)
    return [v for v in (r.minimum, r.maximum) if v is not None]


def _ranged(cls):
    return [f for f in fields(cls) if config.range_of(f)]


def test_every_number_declares_its_range():
    for cls in (Config, GenerateSettings):
        numbers = {f.name for f in fields(cls) if config._types(cls)[f.name][0] in (int, float)}
        unbounded = numbers - {f.name for f in _ranged(cls)}
        assert unbounded <= {"sample_seed"}, unbounded  # any int seeds its own RNG
        for f in _ranged(cls):  # a share is a share; a count or a size is never negative
            r = config.range_of(f)
            if f.name.endswith(("_ratio", "_fraction")):
                assert (r.minimum, r.maximum) == (0, 1), f.name
            assert (r.minimum is not None and r.minimum >= 0) or (r.above is not None and r.above >= 0), f.name


def test_a_value_out_of_range_is_refused_in_yaml_and_on_the_command_line(tmp_path):
    for f in _ranged(Config):
        for bad in _outside(Config, f):
            message = f"key '{f.name}' must be {config.range_of(f)}, got {bad!r}"
            path = tmp_path / f"{f.name}.yaml"
            path.write_text(f"data: r.jsonl\n{f.name}: {bad}\n")
            with pytest.raises(UsertwinError) as yaml_error:
                from_mapping(load_yaml(path), str(path))
            assert str(yaml_error.value) == f"{path}:2: {message}"
            with pytest.raises(UsertwinError) as flag_error:
                resolve(_parse(f"--{f.name}", str(bad)))
            assert str(flag_error.value) == f"command line: {message}"
        for good in _edges(f):
            assert getattr(from_mapping({f.name: good}, "test"), f.name) == good


def test_a_generation_setting_out_of_range_is_refused(capsys):
    for f in _ranged(GenerateSettings):
        for bad in _outside(GenerateSettings, f):
            message = f"command line: key '{f.name}' must be {config.range_of(f)}, got {bad!r}"
            args = build_parser().parse_args(["predict", f"--{f.name}", str(bad)])
            with pytest.raises(UsertwinError, match=re.escape(message)):
                generate_settings(args)
            assert main(["predict", f"--{f.name}", str(bad), "-o", "never-written.jsonl"]) == 2
            assert capsys.readouterr().err == f"usertwin predict: error: {message}\n"
        for good in _edges(f):
            args = build_parser().parse_args(["predict", f"--{f.name}", str(good)])
            assert getattr(generate_settings(args), f.name) == good


def test_the_split_ratios_are_checked_together_where_they_were_given(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("unit: sample\ntrain_ratio: 0.5\n")
    with pytest.raises(UsertwinError) as error:
        resolve(_parse("--config", str(path), "--val_ratio", "0.2"))
    assert str(error.value) == (f"{path}:2, command line: train_ratio + val_ratio + test_ratio must add up to 1, "
                                "got 0.5 + 0.2 + 0.15 = 0.85")
    with pytest.raises(UsertwinError) as error:
        resolve(_parse("--val_ratio", "0.6", "--test_ratio", "0.6"))
    assert str(error.value) == ("command line: val_ratio + test_ratio must be at most 1 (train_ratio is unset: "
                                "training gets what they leave), got 0.6 + 0.6 = 1.2")
    for flags in (["--train_ratio", "0.8", "--val_ratio", "0.1", "--test_ratio", "0.1"],
                  ["--val_ratio", "0", "--test_ratio", "0"], ["--val_ratio", "0.5", "--test_ratio", "0.5"]):
        resolve(_parse(*flags))


def _commands() -> dict:
    return build_parser()._subparsers._group_actions[0].choices


def _shown(action) -> bool:
    return action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)


def test_every_flag_of_every_command_has_a_help_line_and_shows_its_choices():
    for name, parser in _commands().items():
        for action in filter(_shown, parser._actions):
            where = f"usertwin {name} {'/'.join(action.option_strings) or action.dest}"
            words = re.sub(r"\(default [^)]*\)", "", action.help or "").strip()
            assert words and "\n" not in action.help, f"{where}: no one-line help"
            if action.choices and action.metavar is not None:  # argparse does not show them: the help must
                assert all(str(c) in action.help for c in action.choices), f"{where}: choices not in its help"
    ablation = " ".join(_commands()["train"].format_help().split())
    assert all(a in ablation for a in config.ABLATIONS)


def test_help_groups_the_settings_by_section_like_docs_flags_md():
    for name in ("train", "prepare", "inspect", "predict", "baselines"):
        text = _commands()[name].format_help()
        reads = read_keys(_module(name).READS)
        titles = [s for s, cls in SECTIONS.items() if reads & {f.name for f in fields(cls)}]
        assert titles == ([*SECTIONS] if name == "train" else titles) and "split" in titles, name
        titles += ["generate"] if name == "predict" else []
        assert [t for t in re.findall(r"^(\w+):$", text, re.M) if t in [*SECTIONS, "generate"]] == titles, name


def _value(action) -> list:
    """A valid command-line value for the flag (none for a switch)."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(list(action.choices)[-1])]
    if action.metavar == "on|off":
        return ["off"]
    if action.metavar == "N|auto":
        return ["auto"]
    return {int: ["3"], float: ["0.5"]}.get(action.type, ["x"])


def _required(parser) -> list:
    """The least argv the command parses: a value for each positional and required flag (and one flag of each
    required either-or group)."""
    groups = [g._group_actions[0] for g in parser._mutually_exclusive_groups if g.required]
    argv = []
    for action in parser._actions:
        if action.option_strings and (action.required or action in groups):
            argv += [action.option_strings[0], *_value(action)]
        elif not action.option_strings and action.nargs not in ("?", "*"):
            argv += _value(action)
    return argv


def test_dashed_and_underscore_spellings_parse_alike_and_help_shows_underscores_only():
    top = build_parser()
    for name, parser in top._subparsers._group_actions[0].choices.items():
        base = [name, *_required(parser)]
        for action in parser._actions:
            for flag in (o for o in action.option_strings if "_" in o):
                dashed = "--" + flag[2:].replace("_", "-")
                same = top.parse_args([*base, flag, *_value(action)])
                assert top.parse_args([*base, dashed, *_value(action)]) == same, f"{name} {dashed}"
        text = parser.format_help()
        assert not re.findall(r"--[a-z0-9]+(?:_[a-z0-9]+)*-[a-z]", text), name
        assert "--no_progress" in text
    args, rest = build_parser().parse_known_args(["train", "--max-length=7", "--no-packing", "--", "--no-such"])
    assert (args.cfg__max_length, args.cfg__packing, rest[-1]) == (7, False, "--no-such")  # after --: as given


def test_bad_inputs_from_the_command_line_stop_the_command(capsys):
    for argv, message in ((["prepare", "--max_length", "0"], "key 'max_length' must be at least 1, got 0"),
                          (["prepare", "--val_ratio", "1.5"], "key 'val_ratio' must be between 0 and 1, got 1.5"),
                          (["train", "--lr", "0"], "key 'learning_rate' must be greater than 0, got 0.0")):
        assert main(argv) == 2
        assert capsys.readouterr().err == f"usertwin {argv[0]}: error: command line: {message}\n"


# ---------------------------------------------------------------- each command takes the settings it reads


def _module(name: str):
    return next(c for c in COMMANDS if c.NAME == name)


def _readers() -> list:
    return [c for c in COMMANDS if hasattr(c, "READS")]


def test_the_commands_that_take_settings_declare_what_they_read():
    assert [c.NAME for c in _readers()] == ["prepare", "inspect", "train", "predict", "baselines"]
    every = {f.name for f in fields(Config)}
    assert read_keys(_module("train").READS) == every
    assert read_keys(_module("inspect").READS) == read_keys(_module("prepare").READS)
    assert read_keys(_module("baselines").READS) == {"data", "on_error", "split_mode", "train_ratio", "val_ratio",
                                                     "val_rounding", "test_ratio", "seed"}
    model, train = ({f.name for f in fields(SECTIONS[s])} for s in ("model", "train"))
    assert read_keys(_module("prepare").READS) & (model | train) == {"trust_remote_code"}
    assert read_keys(_module("predict").READS) & (model | train) == {"dtype", "trust_remote_code"}
    assert "output_dir" not in read_keys(_module("predict").READS)  # it writes to -o
    with pytest.raises(ValueError, match="not in section 'data'"):
        read_keys({"data": ("lora_r",)})


def test_every_command_takes_every_setting_it_reads_as_a_flag_and_no_other():
    """A property of the declarations: each key a command reads is a shown flag of it (every name of the key,
    but one another group owns) that parses into the settings; each key it does not read is no shown flag, and
    parses only into the refused list."""
    top = build_parser()
    leave = config.generate_flag_names()
    for module in _readers():
        parser, reads = _commands()[module.NAME], read_keys(module.READS)
        base = [module.NAME, *_required(parser)]
        shown = {a.dest[len("cfg__"):]: a for a in parser._actions if a.dest.startswith("cfg__") and _shown(a)}
        assert set(shown) == reads, module.NAME
        text = parser.format_help()
        for f in fields(Config):
            names = [f"--{n}" for n in (f.name, *f.metadata["aliases"])]
            names = [n for n in names if module.NAME != "predict" or n not in leave | module.SEED_NAMES]
            for flag in names:
                action = parser._option_string_actions[flag]
                args = top.parse_args([*base, flag, *_value(action)])
                if f.name in reads:
                    assert f"cfg__{f.name}" in vars(args) and not hasattr(args, UNREAD_FLAGS), (module.NAME, flag)
                    assert flag in action.option_strings and re.search(rf"{flag}\b", text), (module.NAME, flag)
                else:
                    assert getattr(args, UNREAD_FLAGS) == [(flag, f.name)], (module.NAME, flag)
                    assert not any(k.startswith("cfg__") for k in vars(args)), (module.NAME, flag)
                    assert action.help == argparse.SUPPRESS, (module.NAME, flag)
                    assert not re.search(rf"\[{flag}\b", text), (module.NAME, flag)  # not in the usage line


TRAINING = ("a training setting (section train): {command} {why} and does not read it; set it for usertwin train")


@pytest.mark.parametrize("command,flags,message", [
    ("predict", ["--run", "R", "--learning_rate", "0.1", "--save_total_limit", "5"],
     "--learning_rate is " + TRAINING + " (nor does predict read --save_total_limit)"),
    ("predict", ["--lr", "0.1"], "--lr (learning_rate) is " + TRAINING),
    ("predict", ["--no_lora"], "--no_lora (lora) is a model setting (section model): predict {why} and does not "
                               "read it; set it for usertwin train"),
    ("predict", ["--output_dir", "o"], "--output_dir is the research scripts' name of -o for a scenario "
                                       "(--scenario_path DIR); predicting a split writes to -o (default "
                                       "RUN/predictions-SPLIT.jsonl), and a run directory is set for usertwin train"),
    ("baselines", ["--max_epochs", "3"], "--max_epochs is " + TRAINING),
    ("baselines", ["--max-length", "64"], "--max_length is a data setting (section data): baselines {why} and does "
                                          "not read it; set it for usertwin prepare, inspect, train or predict"),
    ("inspect", ["--packing", "off"], "--packing is " + TRAINING),
    ("prepare", ["--warmup_steps", "5"], "--warmup_steps is " + TRAINING),
])
def test_a_setting_a_command_does_not_read_is_refused_as_a_flag_with_the_reason(command, flags, message, capsys):
    why = _module(command).UNREAD
    message = message.format(command=command, why=why[config.ALL] if isinstance(why, dict) else why)
    assert main([command, *flags]) == 2
    assert capsys.readouterr().err == f"usertwin {command}: error: {message}\n"
    assert "--learning_rate" not in _commands()[command].format_help()


def test_a_config_file_may_hold_any_setting_for_any_command(tmp_path, tokenizer_dir, capsys):
    """One config file serves every command: keys a command does not read are not refused in it."""
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.1\nsave_total_limit: 5\nlora_r: 8\nmax_length: 256\ntest_ratio: 0.2\n")
    for module in _readers():
        args = build_parser().parse_args([module.NAME, "--config", str(path), *_required(_commands()[module.NAME])])
        cfg = resolve(args)
        assert (cfg.learning_rate, cfg.save_total_limit, cfg.lora_r, cfg.test_ratio) == (0.1, 5, 8, 0.2), module.NAME
    data = tmp_path / "r.jsonl"
    items = [{"continuation_prefix": f"Movie {i}: ", "continuation": "4.0", "timestamp": 1_000_000 + i}
             for i in range(6)]
    data.write_text(json.dumps({"user_hash": "u0", "task": {"task_behavior_collections": [
        {"type": "movie_rating", "data": items}]}}) + "\n")
    assert main(["prepare", "--config", str(path), "--data", str(data), "--model", str(tokenizer_dir),
                 "--cache_dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    assert "error" not in capsys.readouterr().err


# ---------------------------------------------------------------- prompt styles: config never imports text/


def test_config_does_not_import_text_and_takes_the_style_names_from_the_registry():
    import subprocess
    import sys

    code = ("import sys, usertwin.config as c; assert not [m for m in sys.modules if m.startswith('usertwin.text')]; "
            "assert c.choices_of(c.Config.__dataclass_fields__['prompt_style']) == (); "
            "import usertwin.text.styles as s; "
            "assert c.choices_of(c.Config.__dataclass_fields__['prompt_style']) == s.style_names() != ()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    tree = ast.parse((ROOT / "src" / "usertwin" / "config.py").read_text(encoding="utf-8"))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("usertwin.text")], imported


def test_a_bad_prompt_style_stops_train_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import usertwin.train.trainer

    def never(*args, **kwargs):
        raise AssertionError("train started")

    monkeypatch.setattr(usertwin.train.trainer, "train", never)
    with pytest.raises(SystemExit) as stop:
        main(["train", "--prompt_style", "nope", "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--prompt_style: invalid choice: 'nope'" in err
    assert "'simple', 'detailed', 'lovink'" in err and "--prompt_style {simple,detailed,lovink}" in \
        " ".join(_commands()["train"].format_help().split())
    path = tmp_path / "c.yaml"
    path.write_text("data: r.jsonl\nprompt_style: nope\n")
    assert main(["train", "--config", str(path), "--output_dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (f"usertwin train: error: {path}:2: key 'prompt_style' must be one of simple, "
                                       "detailed, lovink, got 'nope'\n")
    assert not (tmp_path / "run").exists()
