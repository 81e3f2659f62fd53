"""Tune the LensKit rating baselines (issue 15) on the VALIDATION split only: fit on train, score the
validation targets, one setting at a time around LensKit's defaults. The test split is never read here.

    PYTHONPATH=src python benchmarks/tune_baselines.py RECORDS.jsonl > benchmarks/results/tune_baselines.md  # (what it holds)

RECORDS: `usertwin convert movielens ../shared/data/movielens/ml-latest-small -o RECORDS`. The picks go to
usertwin/eval/baselines.py (DAMPING, FEATURES, REGULARIZATION, NEIGHBOURS).
"""

from __future__ import annotations

import sys

from usertwin.config import Config
from usertwin.eval import baselines as B
from usertwin.eval.metrics import rating_metrics

GRID = {"user_item_bias": [("damping", d) for d in (0, 2, 5, 10, 25)],
        "biased_mf": [("features", f) for f in (20, 50, 100)] + [("regularization", r) for r in (0.05, 0.1, 0.3)],
        "item_knn": [("neighbours", k) for k in (10, 20, 40, 80)]}


def main(records: str) -> None:
    timelines, splits = B.load_split(Config(data=records))
    targets = [t for t in B.targets_of(timelines, splits, "val") if t.rating is not None]
    train = B.train_ratings(timelines, splits, B.FIT_ON["val"])
    pairs = [(t.tl.user_id, B.item_key(t.item)) for t in targets]
    print(f"validation split: {len(targets)} targets, fit on {len(train)} train ratings\n")
    print("| baseline | setting | RMSE | MAE |\n| --- | --- | ---: | ---: |")
    for name, settings in GRID.items():
        for key, value in settings:
            model = B.fit_ratings(train, **{key: value})
            m = rating_metrics([t.rating for t in targets], model.predict_many(name, pairs))
            print(f"| {name} | {key} {value} | {m['rmse']:.4f} | {m['mae']:.4f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
