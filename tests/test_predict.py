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


def test_score_with_shared_cache_equals_brute_force(run_dir):
    from usertwin.eval.predict import Twin

    twin = Twin.load(run_dir)
    p = twin.p
    tl = p.prep.timelines[0]
    sample = p.sample_for(tl, 12)
    enc = p.encode(tl, sample)
    prompt = enc.input_ids[:enc.targets[-1][1]]
    cands = [p.tokenizer(t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in ("1.0", "4.0", "2.5")]
    fast = p.score(prompt, cands)
    for (total, n), cand in zip(fast, cands):
        with torch.no_grad():
            logits = p.model(input_ids=torch.tensor([prompt + cand])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        brute = sum(logp[len(prompt) - 1 + j, tok].item() for j, tok in enumerate(cand))
        assert n == len(cand) and abs(total - brute) < 1e-4
    dist = p.rating_distribution(prompt)
    assert dist["scale"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert abs(sum(dist["probs"]) - 1) < 1e-5
    assert dist["expected"] == pytest.approx(sum(v * q for v, q in zip(dist["scale"], dist["probs"])), abs=1e-4)
    # brute force over the scale: probabilities proportional to exp(sum log p) of each "<rating><|im_end|>"
    all_c = [p.tokenizer(f"{v:.1f}<|im_end|>", add_special_tokens=False)["input_ids"] for v in dist["scale"]]
    raw = [math.exp(s) for s, _ in p.score(prompt, all_c)]
    assert [round(r / sum(raw), 5) for r in raw] == [round(q, 5) for q in dist["probs"]]
    # the teacher-forced loss is the mean negative log-likelihood of the reference tokens
    loss, n = p.reference_loss(enc)
    ref = p.tokenizer(tl.items[12].continuation + "<|im_end|>", add_special_tokens=False)["input_ids"]
    (total, _), = p.score(prompt, [ref])
    assert n == len(ref) and loss == pytest.approx(-total / n, rel=1e-4)


def test_batched_scoring_equals_one_prompt_at_a_time(run_dir):
    """score_many puts prompts of different lengths (left padded) and different numbers of candidates into
    one forward under a block mask; each score equals a full forward of prompt + candidate alone."""
    from usertwin.eval.predict import Twin

    p = Twin.load(run_dir).p
    prompts, cands = [], []
    for u, pos in ((0, 12), (1, 3), (2, 7)):
        tl = p.prep.timelines[u]
        enc = p.encode(tl, p.sample_for(tl, pos))
        prompts.append(enc.input_ids[:enc.targets[-1][1]])
        cands.append([p.ids_of(t) for t in ("1.0", "4.0", "a longer continuation", "2.5")[:2 + u]])
    assert len({len(x) for x in prompts}) == 3  # really different lengths: padding is exercised
    batched = p.score_many(prompts, cands)
    for prompt, cs, got in zip(prompts, cands, batched):
        assert len(got) == len(cs)
        for (total, n), cand in zip(got, cs):
            with torch.no_grad():
                logits = p.model(input_ids=torch.tensor([prompt + cand])).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            brute = sum(logp[len(prompt) - 1 + j, tok].item() for j, tok in enumerate(cand))
            assert n == len(cand) and abs(total - brute) < 1e-4, (total, brute)


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


def test_twin_api(run_dir):
    from usertwin import Twin

    twin = Twin.load(run_dir)
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
