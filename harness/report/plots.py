"""Trend plots across history: latency and accuracy per model, as embeddable PNG bytes.

matplotlib without pyplot (a bare ``Figure`` renders with the Agg canvas): no global state,
no display needed, safe in any process.
"""
from __future__ import annotations

import base64
import io
from typing import Any

MAX_RUNS = 60  # the last two months of nightlies; older points crowd the axis


def _series(records: list[dict[str, Any]], kind: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for i, r in enumerate(records):
        for name, m in (r.get("metrics") or {}).items():
            if isinstance(m, dict) and m.get("kind") == kind and isinstance(m.get("value"), (int, float)):
                out.setdefault(m.get("label") or name, []).append((i, float(m["value"])))
    return out


def trend_png(model: str, records: list[dict[str, Any]]) -> bytes | None:
    """PNG of the model's latency (left) and accuracy/agreement (right) per run; None if no data."""
    records = records[-MAX_RUNS:]
    lat = _series(records, "latency")
    acc = _series(records, "proportion")
    if not lat and not acc:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.5, 2.8), dpi=80)
    axes = fig.subplots(1, 2)
    labels = [(r.get("started_utc") or "?")[5:16].replace("T", " ") for r in records]
    for ax, series, title, ylabel in ((axes[0], lat, "latency", "ms (median)"),
                                      (axes[1], acc, "accuracy / agreement", "%")):
        ax.set_title(f"{model}: {title}", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if not series:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_xticks([])
            continue
        for label, pts in sorted(series.items()):
            xs = [p[0] for p in pts]
            ys = [p[1] * (100 if ylabel == "%" else 1) for p in pts]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=label)
        if ylabel != "%" and max(max(p[1] for p in pts) for pts in series.values()) > \
                20 * min(min(p[1] for p in pts) for pts in series.values()):
            ax.set_yscale("log")
        ticks = sorted({p[0] for pts in series.values() for p in pts})
        step = max(1, len(ticks) // 6)
        ax.set_xticks(ticks[::step])
        ax.set_xticklabels([labels[t] for t in ticks[::step]], rotation=20, fontsize=6)
        ax.legend(fontsize=6, loc="best", ncol=2 if len(series) > 4 else 1)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
