"""The title of an HTML page, found with a real HTML parser (the standard library's)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from parser_bridge.parse.result import MAX_TITLE_CHARS

FEED_CHUNK = 64 * 1024
_SPACE = re.compile(r"\s+")


class _TitleParser(HTMLParser):
    """Collects the text of the first `<title>` outside `<svg>`/`<math>` (whose titles are tooltips)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.in_title = False
        self.done = False
        self._foreign_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("svg", "math"):
            self._foreign_depth += 1
        elif tag == "title" and not self._foreign_depth and not self.done:
            self.in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("svg", "math") and self._foreign_depth:
            self._foreign_depth -= 1
        elif tag == "title" and self.in_title:
            self.in_title = False
            self.done = True

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.parts.append(data)


def extract_title(html: str) -> str | None:
    """The first title's text with whitespace collapsed, cut to MAX_TITLE_CHARS; None if the
    page has no title (or an empty one)."""
    parser = _TitleParser()
    for start in range(0, len(html), FEED_CHUNK):
        parser.feed(html[start:start + FEED_CHUNK])
        if parser.done:
            break
    else:
        parser.close()
    title = _SPACE.sub(" ", "".join(parser.parts)).strip()
    return title[:MAX_TITLE_CHARS] or None
