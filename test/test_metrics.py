"""r3d_ros.evaluation.metrics against values computed by hand, and CIDEr-D against an independent
implementation of its definition (Vedantam et al. 2015; coco-caption's CIDEr-D: sigma 6, clipped counts,
x10) on pycocoevalcap's toy-sized input."""

from __future__ import annotations

from collections import Counter
import math

import numpy as np
import pytest

from r3d_ros.evaluation import metrics as M
from r3d_ros.evaluation.annotations import Question, load_annotations, write_annotations
from r3d_ros.evaluation.scoring import ROW_KEYS, score
from r3d_ros.output_format import Box, PlanStep

needs_java = pytest.mark.skipif(not M.java_available(), reason='pycocoevalcap tokenizer / METEOR need Java')


def test_exact_match_and_refined():
    assert M.exact_match('The red chair.', 'red chair') == 1.0
    assert M.exact_match('a chair', ['sofa', 'Chair!']) == 1.0
    assert M.exact_match('red chair', 'chair') == 0.0
    assert M.exact_match('1.5 m', '1.5 m.') == 1.0          # decimal point kept, full stop dropped
    # refined: containment as whole words, number words, plurals
    assert M.refined_exact_match('it is the red chair', 'red chair') == 1.0
    assert M.refined_exact_match('there are three chairs', '3 chair') == 1.0
    assert M.refined_exact_match('chairman', 'chair') == 0.0
    assert M.refined_exact_match('', 'chair') == 0.0


def test_box_iou_hand_computed():
    a = Box('a', (0.0, 0.0, 0.0), (2.0, 2.0, 2.0))
    assert M.box_iou_3d(a, a) == pytest.approx(1.0)
    # shifted by 1 along x: intersection 1*2*2 = 4, union 8 + 8 - 4 = 12
    assert M.box_iou_3d(a, Box('b', (1.0, 0.0, 0.0), (2.0, 2.0, 2.0))) == pytest.approx(4 / 12)
    # contained unit cube: 1 / 8
    assert M.box_iou_3d(a, {'center': [0.5, 0.5, 0.5], 'size': [1, 1, 1]}) == pytest.approx(1 / 8)
    assert M.box_iou_3d(a, Box('c', (5.0, 0.0, 0.0), (1.0, 1.0, 1.0))) == 0.0
    assert M.box_iou_3d(a, None) == 0.0
    assert M.box_iou_3d(a, Box('d', (0, 0, 0), (float('nan'), 1, 1))) == 0.0
    # matching by ref, then by position; Acc@k
    gt = [{'ref': 'chair_1', 'center': [0, 0, 0], 'size': [2, 2, 2]}]
    assert M.match_boxes([Box('x', (9, 9, 9), (1, 1, 1)), Box('chair_1', (1, 0, 0), (2, 2, 2))], gt) == \
        pytest.approx(1 / 3)
    assert M.match_boxes([], gt) == 0.0 and M.match_boxes([], []) is None
    assert M.grounding_accuracy([0.3, 0.6, 0.1, 0.25], 0.25) == 0.75
    assert M.grounding_accuracy([0.3, 0.6, 0.1, 0.25], 0.5) == 0.25


def test_plan_step_accuracy():
    ref = [{'action': 'navigate_to', 'target': 'box_1', 'position': [1, 1, 0]},
           {'action': 'pick', 'target': 'box_1', 'position': [1, 1, 0.5]}]
    pred = [PlanStep('navigate_to', 'box_1', (1.2, 1.0, 0.0)), PlanStep('pick', 'box_1', (3, 3, 3))]
    assert M.plan_step_accuracy(pred, ref) == 0.5
    assert M.plan_step_accuracy(pred[:1], ref) == 0.5
    assert M.plan_step_accuracy([], ref) == 0.0
    assert math.isnan(M.plan_step_accuracy(pred, []))


def test_latency_stats():
    s = M.latency_stats([1.0, 2.0, 3.0, 4.0])
    assert s['n'] == 4 and s['p50'] == 2.5 and s['max'] == 4.0 and s['mean'] == 2.5
    assert M.latency_stats([])['n'] == 0


# -- caption metrics on pre-tokenized text (no Java needed) ------------------------------------------------
def test_bleu_and_rouge_hand_computed():
    scorer = M.CaptionScorer(meteor=False)
    res = {'1': ['the cat sat on the mat']}
    gts = {'1': ['the cat is on the mat']}
    out = scorer.score_tokenized(res, gts)
    # unigram precision 5/6, bigram 3/5 (the cat, on the, the mat), trigram 1/4 (on the mat), 4-gram 0/3;
    # same length: brevity penalty 1
    assert out['BLEU-1'] == pytest.approx(100 * 5 / 6, abs=1e-4)
    assert out['BLEU-2'] == pytest.approx(100 * math.sqrt(5 / 6 * 3 / 5), abs=1e-4)
    assert out['BLEU-3'] == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), abs=1e-4)
    assert out['BLEU-4'] < 0.05  # pycocoevalcap smooths a zero count with 1e-15
    # ROUGE-L: LCS 5 (the cat on the mat), P = R = 5/6, F_beta = 5/6 for any beta
    assert out['ROUGE-L'] == pytest.approx(100 * 5 / 6, abs=1e-4)
    # brevity penalty: 3-word candidate vs 6-word reference, all unigrams match: exp(1 - 6/3)
    short = scorer.score_tokenized({'1': ['the cat sat']}, {'1': ['the cat sat on the mat']})
    assert short['BLEU-1'] == pytest.approx(100 * math.exp(1 - 6 / 3), abs=1e-3)
    # ROUGE-L with beta 1.2: P = 1, R = 1/2 -> (1 + b^2) P R / (R + b^2 P)
    b2 = 1.2 ** 2
    assert short['ROUGE-L'] == pytest.approx(100 * (1 + b2) * 0.5 / (0.5 + b2), abs=1e-4)


