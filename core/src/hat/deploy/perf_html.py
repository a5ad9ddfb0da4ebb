"""Render the performance report as one HTML file that opens anywhere, offline.

Everything is inline — CSS in a ``<style>`` block, bars as sized ``<div>``s — so the
page can be mailed, archived or opened on a machine without network access, and it
never loads anything from elsewhere.
"""

from __future__ import annotations

from html import escape
from typing import Any

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #1d2330; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
.muted { color: #667; } .headline { font-size: 1.35em; margin: .6em 0; }
table { border-collapse: collapse; width: 100%; }
td, th { padding: 4px 8px; border-bottom: 1px solid #e3e6ec; text-align: left; vertical-align: top; }
th { background: #f3f5f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.track { position: relative; height: 18px; background: #f3f5f8; border-radius: 3px; min-width: 160px; }
.bar { position: absolute; top: 0; bottom: 0; left: 0; border-radius: 3px; }
.int8 { background: #2f7ed8; } .float { background: #c5862b; } .op { background: #5b8c5a; }
.spread { position: absolute; top: 8px; height: 2px; background: #1d2330; }
.tick { position: absolute; top: 3px; width: 2px; height: 12px; background: #1d2330; }
"""


def render_perf_html(data: dict[str, Any]) -> str:
    """The page for the data that ``perf.json`` holds."""
    latency = data["latency"]
    sections = [
        f"<h1>{escape(str(data['model']))}: int8 performance</h1>",
        f"<p class='muted'>onnxruntime {escape(str(data['onnxruntime_version']))} · optimization level "
        f"{data['opt_level']} · {data['threads']} thread(s) · batch {data.get('batch_size', 1)} · "
        f"{escape(str(data['cpu']))} · {escape(str(data.get('created', '')))}</p>",
        _headline(latency),
        _latency_section(latency),
        _summary_section(data),
        _op_section(data["op_times_ms"]),
        _nodes_section(data.get("non_int8_nodes") or [], data.get("int8_flops_share")),
    ]
    body = "\n".join(s for s in sections if s)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(str(data['model']))} perf</title><style>{_CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def _headline(latency: dict[str, Any]) -> str:
    int8 = latency["int8"]
    speedup = latency.get("speedup")
    if speedup is None:
        return (
            f"<p class='headline'>int8 median latency <b>{int8['median_ms']:.3f} ms</b> "
            "(no float model measured: no speed-up)</p>"
        )
    return (
        f"<p class='headline'>speed-up over float: <b>{speedup:.2f}×</b> "
        f"(median {latency['float']['median_ms']:.3f} ms float → {int8['median_ms']:.3f} ms int8)</p>"
    )


def _latency_section(latency: dict[str, Any]) -> str:
    rows = [("int8", latency["int8"])]
    if latency.get("float"):
        rows.append(("float", latency["float"]))
    top = max(r["p90_ms"] for _, r in rows) or 1.0
    lines = []
    for label, r in rows:
        median, p10, p90 = (100 * r[k] / top for k in ("median_ms", "p10_ms", "p90_ms"))
        bar = (
            f"<div class='track'><div class='bar {label}' style='width:{median:.1f}%'></div>"
            f"<div class='spread' style='left:{p10:.1f}%;width:{max(p90 - p10, 0.3):.1f}%'></div>"
            f"<div class='tick' style='left:{p10:.1f}%'></div>"
            f"<div class='tick' style='left:{min(p90, 99.6):.1f}%'></div></div>"
        )
        lines.append(
            f"<tr><td>{label}</td><td class='num'>{r['median_ms']:.3f}</td><td class='num'>{r['p10_ms']:.3f}</td>"
            f"<td class='num'>{r['p90_ms']:.3f}</td><td class='num'>{r['min_ms']:.3f}</td>"
            f"<td class='num'>{r['runs']}</td><td style='width:40%'>{bar}</td></tr>"
        )
    return (
        "<h2>Latency (batch 1, after warm-up)</h2><table><tr><th>model</th><th>median ms</th><th>p10 ms</th>"
        "<th>p90 ms</th><th>min ms</th><th>runs</th><th>median, p10–p90</th></tr>" + "".join(lines) + "</table>"
    )


def _summary_section(data: dict[str, Any]) -> str:
    share = data.get("int8_flops_share")
    rows = [
        ("parameter bytes", f"{data['param_bytes']:,} ({data['param_bytes'] / 2**20:.2f} MiB)"),
        ("FLOPs (2 × MACs)", f"{data['flops']:,} ({data['flops'] / 1e9:.3f} GFLOPs)"),
        ("share of FLOPs in int8 kernels", f"{share:.1%}" if share is not None else "n/a"),
        ("threads", str(data["threads"])),
        ("optimization level", str(data["opt_level"])),
        ("onnxruntime", escape(str(data["onnxruntime_version"]))),
        ("CPU", escape(str(data["cpu"]))),
        ("int8 kernels here", escape(str((data.get("int8_kernels") or {}).get("isa", "n/a")))),
        ("deploy target", escape(str((data.get("deploy_target") or {}).get("summary", "n/a")))),
    ]
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h2>Model</h2><table>{body}</table>"


def _op_section(op_times: dict[str, float]) -> str:
    if not op_times:
        return ""
    total = sum(op_times.values()) or 1.0
    top = max(op_times.values()) or 1.0
    rows = "".join(
        f"<tr><td>{escape(op)}</td><td class='num'>{ms:.4f}</td><td class='num'>{100 * ms / total:.1f}%</td>"
        f"<td style='width:45%'><div class='track'>"
        f"<div class='bar op' style='width:{100 * ms / top:.1f}%'></div></div></td></tr>"
        for op, ms in op_times.items()
    )
    return (
        "<h2>Time by op type (onnxruntime profiler, ms per run)</h2><table><tr><th>op type</th><th>ms</th>"
        f"<th>share</th><th></th></tr>{rows}</table>"
    )


def _nodes_section(nodes: list[dict[str, Any]], share: float | None) -> str:
    if not nodes:
        note = "every compute node runs in an int8 kernel" if share is not None else "no node analysis"
        return f"<h2>Nodes not running int8</h2><p>None: {note}.</p>"
    rows = "".join(
        f"<tr><td>{escape(n['name'])}</td><td>{escape(n['op_type'])}</td><td>{escape(n.get('module') or '-')}</td>"
        f"<td class='num'>{n.get('flops', 0) / 1e6:.2f}</td><td>{escape(n.get('reason') or '')}</td></tr>"
        for n in nodes
    )
    return (
        f"<h2>Nodes not running int8 ({len(nodes)})</h2><table><tr><th>node</th><th>op</th><th>module</th>"
        f"<th>MFLOPs</th><th>reason</th></tr>{rows}</table>"
    )
