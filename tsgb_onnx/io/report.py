"""One HTML index page: per input its picture, its maps (top-k classes) and their scores."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from tsgb_onnx.io.atomic import write_text_atomic
from tsgb_onnx.io.render import png_bytes


@dataclass
class MapEntry:
    """One explained class of one input."""

    rank: int
    target: int
    label: str | None
    logit: float
    prob: float
    picture: str  # an <img> src: a relative file path or a data: URI
    note: str | None = None  # the sign-balance note (positive part empty or small)


@dataclass
class InputEntry:
    name: str
    picture: str | None  # an <img> src, or None when the input has no picture
    maps: list[MapEntry] = field(default_factory=list)
    error: str | None = None  # why the input was skipped (no picture, no maps)


def data_uri(rgb) -> str:
    """A PNG data URI of a uint8 RGB array."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } .meta { color: #555; font-size: .9em; }
table { border-collapse: collapse; } td, th { padding: 6px 10px; vertical-align: top;
  border-bottom: 1px solid #ddd; text-align: left; }
figure { display: inline-block; margin: 0 8px 0 0; }
figcaption { font-size: .85em; max-width: 224px; }
img { width: 224px; image-rendering: pixelated; display: block; }
.failed { color: #b00; } .note { color: #b00; }
"""


def render_index(entries: list[InputEntry], title: str, meta: dict[str, str]) -> str:
    """The HTML text of the index page."""
    e = html.escape
    k = max((len(x.maps) for x in entries), default=1)
    head = "".join(f"<th>top-{r + 1}</th>" if k > 1 else "<th>map</th>" for r in range(k))
    rows = []
    for entry in entries:
        if entry.picture:
            pic = f'<img src="{e(entry.picture)}" alt="input {e(entry.name)}">'
        else:
            pic = "<em>no picture</em>" if entry.error is None else "<em>failed</em>"
        cells = [f"<td><figure>{pic}<figcaption>{e(entry.name)}</figcaption></figure></td>"]
        if entry.error is not None:
            cells.append(f'<td colspan="{k}" class="failed">skipped: {e(entry.error)}</td>')
        for m in entry.maps:
            name = f"{m.target}" + (f" {e(m.label)}" if m.label else "")
            note = f'<br><span class="note">note: {e(m.note)}</span>' if m.note else ""
            cells.append(
                f'<td><figure><img src="{e(m.picture)}" alt="map of class {e(name)}">'
                f"<figcaption>class {name}<br>p = {m.prob:.3f}, logit {m.logit:.3f}{note}"
                f"</figcaption></figure></td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    meta_text = " · ".join(f"{e(key)}: {e(str(value))}" for key, value in meta.items())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>\n"
        f'<h1>{e(title)}</h1><p class="meta">{meta_text}</p>\n'
        f"<table><thead><tr><th>input</th>{head}</tr></thead><tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>\n</body></html>\n"
    )


def write_index(path: Path, entries: list[InputEntry], title: str, meta: dict[str, str]) -> None:
    write_text_atomic(path, render_index(entries, title, meta))
