"""The report as one self-contained HTML page: a Jinja2 template
(``gradstore/templates/report.html.j2``, autoescaped) and matplotlib figures embedded as
PNG data URIs, so the page opens offline and can be mailed as one file."""

from __future__ import annotations

import base64
import datetime
import io
import os
from pathlib import Path

import numpy as np

from gradstore.errors import GradstoreError
from gradstore.ops.report import ENOUGH_SHARE, Report

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f"]


def label(facts) -> str:
    s = facts.selection
    return f"{s.method} {s.budget} ({s.selection_id[:8]})"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figures(report: Report) -> dict[str, str]:
    """The page's figures as data URIs: residual curves, residual per checkpoint,
    composition (when asked) and weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for n, f in enumerate(report.selections):
        xs, ys = zip(*f.curve, strict=True) if f.curve else ((), ())
        ax.plot(xs, ys, marker=".", color=COLORS[n % 8], label=label(f))
        if f.enough_at:
            y = dict(f.curve)[f.enough_at]
            ax.plot([f.enough_at], [y], marker="o", ms=10, mfc="none", color=COLORS[n % 8])
    ax.set_xscale("log")
    ax.set_xlabel("examples chosen (in the method's order)")
    ax.set_ylabel("relative residual")
    ax.set_title(f"circles: {ENOUGH_SHARE:.0%} of the selection's reduction reached")
    ax.legend(fontsize=7)
    out["curve"] = _png(fig)
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    width = 0.8 / max(1, len(report.selections))
    for n, f in enumerate(report.selections):
        xs = np.arange(len(f.residual_per_checkpoint)) + n * width
        ax.bar(xs, f.residual_per_checkpoint, width, color=COLORS[n % 8], label=label(f))
    names = [c["name"] for c in report.provenance.get("checkpoints", [])]
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    ax.set_ylabel("relative residual")
    ax.legend(fontsize=7)
    out["checkpoints"] = _png(fig)
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    for n, f in enumerate(report.selections):
        ax.hist(np.asarray(f.selection.weights, dtype=float), bins=30, histtype="step",
                color=COLORS[n % 8], label=label(f))
    ax.set_xlabel("weight")
    ax.set_ylabel("examples")
    ax.legend(fontsize=7)
    out["weights"] = _png(fig)
    if report.by:
        out["composition"] = _composition_figure(report, plt)
    return out


def _composition_figure(report: Report, plt) -> str:
    bars = [("pool", report.pool_composition)] if report.pool_composition else []
    bars += [("target", report.target_composition)] if report.target_composition else []
    bars += [(label(f), f.composition) for f in report.selections]
    keys = list(dict.fromkeys(k for _, c in bars for k in c))
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(bars) + 1.2))
    left = np.zeros(len(bars))
    cmap = plt.get_cmap("tab20")
    for n, key in enumerate(keys):
        share = np.array([c.get(key, 0) / max(1, sum(c.values())) for _, c in bars])
        ax.barh(range(len(bars)), share, left=left, color=cmap(n % 20), label=key)
        left += share
    ax.set_yticks(range(len(bars)), [b for b, _ in bars])
    ax.invert_yaxis()
    ax.set_xlabel(f"share by {report.by}")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return _png(fig)


def render(report: Report) -> str:
    """The page's HTML."""
    try:
        import jinja2
    except ImportError as exc:  # a dependency; only a broken install lacks it
        raise GradstoreError("gradstore report needs jinja2 and matplotlib; "
                             "pip install jinja2 matplotlib") from exc
    env = jinja2.Environment(loader=jinja2.PackageLoader("gradstore", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["label"] = label
    return env.get_template("report.html.j2").render(
        r=report, figs=figures(report), enough_share=ENOUGH_SHARE,
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))


def write_report(report: Report, out: str | Path) -> Path:
    """Write the page to ``out`` (atomically)."""
    out = Path(out)
    if out.is_dir():
        raise GradstoreError(f"output {out} is a directory; give a file path ending in .html")
    if out.suffix.lower() not in (".html", ".htm"):
        raise GradstoreError(f"output {out} should end in .html")
    html = render(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
    return out
