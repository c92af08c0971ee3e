"""The 3D-R1 completion format: writing and parsing ``<think>…</think><answer>…</answer>`` text.

One module owns the grammar so that the data generator, the model's parser, the GRPO rewards, the
reasoner node and the evaluator all agree on it.

Grammar (whitespace between elements is free)::

    completion := "<think>" TEXT "</think>" "<answer>" ANSWER "</answer>"
    ANSWER     := TEXT? BOX* PLAN?
    BOX        := "<box>" REF X Y Z DX DY DZ "</box>"
    PLAN       := "<plan>" STEP+ "</plan>"
    STEP       := "<step>" ACTION REF X Y Z "</step>"

* Boxes are axis-aligned, in metres, in the map frame: centre (X, Y, Z) and full extents
  (DX, DY, DZ), written with two decimals. ``REF`` names the object, ``label`` or ``label_id``
  (for example ``chair_3``); it has no spaces.
* Plan steps use a fixed action vocabulary (:data:`ACTIONS`); X Y Z is where the step happens
  (the robot's goal for ``navigate_to``, the object's position otherwise), metres, map frame.

The paper's format reward is 1 exactly when the whole completion matches ``completion`` above
(:func:`is_format_valid`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import re

THINK_OPEN, THINK_CLOSE = '<think>', '</think>'
ANSWER_OPEN, ANSWER_CLOSE = '<answer>', '</answer>'
BOX_OPEN, BOX_CLOSE = '<box>', '</box>'
PLAN_OPEN, PLAN_CLOSE = '<plan>', '</plan>'
STEP_OPEN, STEP_CLOSE = '<step>', '</step>'

#: Marker strings a tokenizer should keep as single special tokens.
MARKERS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, BOX_OPEN, BOX_CLOSE,
           PLAN_OPEN, PLAN_CLOSE, STEP_OPEN, STEP_CLOSE)

#: The actions a plan step may use; anything else is rejected by plan validation.
ACTIONS = ('navigate_to', 'pick', 'place', 'open', 'close', 'inspect')

#: System prompt, as the paper words its opening.
SYSTEM_PROMPT = (
    'You are an assistant situated in a 3D scene. Think step by step about the scene inside '
    '<think></think>, then give the final answer inside <answer></answer>. Give 3D boxes as '
    '<box>name x y z dx dy dz</box> in metres and plans as <plan><step>action name x y z</step>…</plan>.'
)

_NUM = r'[-+]?\d+(?:\.\d+)?'
_REF = r'[A-Za-z][A-Za-z0-9_\-]*'
_FULL = re.compile(
    r'\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*', re.DOTALL)
_BOX = re.compile(
    rf'<box>\s*(?P<ref>{_REF})\s+(?P<nums>(?:{_NUM}\s+){{5}}{_NUM})\s*</box>')
#: One well-formed box (groups ``ref`` and ``nums``), for code that rewrites boxes in place.
BOX_PATTERN = _BOX
_STEP = re.compile(
    rf'<step>\s*(?P<action>{_REF})\s+(?P<ref>{_REF})\s+(?P<nums>(?:{_NUM}\s+){{2}}{_NUM})\s*</step>')
_PLAN = re.compile(r'<plan>(?P<body>.*?)</plan>', re.DOTALL)
_TAG = re.compile(r'</?(?:box|plan|step)>')


class Extents:
    """``lo`` / ``hi`` corners of an axis-aligned object with numpy ``center`` and full ``size`` (a map's object
    record, a synthetic scene's object)."""

    @property
    def lo(self):
        return self.center - self.size / 2

    @property
    def hi(self):
        return self.center + self.size / 2


@dataclass(frozen=True)
class Box:
    """Axis-aligned 3D box in the map frame (metres): centre and full size."""

    ref: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    category: str = ''  # the object's class when known (a map object record's), else taken from ``ref``

    @property
    def label(self) -> str:
        """The category, or the category part of ``ref`` (``chair_3`` → ``chair``)."""
        if self.category:
            return self.category
        head, _, tail = self.ref.rpartition('_')
        return head if head and tail.isdigit() else self.ref

    def corners(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        lo = tuple(c - s / 2 for c, s in zip(self.center, self.size))
        hi = tuple(c + s / 2 for c, s in zip(self.center, self.size))
        return lo, hi


@dataclass(frozen=True)
class PlanStep:
    """One executable step: an action on a named target at a map-frame position."""

    action: str
    target: str
    position: tuple[float, float, float]


@dataclass
class ParsedCompletion:
    """A model completion split into its parts. ``format_valid`` is the paper's format reward."""

    think: str = ''
    answer: str = ''
    answer_text: str = ''
    boxes: list[Box] = field(default_factory=list)
    plan: list[PlanStep] = field(default_factory=list)
    format_valid: bool = False
    raw: str = ''

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(x: float) -> str:
    # two decimals is 1 cm: finer than the default 5 cm map voxel, and short in tokens.
    return f'{x:.2f}'


def format_box(box: Box) -> str:
    nums = ' '.join(_fmt(v) for v in (*box.center, *box.size))
    return f'{BOX_OPEN}{box.ref} {nums}{BOX_CLOSE}'


def format_plan(steps: list[PlanStep]) -> str:
    body = ''.join(
        f'{STEP_OPEN}{s.action} {s.target} {" ".join(_fmt(v) for v in s.position)}{STEP_CLOSE}'
        for s in steps)
    return f'{PLAN_OPEN}{body}{PLAN_CLOSE}'


def format_completion(think: str, answer: str, boxes: list[Box] = (), plan: list[PlanStep] = ()) -> str:
    """Build a completion in the canonical form (used for training targets)."""
    parts = [answer.strip()]
    parts += [format_box(b) for b in boxes]
    if plan:
        parts.append(format_plan(list(plan)))
    body = ' '.join(p for p in parts if p)
    return f'{THINK_OPEN}{think.strip()}{THINK_CLOSE}{ANSWER_OPEN}{body}{ANSWER_CLOSE}'


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split())


def parse_boxes(text: str) -> list[Box]:
    out = []
    for m in _BOX.finditer(text):
        v = _floats(m.group('nums'))
        out.append(Box(m.group('ref'), v[:3], tuple(abs(s) for s in v[3:])))
    return out


def parse_plan(text: str) -> list[PlanStep]:
    plan = _PLAN.search(text)
    if plan is None:
        return []
    return [PlanStep(m.group('action'), m.group('ref'), _floats(m.group('nums')))
            for m in _STEP.finditer(plan.group('body'))]


def is_format_valid(text: str) -> bool:
    """True iff the whole text is exactly one think block followed by one answer block."""
    m = _FULL.fullmatch(text)
    if m is None:
        return False
    # one of each: a second <think> or <answer> inside would make the match ambiguous
    return text.count(THINK_OPEN) == 1 and text.count(ANSWER_OPEN) == 1 and bool(m.group('answer').strip())


def parse_completion(text: str) -> ParsedCompletion:
    """Parse a completion. Never raises; a malformed text gives ``format_valid=False`` and best-effort parts."""
    text = text or ''
    m = _FULL.fullmatch(text)
    if m:
        think, answer = m.group('think').strip(), m.group('answer').strip()
    else:
        # best effort: take what is there so a half-formed completion is still inspectable
        t = re.search(r'<think>(.*?)(?:</think>|$)', text, re.DOTALL)
        a = re.search(r'<answer>(.*?)(?:</answer>|$)', text, re.DOTALL)
        think = t.group(1).strip() if t else ''
        answer = a.group(1).strip() if a else ('' if t else text.strip())
    answer_text = _PLAN.sub(' ', answer)
    answer_text = _BOX.sub(' ', answer_text)
    answer_text = ' '.join(_TAG.sub(' ', answer_text).split())
    return ParsedCompletion(
        think=think, answer=answer, answer_text=answer_text, boxes=parse_boxes(answer),
        plan=parse_plan(answer), format_valid=is_format_valid(text), raw=text)
