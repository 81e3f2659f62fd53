"""usertwin predict --scenario: a scenario folder of real MovieLens users filled by a tiny random model."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import shared
from helpers import ROOT, write_records

from usertwin.cli import main

SIZES = (10, 9, 8, 3)  # items of the 4 MovieLens users taken; the last one is the cold-start user
# crowd context off: these tests compare with prompts rendered from one user's records alone (a scenario target
# counts the train file's other users: tests/data/test_crowd.py)
FLAGS = ["--max_length", "1024", "--max_new_tokens", "4", "--num_samples", "3", "--temperature", "0.9",
         "--batch_size", "4", "--crowd_context", "none", "--no-progress"]


def _make_scenario():
    spec = importlib.util.spec_from_file_location("make_scenario", ROOT / "scripts" / "make_scenario.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_scenario


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """3 users with 8, 7, 6 train items and their last 2 as targets; 1 cold-start user with 2 targets."""
    tmp = tmp_path_factory.mktemp("scenario")
    assert main(["convert", "movielens", str(shared("movielens", "ml-latest-small")), "-o", str(tmp / "ml.jsonl")]) == 0
    recs = [json.loads(line) for line in (tmp / "ml.jsonl").read_text().splitlines()[:len(SIZES)]]
    for rec, n in zip(recs, SIZES):
        data = rec["task"]["task_behavior_collections"][0]["data"]
        data[:] = sorted(data, key=lambda it: it["timestamp"])[:n]
    write_records(tmp / "few.jsonl", recs)
    assert _make_scenario()(tmp / "few.jsonl", tmp / "scen", users=3, targets=2, cold=1) == {
        "train_users": 3, "test_users": 4, "targets": 8}
    return tmp / "scen"


def _predict(scen, out, model, *extra) -> int:
    return main(["predict", "--scenario", str(scen), "--model", str(model), "-o", str(out), *FLAGS, *extra])


def _items(doc):
    return [it for rec in doc for c in rec["task"]["task_behavior_collections"] for it in c["data"]]


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def filled(scenario, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("filled") / "out"
    assert _predict(scenario, out, tiny_model_dir) == 0
    return out


def test_filled_file_is_the_input_plus_continuations(scenario, filled):
    given = json.loads((scenario / "test_leaderboard.json").read_text())
    got = json.loads((filled / "test_leaderboard.json").read_text())
    conts = [it.pop("continuations") for it in _items(got)]
    assert json.dumps(got) == json.dumps(given)  # same keys, same order, same values
    assert len(conts) == 8 and all(len(c) == 3 and all(isinstance(x, str) for x in c) for c in conts)
    summary = json.loads((filled / "summary.json").read_text())
    assert {k: summary[k] for k in ("complete", "users", "targets", "cold_start_users", "train_users",
                                    "generated_now", "resumed")} == {
        "complete": True, "users": 4, "targets": 8, "cold_start_users": 1, "train_users": 3, "generated_now": 8,
        "resumed": 0}
    # what is still empty after the retries is what the summary counts (retries are tested on their own below)
    assert summary["empty_after_retries"] == sum(not x.strip() for c in conts for x in c)
    assert summary["settings"]["generation"]["num_samples"] == 3 and summary["settings"]["seed"] == 42
    rows = _rows(filled)
    assert [r["cold_start"] for r in rows] == [False] * 6 + [True] * 2
    assert [r["history_len"] for r in rows] == [8, 8, 7, 7, 6, 6, 0, 0]  # train items only, all earlier
    assert [r["continuations"] for r in rows] == conts


def test_a_target_prompt_is_the_one_training_renders(scenario, filled, tiny_model_dir, tmp_path):
    """The scenario's prompt of a target equals the prompt of the same item in a records file holding the
    user's train items and that item (read, ordered and trimmed as training reads records)."""
    from usertwin.config import Config, from_mapping
    from usertwin.eval.scenario import read_scenario, target_prompt
    from usertwin.sequences.fit import prompt_hash
    from usertwin.twin.api import Twin

    cfg = from_mapping({"model": str(tiny_model_dir), "max_length": 1024, "crowd_context": "none"}, "test", Config())
    twin = Twin.load(cfg=cfg)
    tok = twin.engine.tokenizer
    scen = read_scenario(scenario, twin)
    train = {r["user_hash"]: r for r in json.loads((scenario / "train.json").read_text())}
    answers = json.loads((scenario / "answers.json").read_text())
    rows = {(r["record"], r["position"]): r for r in _rows(filled)}
    for t in scen.targets:
        rec = json.loads(json.dumps(train.get(t.record.user_id) or {**answers[t.record.index], "task": {
            **answers[t.record.index]["task"], "task_behavior_collections": [{"type": "movie_rating", "data": []}]}}))
        answer = _items([answers[t.record.index]])[t.item.position]
        rec["task"]["task_behavior_collections"][0]["data"].append(answer)
        (tl,) = twin.timelines_of(write_records(tmp_path / f"{t.key}.jsonl", [rec]))
        expected = twin.built_prompt(tl, len(tl.items) - 1, 4).ids
        assert target_prompt(t, twin, 4).ids == expected
        assert rows[t.key]["prompt_hash"] == prompt_hash(expected)
        text = tok.decode(expected)
        assert answer["continuation_prefix"].strip() in text
        assert t.record.profile == {} and "USER_NAME" not in text  # MovieLens has no names; none is made up
    held = _items([answers[0]])
    assert held[0]["continuation_prefix"].strip() not in tok.decode(target_prompt(scen.targets[1], twin, 4).ids)


