"""--rating_loss_weight: the scale's decision position, the extra term against a brute-force computation from
the model's logits, weight 0 leaving the loss as it was, a CLI run that logs the term, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from helpers import write_rating_users, write_records

from usertwin.cli import main
from usertwin.config import RenderSettings
from usertwin.data.records import Item
from usertwin.data.timeline import Timeline
from usertwin.errors import UsertwinError
from usertwin.sequences.batching import packed_batch, padded_batch
from usertwin.text.render import Renderer
from usertwin.text.tokens import SequenceEncoder
from usertwin.train.ratingloss import rated, scale_tokens
from usertwin.train.trainable import TargetLoss, batch_tensors

EOT = "<|im_end|>"
WHOLE = ["1.0", "2.0", "3.0", "4.0", "5.0"]


def test_decision_position_of_a_scale(tokenizer):
    """Whole numbers decide at their first token; "10" "11" "12" after the shared "1"; half stars nowhere."""
    ids = lambda text: tokenizer.convert_tokens_to_ids(text)  # noqa: E731
    whole = scale_tokens(WHOLE, tokenizer, EOT)
    assert (whole.offset, whole.prefix, whole.values) == (0, (), (1.0, 2.0, 3.0, 4.0, 5.0))
    assert whole.tokens == tuple(ids(d) for d in "12345")
    tens = scale_tokens(["10", "11", "12"], tokenizer, EOT)
    assert (tens.offset, tens.prefix, tens.tokens) == (1, (ids("1"),), (ids("0"), ids("1"), ids("2")))
    with pytest.raises(UsertwinError) as e:
        scale_tokens(["0.5", "1.0", "1.5", "2.0"], tokenizer, EOT)
    assert str(e.value).startswith("--rating_loss_weight: the rating scale has no token position where every "
                                   "value differs after a prefix they all share ('0.5': ['0', '.', '5', "
                                   "'<|im_end|>']; '1.0': ['1', '.', '0', '<|im_end|>'];")
    with pytest.raises(UsertwinError, match="needs a numeric rating scale of at least two values"):
        scale_tokens(None, tokenizer, EOT)


def _timeline(user: str, ratings: list[str]) -> Timeline:
    items = [Item(continuation=r, prefix=f"Movie {i} (2000) (Drama): ", timestamp=1000 + i, collection="movie_rating",
                  position=i) for i, r in enumerate(ratings)]
    return Timeline(user, {"name": user}, "Predict ratings.", "en", items)


def _rated_windows(tokenizer, scale):
    encoder = SequenceEncoder(Renderer(RenderSettings(), tokenizer), tokenizer)
    tls = [_timeline("a", ["4.0", "2.0", "5.0", "1.0"]), _timeline("b", ["3.0", "3.0", "4.0"])]
    windows = [(tls[0], [0, 1, 2, 3], [1, 2, 3]), (tls[1], [0, 1, 2], [0, 1, 2])]
    return [rated(encoder.encode(tl, items, targets), tl, scale) for tl, items, targets in windows]


def test_rated_marks_every_rating_target(tokenizer):
    scale = scale_tokens(WHOLE, tokenizer, EOT)
    encs = _rated_windows(tokenizer, scale)
    assert [[v for _, v in e.ratings] for e in encs] == [[2.0, 5.0, 1.0], [3.0, 3.0, 4.0]]
    assert all(col == start for e in encs for (col, _), (_, start, _) in zip(e.ratings, e.targets))
    batch = packed_batch(encs)
    n = len(encs[0])
    assert batch.ratings == [(0, c, v) for c, v in encs[0].ratings] + [(0, n + c, v) for c, v in encs[1].ratings]
    assert padded_batch(encs).ratings == [(r, c, v) for r, e in enumerate(encs) for c, v in e.ratings]


def _brute_force(model, encs, scale) -> list[float]:
    """Each sequence alone through the plain causal LM: softmax over the scale's tokens at the position before
    each rating's decision token, expected rating, squared error."""
    out = []
    with torch.no_grad():
        for e in encs:
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            for col, value in e.ratings:
                p = torch.softmax(logits[col - 1, list(scale.tokens)].double(), dim=0)
                expected = sum(pv.item() * v for pv, v in zip(p, scale.values))
                out.append((expected - value) ** 2)
    return out


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_extra_term_equals_brute_force_and_token_losses_stay(layout, tokenizer):
    scale = scale_tokens(WHOLE, tokenizer, EOT)
    encs = _rated_windows(tokenizer, scale)
    model = tiny_model("qwen3", len(tokenizer)).eval()
    batch = (packed_batch if layout == "packed" else padded_batch)(encs)
    with torch.no_grad():
        losses, errors = TargetLoss(model, rating_scale=scale)(**batch_tensors(batch, "cpu"))
        batch.ratings = None  # the loss off: the same batch as before the feature
        plain = TargetLoss(model)(**batch_tensors(batch, "cpu"))
    assert torch.equal(losses, plain)  # the language-model losses are exactly those without the rating term
    expected = _brute_force(model, encs, scale)
    assert len(errors) == len(expected) == 6
    assert errors.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def _args(data, model, out, *extra):
    return ["train", "--data", str(data), "--model", str(model), "--output_dir", str(out), "--max_length", "256",
            "--batch_tokens", "256", "--learning_rate", "0.01", "--no-progress", "--seed", "7",
            "--logging_steps", "1", "--max_steps", "3", "--eval_at_start", *extra]


