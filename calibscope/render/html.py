"""HTML primitives of the report: escaped text, table cells that carry their full-precision value
(``data-value``, ``data-key``, ``data-model``), tables, notes, and figures embedded as inline SVG or PNG
data URIs. Knows nothing of the report's sections."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from calibscope.render.report_model import FigureFormat

__all__ = ["Cell", "FigureEmbedder", "Row", "cell_html", "esc", "note_html", "table_html", "value_repr"]

@dataclass(frozen=True)
class Cell:
    """A table cell: the ``text`` shown and, for a number, its full-precision ``value`` under ``key`` (written
    as ``data-key`` / ``data-model`` / ``data-value`` attributes)."""

    text: str
    value: float | int | None = None
    key: str | None = None
    model: str | None = None
    css: str = ""


@dataclass(frozen=True)
class Row:
    """A labelled table row (``label`` may hold a short explanation in ``hint``)."""

    key: str
    label: str
    cells: tuple[Cell, ...]
    hint: str = ""


# --------------------------------------------------------------------------------------------------------
# HTML primitives
# --------------------------------------------------------------------------------------------------------


def esc(text: Any) -> str:
    """HTML-escaped text (quotes too, so it is safe in attributes)."""
    return html.escape(str(text), quote=True)


def value_repr(value: float | int | None) -> str:
    """The exact value for ``data-value``: ``repr`` of the float (round-trips), ``nan``/``inf`` spelt out."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def cell_html(cell: Cell, tag: str = "td") -> str:
    attrs = []
    if cell.css:
        attrs.append(f'class="{esc(cell.css)}"')
    if cell.key is not None:
        attrs.append(f'data-key="{esc(cell.key)}"')
        if cell.model is not None:
            attrs.append(f'data-model="{esc(cell.model)}"')
        if cell.value is not None:
            attrs.append(f'data-value="{esc(value_repr(cell.value))}"')
    opening = f"<{tag} {' '.join(attrs)}>" if attrs else f"<{tag}>"
    return f"{opening}{esc(cell.text)}</{tag}>"


