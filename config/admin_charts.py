"""Server-rendered SVG bar charts for the operators' dashboard: no JavaScript, no CDN.

A chart is a list of (label, value) buckets in time order; the tallest bar fills the plot
and a zero series draws an empty, labelled axis rather than dividing by zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

WIDTH = 560
HEIGHT = 190
LEFT = 104  # room for the y-axis labels ("123.456789 SOL")
RIGHT = 8
TOP = 22
BOTTOM = 28  # room for the x-axis labels


@dataclass(frozen=True)
class Bucket:
    label: str  # x-axis text, e.g. "14:00" or "Mon 03"
    value: int
    title: str = ""  # hover text; defaults to the label


def bar_chart_svg(*, title: str, buckets: Sequence[Bucket],
                  value_text: Callable[[int], str] = str, color: str = "#3c8dbc",
                  label_every: int = 1, show_total: bool = True) -> SafeString:
    """An accessible SVG bar chart (role=img, <title> per bar for hover). `show_total`:
    off for values that do not add up (a latency per bucket)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max((b.value for b in buckets), default=0)
    slot = plot_w / max(len(buckets), 1)
    bar_w = max(slot * 0.8, 1.0)

    bars = []
    labels = []
    for index, bucket in enumerate(buckets):
        height = 0.0 if peak <= 0 else plot_h * bucket.value / peak
        x = LEFT + index * slot + (slot - bar_w) / 2
        y = TOP + plot_h - height
        bars.append((f"{x:.1f}", f"{y:.1f}", f"{bar_w:.1f}", f"{height:.1f}", color,
                     f"{bucket.title or bucket.label}: {value_text(bucket.value)}"))
        if index % max(label_every, 1) == 0:
            labels.append((f"{x + bar_w / 2:.1f}", str(HEIGHT - BOTTOM + 14), bucket.label))

    total = f"total {value_text(sum(b.value for b in buckets))}" if show_total else ""
    return format_html(
        '<svg class="ops-chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'viewBox="0 0 {w} {h}" role="img" aria-label="{title}">'
        '<text x="{left}" y="14" style="font-weight:600">{title}</text>'
        '<text x="{right}" y="14" text-anchor="end">{total}</text>'
        '<line x1="{left}" y1="{base}" x2="{right}" y2="{base}" stroke="#999"/>'
        '<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#999"/>'
        '<text x="{ylabel_x}" y="{top_text}" text-anchor="end">{peak}</text>'
        '<text x="{ylabel_x}" y="{base}" text-anchor="end">0</text>'
        "{bars}{labels}</svg>",
        w=WIDTH, h=HEIGHT, title=title, left=LEFT, right=WIDTH - RIGHT, total=total,
        base=TOP + plot_h, top=TOP, top_text=TOP + 8, ylabel_x=LEFT - 4,
        peak=value_text(peak),
        bars=format_html_join(
            "", '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
            bars),
        labels=format_html_join("", '<text x="{}" y="{}" text-anchor="middle">{}</text>', labels),
    )
