"""`usertwin inspect`: examples exactly as training sees them, with loss-bearing spans marked; counts; dump."""

from __future__ import annotations

import sys

from usertwin.atomic import write_jsonl
from usertwin.data import crowd
from usertwin.data.timeline import SPLITS, own_turn_last

OPEN, CLOSE = "\u27ea", "\u27eb"  # ⟪ target ⟫ when colour is off


def marked_text(rendered, color: bool) -> str:
    out = []
    for seg in rendered.segments:
        if seg.kind == "target":
            out.append(f"\033[1;32m{seg.text}\033[0m" if color else f"{OPEN}{seg.text}{CLOSE}")
        else:
            out.append(seg.text)
    return "".join(out)


def show_examples(prep, renderer, split: str, n: int, file=None) -> None:
    file = file or sys.stdout
    color = file.isatty()
    seqs = prep.sequences.get(split, [])
    for k, seq in enumerate(seqs[:n]):
        tl = prep.timeline(seq.user_id)
        items, targets = seq.items_and_targets()
        rendered = renderer.render(tl, items, targets)
        tokens = prep.lengths[seq.user_id].sequence(items) if renderer.cfg.history_layout == "turns" else None
        head = (f"--- {split} example {k + 1}/{len(seqs)}: user {seq.user_id!r}, {len(targets)} target(s) "
                f"at positions {targets[:8]}{'...' if len(targets) > 8 else ''}, {len(items) - len(targets)} "
                f"history item(s)" + (f", {tokens} tokens" if tokens is not None else "") + " ---")
        print(head, file=file)
        print(marked_text(rendered, color), file=file)
        legend = "bold green" if color else f"{OPEN}...{CLOSE}"
        print(f"--- loss is computed only on the {legend} spans ---\n", file=file)


def dump_rows(prep, renderer, splits=SPLITS):
    """One row per target: user, split, target_index, history_indices, prompt_chars, target_text."""
    block = renderer.cfg.history_layout == "block"
    for split in splits:
        for seq in prep.sequences.get(split, []):
            tl = prep.timeline(seq.user_id)
            items, targets = seq.items_and_targets()
            tset = set(targets)
            if block:
                rendered = renderer.render(tl, items, targets)
                spans = {pos: start for start, _, pos in rendered.target_spans()}
            ln = prep.lengths[seq.user_id]
            at = ln.header_chars
            for j, pos in enumerate(items):
                if j:
                    at += ln.join_chars
                before = ln.chars_before_target(items[j - 1] if j else None, pos)  # a dialogue line: new turns
                if pos in tset:
                    prompt_chars = spans[pos] if block else at + before
                    yield {"user": seq.user_id, "split": split, "target_index": pos,
                           "history_indices": items[:j], "prompt_chars": prompt_chars,
                           "target_text": tl.items[pos].continuation}
                at += before + ln.target_chars[pos]


def write_dump(prep, renderer, path, splits=SPLITS) -> int:
    """Write `dump_rows` as JSON Lines; returns the row count."""
    return write_jsonl(path, dump_rows(prep, renderer, splits))


def counts_table(prep) -> str:
    unit = prep.config.unit
    head = (f"{len(prep.timelines)} users, {sum(len(tl.items) for tl in prep.timelines)} items; unit {unit}, "
            f"max_length {prep.config.max_length}, history {prep.config.history_strategy}, "
            f"ablation {prep.config.ablation}{' (from cache)' if prep.from_cache else ''}")
    return "\n".join([head, *_split_lines(prep), *_notes(prep), *prep.warnings])


def _split_lines(prep) -> list[str]:
    seq_name = "windows" if prep.config.unit == "timeline" else "samples"
    rows = [("split", "users", "targets", seq_name, "tokens", "tok/target", "history", "truncated", "cut",
             "too long")]
    for split in SPLITS:
        st = prep.stats[split]
        per = f"{st.tokens / st.targets:.1f}" if st.targets else "-"
        rows.append((split, st.users, st.targets, st.sequences, st.tokens, per, st.history_items,
                     st.truncated_sequences, st.history_dropped, st.too_long))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(v).rjust(w) for v, w in zip(r, widths)) for r in rows]


def _notes(prep) -> list[str]:
    notes = ["history = history items shown; truncated = sequences whose oldest history was cut by "
             "max_length; cut = history items cut; too long = targets that do not fit max_length alone "
             "(left out)"]
    if prep.config.crowd_context != "none":
        notes.append(_crowd_note(prep))
    own_last = sum(own_turn_last(tl) for tl in prep.timelines)
    if own_last:
        notes.append(f"{own_last} dialogue item(s) have a context that ends with the user's own turn: kept "
                     "(the seeds dropped them silently)")
    if prep.skipped:
        notes.append(f"{len(prep.skipped)} record(s) skipped (--on_error skip)")
    notes += skipped_items_lines(prep.skipped_items)
    return notes


def skipped_items_lines(skipped: list) -> list[str]:
    """The items left out of kept records (--on_error skip): a count by users, then each one (file:line, record,
    user, item, field, reason), at most MAX_LISTED."""
    if not skipped:
        return []
    from usertwin.data.records import MAX_LISTED

    users = len({(p.record, p.user) for p in skipped})
    lines = [f"{len(skipped)} item(s) of {users} kept user(s) skipped (--on_error skip):"]
    lines += [f"  {p}" for p in skipped[:MAX_LISTED]]
    if len(skipped) > MAX_LISTED:
        lines.append(f"  ... and {len(skipped) - MAX_LISTED} more")
    return lines


def _crowd_note(prep) -> str:
    c = crowd.coverage(prep.timelines, prep.splits)
    if not c["items"]:
        return f"crowd context ({prep.config.crowd_context}): no item carries a rating, so no item shows it"
    share = lambda n, d: f"{100 * n / d:.1f}%" if d else "-"  # noqa: E731
    return (f"crowd context ({prep.config.crowd_context}): {c['items']:,} items show other users' ratings; "
            f"{share(c['with_others'], c['items'])} have some ({share(c['test_with_others'], c['test_items'])} "
            f"of the {c['test_items']:,} test items), the rest say no ratings")
