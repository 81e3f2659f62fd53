"""usertwin.twin: a twin loads from its run directory alone and builds the prompts `predict` builds."""

from __future__ import annotations

import json
import shutil

import pytest

from usertwin.cli import main
from usertwin.errors import UsertwinError

USERS = {"10": 14, "11": 10, "12": 8}  # numeric ids, as MovieLens has them


def _raw(uid: str, n: int) -> dict:
    items = [{"continuation_prefix": f"Movie {(i + int(uid)) % 6} (2000) (Drama): ",
              "continuation": f"{(i * int(uid)) % 5 + 1}.0", "timestamp": 1_000_000 + 60 * i} for i in range(n)]
    return {"user_hash": uid, "user": {"profile": {"name": f"user {uid}", "age": int(uid) + 10}},
            "task": {"description": "Predict ratings.", "language": "en",
                     "task_behavior_collections": [{"type": "movie_rating", "data": items}]}}


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir):
    """A trained run (training writes twin.json), its test predictions, and the records file
    deleted afterwards; a copy of the records stays elsewhere for lookups by id."""
    tmp = tmp_path_factory.mktemp("twin")
    data = tmp / "r.jsonl"
    data.write_text("".join(json.dumps(_raw(u, n)) + "\n" for u, n in USERS.items()))
    run = tmp / "run"
    assert main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output_dir", str(run),
                 "--max_length", "160", "--learning_rate", "0.01", "--no-progress"]) == 0
    assert (run / "twin.json").is_file()  # written by training
    assert main(["predict", "--run", str(run), "--no-progress", "--max_new_tokens", "4", "--pick", "0"]) == 0
    copy = tmp / "copy.jsonl"
    shutil.copy(data, copy)
    data.unlink()
    return run, copy


@pytest.fixture
def no_prepare(monkeypatch):
    import usertwin.sequences.prepare

    def refuse(*a, **kw):
        raise AssertionError("a twin must not prepare its training data")

    monkeypatch.setattr(usertwin.sequences.prepare, "prepare", refuse)


def test_twin_facts_are_written_with_the_run(made):
    run, _ = made
    facts = json.loads((run / "twin.json").read_text())
    assert facts == {"rating_scale": ["1.0", "2.0", "3.0", "4.0", "5.0"], "task": "Predict ratings.",
                     "language": "en", "role": "user", "collections": ["movie_rating"]}


def test_loads_from_the_run_alone_after_the_data_is_gone(made, no_prepare):
    from usertwin import Twin

    run, _ = made
    twin = Twin.load(run)
    assert twin.engine.scale == ["1.0", "2.0", "3.0", "4.0", "5.0"]
    history = [{"continuation_prefix": "Movie 1 (2000) (Drama): ", "continuation": "4.0"}]
    dist = twin.rating_distribution(profile={"name": "someone"}, history=history, item="Movie 2 (2000) (Drama): ")
    assert sum(dist["probs"]) == pytest.approx(1, abs=1e-5)
    assert isinstance(twin.predict(profile={}, history=[], item="Movie 2 (2000) (Drama): ", max_new_tokens=3), str)
    with pytest.raises(UsertwinError, match=r"user '10'.*without records.*records=PATH"):
        twin.predict(user="10", item="Movie 2 (2000) (Drama): ")