def test_history_holds_only_earlier_train_items(scenario, tiny_model_dir, tmp_path):
    """A target dated between train items sees only those strictly before it (an item at the same second is
    not earlier); a target without a timestamp sees every train item."""
    import shutil

    from usertwin.config import Config, from_mapping
    from usertwin.eval.scenario import read_scenario, target_prompt
    from usertwin.twin.api import Twin

    scen_dir = tmp_path / "scen"
    shutil.copytree(scenario, scen_dir)
    train = json.loads((scen_dir / "train.json").read_text())
    stamps = [it["timestamp"] for it in _items(train[0:1])]
    test = json.loads((scen_dir / "test_leaderboard.json").read_text())
    first, second = _items(test[0:1])
    first["timestamp"] = stamps[3]  # the second of train items 2, 3 and 4 (real ties): items 0 and 1 are earlier
    del second["timestamp"]
    (scen_dir / "test_leaderboard.json").write_text(json.dumps(test))
    cfg = from_mapping({"model": str(tiny_model_dir), "max_length": 1024, "crowd_context": "none"}, "test", Config())
    twin = Twin.load(cfg=cfg)
    scen = read_scenario(scen_dir, twin)
    assert stamps[0] == stamps[1] < stamps[2] == stamps[3] == stamps[4] < stamps[5] and len(stamps) == 8
    assert [len(target_prompt(t, twin, 4).sample.history) for t in scen.targets[:2]] == [2, 8]


def test_a_killed_run_resumes_to_the_same_file(scenario, filled, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert _predict(scenario, out, tiny_model_dir, "--limit", "4") == 0
    assert len(_rows(out)) == 4 and not (out / "test_leaderboard.json").exists() and not (out / "summary.json").exists()
    with open(out / "generations.jsonl", "a") as f:
        f.write('{"record": 2, "posit')  # a row torn by a kill
    assert _predict(scenario, out, tiny_model_dir) == 0
    rows = _rows(out)
    assert len(rows) == 8 == len({(r["record"], r["position"]) for r in rows})
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["generated_now"], summary["resumed"], summary["complete"]) == (4, 4, True)
    # seeds per (user, target): the resumed run wrote what one uninterrupted run wrote
    assert (out / "test_leaderboard.json").read_text() == (filled / "test_leaderboard.json").read_text()


