"""A report to look at: one self-contained HTML file (inline SVG charts, a base64 PNG heatmap, no script, no
network), and the error-vs-depth figure as a PNG (matplotlib).

    parity.write_html(result, "report.html")     # refvit compare REF CAND --report report.html
    parity.write_plot(result, "error.png")       # refvit compare REF CAND --plot error.png

The pieces are reusable by other reports (the precision tool draws its own curves with them):
`svg_chart(series, …)` draws log-scale curves over named steps with an optional tolerance band and a marked step,
`heatmap_png(array)` turns a 2-D array into a base64 PNG (Pillow, a runtime dependency), `page(title, sections)`
wraps HTML sections into the page. Numbers are escaped; names are HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os

import numpy as np

from refvit.errors import InputError

from .compare import NMSE_BANDS, Comparison

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#1f1f1f;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12.5px}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-family:ui-monospace,monospace}.bad{color:#b00020;font-weight:600}.ok{color:#1b7d2e}
.cause{background:#fff7e0;border-left:4px solid #e0a000;padding:8px 12px}.verdict{font-size:18px;font-weight:700}
code{font-family:ui-monospace,monospace;font-size:12.5px}svg text{font:11px system-ui,sans-serif}"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x, spec="{:.2e}") -> str:
    return "–" if x is None else ("nan" if x != x else spec.format(x))


def _table(header: list[str], rows) -> str:
    """An HTML table: the header, then a row per list of cells; a cell is (html, css class) — class "n": a number,
    right-aligned; "ok"/"bad": a verdict; "": plain."""
    def td(cell):
        text, css = cell
        return f'<td class="{css}">{text}</td>' if css else f"<td>{text}</td>"
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(td(c) for c in row) + "</tr>" for row in rows) + "</table>")


# ---- reusable drawing ----------------------------------------------------------------------------------------------


def svg_chart(labels: list, series: dict, *, title: str = "", ylabel: str = "", log: bool = True,
              band: tuple | None = None, band_label: str = "", mark: int | None = None, mark_label: str = "",
              hlines: tuple = (), width: int = 1100, height: int = 260) -> str:
    """Curves over steps 0..len(labels)-1 as an inline <svg>. series: {name: [value or None per step]};
    band: (low, high) shaded (the tolerance); mark: a step drawn as a red vertical line; hlines: ((value, text), …).
    Each point has a <title> tooltip with its step's label.
    Why so many parameters: the chart's optional parts, each a keyword with a default."""
    left, right, top, bottom = 64, 12, 22, 26
    w, h = width - left - right, height - top - bottom
    values = [v for vs in series.values() for v in vs if v is not None and (v > 0 if log else math.isfinite(v))]
    extra = [b for b in (band or ()) if b is not None and (b > 0 or not log)] + [v for v, _ in hlines]
    if not values:
        return f"<p>{_e(title)}: nothing to draw</p>"
    lo, hi = min(values + extra), max(values + extra)
    if log:
        lo, hi = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        hi = hi if hi > lo else lo + 1
    elif hi == lo:
        lo, hi = lo - 1, hi + 1
    n = max(len(labels) - 1, 1)

    def x(i):
        return left + w * i / n

    def y(v):
        t = (math.log10(max(v, 10.0 ** lo)) - lo) / (hi - lo) if log else (v - lo) / (hi - lo)
        return top + h * (1 - t)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{_e(title)}"><rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="14" font-weight="600">{_e(title)}</text>']
    ticks = range(int(lo), int(hi) + 1, max(1, math.ceil((hi - lo) / 8))) if log else np.linspace(lo, hi, 5)
    for t in ticks:
        v, tick = (10.0 ** t, f"1e{t}") if log else (t, f"{t:.3g}")
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{tick}</text>')
    if band is not None:
        b0, b1 = (band[0] if band[0] is not None else 10.0 ** lo), band[1]
        out.append(f'<rect x="{left}" y="{y(b1):.1f}" width="{w}" height="{max(y(b0) - y(b1), 0):.1f}" '
                   f'fill="#2ca02c" fill-opacity="0.10"><title>{_e(band_label)}</title></rect><text '
                   f'x="{left + w - 4}" y="{y(b1) - 3:.1f}" text-anchor="end" fill="#2ca02c">{_e(band_label)}</text>')
    for v, text in hlines:
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="gray" '
                   f'stroke-dasharray="3,3"/><text x="{left + 4}" y="{y(v) - 3:.1f}" fill="dimgray">{_e(text)}</text>')
    if mark is not None:
        out.append(f'<line x1="{x(mark):.1f}" x2="{x(mark):.1f}" y1="{top}" y2="{top + h}" stroke="#d62728" '
                   f'stroke-width="1.5"/><text x="{x(mark) + 4:.1f}" y="{top + 12}" fill="#d62728">'
                   f'{_e(mark_label)}</text>')
    for k, (name, vs) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        pts = [(x(i), y(v), i, v) for i, v in enumerate(vs) if v is not None and (v > 0 or not log)]
        if pts:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.4" points="'
                       + " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in pts) + '"/>')
        for px, py, i, v in pts:
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.2" fill="{color}"><title>{_e(labels[i])}: '
                       f'{_e(name)} {v:.3g}</title></circle>')
        out.append(f'<text x="{left + 8 + 150 * k}" y="{height - 6}" fill="{color}">■ {_e(name)}</text>')
    out.append(f'<text x="{left + w}" y="{height - 6}" text-anchor="end" fill="dimgray">{_e(ylabel)}</text></svg>')
    return "".join(out)


