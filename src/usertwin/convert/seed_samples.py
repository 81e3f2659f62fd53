"""The seeds' extracted sample files -> one record per user_hash (for users migrating from those scripts).

A sample is {context: [{role, content}], next_question, user_profile, user_object, task_description,
user_hash}; in the seeds, role "assistant" is the twin's own earlier turn and "user" the interlocutor. In
records the twin's own turns have source "user" and others any other name, so assistant -> "user",
user -> "Partner". Items keep file order (no timestamps; metadata.order). A directory is read file by file
in name order; a sample that appears again (same user, context and target: the seeds' val_samples.json
repeats 20 samples of all_samples.json) is kept once and counted.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

from ..errors import UsertwinError
from . import record

PARTNER = "Partner"


def _language(texts) -> str:
    joined = "".join(texts)
    if any("\u3040" <= ch <= "\u30ff" for ch in joined):
        return "ja"
    cjk = sum(1 for ch in joined if "\u4e00" <= ch <= "\u9fff")
    return "zh" if cjk > 0.2 * max(1, len(joined)) else "en"


def convert(raw: Path, skips, progress: bool = True):
    files = sorted(raw.glob("*.json")) if raw.is_dir() else [raw]
    users: OrderedDict[str, dict] = OrderedDict()
    seen = set()
    order = 0
    for path in files:
        try:
            samples = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UsertwinError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None
        if not isinstance(samples, list):
            raise UsertwinError(f"{path}: expected a list of samples")
        for i, s in enumerate(samples):
            where = f"{path}, sample {i}"
            if not isinstance(s, dict) or not s.get("user_hash"):
                skips.bad("sample without user_hash", where)
                continue
            target = s.get("next_question")
            if not isinstance(target, str) or not target.strip():
                skips.bad("sample without a next_question string", where, f"user {s.get('user_hash')!r}")
                continue
            context = [{"source": "user" if t.get("role") == "assistant" else PARTNER,
                        "content": str(t.get("content", ""))} for t in s.get("context") or []]
            key = (s["user_hash"], target, json.dumps(context, ensure_ascii=False))
            if key in seen:
                skips.count("duplicate sample")
                continue
            seen.add(key)
            u = users.setdefault(s["user_hash"], {"profile": s.get("user_profile") or {},
                                                  "task": s.get("task_description") or "", "items": []})
            u["items"].append({"context": context, "continuation": target, "continuation_prefix": "",
                               "metadata": {"order": order, "source_file": path.name}})
            order += 1
    for uid, u in users.items():
        lang = _language(it["continuation"] for it in u["items"][:50])
        profile = dict(u["profile"]) or {"name": uid}
        yield record(uid, profile, u["task"], lang, "dialogue", u["items"])
