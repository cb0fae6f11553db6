"""Server-rendered SVG: slot gauges, per-job run charts, the 24 h timeline and load heatmap.

Every picture carries its meaning in text as well (labels, <title> tooltips, a
<desc>), and uses shapes and hatching besides colour, so it reads without colour.
All text is escaped here; the results are marked safe for the templates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

if TYPE_CHECKING:  # dashboard.timeline pulls numpy and the planner: only the timeline page needs them
    from dashboard.timeline import JobRow, SlotLoad

_DEFS = (
    '<defs>'
    '<pattern id="{p}hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
    '<rect width="6" height="6" fill="#b71c1c"/><line x1="0" y1="0" x2="0" y2="6" stroke="#fff" stroke-width="2"/>'
    '</pattern>'
    '<pattern id="{p}band" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(-45)">'
    '<rect width="8" height="8" fill="#e3f2fd"/><line x1="0" y1="0" x2="0" y2="8" stroke="#90caf9" stroke-width="2"/>'
    '</pattern>'
    '</defs>'
)


def _safe(markup: str) -> SafeString:
    """Mark built SVG as safe: every text interpolated into it went through escape()."""
    return mark_safe(markup)  # noqa: S308 - the one place markup is trusted, see above


def _fmt(v: float) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:,.1f}"


def _hhmm(seconds: float) -> str:
    seconds = int(seconds) % 86400
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def _nice(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def gauge(value: float | None, maximum: float, label: str, unit: str, uid: str) -> SafeString:
    """A horizontal bar; over 100 % it is hatched and says so."""
    width, height = 260, 26
    if value is None:
        text = f"{label}: unknown"
        return _safe(
            f'<svg class="gauge" width="{width}" height="{height}" role="img" aria-label="{escape(text)}">'
            f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#f5f5f5" stroke="#9e9e9e"/>'
            f'<text x="8" y="17">{escape(text)}</text></svg>')
    ratio = value / maximum if maximum else 0.0
    over = ratio > 1.0
    # Light fills keep the black label readable on top of the bar.
    fill = f"url(#{uid}hatch)" if over else ("#ffb74d" if ratio >= 0.8 else "#a5d6a7")
    text = f"{label}: {_fmt(value)} / {_fmt(maximum)} {unit}" + (" — over the limit" if over else "")
    bar = max(0.0, min(1.0, ratio)) * (width - 2)
    return _safe(
        f'<svg class="gauge" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(text)}">{_DEFS.format(p=uid)}'
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#f5f5f5" stroke="#757575"/>'
        f'<rect x="1" y="1" width="{bar:.1f}" height="{height - 2}" fill="{fill}"/>'
        f'<text x="8" y="17" class="gauge-text">{escape(text)}</text></svg>')


@dataclass
class Point:
    value: float | None
    ok: bool
    label: str  # tooltip: run id, time, state


def run_chart(points: Sequence[Point], *, title: str, unit: str, band: tuple[float, float] | None,
              median: float | None, uid: str) -> SafeString:
    """Values of recent runs (oldest left) against the baseline band (p50..p95)."""
    width, height, left, right, top, bottom = 720, 220, 56, 16, 28, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [p.value for p in points if p.value is not None]
    top_value = max(values + ([band[1]] if band else []) + [0.0])
    ymax = _nice(max(top_value * 1.1, 0.01))
    decimals = max(0, -math.floor(math.log10(ymax / 4)))  # enough to tell the grid lines apart
    n = max(len(points), 1)

    def x(i: int) -> float:
        return left + plot_w * (i + 0.5) / n

    def y(v: float) -> float:
        return top + plot_h - plot_h * min(v, ymax) / ymax

    failures = sum(1 for p in points if not p.ok)
    summary = (f"{title}: {len(points)} recent runs, {failures} failed"
               + (f"; baseline band {_fmt(band[0])}–{_fmt(band[1])} {unit}" if band else "; no baseline yet")
               + (f"; latest {_fmt(values[-1])} {unit}" if values else ""))
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-labelledby="{uid}t {uid}d">',
           f'<title id="{uid}t">{escape(title)}</title><desc id="{uid}d">{escape(summary)}</desc>',
           _DEFS.format(p=uid),
           f'<text x="{left}" y="18" class="chart-title">{escape(title)} ({escape(unit)})</text>']
    if band:
        y_hi, y_lo = y(band[1]), y(band[0])
        out.append(f'<rect x="{left}" y="{y_hi:.1f}" width="{plot_w}" height="{max(1.0, y_lo - y_hi):.1f}" '
                   f'fill="url(#{uid}band)"><title>baseline p50–p95: {_fmt(band[0])}–{_fmt(band[1])} '
                   f'{escape(unit)}</title></rect>')
    if median is not None:
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(median):.1f}" y2="{y(median):.1f}" '
                   f'stroke="#1565c0" stroke-dasharray="6,4"><title>baseline median {_fmt(median)}</title></line>')
    for i in range(5):
        v = ymax * i / 4
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eeeeee"/>'
                   f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" class="axis">{v:,.{decimals}f}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#616161"/>')
    line = [f"{x(i):.1f},{y(p.value):.1f}" for i, p in enumerate(points) if p.value is not None]
    if len(line) > 1:
        out.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="#424242" stroke-width="1.2"/>')
    for i, p in enumerate(points):
        if p.value is None:
            continue
        cx, cy = x(i), y(p.value)
        tip = f"<title>{escape(p.label)}: {_fmt(p.value)} {escape(unit)}</title>"
        if p.ok:
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="#2e7d32">{tip}</circle>')
        else:  # a cross, not just another colour
            out.append(f'<path d="M{cx - 5:.1f},{cy - 5:.1f}L{cx + 5:.1f},{cy + 5:.1f}M{cx - 5:.1f},{cy + 5:.1f}'
                       f'L{cx + 5:.1f},{cy - 5:.1f}" stroke="#b71c1c" stroke-width="2.5">{tip}</path>')
    ly = height - 10
    out.append(f'<circle cx="{left + 6}" cy="{ly - 4}" r="3.5" fill="#2e7d32"/>'
               f'<text x="{left + 14}" y="{ly}" class="axis">succeeded</text>'
               f'<path d="M{left + 96},{ly - 9}L{left + 106},{ly + 1}M{left + 96},{ly + 1}L{left + 106},{ly - 9}" '
               f'stroke="#b71c1c" stroke-width="2.5"/><text x="{left + 112}" y="{ly}" class="axis">failed</text>'
               f'<rect x="{left + 170}" y="{ly - 10}" width="18" height="11" fill="url(#{uid}band)" stroke="#90caf9"/>'
               f'<text x="{left + 194}" y="{ly}" class="axis">baseline p50–p95 (older runs left, newest right)</text>')
    out.append("</svg>")
    return _safe("".join(out))


# --- timeline ----------------------------------------------------------------------------------------
_SHADES = ("#f1f8e9", "#c5e1a5", "#9ccc65", "#fbc02d", "#f57c00")  # by share of the limit: 0-100 %


def _shade(ratio: float, uid: str) -> str:
    if ratio > 1.0:
        return f"url(#{uid}hatch)"
    return _SHADES[min(len(_SHADES) - 1, int(ratio * (len(_SHADES) - 1) + 0.999))] if ratio > 0 else "#ffffff"


def timeline(rows: Sequence[JobRow], loads: Sequence[SlotLoad], now_s: int | None, *, uid: str = "tl") -> SafeString:
    """Heatmap of the load per slot (runs and memory against the limits), then one bar row per job."""
    from dashboard.timeline import BUCKET_S, MINUTES  # here: the module brings numpy and the planner

    label_w, plot_w, right = 230, 960, 150
    width = label_w + plot_w + right
    row_h, heat_h, axis_h = 16, 18, 26
    top = 34
    y = top + axis_h
    body: list[str] = []

    def xs(seconds: float) -> float:
        return label_w + plot_w * seconds / 86400

    cell_w = plot_w * BUCKET_S / 86400
    for load in loads:
        body.append(f'<text x="4" y="{y + 13}" class="tl-slot">slot {escape(load.name)}</text>')
        y += heat_h
        for kind, values, limit, unit in (("runs", load.runs, load.max_concurrent, "runs"),
                                          ("memory", load.memory_mb, load.memory_budget_mb, "MB")):
            body.append(f'<text x="16" y="{y + 12}" class="axis">{kind} (limit {_fmt(limit)})</text>')
            i = 0
            while i < len(values):  # merge equal neighbours into one rect
                j = i
                while j + 1 < len(values) and values[j + 1] == values[i]:
                    j += 1
                v = values[i]
                if v:
                    ratio = v / limit if limit else 0.0
                    tip = (f"{load.name} {_hhmm(i * BUCKET_S)}–{_hhmm((j + 1) * BUCKET_S)} UTC: up to {_fmt(v)} "
                           f"{unit} (limit {_fmt(limit)}){' — OVER THE LIMIT' if ratio > 1 else ''}")
                    body.append(f'<rect x="{xs(i * BUCKET_S):.1f}" y="{y}" width="{cell_w * (j - i + 1):.1f}" '
                                f'height="{heat_h - 2}" fill="{_shade(ratio, uid)}" stroke="#9e9e9e" '
                                f'stroke-width="0.3"><title>{escape(tip)}</title></rect>')
                i = j + 1
            peak = load.peak_runs if kind == "runs" else load.peak_memory_mb
            flag = " ⚠ over" if peak > limit else ""
            body.append(f'<text x="{label_w + plot_w + 6}" y="{y + 12}" class="axis">peak {_fmt(peak)}/'
                        f'{_fmt(limit)}{flag}</text>')
            y += heat_h
        y += 8
    y += 6
    body.append(f'<text x="4" y="{y + 12}" class="tl-slot">jobs (bars: minutes in which a run is planned)</text>')
    y += row_h + 4
    for row in rows:
        job = row.job
        name = job.name if len(job.name) <= 30 else job.name[:29] + "…"
        url = reverse("dashboard:job", args=[job.pk])
        body.append(f'<a href="{escape(url)}"><text x="4" y="{y + 12}" class="tl-job">{escape(name)}</text></a>')
        tip = (f"{job.name} ({job.slot.name}): {row.starts} start(s) a day, ~{_fmt(row.duration_s)} s each"
               + (", first at " + _hhmm(row.first_start_s) + " UTC" if row.first_start_s is not None else "")
               + ("; some days only" if row.some_days_only else ""))
        body.append(f'<g><title>{escape(tip)}</title>')
        body.append(f'<rect x="{label_w}" y="{y + 1}" width="{plot_w}" height="{row_h - 2}" fill="#fafafa"/>')
        if row.segments:  # one path per row: a frequent job has hundreds of segments
            d = "".join(f"M{xs(a * 60):.1f} {y + 2}h{max(1.0, plot_w * (b - a) / MINUTES):.1f}"
                        f"v{row_h - 4}H{xs(a * 60):.1f}z" for a, b in row.segments)
            body.append(f'<path d="{d}" fill="#1565c0"/>')
        body.append("</g>")
        extra = f"{row.starts}/day" + (" *" if row.some_days_only else "")
        body.append(f'<text x="{label_w + plot_w + 6}" y="{y + 12}" class="axis">{escape(extra)}</text>')
        y += row_h
    height = y + 16
    head = [f'<svg class="timeline" viewBox="0 0 {width} {height}" role="img" aria-labelledby="{uid}t {uid}d">',
            f'<title id="{uid}t">24 h schedule and load per slot (UTC)</title>',
            f'<desc id="{uid}d">{escape(_describe(loads))}</desc>', _DEFS.format(p=uid)]
    for h in range(0, 25, 2):  # axis: hours
        x = xs(h * 3600)
        head.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + axis_h - 6}" y2="{height - 10}" stroke="#e0e0e0"/>'
                    f'<text x="{x:.1f}" y="{top + 12}" text-anchor="middle" class="axis">{h:02d}:00</text>')
    if now_s is not None:
        x = xs(now_s)
        head.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + 16}" y2="{height - 10}" stroke="#000" '
                    f'stroke-width="1.5" stroke-dasharray="3,2"><title>now ({_hhmm(now_s)} UTC)</title></line>'
                    f'<text x="{x + 3:.1f}" y="{top + 24}" class="axis">now</text>')
    return _safe("".join(head + body + ["</svg>"]))


def _describe(loads: Sequence[SlotLoad]) -> str:
    parts = []
    for load in loads:
        text = (f"slot {load.name}: peak {load.peak_runs} runs at {_hhmm(load.peak_at_s)} UTC "
                f"(limit {load.max_concurrent}), peak memory {_fmt(load.peak_memory_mb)} MB "
                f"(budget {load.memory_budget_mb} MB)")
        if load.minutes_over_limit:
            text += f", over the runs limit for {load.minutes_over_limit} min"
        parts.append(text)
    return "; ".join(parts) or "no schedulable jobs"


def legend(uid: str = "lg") -> SafeString:
    """Key to the heatmap shades (with the share of the limit in words)."""
    labels = ["idle", "≤25 %", "≤50 %", "≤75 %", "≤100 %"]
    out = [f'<svg class="legend" width="620" height="24" role="img" aria-label="Heatmap key: share of the slot '
           f'limit in use, hatched red above 100 %">{_DEFS.format(p=uid)}']
    x = 0
    for shade, label in zip(("#ffffff", *_SHADES[1:]), labels, strict=True):
        out.append(f'<rect x="{x}" y="4" width="18" height="14" fill="{shade}" stroke="#9e9e9e"/>'
                   f'<text x="{x + 22}" y="16" class="axis">{escape(label)}</text>')
        x += 90
    out.append(f'<rect x="{x}" y="4" width="18" height="14" fill="url(#{uid}hatch)"/>'
               f'<text x="{x + 22}" y="16" class="axis">over the limit</text></svg>')
    return _safe("".join(out))