def test_resuming_with_other_settings_is_refused(scenario, filled, tiny_model_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(filled, out)
    assert _predict(scenario, out, tiny_model_dir, "--num_samples", "2") == 2
    assert (f"{out / 'generations.jsonl'} holds rows of other settings (record 0, user '1'): write to another "
            "folder with -o, or delete that file to start over") in capsys.readouterr().err


def test_a_config_holding_training_settings_resumes(scenario, filled, tiny_model_dir, tmp_path):
    """Settings the scenario does not read (a training config's target choice) are not in the resume
    fingerprint: the same command with a --config file that holds them resumes instead of refusing."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(filled, out)
    (tmp_path / "cfg.yaml").write_text("max_samples_per_user: 2\none_sample_per_user: false\nunit: sample\n")
    assert _predict(scenario, out, tiny_model_dir, "--config", str(tmp_path / "cfg.yaml")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["generated_now"], summary["resumed"]) == (0, 8)


class _Engine:
    """Generates "" until the temperature reaches `warm` (never, for prompts listed in `mute`)."""

    def __init__(self, warm: float, mute=()):
        self.warm, self.mute, self.calls = warm, set(mute), []

    def generate_after(self, prompts, gen, seeds, running=None):
        self.calls.append((round(gen.temperature, 6), gen.num_samples, list(seeds)))
        return [["" if p[0] in self.mute or gen.temperature < self.warm else f"t{gen.temperature:.1f}"]
                * gen.num_samples for p in prompts]


def test_empty_generations_are_retried_hotter_and_counted():
    from usertwin.config import GenerateSettings
    from usertwin.eval.scenario import generate_nonempty

    engine = _Engine(warm=0.5, mute=[2])
    gen = GenerateSettings(temperature=0.1, num_samples=2)
    texts, retries, _ = generate_nonempty(engine, [[1], [2]], gen, [100, 200])
    assert texts == [["t0.5", "t0.5"], ["", ""]]
    assert retries == [4, 6]  # prompt 1: 2 samples x 2 retries; prompt 2: 2 x 3, still empty
    assert engine.calls == [(0.1, 2, [100, 200]), (0.3, 1, [102, 103, 202, 203]), (0.5, 1, [104, 105, 204, 205]),
                            (0.7, 1, [206, 207])]


def test_validate_accepts_missing_continuations_only_with_targets(scenario, capsys):
    test = str(scenario / "test_leaderboard.json")
    assert main(["validate", test]) == 2
    err = capsys.readouterr().err
    assert "8 problems in 4 of 4 records" in err
    assert "record 0 (user '1'), field task.task_behavior_collections[0].data[0].continuation: missing" in err
    assert err.rstrip().endswith("hint: a scenario's test file (test_leaderboard.json: items without a continuation, "
                                 "the targets) is checked with --targets")
    assert main(["validate", test, "--targets"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "OK: 4 records, 4 users, 8 items, 8 of them targets (no continuation)"
    assert main(["validate", str(scenario / "train.json")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "OK: 3 records, 3 users, 21 items"


@pytest.mark.parametrize("extra, message", [
    (["--split", "val"], "--split does not apply to --scenario"),
    (["--pick", "2"], "--pick does not apply to --scenario"),
    (["-o", "SCEN"], "is the scenario folder itself: its test_leaderboard.json would be overwritten"),
    (["--max_samples_per_user", "2"], "--max_samples_per_user does not apply to --scenario: predict --scenario "
                                      "generates for every test item (this setting chooses training targets); "
                                      "drop the flag (a --config file may hold it)"),
    (["--one_sample_per_user"], "--one_sample_per_user does not apply to --scenario"),
    (["--data_file", "x.json"], "--data does not apply to --scenario: predict --scenario reads the users' records "
                                "from the scenario's train.json"),
])
def test_what_does_not_apply_is_refused(scenario, tiny_model_dir, tmp_path, capsys, extra, message):
    extra = [str(scenario) if x == "SCEN" else x for x in extra]
    assert main(["predict", "--scenario", str(scenario), "--model", str(tiny_model_dir), "-o", str(tmp_path / "o"),
                 *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_without_train_json_is_refused(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "test_leaderboard.json").write_text("[]")
    assert main(["predict", "--scenario", str(tmp_path), "--model", str(tiny_model_dir), "-o", str(tmp_path / "o")]) == 2
    assert (f"{tmp_path} is not a scenario folder: {tmp_path / 'train.json'} is missing"
            in capsys.readouterr().err)


def test_a_trained_run_fills_the_scenario(scenario, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(scenario / "train.json"), "--model", str(tiny_model_dir), "--output_dir",
                 str(run), "--max_length", "512", "--no-progress"]) == 0
    out = tmp_path / "out"
    assert main(["predict", "--scenario", str(scenario), "--run", str(run), "-o", str(out), *FLAGS[2:]]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["run"] == str(run) and summary["settings"]["prompt"]["max_length"] == 512
    assert (summary["targets"], summary["cold_start_users"]) == (8, 1)
    assert all(len(it["continuations"]) == 3
               for it in _items(json.loads((out / "test_leaderboard.json").read_text())))


def test_engine_vllm_fills_the_scenario_with_the_prompts_usertwin_renders(scenario, filled, tiny_model_dir,
                                                                          tmp_path, tokenizer, monkeypatch):
    import sys

    from helpers import fake_vllm

    module, made = fake_vllm(tokenizer, "3.5")
    monkeypatch.setitem(sys.modules, "vllm", module)
    out = tmp_path / "out"
    assert _predict(scenario, out, tiny_model_dir, "--engine", "vllm", "--gpu_memory_utilization", "0.6") == 0
    rows, usual = _rows(out), _rows(filled)
    assert [r["continuations"] for r in rows] == [["3.5"] * 3] * 8
    assert [r["prompt_hash"] for r in rows] == [r["prompt_hash"] for r in usual]  # the same prompts
    requests = [r["prompt_token_ids"] for llm in made for reqs, _ in llm.calls for r in reqs]
    assert len(requests) == 8 * 3 and made[0].kw["gpu_memory_utilization"] == 0.6
    assert made[0].kw["max_model_len"] == 1024 + 4  # --max_length + --max_new_tokens
# ---------------------------------------------------------------- the research scripts' inference commands


def _seed_command(scen, model, out, *extra) -> list[str]:
    """inference_vllm_MovieLens.py's command line (MOVIELENS_TRAINING_GUIDE.md), usertwin's command in front."""
    return ["predict", "--checkpoint_dir", str(model), "--scenario_path", str(scen), "--ablation_config",
            "profile_and_history", "--output_dir", str(out), "--tensor_parallel_size", "1",
            "--gpu_memory_utilization", "0.9", "--max_model_len", "16384", "--crowd_context", "none", "--no-progress",
            *extra]


def test_a_seed_inference_command_runs_with_the_seed_scripts_defaults(scenario, tiny_model_dir, tmp_path, capsys):
    """The seeds' flags are taken, the engine-only ones with a note, and the script the scenario path names
    (MovieLens) sets what no flag gives: 5 samples, its sampling, its 32-token cap (also on a given --max_tokens)
    and its 50-item history cap."""
    import shutil

    scen = tmp_path / "RealSelf" / "MovieLens"
    shutil.copytree(scenario, scen)
    out = tmp_path / "out"
    assert main(_seed_command(scen, tiny_model_dir, out, "--max_tokens", "64")) == 0
    err = capsys.readouterr().err
    # the seeds ran vLLM; here the default engine runs, and vLLM's flags say they wait for --engine vllm
    assert ("note: without --engine vllm these do nothing: --gpu_memory_utilization, --tensor_parallel_size, "
            "--max_model_len (usertwin's engine sizes itself: --batch_size)") in err
    assert ("note: the research scripts' flags: doing what inference_vllm_MovieLens.py did (named by the scenario "
            "path) where no flag says otherwise: --num_samples 5 --seed 42 --top_k 50 --repetition_penalty 1.1 "
            "--temperature 0.7 --top_p 0.9 --max_history_items 50; as it did, max_new_tokens 64 -> 32 (it used at "
            "most 32)") in err
    summary = json.loads((out / "summary.json").read_text())
    gen = summary["settings"]["generation"]
    assert {k: gen[k] for k in ("num_samples", "temperature", "top_p", "top_k", "repetition_penalty",
                                "max_new_tokens", "seed")} == {
        "num_samples": 5, "temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1,
        "max_new_tokens": 32, "seed": 42}
    assert summary["settings"]["prompt"]["ablation"] == "profile_and_history"
    assert all(len(it["continuations"]) == 5 for it in _items(json.loads((out / "test_leaderboard.json").read_text())))


def test_seed_flags_given_by_the_user_win_and_are_mapped(scenario, tiny_model_dir, tmp_path, capsys):
    """--max_history_ratings is --max_history_items, --max_retries / --retry_temperature_increment set the
    retries, and a flag given (--num_samples 2 --temperature 0.5) wins over the script's default."""
    out = tmp_path / "out"
    assert main(_seed_command(scenario, tiny_model_dir, out, "--seed_script", "inference_vllm_DMSC.py",
                              "--num_samples", "2", "--temperature", "0.5", "--max_history_ratings", "3",
                              "--max_retries", "1", "--retry_temperature_increment", "0.3")) == 0
    err = capsys.readouterr().err
    assert ("doing what inference_vllm_DMSC.py did (--seed_script) where no flag says otherwise: --seed 42 "
            "--top_k 50 --repetition_penalty 1.1 --top_p 0.9 --max_tokens 256\\n") in err.replace("\n", "\\n")
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert (settings["generation"]["num_samples"], settings["generation"]["temperature"]) == (2, 0.5)
    assert settings["retry"] == {"max_retries": 1, "temperature_step": 0.3, "temperature_cap": 1.5}
    assert max(r["history_len"] for r in _rows(out)) == 3


@pytest.mark.parametrize("argv, message", [
    (["--max_model_len", "8192"], "--max_model_len is a flag of the research scripts' inference, which fills a "
                                  "scenario: pass --scenario_path DIR"),
    (["--scenario", "A", "--scenario_path", "B", "-o", "o"], "--scenario A and --scenario_path B name different "
                                                             "folders: give one"),
    (["--max_retries", "2", "--run", "R"], "--max_retries applies to --scenario only"),
    (["--scenario_path", "S", "--seed_script", "Netflix", "-o", "o"], "--seed_script Netflix: not a seed system; "
                                                                      "one of MovieLens, DMSC, Chameleons"),
])
def test_seed_flags_that_cannot_apply_are_refused(argv, message, capsys):
    assert main(["predict", *argv]) == 2
    assert message in capsys.readouterr().err


def test_context_turns_are_cut_as_the_dialogue_scripts_cut_them():
    """--max_chars_per_turn N: a longer turn keeps N - 3 characters and "..." (inference_vllm_RealPersonaChat.py)."""
    from usertwin.eval.scenario import cut_turns

    turns = [{"source": "A", "content": "abcdefghij"}, {"role": "user", "content": "12345678"}]
    assert cut_turns(turns, 8) == [{"source": "A", "content": "abcde..."}, {"role": "user", "content": "12345678"}]
    assert cut_turns(turns, None) is turns


class _Texts:
    """Generates the text given for the sampling temperature."""

    def __init__(self, by_temperature: dict):
        self.by = by_temperature

    def generate_after(self, prompts, gen, seeds, running=None):
        return [[self.by[round(gen.temperature, 1)]] * gen.num_samples for _ in prompts]


def test_answers_are_cleaned_retried_on_the_cleaned_text_and_kept_raw():
    """A rating off the scale is empty once cleaned, so it is drawn again; the answer is the rating, the raw
    generation (without the half character the token limit cut) is kept beside it."""
    from usertwin.config import GenerateSettings
    from usertwin.eval.answers import clean
    from usertwin.eval.scenario import generate_nonempty

    engine = _Texts({0.7: "6.0", 0.9: "The rating of 4 out of 5 stars for this movie.\ufffd"})
    texts, retries, raw = generate_nonempty(engine, [[1]], GenerateSettings(temperature=0.7), [1],
                                            cleaners=[lambda t: clean(t, "movie_rating", ["1", "2", "3", "4", "5"])])
    assert (texts, retries, raw) == ([["4"]], [1], [["The rating of 4 out of 5 stars for this movie."]])


def test_filled_rating_answers_are_on_the_scale_with_the_raw_text_beside(filled):
    scale = {f"{x / 2:.1f}" for x in range(1, 11)}
    rows = _rows(filled)
    assert all(len(r["raw"]) == 3 and all(x in scale or x == "" for x in r["continuations"]) for r in rows)
    # (a random model writes invalid byte sequences anywhere; a cut character can only be the last one)
    assert not any(x.endswith("\ufffd") for r in rows for x in r["raw"] + r["continuations"])
    summary = json.loads((filled / "summary.json").read_text())
    assert summary["cleaned"] == sum(a != b.strip() for r in rows for a, b in zip(r["continuations"], r["raw"]))


def test_a_seed_config_brings_its_scripts_defaults(scenario, tiny_model_dir, tmp_path, capsys):
    """predict --scenario with a research scripts' config (config_Chameleons.json): the script its name names."""
    cfg = ROOT / "tests" / "fixtures" / "seed_sets" / "seed_config_Chameleons.json"
    assert main(["predict", "--scenario", str(scenario), "--model", str(tiny_model_dir), "-o", str(tmp_path / "o"),
                 "--config", str(cfg), "--crowd_context", "none", "--limit", "1", "--max_tokens", "4",
                 "--max_retries", "0", "--no-progress"]) == 0
    assert ("note: the research scripts' flags: doing what inference_vllm_Chameleons.py did (named by the --config "
            "file) where no flag says otherwise: --num_samples 5 --seed 42 --top_k 50 --repetition_penalty 1.1 "
            "--temperature 0.7 --top_p 0.85 --max_chars_per_turn 300\n") in capsys.readouterr().err
    assert len(_rows(tmp_path / "o")[0]["continuations"]) == 5


def test_the_shared_inference_script_with_dataset(scenario, tiny_model_dir, tmp_path, capsys):
    """inference_vllm.py --dataset NAME (VLLM_INFERENCE_GUIDE.md's commands): that script's own defaults; it found
    the scenario by the name, so without --scenario_path the command says to pass one."""
    argv = ["predict", "--checkpoint_dir", str(tiny_model_dir), "--dataset", "MovieLens", "--ablation_config",
            "context_only", "--output_dir", str(tmp_path / "o"), "--tensor_parallel_size", "4"]
    assert main(argv) == 2
    assert ("--dataset MovieLens: the research scripts found its scenario under /mnt/parallel/GIDigitalTwinBench/; "
            "pass --scenario_path DIR") in capsys.readouterr().err
    assert main([*argv, "--scenario_path", str(scenario), "--crowd_context", "none", "--max_tokens", "4",
                 "--max_retries", "0", "--limit", "1", "--no-progress"]) == 0
    assert ("note: the research scripts' flags: doing what inference_vllm.py --dataset MovieLens did (--dataset) "
            "where no flag says otherwise: --num_samples 5 --seed 42 --top_k 50 --repetition_penalty 1.0 "
            "--temperature 1.2 --top_p 0.9 --max_chars_per_turn 300\n") in capsys.readouterr().err


def test_checkpoint_dir_is_a_run_or_its_best_folder_or_a_model(tmp_path):
    from usertwin.cli.predict import _run_or_model

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "config.yaml").write_text("max_length: 512\n")
    assert _run_or_model(str(run)) == (str(run), None)
    assert _run_or_model(str(run / "best")) == (str(run), None)  # the seeds pointed at the saved model
    assert _run_or_model(str(tmp_path / "hf-model")) == (None, str(tmp_path / "hf-model"))


