"""The validation split's expected-rating RMSE during training (`--select_by rating_rmse`).

The language-model loss of a rating string and the RMSE of the expected rating disagree at the margins that
matter (issue 24: on ml-latest-small, crowd context lowered the test RMSE by 0.007 beyond noise while its
validation loss was 0.002 higher), and half-star scales have no one token at which the rating loss could read
the whole distribution (train/ratingloss.py). So the metric is computed the way `usertwin predict --scoring
window` computes it -- every allowed rating scored after the target's prompt, the expected value over their
likelihoods -- on the model being trained, and best/ and early stopping can follow it.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from usertwin.config import Config, GenerateSettings
from usertwin.data.facts import twin_facts


def val_rating_rmse(cfg: Config, model, tokenizer, prep, limit: int | None) -> float:
    """RMSE of the expected rating over the validation split's rating targets (the first `limit` of them in
    user order; None: all); nan when it has none."""
    from usertwin.eval.predict import predict_split
    from usertwin.twin.api import Twin

    twin = Twin.of_model(cfg, model, tokenizer, twin_facts(prep.timelines))
    gen = GenerateSettings(generate=False, pick=0, scoring="window")
    with tempfile.TemporaryDirectory(prefix="usertwin-val-") as tmp:
        out = Path(tmp) / "val.jsonl"
        predict_split(twin, prep, "val", out, gen, pick_k=0, generate=False, limit=limit, progress=False)
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    errors = [(r["rating"]["expected"] - float(r["reference"])) ** 2 for r in rows if r.get("rating")]
    return math.sqrt(sum(errors) / len(errors)) if errors else float("nan")