def _colormap(t: np.ndarray) -> np.ndarray:
    """t in [0, 1] -> RGB uint8 (a viridis-like ramp through 5 anchors)."""
    anchors = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)
    pos = np.clip(t, 0, 1) * (len(anchors) - 1)
    i = np.minimum(pos.astype(int), len(anchors) - 2)
    f = (pos - i)[..., None]
    return (anchors[i] * (1 - f) + anchors[i + 1] * f).astype(np.uint8)


def heatmap_png(a: np.ndarray, max_side: int = 256, scale: int = 0) -> str:
    """A 2-D array as a base64 PNG (linear colour scale from 0 to its max), max-pooled to ≤ max_side per axis and
    enlarged to about 480 px (nearest) so small maps stay visible."""
    from PIL import Image

    a = np.nan_to_num(np.asarray(a, np.float64), nan=0.0, posinf=0.0)
    for axis in (0, 1):
        k = math.ceil(a.shape[axis] / max_side)
        if k > 1:
            pad = (-a.shape[axis]) % k
            a = np.pad(a, [(0, pad) if ax == axis else (0, 0) for ax in (0, 1)])
            a = a.reshape(*a.shape[:axis], -1, k, *a.shape[axis + 1:]).max(axis + 1)
    top = float(a.max()) if a.size else 0.0
    rgb = _colormap(a / top if top > 0 else a)
    img = Image.fromarray(rgb, "RGB")
    scale = scale or max(1, 480 // max(a.shape))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def page(title: str, sections: list[str]) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width"><style>{STYLE}</style></head><body>'
            + "\n".join(sections) + "</body></html>\n")


# ---- the comparison report -----------------------------------------------------------------------------------------


def delta_map(delta: np.ndarray, kind: str = "") -> tuple[np.ndarray, str]:
    """The 2-D view of |Δ| the report draws: tokens × channels for (B, N, C); the spatial map (max over channels)
    for (B, C, H, W) feature maps; query × key for attention maps (the head with the largest error); batch item 0."""
    d = np.asarray(delta)
    if d.ndim == 4 and kind == "attention":
        head = int(np.argmax(d[0].reshape(d.shape[1], -1).max(1)))
        return d[0, head], f"query × key, head {head} (the largest error), batch item 0"
    if d.ndim == 4:
        return d[0].max(0), "height × width, the largest |Δ| over channels, batch item 0"
    if d.ndim == 3:
        return d[0], "tokens × channels, batch item 0"
    if d.ndim == 2:
        return d, "rows × columns"
    if d.ndim == 1:
        return d[None, :], "elements"
    return d.reshape(d.shape[0], -1) if d.ndim else d.reshape(1, 1), "flattened"


