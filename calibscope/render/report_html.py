"""The one-file HTML report of ``calibscope report`` and ``calibscope compare``, and its JSON twin.

A :class:`Report` holds what the command measured: the models, one :class:`Section` per diagnostic (computed,
or skipped with the reason), the threshold checks and the provenance. This module turns it into

* :func:`render_html`: one self-contained HTML page. Figures are inline SVG (or PNG data URIs where those are
  smaller), the stylesheet is inline, there is no script and no reference to anything outside the file; a
  Content-Security-Policy that forbids every fetch makes the browser enforce it. Every number shown in a table
  carries its full-precision value in ``data-value`` (with ``data-key`` and ``data-model``), so tests and
  tools can read the page back;
* :func:`document`: the ``calibscope/report`` JSON document (``docs/report.md``): the same summary and, per
  section, exactly the document the section's own command prints with ``--json``;
* :func:`write_report`: the page, written atomically (an interrupted run leaves no file).

Nothing here computes a metric; the section bodies are drawn by :mod:`calibscope.render.report_sections`.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from calibscope.render.ece_view import GateCheck as Check

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "SECTIONS",
    "Cell",
    "Check",
    "FigureEmbedder",
    "ModelInfo",
    "Report",
    "Row",
    "Section",
    "document",
    "print_summary",
    "render_html",
    "write_report",
]

# every diagnostic section, in page order, with its heading
SECTIONS: dict[str, str] = {
    "calibration": "Calibration",
    "temperature": "Temperature scaling",
    "selective": "Selective classification",
    "ood": "Out-of-distribution detection",
    "projection": "Penultimate-layer projections",
    "mi": "Logit-gap mutual information",
    "hessian": "Top Hessian eigenvalues",
}
FigureFormat = Literal["auto", "svg", "png"]


# --------------------------------------------------------------------------------------------------------
# what a report holds
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """One checkpoint of the report (a column of every table)."""

    name: str
    path: Path
    format: str
    sha256: str | None = None


@dataclass(frozen=True)
class Section:
    """One diagnostic. ``status`` ``"ok"``: ``results`` holds the view-level results the section's command
    builds (e.g. a list of :class:`~calibscope.render.ece_view.EceResult`) and ``document`` its JSON;
    ``"skipped"``: ``note`` says why (missing inputs, or the one-line message of the input error).
    ``notes`` are caveats shown with a computed section (e.g. a model left out of it)."""

    key: str
    status: Literal["ok", "skipped"]
    note: str | None = None
    results: Any = None
    document: Any = None
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return SECTIONS.get(self.key, self.key)


@dataclass(frozen=True)
class Report:
    """Everything one ``calibscope report`` / ``compare`` run measured, ready to render.

    ``data``: role (``test``, ``val``, ``train``, ``ood``) → ``{"path", "sha256", "n", "format"}`` or None;
    ``thresholds``: the configured gates (None when not set); ``settings``: the options that change numbers;
    ``provenance``: versions, devices, precisions, hashes and seeds; ``generated``: ISO 8601 time (UTC).
    """

    command: Literal["report", "compare"]
    title: str
    models: tuple[ModelInfo, ...]
    sections: tuple[Section, ...]
    checks: tuple[Check, ...] = ()
    thresholds: dict[str, float | None] = field(default_factory=dict)
    data: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    generated: str = ""

    def section(self, key: str) -> Section | None:
        for s in self.sections:
            if s.key == key:
                return s
        return None

    @property
    def passed(self) -> bool | None:
        """True / False when thresholds were checked, None when none was configured."""
        if not self.checks:
            return None
        return all(c.passed for c in self.checks)


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

    ``fmt``: ``"svg"`` (vector, inline), ``"png"`` (``data:`` URI at ``dpi``) or ``"auto"`` (whichever is
    smaller for that figure). Inline SVGs get unique element ids (a per-figure prefix) and lose the XML
    preamble, the RDF metadata and the namespace declarations (an HTML parser supplies the SVG namespace), so
    the page holds no ``http://`` string at all. SVG text is kept as text (``svg.fonttype = "none"``, set only
    for the duration of the save): smaller, selectable, and drawn in the reader's sans-serif font.
    """

    PNG_TRY_ABOVE = 48_000

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
        if self.fmt in ("svg", "auto"):
            svg = self._svg(fig, prefix)
        # a PNG data URI of a whole figure is rarely under PNG_TRY_ABOVE bytes: try one only for larger SVGs
        if self.fmt == "png" or (self.fmt == "auto" and svg is not None and len(svg) > self.PNG_TRY_ABOVE):
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


# --------------------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------------------

