"""Plotly figures drawn from store series (already downsampled server-side) and eval artifacts.

Figures take plain lists/arrays and return a ``go.Figure``; they draw, they do not compute
results (the numbers come from the store or from files the evaluation jobs wrote).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

_MARGIN = dict(l=40, r=10, t=40, b=40)
WEBGL_ABOVE = 5000


def line_chart(
    series: dict[str, tuple[list[int], list[float]]],
    title: str,
    y_title: str = "",
    ref_line: float | None = None,
    ref_label: str | None = None,
    x_title: str = "step",
) -> go.Figure:
    fig = go.Figure()
    for name, (steps, values) in series.items():
        fig.add_trace(
            go.Scatter(
                x=steps, y=values, mode="lines+markers" if len(steps) < 30 else "lines", name=name
            )
        )
    if ref_line is not None:
        fig.add_hline(y=ref_line, line_dash="dash", annotation_text=ref_label or f"{ref_line:.3g}")
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=320,
        margin=_MARGIN,
        showlegend=len(series) > 1,
    )
    return fig


def category_lines(
    categories: Sequence[str],
    lines: dict[str, dict[str, float]],
    title: str,
    y_title: str,
    x_title: str = "layer",
) -> go.Figure:
    """One line per entry of ``lines`` ({name: {category: value}}) over ordered categories;
    a category a line has no value for is a gap, not a zero."""
    fig = go.Figure()
    for name, values in lines.items():
        fig.add_trace(
            go.Scatter(
                x=list(categories),
                y=[values.get(c) for c in categories],
                mode="lines+markers",
                name=name,
                connectgaps=False,
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=380,
        margin=_MARGIN,
        xaxis=dict(type="category", categoryorder="array", categoryarray=list(categories)),
        showlegend=True,
    )
    return fig


def usage_histogram(
    counts: Sequence[int],
    expected: float,
    dead: Sequence[int] = (),
    dominant: Sequence[int] = (),
) -> go.Figure:
    """Images per cluster/prototype against the equipartition line N/K (what Sinkhorn-Knopp
    enforces in SwAV, Caron et al. 2020, eq. 3); dead ones red, dominant ones orange."""
    k = len(counts)
    dead_set, dominant_set = set(dead), set(dominant)
    colours = [
        "#d62728" if i in dead_set else "#ff7f0e" if i in dominant_set else "#1f77b4"
        for i in range(k)
    ]
    fig = go.Figure(
        go.Bar(
            x=list(range(k)),
            y=list(counts),
            marker_color=colours,
            hovertemplate="cluster %{x}<br>%{y} images<extra></extra>",
            name="images",
        )
    )
    fig.add_hline(y=expected, line_dash="dash", annotation_text=f"N/K = {expected:.1f}")
    fig.update_layout(
        title="Cluster usage",
        xaxis_title="cluster / prototype",
        yaxis_title="images assigned",
        height=340,
        margin=_MARGIN,
        bargap=0.05,
    )
    return fig


def similarity_heatmap(similarity: np.ndarray, labels: Sequence[int]) -> go.Figure:
    """Cosine similarity between prototypes / centroids (K x K)."""
    names = [str(i) for i in labels]
    fig = go.Figure(
        go.Heatmap(
            z=similarity,
            x=names,
            y=names,
            zmin=-1.0,
            zmax=1.0,
            colorscale="RdBu",
            reversescale=True,
            hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Prototype-to-prototype cosine similarity",
        height=520,
        margin=_MARGIN,
        xaxis=dict(type="category", title="prototype"),
        yaxis=dict(type="category", title="prototype", autorange="reversed"),
    )
    return fig


def projection_scatter(
    xy: np.ndarray, indices: np.ndarray, colour: Sequence[str], title: str
) -> go.Figure:
    """2-D points, one trace per colour group; hover shows the dataset index and group.

    Plotly hover labels are text only (an <img> in a hovertemplate is not rendered), so the
    image of a point is shown beside the chart when the point is selected.
    """
    fig = go.Figure()
    colour = np.asarray(colour)
    # SVG up to a few thousand points (works without WebGL, e.g. headless browsers); WebGL above
    scatter = go.Scattergl if len(xy) > WEBGL_ABOVE else go.Scatter
    for group in sorted(set(colour.tolist()), key=_natural):
        m = colour == group
        fig.add_trace(
            scatter(
                x=xy[m, 0],
                y=xy[m, 1],
                mode="markers",
                name=str(group),
                marker=dict(size=6, opacity=0.8),
                customdata=np.stack([indices[m], colour[m]], axis=1),
                hovertemplate="image #%{customdata[0]}<br>%{customdata[1]}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title,
        height=560,
        margin=_MARGIN,
        dragmode="lasso",
        legend=dict(itemsizing="constant"),
        xaxis=dict(showticklabels=False),
        yaxis=dict(showticklabels=False),
    )
    return fig


def _natural(text: str) -> tuple[int, int | str]:
    return (0, int(text)) if text.lstrip("-").isdigit() else (1, text)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def knn_metric_label(eval_cfg: dict | None) -> tuple[str, str]:
    """The run page's label and help text for the end-of-run kNN, naming the readout when it
    is not the default (the pooled output of whole images)."""
    eval_cfg = eval_cfg or {}
    tap = eval_cfg.get("knn_tap") or "pooled"
    grid = int(eval_cfg.get("knn_patch_grid") or 1)
    where = ([] if tap == "pooled" else [tap]) + ([f"{grid}x{grid} cells"] if grid > 1 else [])
    label = "kNN top-1 (k=20" + "".join(f", {w}" for w in where) + ")"
    help_text = f"end-of-run weighted kNN on the backbone's {tap} features (eval.knn_tap)"
    if grid > 1:
        help_text += (
            f"; each image is the mean of its {grid} x {grid} cells' features (eval.knn_patch_grid)"
        )
    return label, help_text
