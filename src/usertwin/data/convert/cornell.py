"""Cornell Movie-Dialogs Corpus -> one record per character ("Chameleons"; type dialogue, English).

`raw` is the corpus folder. Files (fields separated by " +++$+++ ", encoding latin-1 / iso-8859-1):
* movie_lines.txt: lineID, characterID, movieID, character name, text;
* movie_conversations.txt: characterID 1, characterID 2, movieID, line ids as a list string
  `['L194', 'L195']` (read with a regex, never evaluated);
* movie_characters_metadata.txt (optional): characterID, name, movieID, movie title, gender ("m", "f",
  "?"), position in credits ("?" = unknown);
* movie_titles_metadata.txt (optional): movieID, title, year, IMDB rating, votes, genres as a list string.

Each of a character's lines in a conversation is an item: context = the conversation's earlier turns as
{"source": speaker name, "content": text} (the character's own earlier turns carry its own name, which is
the profile name, so they read as the twin's own), continuation = the line, continuation_prefix "". The
corpus has no timestamps: items are in conversation order (the order of movie_conversations.txt, then the
position in the conversation) and carry no timestamp; metadata {"order": n (that order over the whole
corpus), "line_id", "movie_id"}. The profile is what the prompt shows, so it holds what describes the
character and its world: {name, gender (lower case; left out when "?"), movie_title, movie_year,
movie_genres} (name and movie alone when the metadata files are absent). The corpus' bookkeeping goes to
the record's metadata {"movie_id", "credit_position" (as written, "?" = unknown)}, which no prompt shows.
The task declares role "character", so prompts name the twin "this character", not "this user". Records
are ordered by character id number (u0, u2, u10, ...).

Left out and counted: lines with an empty text ("empty line text": they are not items and not context),
lines that no conversation names ("line in no conversation"). Bad rows (wrong field count, a conversation
naming a line id missing from movie_lines.txt) stop with file:line, or are skipped and counted.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from usertwin.data.convert._common import (
    Skips,
    progress_bar,
    record,
    require_file,
    split_lines,
    user_sort_key,
)
from usertwin.errors import UsertwinError

SEP = " +++$+++ "
ENCODING = "iso-8859-1"
DESCRIPTION = "Speak as this movie character: predict the next line they say in a conversation."
ROLE = "character"  # the twin is a movie character: prompts say "this character", not "this user"
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_LIST = re.compile(r"^\s*\[.*\]\s*$")


def parse_list(text: str) -> list[str] | None:
    """"['L194', 'L195']" -> ['L194', 'L195'], without evaluating anything; None if it is not a list."""
    if not _LIST.match(text):
        return None
    return [a or b for a, b in _QUOTED.findall(text)]


def character_key(cid: str):
    return user_sort_key(cid[1:] if cid[:1] == "u" and cid[1:].isdigit() else cid)


def convert(raw_path, on_error="stop", *, progress: bool = False):
    raw, skips = Path(raw_path), Skips.of(on_error)
    if not raw.is_dir():
        raise UsertwinError(f"{raw}: expected the corpus folder (movie_lines.txt, movie_conversations.txt, "
                            "movie_characters_metadata.txt, movie_titles_metadata.txt)")
    require_file(raw / "movie_lines.txt", "the lines movie_lines.txt")
    require_file(raw / "movie_conversations.txt", "the conversations movie_conversations.txt")
    return _records(raw, skips, progress)


def _titles(path: Path, skips: Skips) -> dict:
    titles = {}
    if path.exists():
        for n, p in split_lines(path, SEP, 6, ENCODING, skips):
            genres = parse_list(p[5])
            if genres is None:
                skips.bad("genres is not a list like ['drama', 'comedy']", f"{path}:{n}", f"genres={p[5]!r}")
                continue
            titles[p[0].strip()] = {"movie_title": p[1].strip(), "movie_year": p[2].strip(), "movie_genres": genres}
    return titles


def _characters(path: Path, titles: dict, skips: Skips) -> dict:
    characters = {}
    if path.exists():
        for _n, p in split_lines(path, SEP, 6, ENCODING, skips):
            cid, name, movie, title, gender, position = (x.strip() for x in p)
            known = {"gender": gender.lower()} if gender not in ("?", "") else {}
            profile = {"name": name, **known, **titles.get(movie, {"movie_title": title})}
            characters[cid] = (profile, {"movie_id": movie, "credit_position": position})
    return characters


def _records(raw: Path, skips: Skips, progress: bool):
    titles = _titles(raw / "movie_titles_metadata.txt", skips)
    characters = _characters(raw / "movie_characters_metadata.txt", titles, skips)
    lines_path = raw / "movie_lines.txt"
    lines = {}
    for n, p in progress_bar(split_lines(lines_path, SEP, 5, ENCODING, skips, last_free=True), progress, "lines"):
        lines[p[0].strip()] = (p[1].strip(), p[2].strip(), p[3].strip(), p[4].strip(), n)
    by_char = defaultdict(list)
    used = set()
    order = 0
    conv_path = raw / "movie_conversations.txt"
    for n, p in progress_bar(split_lines(conv_path, SEP, 4, ENCODING, skips), progress, "conversations"):
        ids = parse_list(p[3])
        if not ids:
            skips.bad("line ids are not a list like ['L194', 'L195']", f"{conv_path}:{n}", f"field 4={p[3]!r}")
            continue
        missing = [i for i in ids if i not in lines]
        if missing:
            skips.bad("conversation names line ids not in movie_lines.txt", f"{conv_path}:{n}",
                      ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else ""))
            continue
        movie = p[2].strip()
        turns = []
        for line_id in ids:
            cid, _movie, name, text, _ = lines[line_id]
            used.add(line_id)
            if not text:
                continue
            by_char[cid].append({"continuation_prefix": "", "continuation": text, "context": list(turns),
                                 "metadata": {"order": order, "line_id": line_id, "movie_id": movie}})
            order += 1
            turns.append({"source": name, "content": text})
    for line_id, (_cid, _movie, _name, text, n) in lines.items():
        if not text:
            skips.count("empty line text", f"{lines_path}:{n}")
        elif line_id not in used:
            skips.count("line in no conversation", f"{lines_path}:{n}")
    for cid in sorted(by_char, key=character_key):
        profile, meta = characters.get(cid) or _from_lines(lines[by_char[cid][0]["metadata"]["line_id"]], titles)
        yield record(cid, profile, DESCRIPTION, "en", "dialogue", by_char[cid], meta, role=ROLE)


def _from_lines(first_line: tuple, titles: dict) -> tuple[dict, dict]:
    """(profile, metadata) of a character that movie_characters_metadata.txt does not list."""
    _cid, movie, name, _text, _n = first_line
    return {"name": name, **titles.get(movie, {})}, {"movie_id": movie}
