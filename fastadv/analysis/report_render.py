"""A report as a list of blocks, rendered to Markdown and to one self-contained HTML file
(figures embedded as base64 data URIs, inline CSS, no script, nothing fetched)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str  # inline `code` and **bold** are rendered in HTML too


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric_from: int = 1  # columns from this index on are right-aligned in HTML


@dataclass
class Figure:
    file: str  # PNG file name inside the report folder
    alt: str
    caption: str = ""


@dataclass
class Doc:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> None:
        self.blocks.extend(blocks)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Doc) -> str:
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Figure):
            out += [f"![{b.alt}]({b.file})", ""]
            if b.caption:
                out += [b.caption, ""]
    return "\n".join(out)


_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    """Escape text, then turn `code` and **bold** into tags."""
    parts, last = [], 0
    for m in _INLINE.finditer(text):
        parts.append(html.escape(text[last:m.start()]))
        parts.append(f"<code>{html.escape(m.group(1))}</code>" if m.group(1) is not None
                     else f"<strong>{html.escape(m.group(2))}</strong>")
        last = m.end()
    parts.append(html.escape(text[last:]))
    return "".join(parts)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #1a1a1a; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #c8c8c8; padding: 0.25em 0.6em; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f4f4f4; padding: 0 0.2em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
"""


def to_html(doc: Doc, folder: Path) -> str:
    """One HTML document; each Figure's PNG is read from `folder` and embedded."""
    body = [f"<h1>{_inline(doc.title)}</h1>"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            level = min(max(b.level, 2), 6)
            body.append(f"<h{level}>{_inline(b.text)}</h{level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            rows = []
            for row in b.rows:
                cells = "".join(f'<td class="num">{_inline(c)}</td>' if j >= b.numeric_from else f"<td>{_inline(c)}</td>"
                                for j, c in enumerate(row))
                rows.append(f"<tr>{cells}</tr>")
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode((folder / b.file).read_bytes()).decode("ascii")
            caption = f"<figcaption>{_inline(b.caption)}</figcaption>" if b.caption else ""
            body.append(f'<figure><img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}">{caption}</figure>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(doc.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
