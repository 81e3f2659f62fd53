"""usertwin predict and the Twin API on a tiny trained run: likelihoods, rating distributions, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import write_records

from usertwin.cli import main


def _records(path):
    recs = []
    for u, n in enumerate((14, 10, 8)):
        items = [{"continuation_prefix": f"Movie {(i + u) % 6} (2000) (Drama): ",
                  "continuation": f"{(i * (u + 2)) % 5 + 1}.0", "timestamp": 1_000_000 + 60 * i} for i in range(n)]
        recs.append({"user_hash": f"u{u}", "user": {"profile": {"name": f"user {u}"}},
                     "task": {"description": "Predict ratings.", "language": "en",
                              "task_behavior_collections": [{"type": "movie_rating", "data": items}]}})
    return write_records(path, recs)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("pred")
    data = _records(tmp / "r.jsonl")
    out = tmp / "run"
    assert main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output_dir", str(out),
                 "--max_length", "256", "--learning_rate", "0.01", "--no-progress"]) == 0
    return out


def _twin(run_dir):
    from usertwin.twin import Twin

    return Twin.load(run_dir, records=run_dir.parent / "r.jsonl")  # a train run keeps no twin.json yet


def _brute_logp(model, prompt: list, cand: list) -> float:
    """Sum of log-probabilities of `cand` after `prompt`: one plain forward, no block mask, no padding."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + cand])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[len(prompt) - 1 + j, tok].item() for j, tok in enumerate(cand))


