"""Generation that reads a shared beginning once (--prefill shared): rows that begin alike -- one user's history
asked about many items, the samples of one prompt -- get that beginning's key/value cache from one forward of
their group, copied to every member, and transformers' generate goes on from it with each row's own tail.

A row is laid out as [padding | its group's beginning | padding | its own tail]: the cache covers the first part
for every row, the attention mask hides both paddings, and generate counts positions over the mask, so a row's
tokens sit at the positions they have alone (the same text up to float rounding: tests/twin/test_prefill.py)."""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch

from usertwin.model.load import causal_lm


def shared_groups(prompts: list[list[int]], candidates: list, block_tokens: int) -> list[tuple[int, list[int]]]:
    """(shared length, member indices) groups of `prompts` whose members begin with the same tokens: in sorted
    order a prompt joins the group before it when the tokens it no longer reads (the shared ones) outnumber the
    tokens the shorter shared part adds to the members' tails, and the group's second forward (tails and
    candidates) stays within `block_tokens`. A prompt alone is its own window, as without sharing."""
    groups = []  # [shared, members, block size]
    for k in sorted(range(len(prompts)), key=lambda k: prompts[k]):
        p, own = prompts[k], sum(map(len, candidates[k]))
        if groups:
            shared, members, size = groups[-1]
            first = prompts[members[0]]
            common = _common_length(first[:shared], p)
            grown = size + (shared - common) * len(members) + len(p) - common + own
            if common > (shared - common) * len(members) and grown <= block_tokens:
                groups[-1] = [common, members + [k], grown]
                continue
        groups.append([len(p), [k], own])
    return [(shared, sorted(members)) for shared, members, _ in groups]


def _common_length(a: list, b: list) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# share only where it saves at least this share of the prompt tokens a batch would read: a group's forward and
# the cache's copies cost something, and a batch of unrelated prompts saves nothing
MIN_SAVED = 0.25


@dataclass
class Layout:
    groups: list[list[int]]  # each group's shared beginning
    member_of: list[int]  # row -> its group
    shared: int  # tokens of the cached part of every row (the longest beginning; shorter ones padded left)
    width: int  # tokens of a laid-out row

    def row(self, k: int, tokens: list[int], pad: int) -> tuple[list[int], list[int]]:
        """Row k's laid-out ids and attention mask."""
        head = self.groups[self.member_of[k]]
        tail = tokens[len(head):]
        gap_head, gap_tail = self.shared - len(head), self.width - self.shared - len(tail)
        ids = [pad] * gap_head + head + [pad] * gap_tail + tail
        mask = [0] * gap_head + [1] * len(head) + [0] * gap_tail + [1] * len(tail)
        return ids, mask


def plan(rows: list[list[int]]) -> Layout | None:
    """The layout that reads each group's beginning once, or None where that saves under MIN_SAVED of the
    prompt tokens. Groups are runs of rows (in sorted order) with a common beginning, as predict's shared scoring
    forms them; every row keeps at least its last token out of the cache (the first step's logits come from it)."""
    total = sum(map(len, rows))
    found = shared_groups(rows, [[] for _ in rows], block_tokens=total)
    groups, member_of = [], [0] * len(rows)
    for shared, members in found:
        shared = min([shared] + [len(rows[k]) - 1 for k in members])
        for k in members:
            member_of[k] = len(groups)
        groups.append(rows[members[0]][:shared])
    saved = sum(len(groups[g]) for g in member_of) - sum(map(len, groups))  # the beginnings not read again
    if saved < MIN_SAVED * total:
        return None
    shared = max(map(len, groups))
    tail = max(len(rows[k]) - len(groups[member_of[k]]) for k in range(len(rows)))
    return Layout(groups, member_of, shared, shared + tail)


def cached_beginnings(model, layout: Layout, pad: int, device) -> tuple[str, object]:
    """(generate's keyword for a cache, the cache of every row's shared part): one forward of the groups' left-
    padded beginnings, each row then given a copy of its group's."""
    keyword, cache = read_beginnings(model, layout, pad, device)
    cache.batch_select_indices(torch.tensor(layout.member_of, device=device))
    return keyword, cache


def read_beginnings(model, layout: Layout, pad: int, device) -> tuple[str, object]:
    """(keyword, the cache of the groups' beginnings, one row a group): one forward of them, left padded."""
    ids = torch.full((len(layout.groups), layout.shared), pad, device=device)
    mask = torch.zeros_like(ids)
    for g, head in enumerate(layout.groups):
        if head:
            ids[g, layout.shared - len(head):] = torch.tensor(head, device=device)
            mask[g, layout.shared - len(head):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate counts them: over the mask
    # transformers renamed past_key_values to cache (5.2x); both are in use on our machines
    keyword = "cache" if "cache" in inspect.signature(causal_lm(model).forward).parameters else "past_key_values"
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    return keyword, getattr(out, keyword)


class LastBeginning:
    """The cache of the last lone beginning read (one user's history), kept for the next rows that begin with
    it: a user's items reach the model in several batches, or joins of a continuous batch, one after another,
    and each would read the history again. One entry (one history's keys and values), so memory stays bounded."""

    def __init__(self):
        self.key = self.keyword = self.cache = self.dtype = None

    def layout(self, rows: list[list[int]]) -> Layout | None:
        """The layout over the last beginning read, where every row goes on from it (the next of a user's items,
        even alone); else None."""
        key = self.key
        if not key or not all(len(r) > len(key) and tuple(r[:len(key)]) == key for r in rows):
            return None
        return Layout([list(key)], [0] * len(rows), len(key), len(key) + max(len(r) - len(key) for r in rows))

    def cached(self, model, layout: Layout, pad: int, device) -> tuple[str, object]:
        """cached_beginnings' result; a layout of one group whose beginning is the last one read costs a copy of
        its cache instead of a forward."""
        if len(layout.groups) != 1:
            return cached_beginnings(model, layout, pad, device)
        key, dtype = tuple(layout.groups[0]), next(model.parameters()).dtype  # (export may cast the model)
        if key != self.key or dtype != self.dtype:
            self.key = None  # until the new one is read (a failed forward leaves nothing stale)
            self.keyword, self.cache = read_beginnings(model, layout, pad, device)
            self.key, self.dtype = key, dtype
        cache = copy.deepcopy(self.cache)  # generate appends to the cache it is given
        cache.batch_select_indices(torch.tensor(layout.member_of, device=device))
        return self.keyword, cache
