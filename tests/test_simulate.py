"""usertwin simulate on a tiny trained run: items and rollouts, rows per (user, step), resume, seeds."""

from __future__ import annotations

import json
import re

import pytest
from helpers import ROOT, write_records

from usertwin.cli import main

RATED = ("r1", "r2")  # users whose last item is a rating
WRITER = "w1"  # a user whose last item is a review


def _record(uid: str, n: int, last_review: bool) -> dict:
    ratings = [{"continuation_prefix": f"Movie {i % 5} (2000) (Drama): ", "continuation": f"{i % 5 + 1}.0",
                "timestamp": 1_000_000 + 60 * i} for i in range(n)]
    reviews = [{"continuation_prefix": f"Movie {i % 5} (2000) (Drama): ", "continuation": f"the review {i}",
                "timestamp": 1_000_030 + 60 * i + (10_000 if last_review else -10_000)} for i in range(2)]
    return {"user_hash": uid, "user": {"profile": {"name": uid}},
            "task": {"description": "Rate and review movies.", "language": "en",
                     "task_behavior_collections": [{"type": "movie_rating", "data": ratings},
                                                   {"type": "movie_review", "data": reviews}]}}


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("sim")
    data = write_records(tmp / "r.jsonl", [_record(u, 8, u == WRITER) for u in (*RATED, WRITER)])
    run = tmp / "run"
    assert main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output_dir", str(run),
                 "--max_length", "192", "--learning_rate", "0.01", "--no-progress"]) == 0
    items = tmp / "items.jsonl"
    items.write_text("".join(json.dumps({"continuation_prefix": f"Movie {k} (2001) (Comedy): ",
                                         "type": "movie_rating"}) + "\n" for k in range(3)))
    return run, data, items


def _sim(made, out, *extra) -> list[dict]:
    run, data, _ = made
    assert main(["simulate", "--run", str(run), "--data", str(data), "-o", str(out), "--no-progress",
                 "--max_new_tokens", "5", *extra]) == 0
    return [json.loads(x) for x in out.read_text().splitlines()]


def test_items_give_every_user_a_rating_distribution(made, tmp_path):
    rows = _sim(made, tmp_path / "o.jsonl", "--all", "--items", str(made[2]), "--num_samples", "2")
    assert len(rows) == 3 * 3 and {(r["user"], r["step"]) for r in rows} == {(u, s) for u in (*RATED, WRITER)
                                                                          for s in (1, 2, 3)}
    for r in rows:
        assert r["mode"] == "items" and r["collection"] == "movie_rating" and r["item"].startswith("Movie ")
        assert sum(r["rating"]["probs"]) == pytest.approx(1, abs=1e-5)
        assert r["rating"]["scale"] == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert len(r["generations"]) == 2 and len(r["ratings"]) == 2 and "continuation" not in r
        assert r["history_len"] > 0 and r["user_items"] == 10 and r["already_rated"] is False


def test_items_the_user_already_rated_are_flagged(made, tmp_path):
    items = tmp_path / "seen.jsonl"
    items.write_text(json.dumps({"continuation_prefix": "Movie 3 (2000) (Drama): ", "type": "movie_rating"}) + "\n"
                     + json.dumps({"continuation_prefix": "Movie 3 (2000) (Drama): ", "type": "movie_review"}) + "\n"
                     + json.dumps({"continuation_prefix": "Movie 9 (2000) (Drama): ", "type": "movie_rating"}) + "\n")
    rows = _sim(made, tmp_path / "o.jsonl", "--users", "r1", "--items", str(items), "--max_new_tokens", "2")
    # r1 rated Movie 3 and reviewed Movies 0 and 1 only
    assert [r["already_rated"] for r in rows] == [True, False, False]


