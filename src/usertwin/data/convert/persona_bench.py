"""PERSONA-Bench (PersonaConvBench: Reddit posts with their comment trees, PERSONA-bench/PERSONA) -> one record
per post author (type dialogue, English).

`raw` is merged_posts_remapped.json ({author: [post, ...]}, the release's grouped file) or
Raw_Data_Postized.json (the flat list of posts on Hugging Face, each naming its author), or a folder holding
one of them. A post: {"author", "title", "content", "__sub__" (the subreddit), "score", "timestamp",
"comments": [{"author", "body", "score", "timestamp", "replies": [comment, ...]}]}.

The twin is the post's author and its targets are the author's own comments in the threads of their posts (the
benchmark's next-text generation task): each is an item, continuation = body, context = the thread from the
post down to the comment it answers: the post first ({"source": author, "content": title, a blank line,
content}), then every comment on the way, each {"source": its author, "content": body} (the author's own turns
carry the author's name, the profile's name, so they read as the twin's), timestamp = the comment's timestamp
as written, metadata {"conversation_id": "<post>:<top-level comment>", "comment_id" (the benchmark's numbering:
`<post>-c<n>` nested under its parent's id, n counting a post's comments depth first; <post> is "<author>/<i>"
in the grouped file, the list index in the flat one), "subreddit", "score"}. Items are in time order (the seeds' temporal-history fix:
history is only the author's earlier replies), ties in file order. Profile {"name": author}; Reddit gives no
more. Comments by others are context only.

Left out and counted: the author's comments whose body is empty, "[deleted]" or "[removed]" ("deleted
comment"). Bad data (a post that is not an object, comments that are not a list, an author's comment with a
body that is not a string or a timestamp that is not a time) stops with the file, the post, the comment, the
user and the field, or is skipped and counted.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from usertwin.data.convert._common import Skips, progress_bar, read_json, record, user_sort_key
from usertwin.data.records import parse_timestamp
from usertwin.errors import UsertwinError

DESCRIPTION = "Reply as this Reddit user in the threads of their own posts: predict the next comment they write."
NAMES = ("merged_posts_remapped.json", "Raw_Data_Postized.json")
GONE = ("", "[deleted]", "[removed]")


def convert(raw_path, on_error="stop", *, progress: bool = False):
    path, skips = _file(Path(raw_path)), Skips.of(on_error)
    return _records(path, _posts(path), skips, progress)


def _file(raw: Path) -> Path:
    if not raw.is_dir():
        return raw
    for name in NAMES:
        if (raw / name).exists():
            return raw / name
    found = sorted(raw.glob("*.json"))
    if len(found) != 1:
        raise UsertwinError(f"{raw}: expected {' or '.join(NAMES)} (or exactly one .json file), found "
                            f"{', '.join(p.name for p in found) or 'none'}")
    return found[0]


def _posts(path: Path) -> list[tuple[str, int, object]]:
    """(author key, index, post) of every post: grouped by author ({author: [post]}), or a flat list (key None,
    index in the list)."""
    data = read_json(path)
    if isinstance(data, dict):
        out = []
        for author, posts in data.items():
            if not isinstance(posts, list):
                raise UsertwinError(f"{path}: author {author!r}: expected a list of posts, got "
                                    f"{type(posts).__name__}")
            out += [(author, n, p) for n, p in enumerate(posts)]
        return out
    if isinstance(data, list):
        return [(None, n, p) for n, p in enumerate(data)]  # each post names its author
    raise UsertwinError(f"{path}: expected posts grouped by author {{author: [post, ...]}} or a list of posts, "
                        f"got {type(data).__name__}")


def _records(path: Path, posts: list, skips: Skips, progress: bool):
    items = defaultdict(list)  # author -> [(time, order, item)]
    for key, n, post in progress_bar(posts, progress, "posts", unit="post"):
        where = f"{path}, post {n}" + (f" of author {key!r}" if isinstance(key, str) else "")
        if not isinstance(post, dict):
            skips.bad("post is not an object", where)
            continue
        author = post.get("author") or key
        if not isinstance(author, str) or not author.strip():
            skips.bad("post without an author", where, f"field author={author!r}")
            continue
        opening = "\n\n".join(str(x).strip() for x in (post.get("title"), post.get("content")) if x)
        thread = [{"source": author, "content": opening}] if opening else []
        pid = f"{key}/{n}" if isinstance(key, str) else str(n)
        sub = post.get("__sub__")
        counter = [0]  # the benchmark numbers comments <post>-c1, -c2, ... in each post, depth first
        _walk(post.get("comments"), thread, pid, pid, author, sub, f"{where} (user {author!r})", items, counter,
              skips)
    for author in sorted(items, key=user_sort_key):
        ordered = [it for _t, _n, it in sorted(items[author], key=lambda x: (x[0], x[1]))]
        yield record(author, {"name": author}, DESCRIPTION, "en", "dialogue", ordered)


def _walk(comments, thread: list, parent: str, post_id: str, author: str, sub, where: str, items, counter,
          skips: Skips, top: str | None = None) -> None:
    """The author's comments under `parent` as items; `thread` is the context down to `parent`."""
    if comments in (None, []):
        return
    if not isinstance(comments, list):
        skips.bad("comments are not a list", f"{where}, under {parent}", "field comments/replies")
        return
    for c in comments:
        if not isinstance(c, dict):
            skips.bad("comment is not an object", f"{where}, under {parent}")
            continue
        counter[0] += 1
        cid = f"{parent}-c{counter[0]}"
        body = c.get("body")
        said = body.strip() if isinstance(body, str) else ""
        if c.get("author") == author:
            _item(c, cid, thread, post_id, top or cid, author, sub, f"{where}, comment {cid}", items, skips)
        turn = [{"source": c.get("author") or "[deleted]", "content": said}] if said not in GONE else []
        _walk(c.get("replies"), thread + turn, cid, post_id, author, sub, where, items, counter, skips, top or cid)


def _item(c: dict, cid: str, thread: list, post_id: str, top: str, author: str, sub, where: str, items,
          skips: Skips) -> None:
    body = c.get("body")
    if body is not None and not isinstance(body, str):
        skips.bad("body is not a string", where, f"field body={body!r}")
        return
    if (body or "").strip() in GONE:
        skips.count("deleted comment", where)
        return
    stamp = c.get("timestamp")
    try:
        ts = parse_timestamp(stamp)
    except ValueError as e:
        skips.bad("timestamp is not a time", where, f"field timestamp={stamp!r}: {e}")
        return
    meta = {"conversation_id": f"{post_id}:{top}", "comment_id": cid, "subreddit": sub, "score": c.get("score")}
    items[author].append((ts, len(items[author]), {
        "continuation_prefix": "", "continuation": body.strip(), "context": list(thread), "timestamp": stamp,
        "metadata": meta}))