def test_the_printed_summary_counts_cleaned_answers(tmp_path):
    from usertwin.eval.scenario import summary_lines

    s = {"targets": 8, "users": 4, "cold_start_users": 1, "generated_now": 8, "resumed": 0, "cleaned": 5,
         "retries": 2, "empty_after_retries": 1, "complete": True, "targets_done": 8}
    assert summary_lines(s, tmp_path)[0] == (
        f"8 targets of 4 users (1 cold-start); 8 generated now, 0 from an earlier run; 5 answer(s) cleaned (raw texts "
        f"in {tmp_path / 'generations.jsonl'}); 2 empty answer(s) drawn again, 1 still empty")


def test_continuous_batching_fills_what_static_batching_fills(scenario, filled, tiny_model_dir, tmp_path,
                                                               monkeypatch):
    """--batching static (the filled fixture is auto's choice on a CPU: continuous) and continuous write the
    same test file; continuous decoded every target in one write, at most --batch_size at once."""
    from usertwin.twin import continuous

    runs = []
    original = continuous.decode_all
    monkeypatch.setattr(continuous, "decode_all", lambda *a, **k: runs.append((len(a[1]), a[3])) or original(*a, **k))
    assert _predict(scenario, tmp_path / "c", tiny_model_dir, "--batching", "continuous", "--batch_size", "3") == 0
    assert runs[0] == (8, 3 * 3)  # 8 targets, 3 prompts x 3 samples running (retries follow, if any)
    n = len(runs)
    assert _predict(scenario, tmp_path / "s", tiny_model_dir, "--batching", "static") == 0
    assert len(runs) == n
    for out in (tmp_path / "c", tmp_path / "s"):
        assert (out / "test_leaderboard.json").read_text() == (filled / "test_leaderboard.json").read_text()
