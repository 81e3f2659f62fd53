"""REALTALK (21 days of real messaging-app chats between pairs of people, danny911kr/REALTALK) -> one record per
speaker (type dialogue, English).

`raw` is one chat file or a folder of them (every *.json in it, in name order; subfolders are not read, so the
repository's data/ folder converts its ten REALTALK chats and leaves data/locomo/ and data/raw/ alone). A chat
file is one pair of speakers:
    {"name": {"speaker_1": "Emi", "speaker_2": "elise"},
     "session_1": [{"clean_text", "speaker", "date_time": "29.12.2023, 22:42:04", "dia_id": "D1:1",
                    "img_file", "img_url", "blip_caption" (when a photo was shared)}, ...],
     "session_1_date_time": "...", "events_session_1": {...}, ..., "qa": [...]}
The LoCoMo layout that REALTALK continues is read too: {"conversation": {"speaker_a", "speaker_b", "session_N":
[{"speaker", "text", "dia_id"}], "session_N_date_time": "1:56 pm on 8 May, 2023"}, ...}, one such object or a
list of them (locomo10.json); its messages carry no time of their own, so each takes its session's time.

A REALTALK speaker is one person across files (REALTALK pairs each participant with several others; user id =
the name); a LoCoMo speaker is a person of one sample (user id "<sample>/<name>": two samples have a John).
Every message of a speaker is an item, continuation = the text, context = the session's earlier messages as {"source": speaker
name, "content"} (their own carry their own name, the profile's name), timestamp = the message's time in ISO
8601 (`2023-12-30T00:32:20`; the chats give no time zone), metadata {"conversation_id": "<file stem>:
session_N", "dia_id", "partner", "image_caption" (the photo's caption, when one was shared)}. Items are in time
order, ties in file order. Profile {"name"}: the published chats hold no persona block (the event annotations
and QA describe sessions, and would leak later facts into every prompt), so they are not used.

Left out and counted: messages with an empty text ("empty message"). Bad data (a message whose speaker is not
one of the chat's two, a text that is not a string, a time that is not `DD.MM.YYYY, HH:MM:SS`) stops with the
file, the message, the user and the field, or is skipped and counted.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections import defaultdict
from pathlib import Path

from usertwin.data.convert._common import Skips, progress_bar, read_json, record, user_sort_key
from usertwin.errors import UsertwinError

DESCRIPTION = "Continue this person's real-world messaging conversations: predict the next message they send."
_SESSION = re.compile(r"^session_(\d+)$")
_REALTALK_TIME = "%d.%m.%Y, %H:%M:%S"
_LOCOMO_TIME = "%I:%M %p on %d %B, %Y"


def convert(raw_path, on_error="stop", *, progress: bool = False):
    raw, skips = Path(raw_path), Skips.of(on_error)
    if raw.is_dir():
        files = sorted(raw.glob("*.json"))
        if not files:
            raise UsertwinError(f"{raw}: no chat files (*.json) in this folder")
    else:
        files = [raw]
    return _records(files, skips, progress)


def iso_time(text, layout: str) -> str:
    """'30.12.2023, 00:32:20' -> '2023-12-30T00:32:20'; ValueError when it is not in `layout`."""
    if not isinstance(text, str):
        raise ValueError(f"not text: {text!r}")
    return _dt.datetime.strptime(text.strip(), layout).isoformat()


def _chats(path: Path) -> list[tuple[str, dict]]:
    """(conversation prefix, chat) pairs of a file: one REALTALK chat, or LoCoMo samples."""
    data = read_json(path)
    samples = data if isinstance(data, list) else [data]
    out = []
    for n, s in enumerate(samples):
        if not isinstance(s, dict) or not ("name" in s or "conversation" in s):
            raise UsertwinError(f"{path}: expected a REALTALK chat ({{\"name\", \"session_1\", ...}}) or LoCoMo "
                                f"samples ({{\"conversation\": ...}}); entry {n} is neither")
        tag = s.get("sample_id") or (f"{path.stem}#{n}" if len(samples) > 1 else path.stem)
        out.append((str(tag), s))
    return out


def _layout(chat: dict) -> tuple[dict, list[str], str]:
    """(the dict holding the sessions, the two speakers, the layout's name)."""
    if "conversation" in chat:
        conv = chat["conversation"] if isinstance(chat["conversation"], dict) else {}
        return conv, [conv.get("speaker_a"), conv.get("speaker_b")], "locomo"
    names = chat["name"] if isinstance(chat["name"], dict) else {}
    return chat, [names.get("speaker_1"), names.get("speaker_2")], "realtalk"


def _sessions(conv: dict) -> list[str]:
    """session_1, session_2, ..., session_10 in number order."""
    numbered = sorted((int(m.group(1)), key) for key in conv for m in [_SESSION.match(key)] if m)
    return [key for _n, key in numbered]


def _records(files: list[Path], skips: Skips, progress: bool):
    items = defaultdict(list)  # user id -> [(time, order, item)]
    names = {}  # user id -> the speaker's name
    order = 0
    for path in progress_bar(files, progress, "chats", unit="file"):
        for tag, chat in _chats(path):
            conv, pair, layout = _layout(chat)
            if not all(isinstance(p, str) and p.strip() for p in pair):
                skips.bad("the chat does not name its two speakers", f"{path}",
                          "field name.speaker_1/speaker_2" if layout == "realtalk" else "field speaker_a/speaker_b")
                continue
            for key in _sessions(conv):
                session = conv[key]
                if not isinstance(session, list):
                    skips.bad("session is not a list of messages", f"{path}, {key}", f"field {key}")
                    continue
                start = conv.get(f"{key}_date_time")
                turns = []
                for i, m in enumerate(session):
                    msg = _message(m, f"{path}, {key}[{i}]", pair, layout, start, skips)
                    if msg is None:
                        continue
                    who, text, stamp = msg
                    # REALTALK pairs each participant with several others; LoCoMo's people (two Johns) are per sample
                    uid = who if layout == "realtalk" else f"{tag}/{who}"
                    names[uid] = who
                    meta = {"conversation_id": f"{tag}:{key}", "dia_id": m.get("dia_id"),
                            "partner": next(p for p in pair if p != who) if pair[0] != pair[1] else who}
                    if m.get("blip_caption"):
                        meta["image_caption"] = m["blip_caption"]
                    items[uid].append((stamp, order, {
                        "continuation_prefix": "", "continuation": text, "timestamp": stamp,
                        "context": [{"source": s, "content": c} for s, c in turns], "metadata": meta}))
                    order += 1
                    turns.append((who, text))
    for uid in sorted(items, key=user_sort_key):
        ordered = [it for _t, _n, it in sorted(items[uid], key=lambda x: (x[0], x[1]))]
        yield record(uid, {"name": names[uid]}, DESCRIPTION, "en", "dialogue", ordered)


def _message(m, where: str, pair: list, layout: str, session_time, skips: Skips):
    """(speaker, text, ISO time) of one message; None when left out."""
    if not isinstance(m, dict):
        skips.bad("message is not an object", where)
        return None
    who = m.get("speaker")
    if who not in pair:
        skips.bad(f"speaker is not one of the chat's two ({pair[0]!r}, {pair[1]!r})", where,
                  f"field speaker={who!r}")
        return None
    where += f" (user {who!r})"
    field = "clean_text" if layout == "realtalk" else "text"
    text = m.get(field)
    if not isinstance(text, str):
        skips.bad(f"{field} is not a string", where, f"field {field}={text!r}")
        return None
    if not text.strip():
        skips.count("empty message", where)
        return None
    key, value, fmt = (("date_time", m.get("date_time"), _REALTALK_TIME) if layout == "realtalk"
                       else ("session date_time", session_time, _LOCOMO_TIME))
    try:
        stamp = iso_time(value, fmt)
    except ValueError:
        shown = "'DD.MM.YYYY, HH:MM:SS'" if layout == "realtalk" else "'1:56 pm on 8 May, 2023'"
        skips.bad(f"{key} is not a time like {shown}", where, f"field {key}={value!r}")
        return None
    return who, text.strip(), stamp