def test_score_with_shared_cache_equals_brute_force(run_dir):
    twin = _twin(run_dir)
    p = twin.engine
    prompt = p.target_prompt(twin.timeline("u0"), 12).ids
    cands = [p.tokenizer(t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in ("1.0", "4.0", "2.5")]
    for (total, n), cand in zip(p.score(prompt, cands), cands):
        assert n == len(cand) and abs(total - _brute_logp(p.model, prompt, cand)) < 1e-4
    dist = p.rating_distribution(prompt)
    assert dist["scale"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert abs(sum(dist["probs"]) - 1) < 1e-5
    assert dist["expected"] == pytest.approx(sum(v * q for v, q in zip(dist["scale"], dist["probs"])), abs=1e-4)
    # brute force over the scale: probabilities proportional to exp(sum log p) of each "<rating><|im_end|>"
    all_c = [p.tokenizer(f"{v:.1f}<|im_end|>", add_special_tokens=False)["input_ids"] for v in dist["scale"]]
    raw = [math.exp(s) for s, _ in p.score(prompt, all_c)]
    assert [round(r / sum(raw), 5) for r in raw] == [round(q, 5) for q in dist["probs"]]


def test_batched_scoring_equals_one_prompt_at_a_time(run_dir):
    """score_many puts prompts of different lengths (left padded) and different numbers of candidates into
    two forwards (the prompts right padded, then all candidates against their cache); each score equals
    a full forward of prompt + candidate alone."""
    twin = _twin(run_dir)
    p = twin.engine
    prompts, cands = [], []
    for k, pos in enumerate((12, 13, 1)):  # full windows of two lengths, and the first item's short prompt
        prompts.append(p.target_prompt(twin.timeline("u0"), pos).ids)
        cands.append([p.continuation_ids(t) for t in ("1.0", "4.0", "a longer continuation", "2.5")[:2 + k]])
    assert len({len(x) for x in prompts}) == 3  # really different lengths: padding is exercised
    batched = p.score_many(prompts, cands)
    for prompt, cs, got in zip(prompts, cands, batched):
        assert len(got) == len(cs)
        for (total, n), cand in zip(got, cs):
            brute = _brute_logp(p.model, prompt, cand)
            assert n == len(cand) and abs(total - brute) < 1e-4, (total, brute)


def test_predicted_numbers_equal_an_independent_forward(run_dir, tmp_path):
    """Each row's loss is the teacher-forced mean negative log-likelihood of the reference (with its
    end-of-turn) after the row's own prompt; its rating probabilities are the normalised likelihoods of
    the scale, and the expected rating is their mean."""
    from usertwin.sequences.fit import prompt_hash

    out = tmp_path / "p.jsonl"
    assert main(["predict", "--run", str(run_dir), "-o", str(out), "--no-progress", "--max_new_tokens", "5"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    twin = _twin(run_dir)
    p = twin.engine
    for r in rows:
        prompt = twin.prompt(r["user"], target=r["target_index"], room=5)
        assert prompt_hash(prompt) == r["prompt_hash"]
        ref = p.continuation_ids(r["reference"])
        assert r["n_tokens"] == len(ref)
        assert r["loss"] == pytest.approx(-_brute_logp(p.model, prompt, ref) / len(ref), abs=1e-4)
        logps = [_brute_logp(p.model, prompt, p.continuation_ids(t)) for t in p.scale]
        z = sum(math.exp(x) for x in logps)
        assert r["rating"]["probs"] == pytest.approx([math.exp(x) / z for x in logps], abs=1e-5)
        assert sum(r["rating"]["probs"]) == pytest.approx(1, abs=1e-5)
        assert r["rating"]["expected"] == pytest.approx(sum(v * q for v, q in zip(r["rating"]["scale"],
                                                                                  r["rating"]["probs"])), abs=1e-5)


def test_predict_cli_writes_every_test_target_once_and_resumes(run_dir, tmp_path):
    out = tmp_path / "p.jsonl"
    args = ["predict", "--run", str(run_dir), "--split", "test", "-o", str(out), "--no-progress",
            "--max_new_tokens", "6", "--batch_size", "2"]
    assert main([*args, "--limit", "2"]) == 0
    assert len(out.read_text().splitlines()) == 2
    with open(out, "a") as f:
        f.write('{"user": "u2", "target_in')  # a line torn by a kill
    assert main(args) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2 + 2 + 1 == len({(r["user"], r["target_index"]) for r in rows})  # test: 14->2, 10->2, 8->1
    for r in rows:
        assert r["split"] == "test" and len(r["predictions"]) == 1 and r["n_tokens"] >= 2
        assert abs(sum(r["rating"]["probs"]) - 1) < 1e-4
        assert r["pick"]["k"] == 3 and r["pick"]["correct"] == (r["pick"]["chosen"] == 0)
        assert 0 < r["history_len"] <= r["target_index"]  # the most recent earlier items that fit


def test_a_finished_predict_says_nothing_to_do_without_loading_the_model(run_dir, tmp_path, capsys, monkeypatch):
    import usertwin.twin.engine

    out = tmp_path / "p.jsonl"
    args = ["predict", "--run", str(run_dir), "--split", "test", "-o", str(out), "--no-progress",
            "--max_new_tokens", "2"]
    assert main([*args, "--limit", "1"]) == 0
    monkeypatch.setattr(usertwin.twin.engine, "load_twin_model", lambda *a, **k: pytest.fail("the model loaded"))
    capsys.readouterr()
    assert main([*args, "--limit", "1"]) == 0
    assert capsys.readouterr().out == f"nothing to do: {out} already holds every target of the test split (5, or " \
                                      "the --limit 1)\n"
    monkeypatch.undo()
    assert main(args) == 0  # 4 left: the model loads and writes them
    assert len(out.read_text().splitlines()) == 5
    monkeypatch.setattr(usertwin.twin.engine, "load_twin_model", lambda *a, **k: pytest.fail("the model loaded"))
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out == f"nothing to do: {out} already holds every target of the test split (5)\n"


def test_window_scoring_equals_brute_force(run_dir):
    """score_windows reads windows of different lengths once (right padded) and scores candidates at several
    points inside each: every score equals a plain forward of the window's first `start` tokens + the candidate,
    so a candidate never sees the true continuation after its start."""
    twin = _twin(run_dir)
    p = twin.engine
    windows = [p.encoder.encode(twin.timeline(u), list(range(n)), list(range(1, n))) for u, n in (("u0", 5), ("u1", 3))]
    assert len(windows[0].input_ids) != len(windows[1].input_ids)
    groups = [[(first, [p.continuation_ids(t) for t in ("1.0", "4.0", "a longer one")[:k % 3 + 1]])
               for k, (_, first, _) in enumerate(w.targets)] for w in windows]
    got = p.score_windows([w.input_ids for w in windows], groups)
    for w, g, scores in zip(windows, groups, got):
        assert len(scores) == len(g) == len(w.targets)
        for (start, cands), per in zip(g, scores):
            for (total, n), cand in zip(per, cands):
                brute = _brute_logp(p.model, w.input_ids[:start], cand)
                assert n == len(cand) and abs(total - brute) < 1e-4, (total, brute)


def test_predict_scoring_window_from_the_cli(run_dir, tmp_path):
    """--scoring window writes the same targets as --scoring target, each once, resumes, and where a target's
    window holds the same history as its own prompt the two agree (same prompt, same probabilities)."""
    target, window = tmp_path / "t.jsonl", tmp_path / "w.jsonl"
    # at 1024 tokens, with all of a window open to history, a whole timeline fits one window: every target
    # sees all its history both ways
    base = ["predict", "--run", str(run_dir), "--no-progress", "--no-generate", "--max_length", "1024",
            "--window_history_fraction", "1.0"]
    assert main([*base, "-o", str(target)]) == 0
    assert main([*base, "-o", str(window), "--scoring", "window", "--limit", "2"]) == 0
    assert len(window.read_text().splitlines()) == 2
    assert main([*base, "-o", str(window), "--scoring", "window", "--batch_size", "2"]) == 0
    t = {(r["user"], r["target_index"]): r for r in map(json.loads, target.read_text().splitlines())}
    w = [json.loads(x) for x in window.read_text().splitlines()]
    assert len(w) == len(t) == 5 and {(r["user"], r["target_index"]) for r in w} == set(t)
    same = [r for r in w if r["history_len"] == t[(r["user"], r["target_index"])]["history_len"]]
    assert len(same) == 5
    for r in same:
        o = t[(r["user"], r["target_index"])]
        assert r["prompt_hash"] == o["prompt_hash"]
        assert r["rating"]["probs"] == pytest.approx(o["rating"]["probs"], abs=1e-5)
        assert r["loss"] == pytest.approx(o["loss"], abs=1e-4) and r["pick"]["chosen"] == o["pick"]["chosen"]
    for r in w:
        assert 0 <= r["history_len"] <= t[(r["user"], r["target_index"])]["history_len"]


def test_scoring_window_needs_the_timeline_unit(tmp_path, tiny_model_dir, capsys):
    data = _records(tmp_path / "r.jsonl")
    assert main(["predict", "--data", str(data), "--model", str(tiny_model_dir), "--unit", "sample",
                 "--max_length", "256", "-o", str(tmp_path / "p.jsonl"), "--no-progress", "--no-generate",
                 "--scoring", "window"]) == 2
    assert "--scoring window reads the timeline unit's windows; this config has --unit sample: use --scoring " \
           "target" in capsys.readouterr().err


def test_twin_api(run_dir):
    from usertwin import Twin

    twin = Twin.load(run_dir, records=run_dir.parent / "r.jsonl")
    dist = twin.rating_distribution(user="u1", item="Movie 3 (2000) (Drama): ")
    assert abs(sum(dist["probs"]) - 1) < 1e-5 and dist["most_likely"] in dist["scale"]
    text = twin.predict(user="u1", item="Movie 3 (2000) (Drama): ", max_new_tokens=5)
    assert isinstance(text, str)
    assert twin.score(user="u1", item="Movie 3 (2000) (Drama): ", continuation="4.0") < 0


def test_predict_evaluate_baselines_from_the_cli(run_dir, capsys):
    assert main(["predict", "--run", str(run_dir), "--no-progress", "--max_new_tokens", "4", "--pick", "2"]) == 0
    rows = [json.loads(x) for x in (run_dir / "predictions-test.jsonl").read_text().splitlines()]
    assert len(rows) == 5
    assert main(["evaluate", "--run", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_rows"] == 5
    expected = metrics["overall"]["rating"]["expected"]
    refs = [float(r["reference"]) for r in rows]
    rmse = math.sqrt(sum((r["rating"]["expected"] - y) ** 2 for r, y in zip(rows, refs)) / len(rows))
    assert expected["rmse"] == pytest.approx(rmse, rel=1e-6)
    assert main(["baselines", "--run", str(run_dir)]) == 0
    base = json.loads((run_dir / "baselines.json").read_text())
    assert {"global_mean", "user_mean", "item_mean", "user_item_bias"} <= set(base)
    assert base["global_mean"]["n"] == 5  # the same test targets as the twin
    assert "user_item_bias" in capsys.readouterr().out
    # per-target baseline rows: evaluate compares the twin with a baseline target by target
    out_dir = run_dir.parent / "baseline-rows"
    assert main(["baselines", "--run", str(run_dir), "--predictions", str(out_dir), "-o",
                 str(out_dir / "b.json")]) == 0
    mean_rows = [json.loads(x) for x in (out_dir / "global_mean.jsonl").read_text().splitlines()]
    assert [(r["user"], r["target_index"]) for r in mean_rows] == [(r["user"], r["target_index"]) for r in rows]
    assert len({r["rating"]["expected"] for r in mean_rows}) == 1  # one global mean
    assert main(["evaluate", "--run", str(run_dir), "-o", str(out_dir / "m.json"),
                 "--against", str(out_dir / "global_mean.jsonl")]) == 0
    assert "on the 5 targets both hold (0 only in the first, 0 only in the second" in capsys.readouterr().out
    against = json.loads((out_dir / "m.json").read_text())["against"]["rating_expected_rmse"]
    assert (against["a"], against["b"]) == (pytest.approx(rmse), pytest.approx(base["global_mean"]["rmse"]))
    assert main(["evaluate", "--run", str(run_dir), "--split", "val"]) == 2
    assert "usertwin predict --run" in capsys.readouterr().err


def test_report_from_the_cli(run_dir, tmp_path, capsys):
    if not (run_dir / "metrics.json").exists():
        assert main(["predict", "--run", str(run_dir), "--no-progress", "--max_new_tokens", "4"]) == 0
        assert main(["evaluate", "--run", str(run_dir)]) == 0
        assert main(["baselines", "--run", str(run_dir)]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(run_dir), "-o", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert "user_item_bias" in html and (tmp_path / "report.md").is_file()
    assert "data:image/png;base64," in html
    assert main(["report", str(tmp_path / "nope"), "-o", str(out)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_zero_shot_predict_with_any_model(tmp_path, tiny_model_dir):
    data = _records(tmp_path / "r.jsonl")
    out = tmp_path / "zero.jsonl"
    assert main(["predict", "--model", str(tiny_model_dir), "--data", str(data), "--max_length", "256",
                 "-o", str(out), "--no-generate", "--no-progress", "--cache_dir", str(tmp_path / "c")]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5 and all(r["predictions"] == [] and "rating" in r for r in rows)


def test_window_batches_count_targets():
    """--scoring window groups consecutive windows by their to-do targets (batch_size counts targets in both
    scorings); a window bigger than the batch still goes alone."""
    from usertwin.data.timeline import Window
    from usertwin.eval.predict import _by_targets

    ws = [Window("a", [0, 1, 2], [1, 2]), Window("a", [3, 4, 5, 6], [3, 4, 5, 6]), Window("b", [0, 1], [1]),
          Window("b", [2, 3], [2, 3])]
    todo = {("a", 1), ("a", 2), ("a", 4), ("a", 5), ("a", 6), ("b", 1), ("b", 2), ("b", 3)}  # ("a", 3) done
    assert [[(w.user_id, w.items[0]) for w in g] for g in _by_targets(ws, todo, 3)] == \
        [[("a", 0)], [("a", 3)], [("b", 0), ("b", 2)]]
    assert [len(g) for g in _by_targets(ws, todo, 1)] == [1, 1, 1, 1]
    assert [len(g) for g in _by_targets(ws, todo, 100)] == [4]


@pytest.mark.parametrize("scoring", ["target", "window"])
def test_continuous_batching_writes_the_predictions_static_batching_writes(run_dir, tmp_path, monkeypatch, scoring):
    """predict --batching continuous: a write holds QUEUED batches, scored a batch at a time and generated
    continuously (at most --batch_size prompts at once); the rows equal --batching static's."""
    from usertwin.twin import continuous

    runs = []
    original = continuous.decode_all
    monkeypatch.setattr(continuous, "decode_all", lambda *a, **k: runs.append((len(a[1]), a[3])) or original(*a, **k))
    base = ["predict", "--run", str(run_dir), "--no-progress", "--max_new_tokens", "6", "--batch_size", "2",
            "--temperature", "1.0", "--num_samples", "2", "--seed", "4", "--scoring", scoring]
    assert main([*base, "-o", str(tmp_path / "c.jsonl"), "--batching", "continuous"]) == 0
    assert runs == [(5, 4)]  # the split's 5 targets in one write, 2 prompts x 2 samples decoding at once
    assert main([*base, "-o", str(tmp_path / "s.jsonl"), "--batching", "static"]) == 0
    assert len(runs) == 1
    fast, slow = ([json.loads(x) for x in (tmp_path / n).read_text().splitlines()] for n in ("c.jsonl", "s.jsonl"))
    assert len(fast) == 5 and fast == slow
