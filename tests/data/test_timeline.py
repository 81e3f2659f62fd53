"""Splits, history strategies, sampling modes, windows: exact counts and the leakage invariants."""

from __future__ import annotations

import pytest
from helpers import conversation_timeline, dialogue_timeline, rating_records, rating_timeline

from usertwin.config import Config, SplitSettings
from usertwin.data.timeline import (
    Window,
    WindowStats,
    assign_splits,
    build_samples,
    build_timelines,
    build_windows,
    resample,
    select_history,
    split_labels,
    window_history,
)
from usertwin.errors import UsertwinError


def test_split_labels_time_order_and_shares():
    labels = split_labels(20, SplitSettings())
    assert labels == ["train"] * 14 + ["val"] * 3 + ["test"] * 3
    for n in range(1, 60):
        lab = split_labels(n, SplitSettings())
        assert abs(lab.count("train") - 0.70 * n) <= 1 and abs(lab.count("val") - 0.15 * n) <= 1
        assert abs(lab.count("test") - 0.15 * n) <= 1
        assert lab == sorted(lab, key=["train", "val", "test"].index)  # test is the latest part


def test_split_ratios_must_sum_to_one():
    tl = rating_timeline(5)
    with pytest.raises(UsertwinError, match="must add up to 1"):
        assign_splits([tl], SplitSettings(train_ratio=0.8, val_ratio=0.15, test_ratio=0.15))


def test_user_split_holds_out_whole_users():
    tls, _ = build_timelines(rating_records([5] * 20))
    splits = assign_splits(tls, SplitSettings(split_mode="user"))
    per_user = {u: set(lab) for u, lab in splits.items()}
    assert all(len(s) == 1 for s in per_user.values())
    counts = [sum(1 for s in per_user.values() if s == {sp}) for sp in ("train", "val", "test")]
    assert counts == [14, 3, 3]
    assert splits == assign_splits(tls, SplitSettings(split_mode="user"))  # seeded
    assert splits != assign_splits(tls, SplitSettings(split_mode="user", seed=7))


@pytest.mark.parametrize("strategy,kwargs,target,expected", [
    ("all_previous", {}, 7, list(range(7))),
    ("none", {}, 7, []),
    ("fixed_ratio", {"history_ratio": 0.5}, 7, [0, 1, 2, 3, 4]),
    ("fixed_ratio", {"history_ratio": 0.5}, 3, [0, 1, 2]),
    ("fixed_count", {"fixed_history_count": 3}, 7, [4, 5, 6]),
    ("fixed_count", {}, 7, [2, 3, 4, 5, 6]),  # the seeds' default: min(5, n // 2)
    ("all_previous", {"max_history_items": 2}, 7, [5, 6]),
])
def test_history_strategies_exact(strategy, kwargs, target, expected):
    tl = rating_timeline(10)
    assert select_history(tl, target, Config(history_strategy=strategy, **kwargs), seed=42) == expected


def test_random_history_is_seeded_subset_of_earlier_items():
    tl = rating_timeline(40)
    cfg = Config(history_strategy="random", history_ratio=0.25)
    h = select_history(tl, 20, cfg, seed=42)
    assert len(h) == 5 and h == sorted(h) and all(p < 20 for p in h)
    assert h == select_history(tl, 20, cfg, seed=42)
    assert any(select_history(tl, 20, cfg, seed=s) != h for s in range(43, 48))


def test_dialogue_history_is_earlier_conversations_capped_by_max_history_items():
    """A line's own conversation is its context, not history; max_context_turns caps that context's turns
    (test_dialogue.py), max_history_items the history items."""
    tl = conversation_timeline((4, 6, 5))  # items 0-3, 4-9, 10-13 (the last conversation has a gap)
    assert [tl.conversations.start[p] for p in (0, 3, 4, 9, 10, 13)] == [0, 0, 4, 4, 10, 10]
    assert select_history(tl, 8, Config(), 42) == [0, 1, 2, 3]
    assert select_history(tl, 12, Config(), 42) == list(range(10))
    assert select_history(tl, 12, Config(max_history_items=3), 42) == [7, 8, 9]
    assert select_history(tl, 12, Config(max_context_turns=2), 42) == list(range(10))
    assert select_history(tl, 12, Config(history_strategy="fixed_count", fixed_history_count=2), 42) == [8, 9]
    assert select_history(tl, 2, Config(), 42) == []
    unlinked = dialogue_timeline(30)  # every line its own conversation: all earlier lines are history
    assert select_history(unlinked, 25, Config(), 42) == list(range(25))


def _setup(sizes=(20, 10, 3)):
    tls, _ = build_timelines(rating_records(list(sizes)))
    return tls, assign_splits(tls, SplitSettings())


