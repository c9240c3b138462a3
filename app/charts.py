"""Plotly figures drawn from store series (already downsampled server-side)."""

from __future__ import annotations

import plotly.graph_objects as go


def line_chart(
    series: dict[str, tuple[list[int], list[float]]],
    title: str,
    y_title: str = "",
    ref_line: float | None = None,
) -> go.Figure:
    fig = go.Figure()
    for name, (steps, values) in series.items():
        fig.add_trace(
            go.Scatter(
                x=steps, y=values, mode="lines+markers" if len(steps) < 30 else "lines", name=name
            )
        )
    if ref_line is not None:
        fig.add_hline(y=ref_line, line_dash="dash", annotation_text=f"{ref_line:.3g}")
    fig.update_layout(
        title=title,
        xaxis_title="step",
        yaxis_title=y_title,
        height=320,
        margin=dict(l=40, r=10, t=40, b=40),
        showlegend=len(series) > 1,
    )
    return fig


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")
