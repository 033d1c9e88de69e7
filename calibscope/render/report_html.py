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

Nothing here computes a metric. The modules of the report, in their one direction of imports:
:mod:`~calibscope.render.report_model` (what a report holds) and :mod:`~calibscope.render.html` (HTML
primitives) ← :mod:`~calibscope.render.report_sections` (the section bodies) ← this module (the page).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calibscope.render.html import Cell, FigureEmbedder, Row, esc
from calibscope.render.report_model import SECTIONS, Check, FigureFormat, ModelInfo, Report, Section

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
    from calibscope.render.report_sections_calibration import BODIES

    embed = FigureEmbedder(figures)
    body = [rs.summary_html(report)]
    for section in report.sections:
        body.append(rs.section_html(section, report, embed, bodies=BODIES))
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