def table_html(header: Sequence[str], rows: Iterable[Row], *, caption: str | None = None,
               css: str = "", text_columns: Sequence[int] = ()) -> str:
    """A table with a header row and labelled rows (the label in a ``th``). Columns are right-aligned
    (numbers) except the label column and those in ``text_columns`` (indices into ``header``)."""
    out = [f'<div class="table-wrap"><table class="{esc(css)}">' if css else '<div class="table-wrap"><table>']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(
        f'<th scope="col" class="text">{esc(h)}</th>' if i in text_columns else f'<th scope="col">{esc(h)}</th>'
        for i, h in enumerate(header)) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        hint = f' <span class="hint">{esc(row.hint)}</span>' if row.hint else ""
        out.append(f'<tr data-row="{esc(row.key)}"><th scope="row">{esc(row.label)}{hint}</th>'
                   + "".join(cell_html(c) for c in row.cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def note_html(text: str, *, kind: str = "note") -> str:
    return f'<p class="{esc(kind)}">{esc(text)}</p>'


# --------------------------------------------------------------------------------------------------------
# figures: inline SVG or PNG data URI
# --------------------------------------------------------------------------------------------------------

_SVG_PREAMBLE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_SVG_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)
_SVG_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')
_SVG_IDS = re.compile(r'(\bid="|url\(#|href="#)')
_SVG_STYLE = re.compile(r"<style type=\"text/css\">\*\{")
_INDENT = re.compile(r"\n[ \t]+")


class FigureEmbedder:
    """Turns matplotlib Figures into HTML ``<figure>`` elements that need nothing outside the page.

    ``fmt``: ``"svg"`` (vector, inline), ``"png"`` (``data:`` URI at ``dpi``) or ``"auto"``: PNG alone for a
    figure dense with marks (:meth:`dense` — there the SVG is 1.1–2.5× the PNG and slower to write), else SVG,
    and for an SVG above ``PNG_TRY_ABOVE`` bytes the PNG too, keeping the smaller (every figure is drawn once,
    except those large SVGs). Inline SVGs get unique element ids (a per-figure prefix) and lose the XML
    preamble, the RDF metadata and the namespace declarations (an HTML parser supplies the SVG namespace), so
    the page holds no ``http://`` string at all. SVG text is kept as text (``svg.fonttype = "none"``, set only
    for the duration of the save): smaller, selectable, and drawn in the reader's sans-serif font.
    """

    PNG_TRY_ABOVE = 96_000  # a PNG data URI of a whole figure at 144 dpi is ≈ 100 kB or more
    DENSE_MARKERS = 300  # scatter markers (PathCollection offsets) in the figure
    DENSE_VERTICES = 1_000  # vertices of one filled region (fill_between bands)

    def __init__(self, fmt: FigureFormat = "auto", *, dpi: int = 144):
        if fmt not in ("auto", "svg", "png"):
            raise ValueError(f"Expected a figure format of auto, svg or png, but got {fmt!r}")
        self.fmt = fmt
        self.dpi = dpi
        self.count = 0

    def _svg(self, fig: Figure, prefix: str) -> str:
        import matplotlib

        buffer = io.BytesIO()
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
            fig.savefig(buffer, format="svg", metadata={"Date": None})
        text = buffer.getvalue().decode("utf-8")
        text = _SVG_PREAMBLE.sub("", text, count=1)
        text = _SVG_METADATA.sub("", text, count=1)
        text = _SVG_XMLNS.sub("", text)
        text = _SVG_IDS.sub(lambda m: m.group(1) + prefix + "-", text)
        # matplotlib's stylesheet is `*{...}`: keep it to this figure
        text = _SVG_STYLE.sub(f'<style type="text/css">#{prefix} *{{', text)
        text = _INDENT.sub("\n", text).strip()
        return text.replace("<svg ", f'<svg id="{prefix}" role="img" ', 1)

    @classmethod
    def dense(cls, fig: Figure) -> bool:
        """Whether an SVG of ``fig`` would be large: ≥ ``DENSE_MARKERS`` scatter markers, or a filled region of
        ≥ ``DENSE_VERTICES`` vertices (on the sample report: CORP bands of 2,697 vertices, SVG 250 kB vs PNG
        100 kB; projections with 609 markers, 172 vs 161 kB; a 4,271-point line stays a 31 kB SVG)."""
        from matplotlib.collections import PathCollection, PolyCollection

        markers = 0
        for ax in fig.axes:
            for artist in ax.collections:
                if isinstance(artist, PathCollection):
                    markers += len(artist.get_offsets())
                elif isinstance(artist, PolyCollection):
                    if max((len(path.vertices) for path in artist.get_paths()), default=0) >= cls.DENSE_VERTICES:
                        return True
        return markers >= cls.DENSE_MARKERS

    def _png(self, fig: Figure) -> str:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=self.dpi)
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def html(self, fig: Figure, *, alt: str, caption: str | None = None, wide: bool = False) -> str:
        """``<figure>`` with the figure inline and an optional caption. ``alt`` describes the figure for
        screen readers (SVG ``aria-label``, PNG ``alt``)."""
        self.count += 1
        prefix = f"fig{self.count}"
        width_in, height_in = fig.get_size_inches()
        css_width = round(width_in * 96)  # CSS pixels at the figure's own size
        svg = png = None
        png_only = self.fmt == "png" or (self.fmt == "auto" and self.dense(fig))
        if not png_only:
            svg = self._svg(fig, prefix)
        # a PNG data URI of a whole figure is rarely under PNG_TRY_ABOVE bytes: try one only for larger SVGs
        if png_only or (self.fmt == "auto" and len(svg) > self.PNG_TRY_ABOVE):
            png = self._png(fig)
        if svg is not None and (png is None or len(svg) <= len(png) + 64):
            body = svg.replace("<svg ", f'<svg aria-label="{esc(alt)}" ', 1)
            kind = "svg"
        else:
            assert png is not None
            body = (f'<img src="{png}" alt="{esc(alt)}" width="{css_width}" '
                    f'height="{round(height_in * 96)}">')
            kind = "png"
        caption_html = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        css = "fig wide" if wide else "fig"
        return (f'<figure class="{css}" data-format="{kind}" style="max-width:{css_width}px">'
                f"{body}{caption_html}</figure>")