def test_sampling_modes_exact_counts():
    tls, splits = _setup()  # 20, 10, 3 items
    n_train = [lab.count("train") for lab in splits.values()]
    assert n_train == [14, 6, 3]  # 10 items: 2 test (1.5 rounds up), 2 val; 3 items: 0.45 rounds to 0
    assert len(build_samples(tls, splits, "train", Config())) == 23
    assert len(build_samples(tls, splits, "train", Config(max_samples_per_user=2))) == 6
    one = build_samples(tls, splits, "train", Config(one_sample_per_user=True))
    assert [(s.target, s.history) for s in one] == [(13, list(range(13))), (5, list(range(5))), (2, [0, 1])]
    aug = build_samples(tls, splits, "train", Config(temporal_augmentation=True, min_history_length=3))
    assert len(aug) == (14 - 3) + (6 - 3) + 0
    assert all(len(s.history) >= 3 for s in aug)
    assert len(build_samples(tls, splits, "val", Config(max_samples_per_user=1))) == 3 + 2 + 0


def test_resample_every_epoch_is_seeded_by_epoch():
    tls, splits = _setup((60, 60))
    cfg = Config(max_samples_per_user=3, sample_seed=42)
    e0, e0b, e1 = resample(tls, splits, cfg, 0), resample(tls, splits, cfg, 0), resample(tls, splits, cfg, 1)
    assert [s.target for s in e0] == [s.target for s in e0b]
    assert [s.target for s in e0] != [s.target for s in e1]
    # epoch e with seed s is the draw of epoch 0 with seed s + e
    e1_alt = resample(tls, splits, Config(max_samples_per_user=3, sample_seed=43), 0)
    assert [s.target for s in e1] == [s.target for s in e1_alt]


def test_no_leakage_in_samples():
    tls, splits = _setup((30, 17, 9, 4))
    seen = {}
    for split in ("train", "val", "test"):
        for s in build_samples(tls, splits, split, Config()):
            assert all(h < s.target for h in s.history)
            assert splits[s.user_id][s.target] == split
            assert (s.user_id, s.target) not in seen
            seen[(s.user_id, s.target)] = split
            if split == "train":  # training history holds training items only
                assert all(splits[s.user_id][h] == "train" for h in s.history)
    assert len(seen) == 30 + 17 + 9 + 4


def test_items_out_of_order_are_sorted_stably_with_a_warning():
    recs = rating_records([4])
    items = recs[0].items
    items[1].timestamp, items[2].timestamp, items[3].timestamp = 5e6, 1e6, 1e6  # tie between 2 and 3
    tls, warnings = build_timelines(recs)
    assert [it.position for it in tls[0].items] == [0, 2, 3, 1]
    assert any("out of time order" in w for w in warnings)


def test_duplicate_user_ids_are_merged_with_warning():
    recs = rating_records([3, 2])
    recs[1].user_id = "u0"
    tls, warnings = build_timelines(recs)
    assert len(tls) == 1 and len(tls[0].items) == 5
    assert any("share this user id" in w for w in warnings)


def test_windows_cover_every_target_once_and_fit():
    tl = rating_timeline(100)
    labels = split_labels(100, SplitSettings())
    lengths = [10 + (i % 7) for i in range(100)]
    for split in ("train", "val", "test"):
        st = WindowStats()
        ws = build_windows(tl, labels, split, lengths, header_len=20, join_len=2, max_length=120, stats=st)
        targets = [t for w in ws for t in w.targets]
        assert targets == [i for i, lab in enumerate(labels) if lab == split]
        for w in ws:
            cost = 20 + sum(lengths[i] for i in w.items) + 2 * (len(w.items) - 1)
            assert cost <= 120
            assert w.items == list(range(w.items[0], w.items[-1] + 1))
            for t, hist in window_history(w).items():
                assert all(h < t for h in hist)
        assert st.targets == len(targets)
    assert ws[0].items[0] > 0  # the test windows start with recent history, not the oldest item


def test_windows_history_budget_and_too_long():
    tl = rating_timeline(10)
    labels = ["train"] * 10
    lengths = [10] * 10
    lengths[4] = 500
    st = WindowStats()
    ws = build_windows(tl, labels, "train", lengths, 0, 0, max_length=50, history_fraction=0.4, stats=st)
    assert st.too_long == 1 and 4 not in [t for w in ws for t in w.targets]
    assert [w.items for w in ws] == [[0, 1, 2, 3], [5, 6, 7, 8, 9]]  # item 4 blocks older history
    ws = build_windows(tl, labels, "train", [10] * 10, 0, 0, max_length=50, history_fraction=0.4)
    assert [w.targets for w in ws] == [[0, 1, 2, 3, 4], [5, 6, 7], [8, 9]]
    assert ws[2] == Window("u1", [6, 7, 8, 9], [8, 9], "train")  # 0.4 * 50 tokens of history first
    no_hist = build_windows(tl, labels, "train", [10] * 10, 0, 0, max_length=50, use_history=False)
    assert [w.items for w in no_hist] == [[i] for i in range(10)]
