"""Render `hat analyze`'s record (analysis.json) as one HTML page that opens anywhere, offline.

Everything is inline, as in the perf report (:mod:`hat.deploy.perf_html`): CSS in a
``<style>`` block, bars as sized ``<div>``s, no script and nothing fetched from elsewhere,
so the page can be mailed or archived with the work dir.
"""

from __future__ import annotations

from html import escape
from typing import Any

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1d2330; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
.muted { color: #667; } .headline { font-size: 1.2em; margin: .6em 0; }
table { border-collapse: collapse; width: 100%; }
td, th { padding: 3px 8px; border-bottom: 1px solid #e3e6ec; text-align: left; vertical-align: middle; }
th { background: #f3f5f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
.track { position: relative; height: 14px; background: #f3f5f8; border-radius: 3px; min-width: 140px; }
.bar { position: absolute; top: 0; bottom: 0; left: 0; border-radius: 3px; }
.loss { background: #d0523b; } .sqnr { background: #2f7ed8; } .bad { color: #b3261e; font-weight: 600; }
"""


def render_analysis_html(record: dict[str, Any]) -> str:
    """The page for the data that analysis.json holds."""
    title = f"{record['task']} ({record['config']}, {record['stage']}): quantization analysis"
    sections = [
        f"<h1>{escape(title)}</h1>",
        f"<p class='muted'>{record['samples']} validation samples in {record['batches']} batch(es) · deploy "
        f"target {escape(str(record.get('deploy_target')))} · ranked by {escape(record['ranking'])}</p>",
        _headline(record["model"]),
        _layers_section(record["layers"], "metric" in record["model"]),
        _divergence_section(record["divergence"]),
    ]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def format_db(value: Any) -> str:
    """An SQNR as analysis.json holds it (a number, ``"inf"``, ``"-inf"`` or None), for people."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return "∞" if value == "inf" else "−∞"
    return f"{value:.1f}"


def _number(value: Any) -> str:
    return "n/a" if not isinstance(value, (int, float)) else f"{value:.4g}"


def _headline(model: dict[str, Any]) -> str:
    text = f"every layer quantized: output SQNR <b>{format_db(model['output_sqnr_db'])} dB</b> against float"
    metric = model.get("metric")
    if metric:
        text += (
            f"; {escape(metric['name'])} {_number(metric['quantized'])} (float {_number(metric['float'])}, "
            f"{'higher' if metric['higher_is_better'] else 'lower'} is better)"
        )
    return f"<p class='headline'>{text}</p>"


def _noise(sqnr: Any) -> float:
    """Noise-to-signal power of an SQNR in dB (0 for identical tensors)."""
    if sqnr == "inf" or sqnr is None:
        return 0.0
    if sqnr == "-inf":
        return float("inf")
    return 10.0 ** (-float(sqnr) / 10.0)


def _layers_section(layers: list[dict[str, Any]], by_metric: bool) -> str:
    """One row per layer, most sensitive first; the red bar is what ranks it."""
    if by_metric:
        costs = [max(float(layer["only_quantized"].get("metric_loss") or 0.0), 0.0) for layer in layers]
        caption = "metric loss with only this layer quantized, relative to the worst layer"
    else:
        costs = [_noise(layer["only_quantized"]["output_sqnr_db"]) for layer in layers]
        caption = "output noise power with only this layer quantized, relative to the worst layer"
    finite = [c for c in costs if c != float("inf")]
    top = max(finite, default=0.0) or 1.0
    best_sqnr = max((layer["sqnr_db"] for layer in layers if isinstance(layer["sqnr_db"], (int, float))), default=1.0)
    rows = []
    for layer, cost in zip(layers, costs, strict=True):
        width = 100.0 if cost == float("inf") else 100.0 * cost / top
        sqnr = layer["sqnr_db"]
        sqnr_width = (
            100.0 * max(float(sqnr), 0.0) / best_sqnr if isinstance(sqnr, (int, float)) and best_sqnr > 0 else 0
        )
        metric_cells = ""
        if by_metric:
            metric_cells = (
                f"<td class='num'>{_number(layer['only_quantized'].get('metric'))}</td>"
                f"<td class='num'>{_number(layer['only_float'].get('metric'))}</td>"
            )
        rows.append(
            f"<tr><td class='num'>{layer['rank']}</td><td class='name'>{escape(layer['name'])}</td>"
            f"<td>{escape(layer['kind'])}</td>"
            f"<td style='width:24%'><div class='track'><div class='bar loss' style='width:{width:.1f}%'></div>"
            f"</div></td><td class='num'>{format_db(layer['only_quantized']['output_sqnr_db'])}</td>"
            f"<td class='num'>{format_db(layer['only_float']['output_sqnr_db'])}</td>{metric_cells}"
            f"<td class='num'>{format_db(sqnr)}</td><td style='width:14%'><div class='track'>"
            f"<div class='bar sqnr' style='width:{sqnr_width:.1f}%'></div></div></td></tr>"
        )
    metric_heads = "<th>metric, only it quantized</th><th>metric, only it float</th>" if by_metric else ""
    return (
        f"<h2>Layers by sensitivity ({len(layers)})</h2><p class='muted'>red bar: {caption}; output SQNRs in dB "
        "against float over all outputs; layer SQNR: the layer's own output with every layer quantized "
        "(blue bar, relative to the best layer)</p><table><tr><th>rank</th><th>layer</th><th>kind</th>"
        "<th>sensitivity</th><th>output SQNR, only it quantized</th><th>output SQNR, only it float</th>"
        f"{metric_heads}<th>layer SQNR</th><th></th></tr>" + "".join(rows) + "</table>"
    )


def _divergence_section(divergence: dict[str, Any]) -> str:
    head = "<h2>Torch fixed point vs onnxruntime, tensor by tensor</h2>"
    if "skipped" in divergence:
        return (
            f"{head}<p>Not compared: {escape(divergence['skipped'])}. Run "
            f"<code>{escape(divergence.get('command', 'hat export'))}</code>, then analyze again.</p>"
        )
    first = divergence.get("first_divergence")
    compared = divergence.get("compared", [])
    where = (
        f"{divergence['samples']} sample(s), optimization level {divergence['opt']}, the {divergence['stage']} export"
    )
    if first is None:
        verdict = f"<p>Every one of the {len(compared)} compared tensors agrees within one step ({where}).</p>"
    else:
        verdict = (
            f"<p class='bad'>First tensor beyond one step: {escape(first['tensor'])} (layer "
            f"{escape(first['layer'])}): up to {first['max_steps']} steps, "
            f"{first['beyond_one_step']} of its {first['elements']} elements beyond one step "
            f"({first['share_beyond_one_step']:.4%}; {where}).</p>"
        )
    rows = "".join(
        f"<tr{' class=bad' if t['max_steps'] > 1 else ''}><td class='name'>{escape(t['layer'])}</td>"
        f"<td class='name'>{escape(t['tensor'])}</td><td class='num'>{t['max_steps']}</td>"
        f"<td class='num'>{t['share_beyond_one_step']:.4%}</td><td class='num'>{t['elements']}</td></tr>"
        for t in compared
    )
    skipped = divergence.get("not_compared", [])
    note = f"<p class='muted'>{len(skipped)} quantized tensor(s) could not be compared (see analysis.json).</p>"
    return (
        f"{head}{verdict}<table><tr><th>layer</th><th>onnxruntime tensor</th><th>max steps</th>"
        f"<th>beyond one step</th><th>elements</th></tr>{rows}</table>{note if skipped else ''}"
    )
