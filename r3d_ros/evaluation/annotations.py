"""Question annotation files for evaluation: Scene-30K-shaped JSON lines or ScanQA-style JSON.

* Scene-30K / QARecord JSON lines (what ``r3d-record --from-scenes`` writes next to a bag, and the dataset
  splits of ``r3d-make-data``): one object per line with ``scene_id``, ``question``, ``cot`` and/or
  ``answer``, ``task``, ``boxes``, ``plan``, ``short_answer``; optional ``id`` and ``time`` (seconds from the
  start of the bag at which the question is asked; absent = after the bag has played).
* ScanQA-style JSON: a JSON array of ``{"question_id", "scene_id", "question", "answers": [...]}`` (the
  released ScanQA_v1.0_val.json shape), optional ``time``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import json
from pathlib import Path

from r3d_ros.scenes.loaders import record_from_scene30k
from r3d_ros.scenes.types import QARecord


@dataclass
class Question:
    id: str
    question: str
    scene_id: str = ''
    task: str = ''
    answers: list[str] = field(default_factory=list)       # caption references (CIDEr, BLEU, ...)
    short_answer: str = ''                                  # extra EM reference (synthetic data's bare answer)
    boxes: list[dict] = field(default_factory=list)         # ground truth {'ref', 'center', 'size'}
    plan: list[dict] = field(default_factory=list)          # ground truth {'action', 'target', 'position'}
    key_fact: dict = field(default_factory=dict)            # {'fact', 'args', 'value'} (evaluation.key_facts)
    objects: list[dict] = field(default_factory=list)       # the objects key_fact names {'ref', 'center', ...}
    time: float | None = None                               # seconds from bag start; None = after the bag

    @property
    def em_refs(self) -> list[str]:
        return [a for a in [*self.answers, self.short_answer] if a]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: QARecord, qid: str, time: float | None = None) -> Question:
        return cls(id=qid, question=rec.question, scene_id=rec.scene_id, task=rec.task,
                   answers=[rec.answer] if rec.answer else [], short_answer=rec.short_answer,
                   boxes=list(rec.boxes), plan=list(rec.plan), key_fact=dict(rec.key_fact or {}),
                   objects=list(rec.objects), time=time)


def _time(item: dict) -> float | None:
    t = item.get('time')
    return None if t is None else float(t)


def question_from_item(item: dict, index: int) -> Question:
    if 'answers' in item and isinstance(item['answers'], list):  # ScanQA
        return Question(id=str(item.get('question_id') or item.get('id') or f'q{index}'),
                        question=str(item['question']), scene_id=str(item.get('scene_id', '')),
                        task=str(item.get('task', 'qa')), answers=[str(a) for a in item['answers']],
                        time=_time(item))
    rec = record_from_scene30k(item) if item.get('cot') else QARecord.from_dict(item)
    if not rec.boxes and item.get('boxes'):
        rec.boxes = list(item['boxes'])
    if not rec.plan and item.get('plan'):
        rec.plan = list(item['plan'])
    if not rec.short_answer and item.get('short_answer'):
        rec.short_answer = str(item['short_answer'])
    return Question.from_record(rec, str(item.get('id') or f'q{index}'), _time(item))


def load_annotations(path: str | Path) -> list[Question]:
    """Questions from a Scene-30K JSON-lines / JSON-array file or a ScanQA JSON file."""
    text = Path(path).read_text(encoding='utf-8').strip()
    if not text:
        return []
    items = json.loads(text) if text.startswith('[') else [json.loads(line) for line in text.splitlines()
                                                           if line.strip()]
    questions = [question_from_item(it, i) for i, it in enumerate(items)]
    seen: set[str] = set()
    for q in questions:  # ids are the join key of questions and answers: they must be unique
        if q.id in seen:
            raise ValueError(f'{path}: duplicate question id {q.id!r}')
        seen.add(q.id)
    return questions


def write_annotations(path: str | Path, questions: list[Question]) -> Path:
    """Scene-30K-shaped JSON lines (QARecord fields + ``id`` and ``time``) that :func:`load_annotations` reads."""
    path = Path(path)
    with path.open('w', encoding='utf-8') as f:
        for q in questions:
            d = {'id': q.id, 'scene_id': q.scene_id, 'question': q.question, 'task': q.task,
                 'answer': q.answers[0] if q.answers else '', 'short_answer': q.short_answer,
                 'boxes': q.boxes, 'plan': q.plan, 'key_fact': q.key_fact, 'objects': q.objects, 'time': q.time}
            f.write(json.dumps(d, sort_keys=True) + '\n')
    return path
