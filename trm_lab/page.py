"""The pieces of a self-contained HTML page: escaping, tables, grid figures, matplotlib plots as
PNG data URIs, and the page shell with its styles and Content-Security-Policy.

Inputs: values, grids (anything trm_lab.draw.as_grid takes), matplotlib drawing functions.
Outputs: HTML strings. Nothing here reads files or knows what a run is: trm_lab/report.py builds
a run's page from these pieces, and submission/report.py its timing section.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trm_lab import draw

PLOTS_HINT = "plots need matplotlib: pip install 'trm-kit[report]'"


@dataclass(frozen=True)
class Section:
    """One part of the page: an anchor id, a heading and its HTML body."""

    id: str
    title: str
    html: str


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], cls: str = "") -> str:
    """A plain table; cells are escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def fmt(x: object, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "-" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


SIZES = {"normal": (200, 4, 20), "small": (90, 2, 10)}  # target picture width, min and max cell side (px)


def grid_figure(grid: object, caption: str, *, size: str = "normal", mark: bool | None = None,
                role: str = "", extra: str = "") -> str:
    """A grid as <figure>: the picture (data URI), its dimensions, a caption and a right/wrong mark.

    The figure carries data-rows, data-cols and data-cell (cell side in px) so a reader can find each
    cell in the picture (geometry in trm_lab.draw), data-role, and data-mark ("right"/"wrong").
    """
    g = draw.as_grid(grid)
    h, w = g.shape
    attrs = f' data-role="{esc(role)}" data-rows="{h}" data-cols="{w}"'
    cls = "grid " + size
    sign = ""
    if mark is not None:
        cls += " right" if mark else " wrong"
        attrs += f' data-mark="{"right" if mark else "wrong"}"'
        sign = ' <span class="mark">&#10003;</span>' if mark else ' <span class="mark">&#10007;</span>'
    if h == 0:
        body = '<div class="empty">empty (0x0)</div>'
    else:
        target, lo, hi = SIZES[size]
        cell = draw.cell_side(max(h, w), target, lo, hi)
        H, W = draw.picture_size(h, w, cell)
        attrs += f' data-cell="{cell}"'
        body = (f'<img src="{png_data_uri(draw.png_bytes(draw.grid_image(g, cell)))}" width="{W}" height="{H}" '
                f'alt="{h}x{w} grid">')
    return (f'<figure class="{cls}"{attrs}{extra}>{body}<figcaption>{esc(caption)}{sign}'
            f'<span class="dim">{h}&#215;{w}</span></figcaption></figure>')


def plot_img(draw_fn: Callable[[Any], None], alt: str, size: tuple[float, float] = (6.4, 3.0)) -> str | None:
    """Run draw_fn(fig) on a matplotlib Figure and return it as an <img> (None without matplotlib)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=size, dpi=100)  # fixed margins: automatic layouts cost seconds per plot
    FigureCanvasAgg(fig)
    draw_fn(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return f'<img class="plot" src="{png_data_uri(buf.getvalue())}" alt="{esc(alt)}">'


def line_plots(panels: Sequence[tuple[str, str, dict[str, tuple[Sequence[float], Sequence[float]]]]],
               xlabel: str, alt: str) -> str | None:
    """Side-by-side line plots: panels of (title, ylabel, {series name: (xs, ys)})."""

    def fill(fig: Any) -> None:
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.17, top=0.88, wspace=0.3)
        for ax, (title, ylabel, series) in zip(axes, panels):
            for name, (xs, ys) in series.items():
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if len(series) > 1:
                ax.legend(fontsize=8)

    return plot_img(fill, alt, size=(4.2 * len(panels), 3.0))


def bar_plot(labels: Sequence[str], series: dict[str, Sequence[float]], title: str, xlabel: str,
             alt: str) -> str | None:
    """Horizontal grouped bars: one group per label, one bar per series."""

    def fill(fig: Any) -> None:
        ax = fig.subplots()
        fig.subplots_adjust(left=0.2, right=0.97, bottom=1.0 / fig.get_figheight(), top=1 - 0.45 / fig.get_figheight())
        n = max(1, len(series))
        height = 0.8 / n
        y = np.arange(len(labels))
        for k, (name, values) in enumerate(series.items()):
            ax.barh(y + (k - (n - 1) / 2) * height, values, height=height, label=name)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8)

    return plot_img(fill, alt, size=(6.4, 0.35 * len(labels) + 1.2))


def plot_or_hint(img: str | None) -> str:
    return img if img is not None else f'<p class="hint">{esc(PLOTS_HINT)}</p>'


CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:12px 24px}header h1{margin:0;font-size:20px}
header nav a{color:#c9d1d9;margin-right:14px;text-decoration:none}
main{padding:8px 24px 40px}section.part{background:#fff;border:1px solid #d0d7de;border-radius:6px;
padding:8px 16px 16px;margin:16px 0}h2{font-size:18px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f6f8fa}
.hint{color:#57606a;font-size:13px}pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px}
img.plot{max-width:100%;height:auto;display:block;margin:8px 0}
.task{border-top:2px solid #d0d7de;padding:6px 0 12px}.task h3{margin:8px 0;font-family:monospace}
.badge{font:12px system-ui;padding:1px 8px;border-radius:10px;margin-left:8px;vertical-align:middle}
.badge.ok{background:#dafbe1;color:#116329}.badge.no{background:#ffebe9;color:#a40e26}
.demos,.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.pair{display:flex;align-items:center;gap:4px;padding:4px;background:#f6f8fa;border-radius:4px}
.arrow{font-size:20px;color:#57606a}.test{margin-top:8px;padding-left:8px;border-left:3px solid #d0d7de}
.test h4{margin:6px 0;font-size:13px}
figure.grid{margin:0;display:inline-flex;flex-direction:column;align-items:center;padding:3px;
border:3px solid transparent;border-radius:4px}figure.grid img{image-rendering:pixelated;display:block}
figure.right{border-color:#2ea043}figure.wrong{border-color:#cf222e}
figcaption{font-size:11px;color:#57606a;text-align:center;max-width:220px}
figure.small figcaption{font-size:10px}.dim{display:block;font-family:monospace}
.mark{font-weight:bold}figure.right .mark{color:#1a7f37}figure.wrong .mark{color:#cf222e}
.empty{width:40px;height:40px;border:1px dashed #8c959f;font-size:9px;display:flex;align-items:center;
justify-content:center;text-align:center}.votes{margin:4px 0;font-size:12px;color:#57606a}
.baseline{margin-top:4px;padding:4px;background:#fff8c5;border-radius:4px}.baseline p{margin:0;font-size:12px}
input[name=show]{margin-left:12px}
#show-solved:checked~.tasks .task:not(.solved){display:none}
#show-unsolved:checked~.tasks .task.solved{display:none}
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_page(title: str, sections: Sequence[Section]) -> str:
    """The whole page: header with links to each section, then the sections in order."""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section class="part" id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.html}</section>'
                   for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><nav>{nav}</nav></header><main>{body}</main></body></html>\n")