STYLE = """
:root{color-scheme:light;--fg:#1b2230;--muted:#586174;--line:#d8dde6;--soft:#f4f6f9;--accent:#2456a4;
--ok:#17692b;--ok-bg:#e5f4e8;--bad:#a8231b;--bad-bg:#fbe9e7;--warn-bg:#fff6df;--warn:#b07900}
*{box-sizing:border-box}
html{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);
background:#fff}
body{margin:0 auto;max-width:78rem;padding:1.5rem 1.5rem 3rem}
header.top{border-bottom:3px solid var(--accent);padding-bottom:.75rem;margin-bottom:1rem}
h1{font-size:1.55rem;margin:0 0 .3rem;line-height:1.25}
h2{font-size:1.25rem;margin:0 0 .6rem;padding-bottom:.2rem;border-bottom:1px solid var(--line)}
h3{font-size:1.02rem;margin:1.1rem 0 .4rem}
p{margin:.4rem 0}
.sub{color:var(--muted);margin:0}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:.86em}
nav.toc{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:.5rem .9rem;margin:1rem 0}
nav.toc ol{margin:0;padding-left:1.3rem;columns:2 16rem}
nav.toc a{color:var(--accent);text-decoration:none}
nav.toc .skip{color:var(--muted)}
section.report-section{margin:2.2rem 0}
.table-wrap{overflow-x:auto;margin:.5rem 0 1rem}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
caption{text-align:left;color:var(--muted);font-size:.88rem;padding-bottom:.25rem;caption-side:top}
th,td{padding:.28rem .7rem;border-bottom:1px solid var(--line);text-align:right;vertical-align:top}
thead th{background:var(--soft);border-bottom:2px solid var(--line);white-space:nowrap}
tbody th{text-align:left;font-weight:500}
th:first-child{text-align:left}
td.text,th.text{text-align:left}
td.hash{font-size:.78rem;word-break:break-all;min-width:16rem;max-width:30rem}
.hint{display:block;color:var(--muted);font-size:.8rem;font-weight:400}
td.pass{color:var(--ok);background:var(--ok-bg);font-weight:600}
td.fail{color:var(--bad);background:var(--bad-bg);font-weight:600}
td.na{color:var(--muted)}
.verdict{display:inline-block;padding:.15rem .6rem;border-radius:4px;font-weight:600}
.verdict.pass{color:var(--ok);background:var(--ok-bg)}
.verdict.fail{color:var(--bad);background:var(--bad-bg)}
.verdict.none{color:var(--muted);background:var(--soft)}
p.note{background:var(--warn-bg);border-left:4px solid var(--warn);padding:.45rem .8rem;border-radius:0 4px 4px 0}
p.skipped{background:var(--soft);border-left:4px solid var(--muted);padding:.55rem .8rem;color:var(--fg)}
p.lead{color:var(--muted);max-width:62rem}
ul.checks{margin:.3rem 0 .8rem;padding-left:1.2rem}
.duo{display:flex;flex-wrap:wrap;gap:0 2rem;align-items:flex-start}
.duo-table{flex:0 1 auto;max-width:100%}
.duo>.figures{flex:1 1 22rem;min-width:0}
.figures{display:flex;flex-wrap:wrap;gap:1rem 1.5rem;align-items:flex-start;margin:.6rem 0 1rem}
figure.fig{margin:0;flex:1 1 20rem;min-width:16rem}
figure.fig.wide{flex-basis:100%}
figure.fig svg,figure.fig img{display:block;width:100%;height:auto}
figcaption{color:var(--muted);font-size:.84rem;margin-top:.25rem}
details{margin:.4rem 0 1rem}
details>summary{cursor:pointer;color:var(--accent)}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.4rem 0 1rem}
dl.kv dt{color:var(--muted)}
dl.kv dd{margin:0;overflow-wrap:anywhere}
footer{margin-top:3rem;border-top:1px solid var(--line);padding-top:.6rem;color:var(--muted);font-size:.84rem}
@page{margin:14mm}
@media print{
html{font-size:9.5pt}
body{max-width:none;padding:0}
nav.toc{display:none}
section.report-section{margin:1.2rem 0}
h2,h3{break-after:avoid}
figure.fig,.table-wrap,p.note,p.skipped{break-inside:avoid}
.table-wrap{overflow:visible}
th,td{padding:.18rem .45rem}
.duo{display:block}
figure.fig{flex:1 1 0;min-width:0}
figure.fig.wide{flex-basis:100%}
td.hash{min-width:0}
a{color:inherit;text-decoration:none}
}
"""

# no fetch of any kind: styles and images live in the page
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _data_line(report: Report) -> str:
    parts = []
    for role, label in (("test", "test data"), ("val", "validation"), ("train", "training"), ("ood", "OOD")):
        info = report.data.get(role)
        if info:
            n = info.get("n")
            parts.append(f"{label}: {Path(str(info['path'])).name}" + (f" ({n:,})" if isinstance(n, int) else ""))
    return " · ".join(parts)