def curves(result: Comparison) -> dict:
    """Per compared row: labels and max|Δ|, its bound, NMSE, 1 − cosine (what the figures plot)."""
    rows = [r for r in result.rows if r.status in ("OK", "NOT OK")]
    first = result.first_divergence
    return {"labels": [r.name for r in rows], "max_abs": [r.max_abs for r in rows],
            "bound": [r.bound if r.bound is not None and not (r.rule or "").startswith("nmse") else None for r in rows],
            "nmse_bound": [r.bound if (r.rule or "").startswith("nmse") else None for r in rows],
            "nmse": [r.nmse for r in rows],
            "one_minus_cosine": [None if r.cosine is None else max(1 - r.cosine, 0.0) for r in rows],
            "first": next((i for i, r in enumerate(rows) if first is not None and r.name == first.name), None)}


def html_report(result: Comparison, title: str = "refvit compare") -> str:
    c = curves(result)
    first = result.first_divergence
    verdict = result.verdict
    sections = [f"<h1>{_e(title)}</h1>",
                f'<p class="verdict {"ok" if verdict == "OK" else "bad"}">{_e(verdict)}</p>',
                f"<p>reference <code>{_e(result.reference)}</code><br>candidate <code>{_e(result.candidate)}</code>"
                f"<br>tolerance {_e(result.tolerance)}</p>"]
    if first is not None:
        w = first.worst or {}
        block = result.block_of(first.name)
        hint = result.likely_cause
        sections.append(
            f"<h2>First divergence</h2><p><code>{_e(first.name)}</code> (step {first.step}, {_e(first.kind)}"
            + (f", candidate tensor <code>{_e(first.candidate_name)}</code>" if first.candidate_name not in
               (None, first.name) else "") + f"): {_e(first.status)}; max|Δ| {_fmt(first.max_abs)}"
            + (f" at {_e(tuple(w.get('index', ())))}" if w else "") + f", NMSE {_fmt(first.nmse)}, cosine "
            f"{_fmt(first.cosine, '{:.6f}')}."
            + (f" Block <code>{_e(block.name)}</code> <b>{_e(block.verdict)}</b> the error." if block else "")
            + "</p>" + (f'<div class="cause"><b>LIKELY CAUSE:</b> {_e(hint.cause)}<br><small>{_e(hint.evidence)}'
                        "</small></div>" if hint else '<div class="cause"><b>LIKELY CAUSE:</b> no known pattern</div>'))
    labels = c["labels"]
    bound = [b for b in c["bound"] if b is not None]
    mark = {"mark": c["first"], "mark_label": "first divergence"}
    sections.append("<h2>Error against depth</h2>")
    sections.append(svg_chart(labels, {"max|Δ|": c["max_abs"], "bound": c["bound"]}, title="max |Δ| per tensor "
                              "(execution order)", ylabel="max |cand − ref|", band=(None, min(bound)) if bound
                              else None, band_label="within every tensor's bound" if bound else "", **mark))
    nmse_bound = [b for b in c["nmse_bound"] if b is not None]
    sections.append(svg_chart(labels, {"NMSE": c["nmse"]}, title="NMSE per tensor",
                              ylabel="Σ(cand − ref)² / Σref²", hlines=tuple((v, name) for v, name in NMSE_BANDS[1:]),
                              band=(None, min(nmse_bound)) if nmse_bound else None,
                              band_label="within the NMSE bound", **mark))
    sections.append(svg_chart(labels, {"1 − cosine": c["one_minus_cosine"]}, title="1 − cosine similarity per "
                              "tensor", ylabel="1 − cos(cand, ref)", **mark))
    if result.first_delta is not None and first is not None:
        m, what = delta_map(result.first_delta, first.kind)
        sections.append(f"<h2>|Δ| of <code>{_e(first.name)}</code></h2><p>{_e(what)}; shape {m.shape[0]} × "
                        f"{m.shape[1]}, colour 0 (dark) to {float(m.max()):.3g} (yellow)</p>"
                        f'<img alt="|Δ| heatmap of {_e(first.name)}" src="data:image/png;base64,{heatmap_png(m)}">')
    blocks = [[(f"<code>{_e(b.name)}</code>", ""), (_e(b.verdict), "ok" if b.verdict == "ok" else "bad"),
               (f"<code>{_e(b.input or '–')}</code>", ""), (_fmt(b.input_nmse), "n"), (_fmt(b.output_nmse), "n"),
               (f"<code>{_e(b.first_failing or '')}</code>", "")] for b in result.blocks]
    sections.append("<h2>Blocks: introduced or inherited</h2><p>A block with a failing tensor <b>introduced</b> the "
                    "error when its NMSE grew ≥ 100× over its input's, else it <b>inherited</b> it.</p>"
                    + _table(["block", "verdict", "input", "input NMSE", "output NMSE", "first failing"], blocks))
    tensors = [[(str(r.step), "n"), (f"<code>{_e(r.name)}</code>", ""), (_fmt(r.max_abs), "n"), (_fmt(r.nmse), "n"),
                (_fmt(r.cosine, "{:.6f}"), "n"), (_e(r.rule or ""), ""), (_e(r.status), "bad" if r.failed else "ok")]
               for r in result.rows]
    sections.append("<h2>Every tensor</h2>"
                    + _table(["step", "tensor", "max|Δ|", "NMSE", "cosine", "bound", "status"], tensors))
    return page(title, sections)


