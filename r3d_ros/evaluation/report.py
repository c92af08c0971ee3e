"""JSON and self-contained HTML evaluation reports (plots inlined as base64 PNG, no external files)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

PLOT_METRICS = ('KeyFact', 'CIDEr', 'BLEU-4', 'METEOR', 'ROUGE-L', 'EM', 'EM-R', 'Acc@0.25', 'Acc@0.5', 'PlanStep')


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=90, bbox_inches='tight')
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode('ascii')


def _fig_tasks(scores: dict) -> str:
    import matplotlib.pyplot as plt

    tasks = list(scores['tasks'])
    fig, ax = plt.subplots(figsize=(11, 3.8))
    width = 0.8 / len(PLOT_METRICS)
    for i, m in enumerate(PLOT_METRICS):
        vals = [scores['tasks'][t][m] for t in tasks]
        vals = [0.0 if v is None or math.isnan(v) else (v if m in ('CIDEr', 'BLEU-4', 'METEOR', 'ROUGE-L')
                                                        else 100 * v) for v in vals]
        ax.bar(np.arange(len(tasks)) + i * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks)
    ax.set_ylabel('score (x100)')
    ax.set_title('per-task scores')
    ax.legend(ncol=5, fontsize=8)
    return _png(fig)


def _fig_latency(answers: dict) -> str:
    import matplotlib.pyplot as plt

    lat = [a['latency_s'] for a in answers.values() if a.get('latency_s') is not None]
    fig, ax = plt.subplots(figsize=(6, 3))
    if lat:
        ax.hist(lat, bins=min(30, max(5, len(lat))), color='tab:blue')
        for q, ls in ((50, '-'), (90, '--'), (99, ':')):
            ax.axvline(np.percentile(lat, q), color='k', ls=ls, label=f'p{q}')
        ax.legend()
    ax.set_xlabel('question -> answer latency (s)')
    ax.set_ylabel('answers')
    return _png(fig)


def _fig_example(question, answer: dict, cloud: tuple | None) -> str:
    """Top-down: map, ground-truth boxes (green), predicted boxes (red), selected views (orange)."""
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 3.6))
    if cloud is not None and len(cloud[0]):
        xyz, rgb = cloud
        pick = np.random.default_rng(0).choice(len(xyz), min(len(xyz), 8000), replace=False)
        ax.scatter(xyz[pick, 0], xyz[pick, 1], c=rgb[pick] / 255.0, s=1, linewidths=0)
    for boxes, color in ((question.boxes, 'tab:green'), (answer.get('boxes') or [], 'tab:red')):
        for b in boxes:
            c, s = b['center'], b['size']
            ax.add_patch(patches.Rectangle((c[0] - s[0] / 2, c[1] - s[1] / 2), s[0], s[1], fill=False,
                                           ec=color, lw=2))
    for v in answer.get('views') or []:
        pose = np.asarray(v['pose'])
        ax.arrow(pose[0, 3], pose[1, 3], 0.4 * pose[0, 0], 0.4 * pose[1, 0], color='tab:orange', width=0.02)
    ax.set_aspect('equal')
    ax.set_title(question.id, fontsize=8)
    ax.tick_params(labelsize=6)
    return _png(fig)


def write_json(path: str | Path, result: dict) -> Path:
    path = Path(path)
    path.write_text(json.dumps(result, indent=1, default=float, allow_nan=True))
    return path


def _fmt(m: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '—'
    if m in ('n',):
        return str(v)
    if m in ('CIDEr', 'BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'METEOR', 'ROUGE-L'):
        return f'{v:.2f}'
    return f'{100 * v:.1f}'


def write_html(path: str | Path, result: dict, questions, answers: dict, clouds: dict | None = None,
               examples: int = 6) -> Path:
    """``clouds``: optional {question id: (xyz, rgb)} for the example plots' background."""
    scores = result['scores']
    keys = list(next(iter(scores['tasks'].values())).keys()) if scores['tasks'] else []
    rows = ''.join('<tr><th>' + html.escape(t) + '</th>' + ''.join(f'<td>{_fmt(k, r[k])}</td>' for k in keys)
                   + '</tr>' for t, r in scores['tasks'].items())
    lat = scores['latency']
    lat_row = ' '.join(f'{k} {v:.3f}s' if isinstance(v, float) else f'{k} {v}' for k, v in lat.items())
    ex_html = []
    for q in list(questions)[:examples]:
        a = answers.get(q.id, {})
        img = _fig_example(q, a, (clouds or {}).get(q.id))
        ex_html.append(
            f'<div class="ex"><img src="data:image/png;base64,{img}"/><div><b>{html.escape(q.id)}</b> '
            f'({html.escape(q.task)}) {html.escape(q.question)}<br/><i>reference:</i> '
            f'{html.escape(" | ".join(q.answers))}<br/><i>answer [{html.escape(str(a.get("status", "missing")))}]:'
            f'</i> {html.escape(a.get("answer_text", ""))}<br/><i>boxes:</i> {len(a.get("boxes") or [])}, '
            f'<i>plan steps:</i> {len(a.get("plan") or [])}, <i>views:</i> {len(a.get("views") or [])}, '
            f'<i>latency:</i> {a.get("latency_s", float("nan")):.2f}s</div></div>')
    meta = html.escape(json.dumps(result.get('meta', {}), indent=1, default=str))
    doc = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>r3d-eval report</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:2px 6px;text-align:right}}.ex{{display:flex;gap:1em;margin:.6em 0;font-size:90%}}</style></head><body>
<h1>r3d-eval: {html.escape(str(result.get('meta', {}).get('mode', '')))}</h1>
<p>Caption metrics x100 (pycocoevalcap, tokenizer: {html.escape(scores.get('tokenizer', ''))});
EM, EM-R, Acc@k, IoU, PlanStep in %. Status counts: {html.escape(json.dumps(scores['status']))}</p>
<table><tr><th>task</th>{''.join(f'<th>{html.escape(k)}</th>' for k in keys)}</tr>{rows}</table>
<p>latency (question to answer): {html.escape(lat_row)}</p>
<img src="data:image/png;base64,{_fig_tasks(scores)}"/>
<img src="data:image/png;base64,{_fig_latency(answers)}"/>
<h2>example answers</h2><p>top-down map; green: ground-truth boxes, red: predicted boxes, orange: selected
views</p>{''.join(ex_html)}
<h2>run</h2><pre>{meta}</pre></body></html>"""
    path = Path(path)
    path.write_text(doc, encoding='utf-8')
    return path