def test_prompt_of_a_test_target_equals_the_one_predict_used(made, no_prepare):
    from usertwin import Twin
    from usertwin.sequences.fit import prompt_hash

    run, records = made
    twin = Twin.load(run, records=records)
    rows = [json.loads(x) for x in (run / "predictions-test.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and any(r["history_len"] < r["target_index"] for r in rows)  # some history was cut
    for r in rows:
        assert prompt_hash(twin.prompt(r["user"], target=r["target_index"], room=4)) == r["prompt_hash"]


def test_described_user_gets_the_prompt_of_the_looked_up_user(made):
    from usertwin import Twin

    run, records = made
    twin = Twin.load(run, records=records)
    raw = _raw("11", USERS["11"])
    profile = raw["user"]["profile"]
    items = raw["task"]["task_behavior_collections"][0]["data"]
    new = "Movie 5 (2000) (Drama): "
    assert (twin.prompt(user="11", profile=profile, history=items, item=new)
            == twin.prompt(user="11", item=new))
    # an earlier target: its items before it as history, either way
    assert twin.prompt(user="11", profile=profile, history=items[:6], item=items[6]["continuation_prefix"]) \
        == twin.prompt(user="11", target=6)
    # history in any order is read in time order, as training reads it
    assert twin.prompt(user="11", profile=profile, history=items[::-1], item=new) == twin.prompt(user="11", item=new)


def test_unknown_and_integer_user_ids(made):
    from usertwin import Twin

    run, records = made
    twin = Twin.load(run, records=records)
    assert twin.prompt(user=11, item="Movie 1 (2000) (Drama): ") == twin.prompt(user="11", item="Movie 1 (2000) (Drama): ")
    with pytest.raises(UsertwinError, match=r"user 99 is not in .*copy\.jsonl \(3 users, e\.g\. '10'"):
        twin.predict(user=99, item="x")
    with pytest.raises(UsertwinError, match=r"user 'nobody' is not in"):
        twin.score(user="nobody", item="x", continuation="4.0")
    with pytest.raises(UsertwinError, match=r"user '11' has items 0\.\.9, not target 10"):
        twin.prompt(user="11", target=10)


def test_run_without_twin_facts_needs_records(made, tmp_path, no_prepare):
    from usertwin import Twin

    run, records = made
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    (old / "twin.json").unlink()
    without = Twin.load(old)  # the weights load; what needs the data's facts says what to pass
    with pytest.raises(UsertwinError, match=r"twin\.json is missing.*records=PATH.*r\.jsonl"):
        without.rating_distribution(profile={}, history=[], item="Movie 1 (2000) (Drama): ")
    twin = Twin.load(old, records=records)  # the scale is read from the records instead
    assert twin.engine.scale == ["1.0", "2.0", "3.0", "4.0", "5.0"]
    assert twin.facts == json.loads((run / "twin.json").read_text())


def test_bad_history_names_the_field(made):
    from usertwin import Twin

    twin = Twin.load(made[0])
    with pytest.raises(UsertwinError, match=r"history passed to the twin.*data\[0\]\.continuation: missing") as e:
        twin.prompt(profile={}, history=[{"continuation_prefix": "Movie 1: "}], item="Movie 2: ")
    assert "on-error" not in str(e.value) and "usertwin-twin-" not in str(e.value)  # no scratch file, no CLI flag
    with pytest.raises(UsertwinError, match="must be JSON data"):
        twin.prompt(profile={"born": object()}, history=[{"continuation": "4.0"}], item="Movie 2: ")


# ---------------------------------------------------------------- lists of requests, generation, bad input

REQUESTS = [dict(user="10", item="Movie 2 (2000) (Drama): "), dict(user=12, item="Movie 4 (2000) (Drama): "),
            dict(profile={"name": "new"}, history=[{"continuation_prefix": "Movie 1 (2000) (Drama): ",
                                                    "continuation": "5.0"}], item="Movie 3 (2000) (Drama): ")]


def test_lists_equal_singles(made):
    from usertwin import Twin

    run, records = made
    twin = Twin.load(run, records=records)
    many = twin.rating_distributions(REQUESTS, batch_size=2)
    for r, d in zip(REQUESTS, many):
        assert d["probs"] == pytest.approx(twin.rating_distribution(**r)["probs"], abs=1e-5)
    scored = twin.scores([dict(r, continuation="3.0") for r in REQUESTS], batch_size=3)
    assert scored == pytest.approx([twin.score(continuation="3.0", **r) for r in REQUESTS], abs=1e-4)
    greedy = twin.generate_many(REQUESTS, max_new_tokens=4, batch_size=2)
    assert greedy == [twin.generate(**r, max_new_tokens=4) for r in REQUESTS]
    # sampled: request j draws with seed + j * MAX_SAMPLES + i in a list, so a single call with that seed agrees
    from usertwin.config import MAX_SAMPLES

    sampled = twin.generate_many(REQUESTS, seed=7, temperature=1.0, num_samples=3, max_new_tokens=5, batch_size=2)
    assert [len(s) for s in sampled] == [3, 3, 3]
    for j, r in enumerate(REQUESTS):
        assert twin.generate(**r, seed=7 + MAX_SAMPLES * j, temperature=1.0, num_samples=3, max_new_tokens=5) == \
            sampled[j]
    again = twin.generate_many(REQUESTS, seed=7, temperature=1.0, num_samples=3, max_new_tokens=5, batch_size=3)
    assert again == sampled  # another batching, the same samples


def test_sampling_is_seeded_per_sample(made):
    from usertwin import Twin

    twin = Twin.load(made[0], records=made[1])
    kw = dict(user="11", item="Movie 1 (2000) (Drama): ", temperature=1.5, max_new_tokens=8)
    four = twin.generate(**kw, num_samples=4, seed=3)
    assert len(four) == 4 and len(set(four)) > 1  # distinct samples
    assert twin.generate(**kw, num_samples=1, seed=5) == four[2:3]  # sample i is seed + i
    assert twin.generate(user="11", item="Movie 1 (2000) (Drama): ", num_samples=3, max_new_tokens=4,
                         temperature=0) == \
        [twin.predict(user="11", item="Movie 1 (2000) (Drama): ", max_new_tokens=4)] * 3  # greedy: one text
    # several samples without a temperature are sampled at the default one
    assert twin.generate(user="11", item="Movie 1 (2000) (Drama): ", num_samples=3, max_new_tokens=8, seed=3) == \
        twin.generate(user="11", item="Movie 1 (2000) (Drama): ", num_samples=3, max_new_tokens=8, seed=3,
                      temperature=0.7)


def test_lora_is_merged_at_load_and_scores_stay_equal(made):
    from usertwin import Twin
    from usertwin.twin.engine import Engine, load_twin_model

    run, records = made
    twin = Twin.load(run, records=records)
    assert not hasattr(twin.engine.model, "peft_config")  # merged: a plain transformers model
    unmerged = load_twin_model(twin.cfg, run, merge=False)
    assert hasattr(unmerged, "peft_config")
    plain = Twin(Engine(twin.cfg, unmerged, twin.engine.tokenizer, twin.engine.scale), twin.facts,
                 list(twin._by_user.values()), records)
    plain.engine.crowd = twin.engine.crowd  # the other users' ratings, for new items' crowd context
    for r in REQUESTS:
        assert twin.score(continuation="4.0", **r) == pytest.approx(plain.score(continuation="4.0", **r), abs=1e-5)
        assert twin.rating_distribution(**r)["probs"] == pytest.approx(plain.rating_distribution(**r)["probs"],
                                                                      abs=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda t: t.predict(user=["10"], item="x"), r"user= takes a user id"),
    (lambda t: t.predict(user="10", item=5), r"item= takes a string, got int"),
    (lambda t: t.predict(profile="old", history=[], item="x"), r"profile= takes a dict"),
    (lambda t: t.predict(profile={}, history="4.0", item="x"), r"history= takes a list"),
    (lambda t: t.predict(user="10", item="x", context="hi"), r"context= takes a list of turns"),
    (lambda t: t.predict(user="10", item="x", context=[{"content": "hi"}]), r"context\[0\] must be a turn"),
    (lambda t: t.generate_many([{"user": "10", "itme": "x"}]), r"request 0: unknown key\(s\) itme"),
    (lambda t: t.generate_many({"user": "10"}), r"pass a list of requests"),
    (lambda t: t.generate(user="10", item="x", temprature=1), r"unknown generation setting 'temprature'; did you mean 'temperature'"),
    (lambda t: t.generate(user="10", item="x", num_samples=0), r"num_samples.*between 1 and 1000000"),
    (lambda t: t.scores([{"user": "10", "item": "x", "continuation": 4.0}]), r"continuation= takes a string"),
    (lambda t: t.predict(user="10", item="Movie " * 200), r"user '10'.*needs \d+ tokens even without history.*"
                                                          r"max_length 160.*shorter item"),
    # chat and seeds are checked as generate's settings are (issue 28: raw TypeError / ValueError before)
    (lambda t: t.chat([{"role": "user", "content": "hi"}], user="10", foo=1), r"unknown generation setting 'foo'"),
    (lambda t: t.chat([{"role": "user", "content": "hi"}], user="10", temperature="hot"), r"temperature' must be float"),
    (lambda t: t.chat([{"role": "user", "content": "hi"}], user="10", max_new_tokens=0), r"must be at least 1, got 0"),
    (lambda t: t.chat([{"role": "user", "content": "hi"}], user="10", temperature=-1), r"must be at least 0, got -1"),
    (lambda t: t.generate(user="10", item="x", seed="abc"), r"key 'seed' must be int or null, got str"),
    (lambda t: t.generate(user="10", item="x", seed=-1), r"key 'seed' must be between 0 and"),
    (lambda t: t.generate_many([{"user": "10", "item": "x"}], seed=1.5), r"key 'seed' must be int or null, got float"),
    # a lone surrogate is valid JSON but no text: refused naming the field, never the tokenizer's TypeError
    (lambda t: t.rating_distribution(user="10", item="Movie \ud800: "), r"item: not valid text.*surrogate.*character 6"),
    (lambda t: t.predict(profile={"name": "a\ud800"}, history=[], item="x"), r"profile\.name: not valid text"),
    (lambda t: t.score(user="10", item="x", continuation="4\udfff"), r"continuation: not valid text"),
    (lambda t: t.chat([{"role": "user", "content": "hi \ud800"}], user="10"), r"messages\[0\]\.content: not valid"),
    (lambda t: t.predict(user="10", item="x", context=[{"role": "user", "content": "\ud800"}]),
     r"context\[0\]\.content: not valid text"),
])
def test_bad_requests_say_what_to_pass(made, call, message):
    from usertwin import Twin

    twin = Twin.load(made[0], records=made[1])
    with pytest.raises(UsertwinError, match=message):
        call(twin)
