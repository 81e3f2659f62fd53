"""Cornell Movie-Dialogs Corpus -> one record per character ("Chameleons").

Files (separator " +++$+++ ", latin-1): movie_lines.txt (lineID, characterID, movieID, name, text),
movie_conversations.txt (characterID 1, characterID 2, movieID, ['L194', 'L195', ...]),
movie_characters_metadata.txt (characterID, name, movieID, title, gender, position in credits),
movie_titles_metadata.txt (movieID, title, year, IMDB rating, votes, ['genre', ...]).

Each of a character's lines in a conversation is an item: context = the conversation's earlier turns
({source: speaker name, content}), continuation = the line. The corpus has no timestamps: items are in
conversation order (the order of movie_conversations.txt, then position in the conversation), kept as
metadata.order. Lines with an empty text are left out and counted; a conversation that names a line id
missing from movie_lines.txt is an error (or a counted skip).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from ..errors import UsertwinError
from . import progress_bar, record, require_file, user_sort_key

SEP = " +++$+++ "
DESCRIPTION = ("Speak as this movie character: given the conversation so far, predict the next line the "
               "character says.")
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def parse_list(text: str) -> list[str]:
    """"['L194', 'L195']" -> ['L194', 'L195'] without evaluating anything."""
    return [a or b for a, b in _QUOTED.findall(text)]


def _rows(path: Path, fields: int, skips):
    require_file(path, path.name)
    with open(path, encoding="iso-8859-1", newline="") as f:
        for n, text in enumerate(f, 1):
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            parts = text.split(SEP)
            if len(parts) != fields:
                skips.bad(f"expected {fields} fields separated by '{SEP.strip()}', got {len(parts)}",
                          f"{path}:{n}")
                continue
            yield n, parts


def convert(raw: Path, skips, progress: bool = True):
    if not raw.is_dir():
        raise UsertwinError(f"{raw}: expected the corpus folder (movie_lines.txt, movie_conversations.txt, ...)")
    titles = {p[0]: {"movie_title": p[1], "movie_year": p[2], "movie_genres": parse_list(p[5])}
              for _, p in _rows(raw / "movie_titles_metadata.txt", 6, skips)}
    characters = {}
    for _, p in _rows(raw / "movie_characters_metadata.txt", 6, skips):
        cid, name, movie, title, gender, position = p
        movie_info = titles.get(movie, {"movie_title": title})
        characters[cid] = {"name": name.strip(), "gender": gender.strip(),
                           "credit_position": position.strip(), **movie_info, "movie_id": movie}
    lines = {}
    for _, p in progress_bar(_rows(raw / "movie_lines.txt", 5, skips), progress, "lines"):
        lines[p[0]] = (p[1], p[3].strip(), p[4].strip())
    by_char = defaultdict(list)
    order = 0
    conv_path = raw / "movie_conversations.txt"
    for n, p in _rows(conv_path, 4, skips):
        ids = parse_list(p[3])
        missing = [i for i in ids if i not in lines]
        if missing:
            skips.bad("conversation names line ids not in movie_lines.txt", f"{conv_path}:{n}",
                      ", ".join(missing[:5]))
            continue
        turns = []
        for line_id in ids:
            cid, name, text = lines[line_id]
            if text:
                by_char[cid].append({"context": list(turns), "continuation": text,
                                     "continuation_prefix": "",
                                     "metadata": {"order": order, "line_id": line_id, "movie_id": p[2]}})
                order += 1
                turns.append({"source": name, "content": text})
            else:
                skips.count("empty line text")
    for cid in sorted(by_char, key=lambda c: user_sort_key(c.lstrip("u"))):
        profile = characters.get(cid) or {"name": by_char[cid][0].get("name", cid)}
        yield record(cid, profile, DESCRIPTION, "en", "dialogue", by_char[cid])
