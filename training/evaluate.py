"""Held-out evaluation of a checkpoint (or of the answer-prior baseline) per task type.

Metrics per task and overall: exact match of the answer text, CIDEr of the answer text, Acc@0.25 / Acc@0.5 of
the predicted box (records with a ground-truth box), plan-step accuracy (records with a plan), format
validity (the format reward) and semantic similarity (the semantic reward's encoder). The metric functions
are the project's (``r3d_ros.evaluation.metrics``) when that module is installed, so training and bag
evaluation report the same numbers; the fallbacks here follow the same definitions.

The answer-prior baseline answers every question of a task with the most common training answer of that
task (answer text, box and plan alike); it has no chain of thought, so format validity is not reported for it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
import json
from pathlib import Path
import re

import numpy as np

from r3d_ros.output_format import ANSWER_CLOSE, ANSWER_OPEN, PlanStep, is_format_valid, parse_completion
from r3d_ros.scenes.types import QARecord
from training.rewards import box_from_dict, perception_reward_text, shared_similarity

METRICS = ('KeyFact', 'Consistency', 'EM', 'CIDEr', 'Acc@0.25', 'Acc@0.5', 'PlanStep', 'PlanValid', 'Format',
           'SemSim')


def _metrics_module():
    try:
        from r3d_ros.evaluation import metrics
    except ImportError:
        return None
    return metrics


def _normalize(text: str) -> str:
    text = re.sub(r'[^a-z0-9. ]', ' ', text.lower())
    return ' '.join(w.strip('.') for w in text.split() if w.strip('.') not in ('a', 'an', 'the'))


def exact_match(pred: str, ref: str) -> float:
    m = _metrics_module()
    if m is not None and hasattr(m, 'exact_match'):
        return float(m.exact_match(pred, ref))
    return float(_normalize(pred) == _normalize(ref))


def cider(preds: dict[str, str], refs: dict[str, list[str]]) -> float:
    """Corpus CIDEr (x100, as papers report it) of the answer texts."""
    if not preds:
        return float('nan')
    m = _metrics_module()
    if m is not None and hasattr(m, 'CaptionScorer'):
        # CIDEr only: METEOR would start a Java process per call, and this is called once per task
        return float(m.CaptionScorer(meteor=False)(preds, refs)['CIDEr'])
    from pycocoevalcap.cider.cider import Cider

    # pycocoevalcap's PTB tokenizer needs Java; lower-casing + punctuation split is what it does for this text
    tok = lambda s: ' '.join(re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", s.lower())) or 'none'
    score, _ = Cider().compute_score({k: [tok(r) for r in v] for k, v in refs.items()},
                                     {k: [tok(v)] for k, v in preds.items()})
    return 100.0 * float(score)


def plan_step_accuracy(pred_steps, ref_steps: list[dict], tol: float = 0.5) -> float:
    """Share of reference steps matched in order by action, target and position (within ``tol`` metres)."""
    m = _metrics_module()
    if m is not None and hasattr(m, 'plan_step_accuracy'):
        return float(m.plan_step_accuracy(pred_steps, ref_steps))
    if not ref_steps:
        return float('nan')
    hits = 0
    for i, ref in enumerate(ref_steps):
        if i < len(pred_steps):
            p = pred_steps[i]
            close = np.linalg.norm(np.subtract(p.position, ref['position'])) <= tol
            hits += int(p.action == ref['action'] and p.target == ref['target'] and close)
    return hits / len(ref_steps)


def answer_of_completion(text: str, status: str = 'ok') -> dict:
    """A completion written with its numbers (the answer prior's) as an answer dict: boxes and plan, no facts."""
    p = parse_completion(text)
    return {'status': status, 'facts': [], 'objects': [], 'think': p.think, 'answer_text': p.answer_text,
            'boxes': [{'ref': b.ref, 'center': list(b.center), 'size': list(b.size)} for b in p.boxes],
            'plan': [{'action': st.action, 'target': st.target, 'position': list(st.position)} for st in p.plan]}


def score(records: Sequence[QARecord], completions: Sequence[str], with_format: bool = True,
          encoder: str = 'minilm', answers: Sequence[dict] | None = None, clouds=None) -> dict[str, dict[str, float]]:
    """Metrics per task (and ``'all'``) for completions aligned with ``records``. ``answers``: the grounded
    answer dicts (facts, records) of the completions, for KeyFact and Consistency (``key_facts``); without
    them the completions are read as written. ``clouds`` (scene id -> cloud) let Consistency recompute
    approach points on the map's free space."""
    from r3d_ros.evaluation import key_facts

    answers = list(answers) if answers is not None else [answer_of_completion(c) for c in completions]
    parsed = [parse_completion(c) for c in completions]
    # scored as the reasoner publishes them: an ungrounded answer has no text, no boxes, no facts; an invalid
    # plan keeps its text but loses its boxes and steps
    status = [a.get('status', 'ok') for a in answers]
    texts = [a.get('answer_text', p.answer_text) if s in ('ok', 'invalid_plan') else ''
             for p, s, a in zip(parsed, status, answers)]
    sims = shared_similarity(encoder)(texts, [r.answer for r in records])
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    preds, refs = defaultdict(dict), defaultdict(dict)
    for i, (rec, comp, p, text, sim, ans) in enumerate(zip(records, completions, parsed, texts, sims, answers)):
        ok = ans.get('status', 'ok') == 'ok'
        truth = {o['ref']: o for o in rec.objects}
        records_of = {o['id']: o for o in ans.get('objects') or []}
        key = key_facts.key_fact_correct(rec.key_fact, ans, rec.objects, rec.plan)
        points = None if clouds is None else np.asarray(clouds[rec.scene_id])[:, :3]
        cons = key_facts.consistency({**ans, 'think': p.think, 'answer_text': text}, points) if ok else None
        for task in (rec.task, 'all'):
            row = per[task]
            if key is not None:
                row['KeyFact'].append(float(key))
            if cons is not None:
                row['Consistency'].append(cons)
            row['EM'].append(exact_match(text, rec.answer))
            row['SemSim'].append(sim)
            if with_format:
                row['Format'].append(float(is_format_valid(comp)))
            if rec.boxes:
                iou = perception_reward_text(comp, rec.boxes) if ok else 0.0
                row['Acc@0.25'].append(float(iou >= 0.25))
                row['Acc@0.5'].append(float(iou >= 0.5))
                row['IoU'].append(iou)
            if rec.plan:
                row['PlanStep'].append(key_facts.plan_accuracy(p.plan if ok else [], rec.plan, records_of, truth))
                if ans.get('objects'):   # only a grounded answer was validated (not the answer prior's)
                    row['PlanValid'].append(float(ok))
            preds[task][str(i)] = text
            refs[task][str(i)] = [rec.answer]
    out = {}
    for task, row in per.items():
        out[task] = {k: float(np.mean(v)) for k, v in row.items() if v}
        out[task]['CIDEr'] = cider(preds[task], refs[task])
        out[task]['n'] = len(row['EM'])
    return out


# -- predictions ----------------------------------------------------------------------------------
def _answer_section(cot: str) -> str:
    start, end = cot.find(ANSWER_OPEN), cot.rfind(ANSWER_CLOSE)
    return cot[start + len(ANSWER_OPEN):end].strip() if start >= 0 and end > start else ''


def prior_completions(train: Sequence[QARecord], records: Sequence[QARecord]) -> list[str]:
    """The answer-prior baseline: the most common training answer (text + boxes + plan) of each task."""
    from r3d_ros.output_format import format_completion

    counts: dict[str, Counter] = defaultdict(Counter)
    for r in train:  # the answer as published (grounded on the training scene), boxes and plan with numbers
        boxes = [box_from_dict(b) for b in r.boxes]
        steps = [PlanStep(s['action'], s['target'], tuple(s['position'])) for s in r.plan]
        counts[r.task][_answer_section(format_completion('', r.answer, boxes, steps))] += 1
    overall = Counter(a for c in counts.values() for a in c.elements())
    fallback = overall.most_common(1)[0][0] if overall else ''
    best = {task: c.most_common(1)[0][0] for task, c in counts.items()}
    return [f'{ANSWER_OPEN}{best.get(r.task, fallback)}{ANSWER_CLOSE}' for r in records]


def generate_completions(model, processor, records: Sequence[QARecord], clouds, batch_size: int = 16,
                         max_new_tokens: int = 256, device: str = 'cpu', progress: bool = True,
                         regenerations: int = 0, grammar: bool = True,
                         views=None) -> tuple[list[str], list[str], list[dict]]:
    """Completions decoded as the reasoner decodes them, batched, left-padded: (as the model wrote them, grounded
    on the scene's object records, the answer dicts the reasoner would publish). Greedy first; the refused ones
    (ungrounded, invalid plan) are sampled again up to ``regenerations`` times, as the reasoner retries them
    (its ``regenerations`` parameter; batched here, so the samples are not the node's bit for bit). ``grammar``:
    decoding held to the grounded grammar (``r3d_ros.grammar_decoding``), as the reasoner decodes by default.
    ``views`` (``training.data.SceneViews``): each question's rendered views, for a model with a view tower."""
    from tqdm.auto import tqdm

    from r3d_ros.pipeline import STATUS_INVALID_PLAN, STATUS_OK, STATUS_UNGROUNDED
    from training.grpo import placeholder_token_ids

    model = model.to(device).eval()
    suppress = placeholder_token_ids(model)   # a completion never contains encoder placeholders
    n = len(records)
    raw, out, answers = [''] * n, [''] * n, [{}] * n
    todo = list(range(n))
    for attempt in range(1 + regenerations):
        for s in tqdm(range(0, len(todo), batch_size), desc='generate' if not attempt else f'retry {attempt}',
                      disable=not progress):
            idx = todo[s:s + batch_size]
            decoded = _decode_batch(model, processor, [records[i] for i in idx], clouds, max_new_tokens, device,
                                    suppress, attempt or None, grammar, views)
            for i, (r, g, a) in zip(idx, decoded):
                raw[i], out[i], answers[i] = r, g, a
        todo = [i for i in todo if answers[i].get('status', STATUS_OK) in (STATUS_UNGROUNDED, STATUS_INVALID_PLAN)]
        if not todo or not getattr(processor, 'object_refs', False):
            break
    return raw, out, answers


def _decode_batch(model, processor, chunk: Sequence[QARecord], clouds, max_new_tokens: int, device: str,
                  suppress: list[int], seed: int | None, grammar: bool = True,
                  views=None) -> list[tuple[str, str, dict]]:
    """One batch, greedy (``seed`` None) or sampled: per record (as written, grounded, the published answer)."""
    import torch
    from transformers import LogitsProcessorList

    from r3d_ros.pipeline import decoding_kwargs, grounded_answer, not_found_answer, on_shape

    extra = {} if views is None else views.processor_inputs((r.scene_id, r.question) for r in chunk)
    batch = processor(questions=[r.question for r in chunk], point_clouds=[clouds[r.scene_id] for r in chunk],
                      **extra)
    batch = {k: v.to(device) for k, v in batch.items()}
    refs = getattr(processor, 'object_refs', False)
    probs = model.object_class_probs(batch['point_clouds']) if refs else None
    rules = LogitsProcessorList()
    if refs and grammar:
        rules.append(processor.grammar([processor.object_records(c, None if probs is None else probs[i])
                                        for i, c in enumerate(batch['point_clouds'])], [r.question for r in chunk]))
    with torch.no_grad():
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, **decoding_kwargs(seed),
                             pad_token_id=processor.tokenizer.pad_token_id, suppress_tokens=suppress,
                             logits_processor=rules)
    texts = processor.batch_decode(ids[:, batch['input_ids'].shape[1]:])
    if not refs:
        return [(t, t, answer_of_completion(t)) for t in texts]
    out = []
    for i, (t, r) in enumerate(zip(texts, chunk)):
        cloud, p = batch['point_clouds'][i], None if probs is None else probs[i]
        points = np.asarray(clouds[r.scene_id])[:, :3]
        records = processor.object_records(cloud, p)
        refusal = not_found_answer(r.question, records, processor.class_names)
        if refusal:   # the reasoner does not generate for it (ScenePipeline._run)
            out.append(('', f'<think>{refusal["think"]}</think><answer>{refusal["answer_text"]}</answer>', refusal))
            continue
        g = processor.ground(t, cloud, p, map_points=points, question=r.question)
        out.append((t, g.text, grounded_answer(g, records, points, on_shape(processor, t, r.question))))
    return out


