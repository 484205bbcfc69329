"""Self-contained HTML pages: one file, styles inline, images embedded as base64 PNG data URIs,
no scripts and no network, so a report opens anywhere (offline, attached to an email).

Build a page from pieces: `page(title, [heading(...), paragraph(...), table(...), image(...)])`.
Every text argument is escaped here; callers pass plain strings.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
p.note { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: .88rem; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .35rem .55rem; text-align: right;
         white-space: nowrap; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
th { background: #f4f4f6; position: sticky; top: 0; white-space: normal; }
td.best { background: #e3f4e1; font-weight: 600; }
tr.failed td { color: #b00020; white-space: normal; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 1rem; }
figure { margin: 0; } figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
h3 { font-size: 1rem; margin: 1.4rem 0 .3rem; }
pre.text { white-space: pre-wrap; word-break: break-word; background: #f7f7f9; margin: 0;
           padding: .5rem .7rem; font-size: .84rem; border-left: 3px solid #ccd; }
table.texts td { white-space: pre-wrap; word-break: break-word; text-align: left;
                 vertical-align: top; font-family: ui-monospace, monospace; font-size: .84rem; }
table.texts td:first-child { font-family: inherit; font-weight: 600; width: 11rem; }
table.texts caption { caption-side: top; text-align: left; font-size: .85rem; color: #555;
                      padding: .3rem 0; white-space: pre-wrap; }
"""
BEST = ' class="best"'


def page(title: str, parts: Iterable[str]) -> str:
    """A complete HTML document holding `parts` (already-rendered fragments)."""
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def heading(text: str, level: int = 2) -> str:
    return f"<h{level}>{escape(text)}</h{level}>"


def paragraph(text: str, *, note: bool = False) -> str:
    attributes = ' class="note"' if note else ""
    return f"<p{attributes}>{escape(text)}</p>"


def bullet_list(items: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>"


def image(png: bytes, caption: str) -> str:
    """A figure with the PNG embedded as a data URI, and its caption (also the alt text)."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def charts(figures: Iterable[str]) -> str:
    """Figures side by side in a responsive grid."""
    return '<div class="charts">' + "".join(figures) + "</div>"


def text_block(title: str, text: str) -> str:
    """A small heading over a preformatted text (a prompt as the model saw it)."""
    return f'<h3>{escape(title)}</h3><pre class="text">{escape(text)}</pre>'


def text_table(rows: Sequence[tuple[str, str]], *, caption: str = "") -> str:
    """Two columns, a label and a free text (line breaks kept), e.g. one output per row."""
    lines = [f'<table class="texts"><caption>{escape(caption)}</caption><tbody>']
    lines += [f"<tr><td>{escape(label)}</td><td>{escape(text)}</td></tr>" for label, text in rows]
    lines.append("</tbody></table>")
    return "\n".join(lines)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    best: set[tuple[int, int]] = frozenset(),
    failed_rows: set[int] = frozenset(),
) -> str:
    """A table of text cells; `best` cells (row, column) are highlighted, `failed_rows` red."""
    head = "".join(f"<th>{escape(text)}</th>" for text in headers)
    lines = [f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>"]
    for index, row in enumerate(rows):
        cells = "".join(
            f"<td{BEST if (index, column) in best else ''}>{escape(text)}</td>"
            for column, text in enumerate(row)
        )
        attributes = ' class="failed"' if index in failed_rows else ""
        lines.append(f"<tr{attributes}>{cells}</tr>")
    lines.append("</tbody>\n</table>")
    return "\n".join(lines)
