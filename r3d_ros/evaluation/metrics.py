"""The project's one implementation of the 3D-QA metrics (DESIGN.md §6), free of ROS.

* Caption metrics of the answer text - CIDEr (CIDEr-D), BLEU-1..4, METEOR, ROUGE-L - computed by
  ``pycocoevalcap`` on text tokenized by its ``PTBTokenizer`` (Stanford CoreNLP PTB tokenizer: lower case,
  punctuation removed), exactly as the COCO caption evaluation and the 3D-QA papers (ScanQA, 3D-R1, LEO, ...)
  do. Scores are reported x100, as papers print them. PTBTokenizer and METEOR run Java; without a ``java``
  on PATH the tokenizer falls back to a regex split (lower case, punctuation dropped) and METEOR is NaN -
  :func:`caption_metrics` says which tokenizer it used.
* EM: the normalized prediction equals a normalized reference (ScanQA normalization: lower case, no
  punctuation, no articles, single spaces). Refined EM (LEO's "EM-R"): also counts a prediction that
  contains a reference, or is contained in one, as whole words, after a more forgiving normalization
  (number words -> digits, plural 's' dropped, "is"/"are" contractions spelled out).
* Acc@0.25 / Acc@0.5: share of predictions whose axis-aligned 3D box IoU with the ground-truth box reaches
  the threshold (a missing prediction counts as IoU 0).
* Plan-step accuracy: share of reference steps matched, in order, by action, target and position (within
  ``tol`` metres).
* Latency percentiles (p50/p90/p95/p99, mean, max).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import math
import re
import shutil

import numpy as np

from r3d_ros.output_format import Box, PlanStep

CAPTION_METRICS = ('CIDEr', 'BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'METEOR', 'ROUGE-L')

# -------------------------------------------------------------------------------------------- exact match
_ARTICLES = re.compile(r'\b(a|an|the)\b')
_PUNCT = re.compile(r'[^\w\s.]|(?<!\d)\.|\.(?!\d)')  # keep decimal points (1.5 m), drop every other mark
_NUMBERS = {'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4', 'five': '5', 'six': '6',
            'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10', 'eleven': '11', 'twelve': '12', 'none': '0',
            'no': '0'}
_CONTRACTIONS = {"it's": 'it is', "there's": 'there is', "that's": 'that is', "isn't": 'is not',
                 "aren't": 'are not', "they're": 'they are', "what's": 'what is'}


def normalize_answer(text: str) -> str:
    """ScanQA / SQuAD normalization: lower case, punctuation and articles removed, whitespace collapsed."""
    text = _PUNCT.sub(' ', str(text).lower())
    text = _ARTICLES.sub(' ', text)
    return ' '.join(text.split())


def _refs(ref: str | Sequence[str]) -> list[str]:
    return [ref] if isinstance(ref, str) else [r for r in ref if r is not None]


def exact_match(pred: str, ref: str | Sequence[str]) -> float:
    """1.0 when the normalized prediction equals a normalized reference (the best over several)."""
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(r) for r in _refs(ref)))


def _refine(text: str) -> list[str]:
    text = str(text).lower()
    for k, v in _CONTRACTIONS.items():
        text = text.replace(k, v)
    words = normalize_answer(text).split()
    out = []
    for w in words:
        w = _NUMBERS.get(w, w)
        if len(w) > 3 and w.endswith('s') and not w.endswith('ss') and not w.isdigit():
            w = w[:-1]
        out.append(w)
    return out


def _contains(hay: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(hay[i:i + n] == needle for i in range(len(hay) - n + 1))


def refined_exact_match(pred: str, ref: str | Sequence[str]) -> float:
    """LEO's refined EM: equal after a forgiving normalization, or one contains the other as whole words."""
    p = _refine(pred)
    for r in _refs(ref):
        q = _refine(r)
        if p == q or (p and q and (_contains(p, q) or _contains(q, p))):
            return 1.0
    return 0.0