def _cider_d_reference(gts: dict[str, list[str]], res: dict[str, list[str]], n: int = 4, sigma: float = 6.0):
    """CIDEr-D written from its definition, independent of pycocoevalcap's code."""
    def grams(words, k):
        return Counter(tuple(words[i:i + k]) for i in range(len(words) - k + 1))

    ids = list(gts)
    df = Counter()
    for i in ids:
        seen = set()
        for ref in gts[i]:
            for k in range(1, n + 1):
                seen |= set(grams(ref.split(), k))
        df.update(seen)
    log_n = math.log(float(len(ids)))

    def vec(words, k):
        g = grams(words, k)
        return {t: c * (log_n - math.log(max(1.0, df[t]))) for t, c in g.items()}, g

    scores = []
    for i in ids:
        cand = res[i][0].split()
        total = 0.0
        for ref in gts[i]:
            rw = ref.split()
            s = 0.0
            for k in range(1, n + 1):
                (vc, _), (vr, _) = vec(cand, k), vec(rw, k)
                dot = sum(min(vc[t], vr[t]) * vr[t] for t in vc if t in vr)
                norm_c = math.sqrt(sum(v * v for v in vc.values()))
                norm_r = math.sqrt(sum(v * v for v in vr.values()))
                val = dot / (norm_c * norm_r) if norm_c and norm_r else 0.0
                val *= math.exp(-((len(cand) - len(rw)) ** 2) / (2 * sigma ** 2))
                s += val
            total += s / n
        scores.append(10.0 * total / len(gts[i]))
    return float(np.mean(scores))


def test_cider_matches_its_definition_on_a_toy_corpus():
    from pycocoevalcap.cider.cider import Cider

    gts = {'1': ['a man is riding a horse on the beach', 'a person rides a horse near the sea'],
           '2': ['two dogs play with a red ball', 'dogs playing in the grass with a ball'],
           '3': ['a kitchen with a white fridge and a stove', 'a small kitchen with white appliances']}
    res = {'1': ['a man riding a horse on a beach'], '2': ['a dog with a red ball'],
           '3': ['a white kitchen with a stove']}
    ours = 100 * Cider().compute_score(gts, res)[0]
    assert M.CaptionScorer(meteor=False).score_tokenized(res, gts)['CIDEr'] == pytest.approx(ours)
    assert ours == pytest.approx(100 * _cider_d_reference(gts, res), rel=1e-9)
    # a candidate identical to every reference of its image scores 10 per n-gram order (CIDEr-D's x10)
    # only when the n-grams are not in every image; perfect copies beat the toy predictions
    perfect = {k: [v[0]] for k, v in gts.items()}
    assert Cider().compute_score(gts, perfect)[0] > Cider().compute_score(gts, res)[0]


@pytest.fixture
def java_scorer():
    with M.CaptionScorer() as scorer:  # one METEOR process (Java), stopped at teardown
        yield scorer


@needs_java
def test_caption_metrics_ptb_tokenizer_meteor_and_score_rows(tmp_path, java_scorer):
    out = java_scorer({'1': 'The cat sat on the mat.'}, {'1': ['the cat is on the mat']})
    assert set(out) == set(M.CAPTION_METRICS)
    assert out['BLEU-1'] == pytest.approx(100 * 5 / 6, abs=1e-4)   # PTB: lower-cased, full stop removed
    assert 0 < out['METEOR'] < 100
    qs = [Question('a', 'What color is the chair?', task='attribute', answers=['The chair is red.'],
                   short_answer='red'),
          Question('b', 'Where is the table?', task='grounding', answers=['It is here.'],
                   boxes=[{'ref': 'table_1', 'center': [0, 0, 0], 'size': [2, 2, 2]}]),
          Question('c', 'Bring the box.', task='planning', answers=['Done.'],
                   plan=[{'action': 'navigate_to', 'target': 'box_1', 'position': [1, 1, 0]}])]
    answers = {'a': {'status': 'ok', 'answer_text': 'red', 'latency_s': 0.5, 'timings': {'total_s': 0.4}},
               'b': {'status': 'ok', 'answer_text': 'It is here.',
                     'boxes': [{'ref': 'table_1', 'center': [1, 0, 0], 'size': [2, 2, 2]}], 'latency_s': 1.0}}
    out = score(qs, answers, scorer=java_scorer)
    assert set(out['tasks']) == {'attribute', 'grounding', 'planning', 'all'}
    for row in out['tasks'].values():
        assert set(row) == set(ROW_KEYS)
    assert out['tasks']['attribute']['EM'] == 1.0 and out['tasks']['grounding']['Acc@0.25'] == 1.0
    assert out['tasks']['grounding']['Acc@0.5'] == 0.0 and out['tasks']['planning']['PlanStep'] == 0.0
    assert out['status'] == {'ok': 2, 'missing': 1} and out['latency']['n'] == 2
    path = write_annotations(tmp_path / 'q.jsonl', qs)
    back = load_annotations(path)
    assert [q.id for q in back] == ['a', 'b', 'c'] and back[0].em_refs == ['The chair is red.', 'red']
    assert back[1].boxes == qs[1].boxes and back[2].plan == qs[2].plan


def test_scanqa_json_annotations(tmp_path):
    p = tmp_path / 'scanqa.json'
    p.write_text('[{"question_id": "train-scene0000_00-1", "scene_id": "scene0000_00", '
                 '"question": "What is in the corner?", "answers": ["a brown chair", "chair"]}]')
    (q,) = load_annotations(p)
    assert q.id == 'train-scene0000_00-1' and q.answers == ['a brown chair', 'chair'] and q.time is None
