"""Score answers (the reasoner's ``answer`` JSON, live or offline) against annotated questions, per task."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
import math

import numpy as np

from r3d_ros.evaluation import key_facts
from r3d_ros.evaluation import metrics as M
from r3d_ros.evaluation.annotations import Question

#: Every key a score table row has (NaN where a metric has no samples, e.g. Acc@0.25 without GT boxes).
ROW_KEYS = ('n', 'answered', 'KeyFact', 'Consistency', *M.CAPTION_METRICS, 'EM', 'EM-R', 'Acc@0.25', 'Acc@0.5',
            'IoU', 'PlanStep')
_PER_QUESTION = ('KeyFact', 'Consistency', 'EM', 'EM-R', 'Acc@0.25', 'Acc@0.5', 'IoU', 'PlanStep')


def _nanmean(values: list[float]) -> float:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else float('nan')


def score(questions: Sequence[Question], answers: Mapping[str, dict],
          scorer: M.CaptionScorer | None = None) -> dict:
    """``answers`` maps a question id to its answer dict (``answer_text``, ``boxes``, ``plan``, ``status``,
    ``timings``, optional ``latency_s``). A question without an answer (or with a non-ok status) is scored
    with an empty prediction. Returns ``{'tasks': {task: row, ..., 'all': row}, 'latency': {...},
    'status': {...}, 'tokenizer': 'ptb'|'regex'}``."""
    own = scorer is None
    scorer = scorer or M.CaptionScorer()
    try:
        per: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        preds: dict[str, str] = {}
        refs: dict[str, list[str]] = {}
        ids_by_task: dict[str, list[str]] = defaultdict(list)
        statuses: Counter = Counter()
        latency, model_time = [], []
        for q in questions:
            a = answers.get(q.id) or {}
            status = a.get('status', 'missing')
            statuses[status] += 1
            text = a.get('answer_text', '') if status in ('ok', 'invalid_plan') else ''
            key = key_facts.key_fact_correct(q.key_fact, a, q.objects, q.plan) if q.key_fact else None
            cons = key_facts.consistency(a) if status == 'ok' else None
            for task in (q.task or 'unknown', 'all'):
                row = per[task]
                row['n'].append(1)
                if key is not None:
                    row['KeyFact'].append(float(key))
                if cons is not None:
                    row['Consistency'].append(cons)
                row['answered'].append(float(status in ('ok', 'invalid_plan')))
                row['EM'].append(M.exact_match(text, q.em_refs) if q.em_refs else float('nan'))
                row['EM-R'].append(M.refined_exact_match(text, q.em_refs) if q.em_refs else float('nan'))
                if q.boxes:
                    iou = M.match_boxes(a.get('boxes') or [], q.boxes)
                    row['IoU'].append(iou)
                    row['Acc@0.25'].append(float(iou >= 0.25))
                    row['Acc@0.5'].append(float(iou >= 0.5))
                if q.plan:
                    row['PlanStep'].append(M.plan_step_accuracy(a.get('plan') or [], q.plan))
                ids_by_task[task].append(q.id)
            if q.answers:
                preds[q.id], refs[q.id] = text, list(q.answers)
            if a.get('latency_s') is not None:
                latency.append(a['latency_s'])
            if (a.get('timings') or {}).get('total_s') is not None:
                model_time.append(a['timings']['total_s'])
        res, gts = scorer.tokenize_pair(preds, refs) if preds else ({}, {})
        tasks = {}
        for task, row in per.items():
            out = {'n': len(row['n']), 'answered': _nanmean(row['answered'])}
            ids = [i for i in ids_by_task[task] if i in res]
            out.update(scorer.score_tokenized({i: res[i] for i in ids}, {i: gts[i] for i in ids}) if ids
                       else {k: float('nan') for k in M.CAPTION_METRICS})
            for key in _PER_QUESTION:
                out[key] = _nanmean(row.get(key, []))
            tasks[task] = {k: out[k] for k in ROW_KEYS}
        tasks = {k: tasks[k] for k in sorted(tasks, key=lambda t: (t == 'all', t))}
        return {'tasks': tasks, 'latency': M.latency_stats(latency), 'model_time': M.latency_stats(model_time),
                'status': dict(statuses), 'tokenizer': scorer.tokenizer}
    finally:
        if own:
            scorer.close()


def compare(a: dict, b: dict, keys: Sequence[str] = ('KeyFact', 'CIDEr', 'BLEU-4', 'METEOR', 'ROUGE-L', 'EM',
                                                      'EM-R', 'Acc@0.25', 'Acc@0.5', 'PlanStep')) -> dict[str, float]:
    """Largest absolute difference per metric between two :func:`score` outputs, over tasks both have."""
    out = {}
    for k in keys:
        diffs = [abs(a['tasks'][t][k] - b['tasks'][t][k]) for t in a['tasks'] if t in b['tasks']
                 if not (math.isnan(a['tasks'][t][k]) or math.isnan(b['tasks'][t][k]))]
        out[k] = max(diffs) if diffs else 0.0
    return out