# -------------------------------------------------------------------------------------------- 3D boxes
def as_box(b: Box | Mapping | None) -> Box | None:
    """A Box from a Box, a ``{'ref', 'center', 'size'}`` dict (dataset / answer JSON) or None."""
    if b is None or isinstance(b, Box):
        return b
    return Box(str(b.get('ref', 'object')), tuple(float(v) for v in b['center']),
               tuple(abs(float(v)) for v in b['size']))


def box_iou_3d(a: Box | Mapping | None, b: Box | Mapping | None) -> float:
    """IoU of two axis-aligned 3D boxes (centre + full size); 0.0 when either is missing or degenerate."""
    a, b = as_box(a), as_box(b)
    if a is None or b is None:
        return 0.0
    ca, sa, cb, sb = (np.asarray(v, np.float64) for v in (a.center, a.size, b.center, b.size))
    if not (np.isfinite(ca).all() and np.isfinite(sa).all() and np.isfinite(cb).all() and np.isfinite(sb).all()):
        return 0.0
    sa, sb = np.abs(sa), np.abs(sb)
    lo = np.maximum(ca - sa / 2, cb - sb / 2)
    hi = np.minimum(ca + sa / 2, cb + sb / 2)
    inter = float(np.prod(np.clip(hi - lo, 0.0, None)))
    union = float(np.prod(sa) + np.prod(sb)) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(pred: Sequence[Box | Mapping], gt: Sequence[Box | Mapping]) -> float | None:
    """Mean IoU over the ground-truth boxes: each is matched with the predicted box of the same ``ref`` when
    there is one, else the predicted box at the same position (the GRPO perception reward's rule).
    None when there is no ground-truth box."""
    gts = [as_box(g) for g in gt or []]
    if not gts:
        return None
    preds = [as_box(p) for p in pred or []]
    by_ref = {p.ref: p for p in preds}
    ious = [box_iou_3d(by_ref.get(g.ref) or (preds[i] if i < len(preds) else None), g) for i, g in enumerate(gts)]
    return float(sum(ious) / len(ious))


def grounding_accuracy(ious: Iterable[float], threshold: float) -> float:
    """Share of IoUs >= ``threshold`` (Acc@0.25, Acc@0.5); NaN for no samples."""
    ious = [float(v) for v in ious]
    return float(np.mean([v >= threshold for v in ious])) if ious else float('nan')


# -------------------------------------------------------------------------------------------- plans
def _step(s) -> tuple[str, str, np.ndarray]:
    if isinstance(s, PlanStep):
        return s.action, s.target, np.asarray(s.position, np.float64)
    return str(s['action']), str(s['target']), np.asarray(s['position'], np.float64)


def plan_step_accuracy(pred_steps: Sequence, ref_steps: Sequence, tol: float = 0.5,
                       same_target=None) -> float:
    """Share of reference steps matched in order (same index) by action, target and position within ``tol`` m.
    ``same_target(pred, ref)`` decides whether two target names are the same object (default: equal names; a
    map object ``obj_k`` against a ground-truth ref needs their boxes, see ``key_facts.plan_accuracy``).
    NaN when there is no reference plan."""
    if not ref_steps:
        return float('nan')
    same_target = same_target or (lambda a, b: a == b)
    hits = 0
    for i, ref in enumerate(ref_steps):
        if i < len(pred_steps):
            pa, pt, pp = _step(pred_steps[i])
            ra, rt, rp = _step(ref)
            hits += int(pa == ra and same_target(pt, rt) and bool(np.linalg.norm(pp - rp) <= tol))
    return hits / len(ref_steps)


# -------------------------------------------------------------------------------------------- latency
def latency_stats(seconds: Iterable[float]) -> dict[str, float]:
    """p50/p90/p95/p99/mean/max (seconds) and n."""
    v = np.asarray([float(s) for s in seconds if s is not None and math.isfinite(float(s))], np.float64)
    if not len(v):
        return {'n': 0, 'p50': float('nan'), 'p90': float('nan'), 'p95': float('nan'), 'p99': float('nan'),
                'mean': float('nan'), 'max': float('nan')}
    p50, p90, p95, p99 = np.percentile(v, [50, 90, 95, 99])
    return {'n': int(len(v)), 'p50': float(p50), 'p90': float(p90), 'p95': float(p95), 'p99': float(p99),
            'mean': float(v.mean()), 'max': float(v.max())}


