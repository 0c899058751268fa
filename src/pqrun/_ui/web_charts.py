"""Bar charts as inline SVG, drawn on the server: no script, no library, no CDN.

The Content-Security-Policy allows no inline style, so colours come from the
stylesheet's classes (``ch-*`` in web_assets.py, with their dark-scheme variants); the
SVG carries only geometry. Each chart is an image with a title and a description that
say what it shows in words (``role="img"``, ``<title>``, ``<desc>``), and it scales to
the width of its box, down to a phone's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pqrun._ui.web_html import h

# The drawing's own units: at a phone's width it is drawn about one to one.
WIDTH = 360
HEIGHT = 160
LEFT = 40  # room for the y axis labels
RIGHT = 6
TOP = 22  # room for the title
BOTTOM = 20  # room for the x axis labels


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: its x axis label (a time, "HH:MM") and value (None: no value there)."""

    label: str
    value: int | None


def nice_top(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at or above ``value`` (at least 1)."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if top * step >= value:
                return top * step
        top *= 10


def count_label(value: int) -> str:
    if value >= 10_000_000:
        return f"{value // 1_000_000}M"
    if value >= 10_000:
        return f"{value // 1000}k"
    return f"{value:,}"


def bar_chart(chart_id: str, title: str, description: str, bars: Sequence[Bar], css: str) -> str:
    """A bar chart of ``bars`` (oldest first), with ``title`` above it and its y axis
    from 0 to a round number; ``description`` says what it shows, for those who cannot
    see it. ``css`` names the bars' class (their colour); ``chart_id`` is the figure's
    id, unique in the page."""
    top = nice_top(max((bar.value or 0 for bar in bars), default=0))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    base = TOP + plot_h
    step = plot_w / max(len(bars), 1)
    gap = min(1.0, step / 4)
    shapes = []
    for index, bar in enumerate(bars):
        if not bar.value:
            continue
        height = max(plot_h * bar.value / top, 1.0)
        shapes.append(
            f'<rect class="{h(css)}" x="{LEFT + index * step + gap / 2:.1f}" '
            f'y="{base - height:.1f}" width="{max(step - gap, 0.5):.1f}" height="{height:.1f}">'
            f"<title>{h(bar.label)}: {bar.value:,}</title></rect>"
        )
    labels = ""
    if bars:
        # The first, middle and last bars' times, under them.
        for index, anchor in ((0, "start"), (len(bars) // 2, "middle"), (len(bars) - 1, "end")):
            x = LEFT + index * step + (0 if anchor == "start" else step / 2)
            if anchor == "end":
                x = LEFT + plot_w
            labels += (
                f'<text class="ch-l" x="{x:.1f}" y="{HEIGHT - 5}" text-anchor="{anchor}">'
                f"{h(bars[index].label)}</text>"
            )
    mid = TOP + plot_h / 2
    return (
        f'<figure class="chart" id="{h(chart_id)}">'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{h(chart_id)}-t {h(chart_id)}-d">'
        f'<title id="{h(chart_id)}-t">{h(title)}</title>'
        f'<desc id="{h(chart_id)}-d">{h(description)}</desc>'
        f'<text class="ch-t" x="{LEFT}" y="14">{h(title)}</text>'
        f'<line class="ch-g" x1="{LEFT}" y1="{TOP}" x2="{LEFT + plot_w}" y2="{TOP}"/>'
        f'<line class="ch-g" x1="{LEFT}" y1="{mid}" x2="{LEFT + plot_w}" y2="{mid}"/>'
        f'<line class="ch-a" x1="{LEFT}" y1="{base}" x2="{LEFT + plot_w}" y2="{base}"/>'
        f'<line class="ch-a" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}"/>'
        f'<text class="ch-l" x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">'
        f"{h(count_label(top))}</text>"
        f'<text class="ch-l" x="{LEFT - 4}" y="{base}" text-anchor="end">0</text>'
        f"{''.join(shapes)}{labels}</svg></figure>"
    )