def _writable(path) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InputError(f"{path}: directory {directory} does not exist")
    return path


def write_html(result: Comparison, path, title: str = "refvit compare") -> None:
    """The report as one self-contained HTML file (no script, no network)."""
    path = _writable(path)
    text = html_report(result, title)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_plot(result: Comparison, path) -> None:
    """The error-against-depth figure (max|Δ| with its bound, NMSE, 1 − cosine; first divergence marked) as a PNG."""
    path = _writable(path)
    try:  # the object-oriented API: no pyplot, no backend switched, nothing global touched
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install \"refvit[tutorials]\" (or matplotlib); --report "
                         "FILE.html draws the same figure without it") from None
    c = curves(result)
    steps = range(len(c["labels"]))
    fig = Figure(figsize=(11, 7.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    for ax, key, label in ((axes[0], "max_abs", "max |Δ|"), (axes[1], "nmse", "NMSE"),
                           (axes[2], "one_minus_cosine", "1 − cosine")):
        vals = [v if v is not None and v > 0 else np.nan for v in c[key]]
        ax.semilogy(steps, vals, ".-", lw=1, label=label)
        ax.set_ylabel(label)
        if c["first"] is not None:
            ax.axvline(c["first"], color="C3", lw=1.2, label="first divergence")
    axes[0].semilogy(steps, [b if b else np.nan for b in c["bound"]], "--", color="C2", lw=1, label="bound")
    axes[1].semilogy(steps, [b if b else np.nan for b in c["nmse_bound"]], "--", color="C2", lw=1, label="bound")
    for limit, name in NMSE_BANDS[1:]:
        axes[1].axhline(limit, color="gray", ls=":", lw=0.7)
        axes[1].text(len(c["labels"]) - 1, limit, name, ha="right", va="bottom", fontsize=7, color="gray")
    axes[0].legend(fontsize=8)
    axes[2].set_xticks(list(steps), [n[-38:] for n in c["labels"]], rotation=80, fontsize=6)
    axes[0].set_title(f"{result.verdict}: {result.candidate} vs {result.reference}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