# -------------------------------------------------------------------------------------------- captions
def java_available() -> bool:
    return shutil.which('java') is not None


def _regex_tokenize(text: str) -> str:
    return ' '.join(re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", str(text).lower()))


def tokenize(texts: Mapping[str, Sequence[str]]) -> tuple[dict[str, list[str]], str]:
    """{key: [text, ...]} -> the same, tokenized by pycocoevalcap's PTBTokenizer (or the regex fallback)."""
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        # PTBTokenizer reads one caption per line: newlines inside a caption would shift every later one
        data = {k: [{'caption': ' '.join(str(t).split()) or '.'} for t in v] for k, v in texts.items()}
        if not data:
            return {}, 'ptb'
        return PTBTokenizer().tokenize(data), 'ptb'
    return {k: [_regex_tokenize(t) for t in v] for k, v in texts.items()}, 'regex'


class CaptionScorer:
    """COCO caption metrics over {id: prediction} and {id: [references]}; one METEOR process, reused."""

    def __init__(self, meteor: bool = True):
        self._meteor = None
        self.with_meteor = meteor  # METEOR starts a Java process (~5-10 s, once per scorer)
        self.tokenizer = 'ptb' if java_available() else 'regex'

    def _meteor_scorer(self):
        if self._meteor is None and self.with_meteor and java_available():
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()
        return self._meteor

    def close(self) -> None:
        if self._meteor is not None:
            m, self._meteor = self._meteor, None
            try:
                with m.lock:
                    m.meteor_p.stdin.close()
                    m.meteor_p.kill()
                    m.meteor_p.wait(timeout=5)
            except Exception:  # noqa: BLE001 - best-effort shutdown of the Java helper
                pass

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tokenize_pair(self, preds: Mapping[str, str], refs: Mapping[str, Sequence[str]]):
        keys = [k for k in preds if k in refs and refs[k]]
        both = {f'p{k}': [preds[k]] for k in keys}
        both.update({f'r{k}': list(refs[k]) for k in keys})
        tok, self.tokenizer = tokenize(both)
        res = {k: [tok[f'p{k}'][0] or 'none'] for k in keys}
        gts = {k: [t or 'none' for t in tok[f'r{k}']] for k in keys}
        return res, gts

    def score_tokenized(self, res: Mapping[str, list[str]], gts: Mapping[str, list[str]]) -> dict[str, float]:
        """Metrics (x100) for already tokenized {id: [pred]} / {id: [refs]}."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        if not res:
            return {k: float('nan') for k in CAPTION_METRICS}
        res, gts = dict(res), dict(gts)
        out: dict[str, float] = {}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for n, b in enumerate(bleu, 1):
            out[f'BLEU-{n}'] = 100.0 * float(b)
        out['CIDEr'] = 100.0 * float(Cider().compute_score(gts, res)[0])
        out['ROUGE-L'] = 100.0 * float(Rouge().compute_score(gts, res)[0])
        meteor = self._meteor_scorer()
        out['METEOR'] = 100.0 * float(meteor.compute_score(gts, res)[0]) if meteor is not None else float('nan')
        return {k: out[k] for k in CAPTION_METRICS}

    def __call__(self, preds: Mapping[str, str], refs: Mapping[str, Sequence[str]]) -> dict[str, float]:
        return self.score_tokenized(*self.tokenize_pair(preds, refs))


def caption_metrics(preds: Mapping[str, str], refs: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """CIDEr, BLEU-1..4, METEOR, ROUGE-L (x100) of predictions {id: text} against {id: [reference texts]}."""
    with CaptionScorer() as scorer:
        return scorer(preds, refs)
