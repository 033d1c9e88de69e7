"""What ``calibscope distill`` shows: soft-target statistics per teacher and temperature, the most similar
class pairs, teacher–student agreement, the sentences the numbers support, the heat maps, the JSON document.
Reads a :class:`~calibscope.workflows.distill.DistillResult`; computes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _label(result, c: int) -> str:
    return result.class_names[c] if result.class_names and c < len(result.class_names) else str(c)


def findings(result) -> list[str]:
    """Sentences derived from the numbers: which teacher carries more non-target information at each T."""
    names = list(result.teachers)
    lines = []
    if len(names) >= 2:
        a, b = names[0], names[1]
        ta, tb = result.teachers[a], result.teachers[b]
        more = [p.temperature for p, q in zip(ta.profiles, tb.profiles, strict=True)
                if p.non_target_information > q.non_target_information]
        if len(more) == len(ta.profiles):
            lines.append(f"{a} carries more non-target information than {b} at every T "
                         f"({', '.join(f'{p.temperature:g}' for p in ta.profiles)})")
        elif not more:
            lines.append(f"{b} carries more non-target information than {a} at every T")
        else:
            lines.append(f"{a} carries more non-target information than {b} at T = "
                         f"{', '.join(f'{t:g}' for t in more)} only")
    return lines


def payload(result) -> dict[str, Any]:
    from calibscope.render.json_doc import to_jsonable

    return to_jsonable({"data": result.data, "class_names": result.class_names, "settings": result.settings,
                        "teachers": result.teachers,
                        "students": [{"teacher": t, "student": s, **to_jsonable(a)} for t, s, a in result.students],
                        "findings": findings(result)})


def document(result) -> dict[str, Any]:
    """The ``calibscope/distill`` v1 document."""
    from calibscope.render.json_doc import json_document

    return json_document("distill", payload(result), meta={"command": "distill"})


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


def print_tables(result, *, written: list[Path] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    names = list(result.teachers)
    table = Table(title="Soft targets (Hinton et al. 2015): non-target entropy ÷ log(K−1) · information (nats) · "
                  "mass off the true class", title_justify="left", header_style="bold")
    table.add_column("T", justify="right")
    for n in names:
        table.add_column(n, justify="right", no_wrap=True)
    for i, p in enumerate(result.teachers[names[0]].profiles):
        table.add_row(f"{p.temperature:g}", *(
            f"{q.non_target_entropy_normalised:.3f} · {q.non_target_information:.3f} · {q.off_true_mass:.3f}"
            for q in (result.teachers[n].profiles[i] for n in names)))
    console.print(table)
    for n, st in result.teachers.items():
        pairs = ", ".join(f"{_label(result, a)}–{_label(result, b)} {s:.3f}" for a, b, s in st.similar_pairs)
        console.print(f"  {n}: accuracy {100 * st.accuracy:.2f} %, ECE {st.ece:.4f}; most similar pairs at "
                      f"T = {st.temperature:g}: {pairs}")
    if result.students:
        t = result.settings.temperature
        table = Table(title=f"Students (Stanton et al. 2021), T = {t:g}", title_justify="left", header_style="bold")
        for col in ("teacher", "student", "T²·KL", "KL at T=1", "top-1 agreement", "acc teacher", "acc student",
                    "ECE teacher", "ECE student"):
            table.add_column(col, justify="left" if col in ("teacher", "student") else "right", no_wrap=True)
        for teacher, student, a in result.students:
            table.add_row(teacher, student, f"{a.distillation_loss:.4f}", f"{a.kl_at_1:.4f}",
                          f"{100 * a.agreement:.2f} %", f"{100 * a.teacher_accuracy:.2f} %",
                          f"{100 * a.student_accuracy:.2f} %", f"{a.teacher_ece:.4f}", f"{a.student_ece:.4f}")
        console.print(table)
    for line in findings(result):
        console.print(f"  {line}")
    for path in written or ():
        console.print(f"[dim]wrote {path}[/dim]")


def soft_target_figure(result, name: str):
    """The average soft-target matrix of one teacher (log colour scale), classes in clustering order."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    st = result.teachers[name]
    order = list(st.class_order)
    a = np.array(st.average_soft_targets)[np.ix_(order, order)]
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.subplots()
    finite = a[np.isfinite(a) & (a > 0)]
    image = ax.imshow(a, norm=LogNorm(vmin=max(float(finite.min()), 1e-6), vmax=1.0), cmap="viridis")
    labels = [_label(result, c) for c in order]
    ax.set_xticks(range(len(order)), labels, fontsize=7)
    ax.set_yticks(range(len(order)), labels, fontsize=7)
    ax.set_xlabel("soft-target class")
    ax.set_ylabel("true class")
    ax.set_title(f"{name}: mean softmax(z/{st.temperature:g}) by true class", fontsize=9)
    fig.colorbar(image, ax=ax, label="probability (log scale)")
    return fig


def entropy_figure(result):
    """Normalised non-target entropy against T, one line per teacher."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 3.6), layout="constrained")
    ax = fig.subplots()
    for n, st in result.teachers.items():
        ax.plot([p.temperature for p in st.profiles], [p.non_target_entropy_normalised for p in st.profiles],
                marker="o", label=n)
    ax.set_xscale("log")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("non-target entropy ÷ log(K−1)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def write_outputs(out: Path, result, doc: dict[str, Any]) -> list[Path]:
    """``out/distill.json``, ``out/soft_targets_NAME.png|svg`` per teacher, ``out/non_target_entropy.png|svg``."""
    from calibscope.render.figures import write_output_set

    figs = {"soft_targets_" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(name).stem):
            soft_target_figure(result, name) for name in result.teachers}
    figs["non_target_entropy"] = entropy_figure(result)
    return write_output_set(out, figs, "distill.json", doc)