def test_rollout_writes_users_x_steps_and_resumes_after_a_torn_line(made, tmp_path):
    out = tmp_path / "roll.jsonl"
    args = ["--users", ",".join(RATED), "--items", str(made[2]), "--steps", "3", "--batch_size", "1"]
    whole = _sim(made, tmp_path / "whole.jsonl", *args)
    assert len(whole) == 2 * 3
    _sim(made, out, *args, "--limit", "3")
    text = out.read_text()
    out.write_text(text[:len(text) - 20])  # the third row torn by a kill
    rows = _sim(made, out, *args)
    assert len(rows) == 6 == len({(r["user"], r["step"]) for r in rows})
    key = lambda r: (r["user"], r["step"])  # noqa: E731
    assert sorted(rows, key=key) == sorted(whole, key=key)  # greedy: the resumed rollout is the same rollout
    for r in rows:
        assert r["mode"] == "rollout" and r["continuation"] in r["generations"] + ["1.0", "2.0", "3.0", "4.0", "5.0"]


def test_rollout_history_grows_with_the_generations(made, tmp_path):
    from usertwin.data.records import Item
    from usertwin.sequences.fit import prompt_hash
    from usertwin.twin import Twin

    rows = _sim(made, tmp_path / "w.jsonl", "--users", WRITER, "--steps", "2", "--temperature", "1.0",
                "--max_new_tokens", "6", "--seed", "1")
    first, second = sorted(rows, key=lambda r: r["step"])
    assert first["collection"] == second["collection"] == "movie_review" and first["item"] == ""
    twin = Twin.load(made[0], records=made[1])
    tl = twin.timeline(WRITER)
    grown = type(tl)(tl.user_id, tl.profile, tl.task, tl.language,
                     tl.items + [Item(first["continuation"], collection="movie_review")])
    ids = twin.prompt_at(twin.with_new_item(grown, ""), len(grown.items), room=6)
    assert prompt_hash(ids) == second["prompt_hash"]  # the real items, the step-1 item, the new item
    assert prompt_hash(twin.prompt(user=WRITER, item="", room=6)) == first["prompt_hash"] != second["prompt_hash"]
    if first["continuation"]:
        assert first["continuation"] in twin.engine.tokenizer.decode(ids)


@pytest.mark.parametrize("rollout", [False, True], ids=["items", "rollout"])
def test_continuous_batching_writes_the_rows_static_batching_writes(made, tmp_path, monkeypatch, rollout):
    """--batching continuous (rows join as others finish, chunks of QUEUED batches) and static give the same
    rows, the generations included; continuous ran its prompts through the continuous decoder."""
    from usertwin.twin import continuous

    runs = []
    original = continuous.decode_all
    monkeypatch.setattr(continuous, "decode_all", lambda *a, **k: runs.append(a[3]) or original(*a, **k))
    what = ["--items", str(made[2]), *(["--steps", "2"] if rollout else [])]
    common = ["--all", *what, "--temperature", "1.0", "--num_samples", "2", "--seed", "3", "--batch_size", "2",
              "--max_new_tokens", "8"]
    fast = _sim(made, tmp_path / "c.jsonl", *common, "--batching", "continuous")
    assert runs and set(runs) == {4}  # 2 prompts x 2 samples running at most
    assert len(fast) == (6 if rollout else 9)
    slow = _sim(made, tmp_path / "s.jsonl", *common, "--batching", "static")
    assert len(runs) == (2 if rollout else 1)  # static never went through it: one chunk (or one per step) above
    assert fast == slow


def test_seeded_samples_do_not_depend_on_the_batch(made, tmp_path):
    common = ["--all", "--items", str(made[2]), "--temperature", "1.0", "--num_samples", "3", "--seed", "5"]
    one = _sim(made, tmp_path / "a.jsonl", *common, "--batch_size", "1")
    many = _sim(made, tmp_path / "b.jsonl", *common, "--batch_size", "8")
    assert [r["generations"] for r in one] == [r["generations"] for r in many]
    other = _sim(made, tmp_path / "c.jsonl", *common[:-1], "6")
    assert [r["generations"] for r in other] != [r["generations"] for r in one]