def _rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "logs.jsonl").read_text().splitlines()]


def test_cli_run_logs_the_rating_term(tmp_path, tiny_model_dir, capsys):
    """Same seed, same data: the first step's language-model loss is the same with and without the term (the
    term is added beside it, not folded in); the term changes the updates, so the later losses differ; the
    log rows carry the term only when it is on."""
    data = write_rating_users(tmp_path / "r.jsonl", (12, 10), lambda u, i: f"Movie {i % 5} (2000) (Drama): ",
                              lambda u, i: (i * (u + 1)) % 5 + 1)
    assert main(_args(data, tiny_model_dir, tmp_path / "off")) == 0
    assert main(_args(data, tiny_model_dir, tmp_path / "on", "--rating_loss_weight", "1.0")) == 0
    off = [r for r in _rows(tmp_path / "off") if "loss" in r]
    on = [r for r in _rows(tmp_path / "on") if "loss" in r]
    assert len(off) == len(on) == 3
    assert on[0]["loss"] == off[0]["loss"]
    assert on[1]["loss"] != off[1]["loss"]
    assert not any("rating_loss" in r for r in off)
    assert all(r["rating_loss"] > 0 for r in on)
    assert [r["interval_ratings"] for r in on] == [r["interval_target_tokens"] // 4 for r in on]  # "N.0" + eot
    evals = [r for r in _rows(tmp_path / "on") if r.get("event") == "eval"]
    assert evals and all(r["val_rating_mse"] > 0 for r in evals)
    config = (tmp_path / "on" / "config.yaml").read_text()
    assert "rating_loss_weight: 1.0" in config


def test_refused_without_ratings(tmp_path, tiny_model_dir, capsys):
    recs = [{"user_hash": f"u{u}", "user": {"profile": {"name": f"user {u}"}},
             "task": {"description": "Review movies.", "language": "en", "task_behavior_collections": [
                 {"type": "movie_review", "data": [{"continuation_prefix": f"Movie {i}: ", "continuation": "fine",
                                                    "timestamp": 1000 + i} for i in range(6)]}]}} for u in range(2)]
    data = write_records(tmp_path / "r.jsonl", recs)
    assert main(_args(data, tiny_model_dir, tmp_path / "run", "--rating_loss_weight", "0.5")) == 2
    assert "--rating_loss_weight 0.5 would be ignored: it needs rating targets (items of a rating collection, " \
           "e.g. movie_rating); this data has none" in capsys.readouterr().err


def test_refused_on_a_half_star_scale(tmp_path, tiny_model_dir, capsys):
    data = write_rating_users(tmp_path / "r.jsonl", (8, 8), lambda u, i: f"Movie {i} (2000) (Drama): ",
                              lambda u, i: i % 5 + 1)
    # 2.0 and 2.5 share the first token "2" and differ at the third, 2.0 and 4.0 at the first
    text = data.read_text().replace('"continuation": "3.0"', '"continuation": "2.5"')
    data.write_text(text)
    assert main(_args(data, tiny_model_dir, tmp_path / "run", "--rating_loss_weight", "0.5")) == 2
    err = capsys.readouterr().err
    assert "--rating_loss_weight: the rating scale has no token position where every value differs" in err
    assert "leave --rating_loss_weight 0 for this data" in err
