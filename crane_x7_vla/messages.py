"""How a value and an error read in a one-line message: `clip` shortens a value (one the user
typed can be any length), `one_line` turns an error message into one clipped line."""

from __future__ import annotations

import re

ECHO_CHARS = 80  # of a value the user typed, in an error line
WORD_CHARS = 240  # a longer run of characters without a space is clipped (a path fits)
LINE_CHARS = 500  # an error line longer than this is clipped


def clip(text, limit: int = ECHO_CHARS) -> str:
    """`text` for an error line: at most `limit` characters, the rest counted."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def one_line(message, limit: int = LINE_CHARS) -> str:
    """An error message as one line: line breaks become spaces, very long words and lines are clipped."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    text = re.sub(rf"\S{{{WORD_CHARS + 1},}}", lambda m: clip(m.group(0), WORD_CHARS - 40), text)
    return clip(text, limit)