@pytest.mark.parametrize("extra, message", [
    (["--users", "r1", "--steps", "2"], r"user 'r1'.*rating \(movie_rating\).*--items ITEMS.jsonl"),
    (["--users", "nobody", "--steps", "2"], r"user 'nobody' is not in"),
    (["--all"], r"--items ITEMS.jsonl.*--steps K"),
    (["--all", "--steps", "2", "--engine", "vllm"], r"--engine vllm needs vLLM \(pip install vllm"),
    (["--all", "--steps", "5", "--items", "ITEMS"], r"a rollout of 5 steps needs 5 items.*has 3"),
    (["--all", "--items", "ITEMS", "--pick", "2"], r"--pick is predict's"),
])
def test_what_cannot_be_simulated_is_refused(made, tmp_path, capsys, extra, message):
    extra = [str(made[2]) if x == "ITEMS" else x for x in extra]
    if "vllm" in extra:
        import importlib.util

        if importlib.util.find_spec("vllm") is not None:
            pytest.skip("vllm is installed here")
    run, data, _ = made
    assert main(["simulate", "--run", str(run), "--data", str(data), "-o", str(tmp_path / "x.jsonl"),
                 "--no-progress", *extra]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("extra, message", [
    (["--all"], r"say what to simulate: --items ITEMS.jsonl.*--steps K"),
    (["--all", "--steps", "0"], r"--steps must be at least 1, got 0"),
    (["--users", "r1,99", "--items", "ITEMS"], r"user '99' is not in .*r\.jsonl \(3 users, e\.g\. 'r1', 'r2', 'w1'\)"),
    (["--all", "--items", "ITEMS", "--batching", "continuous", "--engine", "vllm"],
     r"--batching continuous is usertwin's engine; vLLM batches continuously by itself"),
])
def test_arguments_are_checked_before_the_model_loads(made, tmp_path, capsys, monkeypatch, extra, message):
    import usertwin.twin.engine

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(usertwin.twin.engine, "load_twin_model", no_model)
    extra = [str(made[2]) if x == "ITEMS" else x for x in extra]
    run, data, _ = made
    assert main(["simulate", "--run", str(run), "--data", str(data), "-o", str(tmp_path / "x.jsonl"),
                 "--no-progress", *extra]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_missing_records_file_is_refused_before_the_model_loads(made, tmp_path, monkeypatch):
    import usertwin.twin.engine
    from usertwin import Twin
    from usertwin.errors import UsertwinError

    monkeypatch.setattr(usertwin.twin.engine, "load_twin_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(UsertwinError, match=r"records file .*nope\.jsonl does not exist"):
        Twin.load(made[0], records=tmp_path / "nope.jsonl")


def test_bad_items_file_names_the_line(made, tmp_path, capsys):
    bad = tmp_path / "items.jsonl"
    bad.write_text('{"continuation_prefix": "Movie 1: "}\n{"continuation_prefx": "Movie 2: "}\n')
    run, data, _ = made
    assert main(["simulate", "--run", str(run), "--data", str(data), "-o", str(tmp_path / "x.jsonl"), "--all",
                 "--items", str(bad)]) == 2
    assert "items.jsonl:2: unknown field(s) continuation_prefx" in capsys.readouterr().err


def test_speed_benchmark_runs_on_cpu_with_a_tiny_shape(tmp_path, tokenizer_dir):
    import importlib.util

    root = ROOT
    spec = importlib.util.spec_from_file_location("simulate_speed", root / "benchmarks" / "simulate_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "out"
    results = bench.main(["--shapes", "tiny", "--batch_sizes", "1", "2", "--batches", "1", "--min_users", "2",
                          "--max_new_tokens", "3", "--decode_steps", "3", "--max_length", "512",
                          "--tokenizer", str(tokenizer_dir), "--records",
                          str(root / "examples" / "movielens-mini" / "records.jsonl"), "--out", str(out)])
    assert [(r["batch_size"], r["decode"]) for r in results] == [(1, "dynamic"), (1, "static"), (2, "dynamic"),
                                                                 (2, "static")]
    assert all(r["greedy_rows_identical"] == 1.0 for r in results if r["decode"] == "static")
    for r in results:
        assert r["users"] == 2 and r["users_per_s"] > 0 and 0 < r["generated_tokens"] <= 2 * 3
        assert r["weight_bytes"] > 0 and 0 < r["bandwidth_share_weights"] <= r["bandwidth_share_weights_kv"]
    saved = json.loads((out / "simulate_speed.json").read_text())
    assert saved["results"] == results and "| tiny (float32) | 2 | static |" in (out / "simulate_speed.md").read_text()


def test_items_run_user_by_user_and_shared_prefill_changes_no_answer(made, tmp_path):
    args = ["--all", "--items", str(made[2]), "--no-generate", "--batch_size", "3"]
    shared = _sim(made, tmp_path / "shared.jsonl", *args)
    each = _sim(made, tmp_path / "each.jsonl", *args, "--prefill", "each")
    # one user's three items a batch: their rows come together, in step order
    assert [(r["user"], r["step"]) for r in shared] == [(u, s) for u in (*RATED, WRITER) for s in (1, 2, 3)]
    assert [(r["user"], r["step"]) for r in each] == [(r["user"], r["step"]) for r in shared]
    for a, b in zip(shared, each):
        assert a["prompt_hash"] == b["prompt_hash"] and "generations" not in a
        assert a["rating"]["probs"] == pytest.approx(b["rating"]["probs"], abs=1e-5)


def test_every_item_of_a_user_is_answered_on_the_same_history(made, tmp_path):
    items = tmp_path / "mixed.jsonl"
    items.write_text("".join(json.dumps({"continuation_prefix": p, "type": "movie_rating"}) + "\n" for p in (
        "Up (2009): ", "A Very Long Title Indeed, With a Subtitle of Its Own (2001) (Comedy, Drama, Romance): ")))
    rows = _sim(made, tmp_path / "o.jsonl", "--all", "--items", str(items), "--no-generate")
    by_user = {}
    for r in rows:
        by_user.setdefault(r["user"], set()).add(r["history_len"])
    # the short item alone would keep more of the history than the long one (max_length 192 cuts it)
    assert all(len(lens) == 1 and lens.pop() < r["user_items"] for lens in by_user.values())


def test_shared_prefill_benchmark_runs_on_cpu_with_a_tiny_shape(tmp_path, tokenizer_dir):
    import importlib.util
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("shared_prefill", ROOT / "benchmarks" / "shared_prefill.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.main(["--shape", "tiny", "--items", "4", "--users", "3", "--each_users", "2", "--batch_size", "4",
                    "--max_length", "512", "--tokenizer", str(tokenizer_dir), "--records",
                    str(ROOT / "examples" / "movielens-mini" / "records.jsonl"), "--out", str(tmp_path)])
    assert (r["shared"]["pairs"], r["each"]["pairs"]) == (12, 8) and r["users"] == 3
    assert r["same_prompts"] and r["max_prob_difference"] < 1e-4
    # a user's 4 prompts: one window of their history, against 4 whole prompts
    assert r["shared"]["tokens_read_per_pair"] < r["each"]["tokens_read_per_pair"]
    assert (tmp_path / "shared_prefill.md").read_text().count("| shared (one history read") == 1


def test_continuous_batching_benchmark_runs_on_cpu(made, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("continuous_simulate", ROOT / "benchmarks" / "continuous_simulate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run, data, _ = made
    r = bench.main(["--run", str(run), "--data", str(data), "--out", str(tmp_path), "--users", "3", "--items", "2",
                    "--batch_size", "2", "--max_new_tokens", "6", "--repeats", "1"])
    assert r["pairs"] == 6 and r["identical_rows"] == 6 and set(r["pairs_per_s"]) == {"static", "continuous"}
    # static: 3 batches of up to 2 prompts, each decoding until its longest row ends; continuous: no more than that
    assert 0 < r["row_steps"]["continuous"] <= r["row_steps"]["static"] <= 6 * 6
    assert "Speed-up of continuous" in (tmp_path / "continuous_simulate.md").read_text()
