"""Generation parity with the seeds' vLLM scripts (num_samples, top_k, repetition_penalty, seed, max_tokens),
every sample scored by evaluate, and --on_error skip leaving out a bad item rather than its user."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from helpers import write_records

from usertwin.cli import build_parser, main
from usertwin.config import SAMPLING_TEMPERATURE, Config, GenerateSettings, generate_settings
from usertwin.data import records as R
from usertwin.errors import UsertwinError
from usertwin.twin.engine import Engine
from usertwin.twin.sampling import RepetitionPenalty

F = "task.task_behavior_collections"

# ---------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def engine(tokenizer):
    return Engine(Config(max_length=128), tiny_model("qwen3", vocab_size=len(tokenizer)), tokenizer)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(t, add_special_tokens=False)["input_ids"]
            for t in ("Toy Story (1995) (Animation, Comedy): ", "the review")]


def gen(**kw) -> GenerateSettings:
    return GenerateSettings(max_new_tokens=5, **kw)


def test_num_samples_alone_samples_at_the_default_temperature(engine, prompts):
    assert gen(num_samples=3).sampling_notice() == (
        f"note: --num_samples 3 without --temperature: sampling at temperature {SAMPLING_TEMPERATURE} (pass "
        "--temperature T to choose, 0 for greedy copies)")
    assert gen(num_samples=1).sampling_notice() is None and gen(num_samples=3, temperature=0.0).sampling_notice() is None
    out = engine.generate_texts(prompts, gen(num_samples=3, seed=4))
    assert [len(row) for row in out] == [3, 3]
    assert all(len(set(row)) == 3 for row in out)  # sampled, not one greedy text three times
    assert out == engine.generate_texts(prompts, gen(num_samples=3, seed=4, temperature=SAMPLING_TEMPERATURE))
    greedy = engine.generate_texts(prompts, gen(num_samples=1))
    assert greedy == engine.generate_texts(prompts, gen(num_samples=1, temperature=0.0))  # one sample: greedy


def test_sample_i_draws_with_seed_plus_i_whatever_the_number_of_samples(engine, prompts):
    three = engine.generate_texts(prompts, gen(num_samples=3, seed=10, temperature=0.9, top_p=0.9))
    for i in range(3):
        alone = engine.generate_texts(prompts, gen(num_samples=1, seed=10 + i, temperature=0.9, top_p=0.9))
        assert [row[i] for row in three] == [row[0] for row in alone]
    assert engine.generate_texts(prompts[1:], gen(num_samples=3, seed=10, temperature=0.9, top_p=0.9)) == three[1:]
    assert engine.generate_texts(prompts, gen(num_samples=3, seed=11, temperature=0.9, top_p=0.9)) != three


def test_top_k_1_is_greedy(engine, prompts):
    greedy = engine.generate_texts(prompts, gen(temperature=0.0))
    assert engine.generate_texts(prompts, gen(num_samples=2, temperature=1.5, top_k=1, seed=3)) == [r * 2 for r in greedy]
    assert engine.generate_texts(prompts, gen(num_samples=2, temperature=1.5, seed=3)) != [r * 2 for r in greedy]


@pytest.mark.parametrize("n_prompts", [1, 3, 5])
def test_static_decoding_gives_what_dynamic_decoding_gives(tokenizer, prompts, n_prompts, monkeypatch):
    """--decode static (a static KV cache; on a GPU compiled into CUDA graphs) pads batches to a bucket with filler
    rows and prompts to a width step: greedy, seeded sampling, repetition penalty and ids are unchanged."""
    model = tiny_model("qwen3", vocab_size=len(tokenizer))
    static, dynamic = (Engine(Config(max_length=128), model, tokenizer, decode=d) for d in ("static", "dynamic"))
    batch = (prompts * 3)[:n_prompts]
    batch[-1] = batch[-1] + [7] * 70  # past the width step: two prompt widths
    settings = [gen(temperature=0.0), gen(num_samples=3, seed=5, temperature=0.9, top_k=20, top_p=0.9),
                gen(num_samples=2, seed=1, temperature=0.8, repetition_penalty=1.3)]
    kinds = []
    real_generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: kinds.append(
        (kw["input_ids"].shape, kw.get("cache_implementation"))) or real_generate(**kw))
    for g in settings:
        assert static.generate_ids(batch, g, seeds=[3] * len(batch)) == \
            dynamic.generate_ids(batch, g, seeds=[3] * len(batch))
    static_shapes = [shape for shape, kind in kinds if kind == "static"]
    assert len(static_shapes) == len(settings) and all(kind in ("static", None) for _, kind in kinds)
    rows = [s[0] for s in static_shapes]
    assert all(r & (r - 1) == 0 for r in rows) and all(s[1] % 64 == 0 for s in static_shapes)  # buckets


def test_decode_auto_is_static_only_on_a_gpu_for_long_jobs_at_small_batches(tokenizer, monkeypatch):
    model = tiny_model("qwen3", vocab_size=len(tokenizer))
    auto = Engine(Config(max_length=128), model, tokenizer)
    assert auto.decoding == "auto" and not auto.static

    def job(**kw):
        return GenerateSettings(**({"max_new_tokens": 64, "batch_size": 32} | kw))
    assert auto.plan_decode(1000, job()) == "dynamic" and not auto.static  # a CPU: no CUDA graphs
    monkeypatch.setattr(Engine, "device", property(lambda self: torch.device("cuda")))
    assert auto.plan_decode(1000, job()) == "static" and auto.static  # 32 batches x 64 steps = 2,048 steps
    assert auto.plan_decode(900, job()) == "dynamic" and not auto.static  # 29 x 64 = 1,856: compiling would not pay
    assert auto.plan_decode(10_000, job(batch_size=128)) == "dynamic"  # wide batches: static lost at 256
    assert auto.plan_decode(10_000, job(num_samples=4, temperature=0.7)) == "dynamic"  # 32 x 4 = 128 rows
    assert auto.plan_decode(10_000, job(num_samples=4, temperature=0.0)) == "static"  # greedy: one row a prompt
    for fixed in ("dynamic", "static"):  # asked for: kept, whatever the job
        engine = Engine(Config(max_length=128), model, tokenizer, decode=fixed)
        assert engine.plan_decode(1, job()) == fixed and engine.static == (fixed == "static")


def test_decode_flag_and_a_wrong_decode_is_refused(engine, tokenizer):
    with pytest.raises(UsertwinError, match="decode must be one of auto, dynamic, static, not 'fast'"):
        Engine(Config(), engine.model, tokenizer, decode="fast")
    for command in (["predict"], ["simulate", "--run", "r", "-o", "o.jsonl", "--all"], ["serve", "--run", "r"]):
        assert build_parser().parse_args([*command, "--decode", "static"]).decode == "static"
        assert build_parser().parse_args(command).decode == "auto"
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, "--decode", "fast"])


def test_repetition_penalty_counts_the_rows_own_tokens_not_its_padding():
    # row 0: prompt [1, 2, 3]; row 1: prompt [4] after two padding tokens 0
    penalty = RepetitionPenalty(2.0, [[1, 1, 1], [0, 0, 1]])
    scores = torch.tensor([[4.0, 4.0, -4.0, 4.0, 4.0, 4.0], [4.0, 4.0, -4.0, 4.0, 4.0, 4.0]])
    out = penalty(torch.tensor([[1, 2, 3, 5], [0, 0, 4, 2]]), scores)  # one generated token each: 5 and 2
    assert out.tolist() == [[4.0, 2.0, -8.0, 2.0, 4.0, 2.0], [4.0, 4.0, -8.0, 4.0, 2.0, 4.0]]


def test_repetition_penalty_changes_greedy_generation(engine, prompts):
    plain = engine.generate_ids(prompts, GenerateSettings(max_new_tokens=12))
    penalised = engine.generate_ids(prompts, GenerateSettings(max_new_tokens=12, repetition_penalty=100.0))
    assert penalised != plain
    for prompt, (ids,) in zip(prompts, penalised):  # a huge penalty: no token of the prompt or the text repeats
        body = [t for t in ids if t != engine.eot_id]
        assert len(set(body)) == len(body) and not set(body) & set(prompt)


def test_max_tokens_is_max_new_tokens_and_seed_is_predicts_sampling_seed():
    args = build_parser().parse_args(["predict", "--max_tokens", "7", "--seed", "3", "--random_seed", "9",
                                      "--top_k", "50", "--repetition_penalty", "1.1"])
    g = generate_settings(args)
    assert (g.max_new_tokens, g.seed, g.top_k, g.repetition_penalty) == (7, 3, 50, 1.1)
    assert args.cfg__seed == 9  # the config's seed (split, distractors) keeps its other name
    sim = build_parser().parse_args(["simulate", "--run", "R", "--all", "-o", "o", "--seed", "5"])
    assert generate_settings(sim).seed == 5


def test_predict_cli_num_samples_without_temperature(tmp_path, tiny_model_dir, capsys):
    data = write_records(tmp_path / "r.jsonl", [
        {"user_hash": f"u{u}", "task": {"description": "Write a review.", "task_behavior_collections": [
            {"type": "movie_review", "data": [{"continuation_prefix": f"Movie {i}: ", "continuation": f"nice {i}",
                                               "timestamp": 1_000_000 + i} for i in range(4)]}]}}
        for u in range(2)])
    base = ["predict", "--data", str(data), "--model", str(tiny_model_dir), "--max_length", "128", "--no-progress",
            "--pick", "0", "--max_tokens", "4"]
    assert main([*base, "--num_samples", "3", "--seed", "5", "-o", str(tmp_path / "a.jsonl")]) == 0
    captured = capsys.readouterr()
    assert "note: --num_samples 3 without --temperature: sampling at temperature 0.7" in captured.err
    assert "Traceback" not in captured.err
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [len(r["predictions"]) for r in rows] == [3, 3]
    assert main([*base, "--temperature", "0.7", "--seed", "7", "-o", str(tmp_path / "b.jsonl")]) == 0
    again = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["predictions"] for r in again] == [[r["predictions"][2]] for r in rows]  # sample 2 of seed 5


# ---------------------------------------------------------------- evaluate: every sample


def test_evaluate_scores_every_sample_mean_and_best_of_n(tmp_path, capsys):
    rows = [{"user": "a", "target_index": 3, "language": "en", "collection": "review",
             "reference": "the cat sat on the mat", "predictions": ["the cat sat on the mat", "zzz qqq"],
             "loss": 1.0, "n_tokens": 5},
            {"user": "b", "target_index": 2, "language": "en", "collection": "review",
             "reference": "a dog ran home fast", "predictions": ["xx yy", "uu vv", "a dog ran home fast"],
             "loss": 2.0, "n_tokens": 5}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["evaluate", str(path), "-o", str(tmp_path / "m.json")]) == 0
    text = json.loads((tmp_path / "m.json").read_text())["overall"]["text"]["en"]
    # a: samples score 100 and 0; b: 0, 0 and 100
    expected = {"samples": 2.5}
    for key in ("bleu", "chrf", "rouge_l"):
        expected[f"{key}_mean"] = (50 + 100 / 3) / 2
        expected[f"{key}_best"] = 100.0
    assert {k: text[k] for k in expected} == pytest.approx(expected, abs=1e-9)
    table = capsys.readouterr().out
    assert "chrF mean" in table and "chrF best" in table and "41.67" in table


def test_one_sample_per_target_adds_no_sample_metrics(tmp_path):
    from usertwin.eval.metrics import evaluate_rows

    rows = [{"user": "a", "target_index": 0, "language": "en", "reference": "x y", "predictions": ["x y"]}]
    assert "chrf_best" not in evaluate_rows(rows)["overall"]["text"]["en"]


# ---------------------------------------------------------------- --on_error skip: the item, not the user


def _item(i, **bad):
    return {"continuation_prefix": f"Movie {i}: ", "continuation": f"{1 + i % 5}.0", "timestamp": 1_000_000 + i,
            **bad}


def _skip_file(tmp_path):
    good = lambda u, n: {"user_hash": u, "task": {"task_behavior_collections": [  # noqa: E731
        {"type": "movie_rating", "data": [_item(i) for i in range(n)]}]}}
    u1 = {"user_hash": "u1", "task": {"task_behavior_collections": [
        {"type": "movie_rating", "data": [_item(0), _item(1, continuation=""), _item(2)]},
        {"type": "movie_review", "data": [_item(3, timestamp=True), _item(4, context="hi")]}]}}
    u2 = {"user_hash": "u2", "task": {"task_behavior_collections": [  # every item bad: nothing left of u2
        {"type": "movie_rating", "data": [_item(0, continuation=3)]}]}}
    no_id = {"task": {"task_behavior_collections": [{"type": "movie_rating", "data": [_item(0)]}]}}
    return write_records(tmp_path / "d.jsonl", [good("u0", 3), u1, u2, no_id, ["not", "an", "object"]])


def test_skip_leaves_out_the_bad_items_and_keeps_their_user(tmp_path):
    path = _skip_file(tmp_path)
    loaded = R.load(path, on_error="skip")
    assert [(r.index, r.user_id, [it.position for it in r.items]) for r in loaded.records] == [
        (0, "u0", [0, 1, 2]), (1, "u1", [0, 2])]
    assert loaded.n_items == 5
    assert [(p.line, p.record, p.user, p.item, p.field, p.message) for p in loaded.skipped_items] == [
        (2, 1, "u1", 1, f"{F}[0].data[1].continuation", "empty continuation"),
        (2, 1, "u1", 3, f"{F}[1].data[0].timestamp", "cannot read true: True is a boolean, not a timestamp"),
        (2, 1, "u1", 4, f"{F}[1].data[1].context", "must be a list of turns, got a string (\"hi\")"),
    ]
    assert [(p.record, p.user, p.item, p.field) for p in loaded.skipped] == [
        (2, "u2", None, f"{F}[0].data[0].continuation"),
        (3, None, None, "user"),
        (4, None, None, None),
    ]
    assert str(loaded.skipped_items[0]) == (
        f"{path}:2, record 1 (user 'u1'), item 1, field {F}[0].data[1].continuation: empty continuation")


def test_stop_still_names_every_bad_item(tmp_path):
    path = _skip_file(tmp_path)
    with pytest.raises(UsertwinError) as err:
        R.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: 6 problems in 4 of 5 records:")
    assert f"record 1 (user 'u1'), field {F}[0].data[1].continuation: empty continuation" in message
    assert "item 1" not in message  # a stopped load lists fields as before


def test_validate_and_prepare_print_the_skipped_items(tmp_path, tokenizer_dir, capsys):
    path = _skip_file(tmp_path)
    report = R.validate_file(path, on_error="skip")
    lines = report.summary_lines()
    assert lines[0] == "OK: 2 records, 2 users, 5 items"
    at = lines.index("skipped 3 bad items of 1 kept user:")
    assert lines[at + 1] == (f"  {path}:2, record 1 (user 'u1'), item 1, field {F}[0].data[1].continuation: "
                             "empty continuation")
    assert lines[at - 4] == "skipped 3 bad records:"
    assert main(["prepare", "--data", str(path), "--model", str(tokenizer_dir), "--on_error", "skip",
                 "--cache_dir", str(tmp_path / "c"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 record(s) skipped (--on_error skip)" in out
    assert "3 item(s) of 1 kept user(s) skipped (--on_error skip):" in out
    assert f"  {path}:2, record 1 (user 'u1'), item 4, field {F}[1].data[1].context: must be a list" in out


def test_a_character_cut_by_the_token_limit_is_dropped_not_written_as_a_replacement(engine, tokenizer):
    ids = tokenizer("好的电影", add_special_tokens=False)["input_ids"]
    assert len(ids) == 6  # byte-level: the last token holds the end of 电 and all of 影
    cut = ids[:-1]  # max_new_tokens ended inside 电
    assert tokenizer.decode(cut) == "好的\ufffd"
    assert engine.decode(cut) == "好的" and engine.decode(ids[:2]) == "好"
    assert engine.decode(ids) == "好的电影" and engine.decode(cut + [engine.eot_id]) == tokenizer.decode(cut).strip()