def render_html(report: Report, *, figures: FigureFormat = "auto") -> str:
    """The whole page as one string (UTF-8 text, no external reference)."""
    from calibscope import __version__
    from calibscope.render import report_sections as rs

    embed = FigureEmbedder(figures)
    body = [rs.summary_html(report)]
    for section in report.sections:
        body.append(rs.section_html(section, report, embed))
    body.append(rs.provenance_html(report))

    toc = ['<li><a href="#summary">Summary</a></li>']
    for s in report.sections:
        extra = ' <span class="skip">(skipped)</span>' if s.status == "skipped" else ""
        toc.append(f'<li><a href="#{esc(s.key)}">{esc(s.title)}</a>{extra}</li>')
    toc.append('<li><a href="#provenance">Provenance</a></li>')
    names = ", ".join(m.name for m in report.models)
    return "".join([
        "<!DOCTYPE html>\n",
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f'<meta name="generator" content="calibscope {esc(__version__)}">\n',
        '<link rel="icon" href="data:,">\n',
        f"<title>{esc(report.title)}</title>\n",
        f"<style>{STYLE}</style>\n</head>\n",
        f'<body data-command="{esc(report.command)}">\n',
        '<header class="top">',
        f"<h1>{esc(report.title)}</h1>",
        f'<p class="sub">{esc(names)} · {esc(_data_line(report))}</p>',
        f'<p class="sub">Generated {esc(report.generated)} by calibscope {esc(__version__)}</p>',
        "</header>\n",
        '<nav class="toc" aria-label="Contents"><ol>' + "".join(toc) + "</ol></nav>\n",
        "<main>\n", "\n".join(body), "\n</main>\n",
        "<footer>One self-contained file: no scripts, no external resources. The same content as JSON: "
        f"<code>calibscope {esc(report.command)} ... --json</code>.</footer>\n",
        "</body>\n</html>\n",
    ])


def write_report(path: Path, report: Report, *, figures: FigureFormat = "auto") -> Path:
    """Render and write the page atomically: the HTML is built in memory, written to a temporary file beside
    ``path`` and renamed onto it; an error or interrupt at any point leaves no (partial) file behind."""
    from calibscope.errors import InputError
    from calibscope.render.atomic import atomic_write_text

    path = Path(path)
    if path.is_dir():
        raise InputError(f"cannot write the report to '{path}': it is a folder (name a file, e.g. {path}/report.html)")
    if not path.parent.is_dir():
        raise InputError(f"cannot write '{path}': the folder '{path.parent}' does not exist")
    text = render_html(report, figures=figures)
    return atomic_write_text(path, text)


# --------------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------------


def _rows_json(header: Sequence[str], rows: Sequence[Row]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        out.append({"key": row.key, "label": row.label,
                    "values": [c.value for c in row.cells], "text": [c.text for c in row.cells]})
    return out


def document(report: Report) -> dict[str, Any]:
    """The ``calibscope/report`` v1 document (``docs/report.md``): summary, verdict, every section (computed
    ones carry the document of their own command) and the provenance."""
    from calibscope.render import report_sections as rs
    from calibscope.render.json_doc import json_document, to_jsonable

    header, rows = rs.summary_table(report)
    payload = {
        "title": report.title,
        "generated": report.generated,
        "models": [{"name": m.name, "checkpoint": str(m.path), "format": m.format, "sha256": m.sha256}
                   for m in report.models],
        "data": report.data,
        "settings": report.settings,
        "summary": {"columns": list(header[1:]), "rows": _rows_json(header, rows)},
        "verdict": {"thresholds": report.thresholds, "passed": report.passed,
                    "checks": [{"model": c.checkpoint, **{k: v for k, v in to_jsonable(c).items()
                                                           if k != "checkpoint"}} for c in report.checks]},
        "sections": [{"key": s.key, "title": s.title, "status": s.status, "note": s.note, "notes": list(s.notes),
                      "document": s.document if s.status == "ok" else None} for s in report.sections],
        "provenance": report.provenance,
    }
    return json_document("report", payload, meta={"command": report.command, "n_checkpoints": len(report.models)})


# --------------------------------------------------------------------------------------------------------
# terminal
# --------------------------------------------------------------------------------------------------------


def print_summary(report: Report, *, written: Path | None = None) -> None:
    """The summary table on the terminal, the skipped sections, the checks, and where the page went."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from calibscope.render.report_sections import summary_table

    header, rows = summary_table(report)
    console = Console()
    table = Table(title=escape(report.title), title_justify="left", header_style="bold")
    table.add_column("")
    for name in header[1:]:
        table.add_column(escape(name), justify="right")
    for row in rows:
        table.add_row(escape(row.label), *(escape(c.text) for c in row.cells))
    console.print(table)
    for s in report.sections:
        if s.status == "skipped":
            console.print(f"  [dim]skipped {escape(s.title.lower())}: {escape(s.note or '')}[/dim]")
    for c in report.checks:
        mark = "[green]✔[/green]" if c.passed else "[bold red]✘[/bold red]"
        console.print(f"  {mark} {escape(c.message)}")
    if written is not None:
        size = written.stat().st_size
        done = sum(1 for s in report.sections if s.status == "ok")
        console.print(f"wrote {escape(str(written))} ({size / 1024:,.0f} kB; {done} of {len(report.sections)} "
                      "sections)")