def on_shape(processor, predictions: Path) -> dict[str, float]:
    """{task: % of predictions whose reasoning and answer text, as the model wrote them, are whole shapes of
    ``processor``'s} (``r3d_ros.answer_shapes``): how often the published sentences are ones it was trained on."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for line in predictions.read_text().splitlines():
        row = json.loads(line)
        whole = processor.shapes.fits(row['written'], row.get('question'))
        for task in (row['task'], 'all'):
            hits[task].append(whole)
    return {task: round(100 * float(np.mean(v)), 1) for task, v in hits.items()}


def evaluate(records: Sequence[QARecord], clouds=None, model_path: str | Path | None = None,
             train_records: Sequence[QARecord] | None = None, batch_size: int = 16, max_new_tokens: int = 256,
             device: str = 'cpu', encoder: str = 'minilm', predictions_path: str | Path | None = None,
             regenerations: int = 0, grammar: bool = True, interpret: bool = True, shapes: bool = True,
             views=None) -> dict:
    """Score a checkpoint (``model_path``) or, without one, the answer-prior baseline (needs ``train_records``);
    ``regenerations``: sampled retries of refused answers, ``interpret``: questions read as the nearest trained
    template (``r3d_ros.question_intent``), as the reasoner's parameters of those names; ``shapes``: decoding
    held to the model's answer shapes when it has them (``r3d_ros.answer_shapes``); ``views``
    (``training.data.SceneViews``): what a model with a view tower sees (a model without one sees none; the
    result's ``views`` says which)."""
    if model_path is None:
        completions = prior_completions(train_records or [], records)
        raw, answers, with_format = completions, [answer_of_completion(c) for c in completions], False
    else:
        from r3d_ros.model import R3DForConditionalGeneration, R3DProcessor

        model = R3DForConditionalGeneration.from_pretrained(str(model_path))
        processor = R3DProcessor.from_pretrained(str(model_path))
        if not shapes:
            processor.answer_shapes = {}
        asked = interpreted(records, model.config.object_class_names) if interpret else records
        views = views if model.config.use_views else None
        raw, completions, answers = generate_completions(model, processor, asked, clouds, batch_size,
                                                         max_new_tokens, device, regenerations=regenerations,
                                                         grammar=grammar, views=views)
        with_format = True
    if predictions_path is not None:
        with open(predictions_path, 'w', encoding='utf-8') as f:
            for r, w, c, a in zip(records, raw, completions, answers):
                f.write(json.dumps({'scene_id': r.scene_id, 'task': r.task, 'question': r.question,
                                    'reference': r.cot, 'written': w, 'completion': c, 'answer': a}) + '\n')
    res = score(records, completions, with_format=with_format, encoder=encoder, answers=answers,
                clouds=clouds if model_path is not None else None)
    return {**res, 'views': views.mode if model_path is not None and views is not None else 'none'}


def interpreted(records: Sequence[QARecord], classes) -> list[QARecord]:
    """The records with each question as the reasoner reads it (:class:`QuestionInterpreter`); the truth and
    the scoring stay the record's."""
    from dataclasses import replace

    from r3d_ros.question_intent import QuestionInterpreter

    read = QuestionInterpreter(classes)
    out = [replace(r, question=read(r.question).question) for r in records]
    print(f'questions read as a trained template: {sum(a.question != r.question for a, r in zip(out, records))} '
          f'of {len(records)}', flush=True)
    return out


# -- checkpoint choice on val ----------------------------------------------------------------------
#: what a checkpoint is chosen by: the metrics the GRPO rewards stand for (format, perception, semantic, key fact)
SELECT_METRICS = ('Format', 'Acc@0.25', 'SemSim', 'KeyFact')


def selection_score(res: dict) -> float:
    """Sum of the reward-aligned metrics over all tasks (each in [0, 1]; a missing one counts 0)."""
    row = res.get('all', {})
    return float(sum(0.0 if row.get(k) is None or row.get(k) != row.get(k) else row[k] for k in SELECT_METRICS))


def select_checkpoint(checkpoints: Sequence[str | Path], records: Sequence[QARecord], clouds, out_dir: str | Path,
                      batch_size: int = 16, max_new_tokens: int = 512, device: str = 'cpu',
                      encoder: str = 'minilm', regenerations: int = 0, views=None) -> str:
    """Greedy-decode ``records`` (a val split) with every checkpoint, score them, and return the one with the
    highest :func:`selection_score` (ties go to the earlier candidate, so list the SFT model first: GRPO must
    beat it to be chosen). Writes ``<out_dir>/<i>.json`` per candidate and ``<out_dir>/selection.json``.
    ``views``: as :func:`evaluate`'s."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, ckpt in enumerate(checkpoints):
        res = evaluate(records, clouds, ckpt, None, batch_size, max_new_tokens, device, encoder,
                       predictions_path=out / f'{i}.predictions.jsonl', regenerations=regenerations, views=views)
        (out / f'{i}.json').write_text(json.dumps({'name': str(ckpt), 'results': res}, indent=2))
        row = {'checkpoint': str(ckpt), 'score': selection_score(res),
               **{k: res.get('all', {}).get(k) for k in (*SELECT_METRICS, 'Acc@0.5', 'EM', 'CIDEr')}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(range(len(rows)), key=lambda i: (rows[i]['score'], -i))
    (out / 'selection.json').write_text(json.dumps({'n_records': len(records), 'metrics': list(SELECT_METRICS),
                                                    'candidates': rows, 'chosen': rows[best]['checkpoint']},
                                                   indent=2))
    return rows[best]['checkpoint']


# -- paired comparison ----------------------------------------------------------------------------
def paired_comparison(records: Sequence[QARecord], completions_a: Sequence[str], completions_b: Sequence[str],
                      encoder: str = 'minilm', answers_a: Sequence[dict] | None = None,
                      answers_b: Sequence[dict] | None = None) -> dict[str, dict]:
    """B against A on the same records, per reward-aligned metric: for Format and Acc@0.25 the records only one
    of them gets right and a two-sided sign test on those (scipy's binomial test); for SemSim the mean paired
    difference and a two-sided Wilcoxon signed-rank test. Tells a gain from a few records flipping by chance."""
    from scipy.stats import binomtest, wilcoxon

    if not (len(records) == len(completions_a) == len(completions_b)):
        raise ValueError('records and both completion lists must align')
    from r3d_ros.evaluation.key_facts import key_fact_correct

    out: dict[str, dict] = {}
    answers_a = answers_a or [answer_of_completion(c) for c in completions_a]
    answers_b = answers_b or [answer_of_completion(c) for c in completions_b]
    key = lambda ans, r: key_fact_correct(r.key_fact, ans, r.objects, r.plan)  # noqa: E731
    for name, hit, pairs in (('Format', lambda c, r: is_format_valid(c), zip(completions_a, completions_b)),
                             ('Acc@0.25', lambda c, r: perception_reward_text(c, r.boxes) >= 0.25,
                              zip(completions_a, completions_b)),
                             ('KeyFact', key, zip(answers_a, answers_b))):
        keep = {'Acc@0.25': lambda r: bool(r.boxes), 'KeyFact': lambda r: bool(r.key_fact)}.get(name, lambda r: True)
        rows = [(bool(hit(a, r)), bool(hit(b, r))) for r, (a, b) in zip(records, pairs) if keep(r)]
        only_a, only_b = sum(a and not b for a, b in rows), sum(b and not a for a, b in rows)
        p = binomtest(only_b, only_a + only_b).pvalue if only_a + only_b else 1.0
        out[name] = {'n': len(rows), 'a': sum(a for a, _ in rows) / max(len(rows), 1),
                     'b': sum(b for _, b in rows) / max(len(rows), 1), 'only_a': only_a, 'only_b': only_b, 'p': p}
    sim = shared_similarity(encoder)
    refs = [r.answer for r in records]
    sa = np.array(sim([parse_completion(c).answer_text for c in completions_a], refs))
    sb = np.array(sim([parse_completion(c).answer_text for c in completions_b], refs))
    diff = sb - sa
    changed = diff[np.abs(diff) > 1e-6]
    out['SemSim'] = {'n': len(records), 'a': float(sa.mean()), 'b': float(sb.mean()), 'mean_diff': float(diff.mean()),
                     'changed': int(len(changed)), 'b_higher': int((changed > 0).sum()),
                     'p': float(wilcoxon(changed).pvalue) if len(changed) else 1.0}
    return out


def read_predictions(path: str | Path) -> list[str]:
    """The (grounded) completions of an ``evaluate`` predictions file, in record order."""
    return [p['completion'] for p in _prediction_rows(path)]


def read_answers(path: str | Path) -> list[dict]:
    """The grounded answer dicts of an ``evaluate`` predictions file, in record order."""
    return [p.get('answer') or answer_of_completion(p['completion']) for p in _prediction_rows(path)]


def _prediction_rows(path: str | Path) -> list[dict]:
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


# -- table ----------------------------------------------------------------------------------------
def markdown_table(results: dict[str, dict], tasks: Sequence[str] | None = None) -> str:
    """One row per (model, task): ``results`` maps a row name to :func:`score`'s output."""
    tasks = tasks or sorted({t for r in results.values() for t in r if t != 'all'}) + ['all']
    head = '| model | task | n | ' + ' | '.join(METRICS) + ' |'
    lines = [head, '|' + '---|' * (3 + len(METRICS))]
    for task in tasks:
        for name, res in results.items():
            row = res.get(task)
            if row is None:
                continue
            cells = []
            for k in METRICS:
                v = row.get(k)
                cells.append('—' if v is None or v != v else (f'{v:.1f}' if k == 'CIDEr' else f'{100 * v:.1f}'))
            lines.append(f'| {name} | {task} | {row["n"]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)

