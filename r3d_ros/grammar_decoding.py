"""Decoding held to the grounded grammar: the model can only write what :mod:`r3d_ros.grounding` can look up.

A small model slips in the markup more than in the words: a fact with one argument too many, a stray ``]``,
a reference to a slot the map has no object in, ``the chair <obj_5>`` where obj_5 is the table (the text is then
rewritten to "table" and the answer is about the wrong object). Each of these is refused after decoding and
costs a regeneration, or the answer. :class:`GroundedGrammar` is a ``transformers`` logits processor that
masks, at every step, each next token that would make such a completion, from the text decoded so far:

* a reference ``<obj_k>`` only to an object of the map's records; right after a class word (``the chair``),
  only to a record of that class when the map has one (the text then names what the box is), and of the colour
  the question gives it ('the brown nightstand') when one of them has that colour; where the model
  puts most of its probability on some reference, only on the allowed ones (it chose to name an object; the
  grammar only says which it may name, so masking its favourite does not push it into stray text);
* inside a fact ``[name args]``: a name of :data:`r3d_ros.grounding.FACTS`, as many arguments as it takes, each
  a reference (``o``) to an object the text has already named, as every training target does, or a class label
  (``l``), and ``]`` only once they are all written; a plan step's object is likewise one already named and,
  for ``pick`` / ``place`` / ``open`` / ..., one the plan has brought the robot to (the validator's rule);
* ``<box>[class] <obj_k></box>`` and ``<step>action [class] <obj_k></step>`` in that shape; no other markup
  (a raw ``<``, ``>``, ``]``, an encoder placeholder) anywhere, and the end only outside a fact, box or step;
* no digit anywhere (every number is a fact's value), and a colour word only one the question says;
* the sections in order (``<think>`` ... ``</think><answer>`` ... ``</answer>``, boxes and one plan of steps in
  the answer, the end only after it), so a completion is always well-formed unless cut off by the budget;
* a box per object the answer's text speaks of (a small model otherwise repeats a box in place of the plan):
  each on a different object it named or an object-valued fact found (``[support <obj_3>]``);
* with the model's answer shapes (:mod:`r3d_ros.answer_shapes`, learnt from its training targets): the reasoning
  and the answer's text follow one of the sentences it was trained to write, with its objects, classes and
  facts open, and nothing but boxes and a plan after that text.

What stays the model's: which object, which fact, every word. The grammar is the reasoner's and the
evaluation's (:func:`r3d_ros.pipeline.ScenePipeline`, ``training/evaluate.py``), so the figures measure
what the robot gets. A hand-written processor because the grammar depends on each map's records (no
maintained grammar library here takes a per-request vocabulary of object tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import re

import torch
from transformers import LogitsProcessor

from r3d_ros.answer_shapes import AnswerShapes, class_word
from r3d_ros.grounding import FACT, FACTS, REF, GroundingError, Scene, evaluate_fact, label_text
from r3d_ros.output_format import (
    ACTIONS,
    ANSWER_CLOSE,
    ANSWER_OPEN,
    BOX_CLOSE,
    BOX_OPEN,
    MARKERS,
    PLAN_CLOSE,
    PLAN_OPEN,
    STEP_CLOSE,
    STEP_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
)
from r3d_ros.plan_validation import reachable
from r3d_ros.scene_objects import COLOR_NAMES, ObjectRecord

_MARKUP = re.compile(r'[<>\[\]]')
_NAME = re.compile(r'[a-z_]*')
_OBJECT_FACTS = ('nearest', 'support', 'between')   # facts whose value is an object (r3d_ros.grounding.FACTS)
_BOXED = re.compile(rf'{re.escape(BOX_OPEN)}[^<]*<(obj_\d+)>')
_NAVIGATED = re.compile(rf'{STEP_OPEN}\s*navigate_to\s+(?:\S+\s+)?<(?P<id>obj_\d+)>')


def _named(text: str, records: dict) -> set[str]:
    """The map's objects ``text`` refers to by ``<obj_k>``."""
    return {m['id'] for m in REF.finditer(text)} & set(records)


@functools.lru_cache(maxsize=8)
def _vocabulary(tokenizer) -> tuple[dict[int, str], dict[int, str]]:
    """({marker id: marker}, {id: text} of every other non-special token) of a tokenizer: decoded once, not per
    request and retry (a grammar is built for each)."""
    markers = {tokenizer.convert_tokens_to_ids(m): m for m in MARKERS}
    special = set(tokenizer.all_special_ids) | set(markers)
    return markers, {i: tokenizer.decode([i]) for i in range(len(tokenizer)) if i not in special}


def _answer_text(text: str) -> str:
    """The answer's text so far: after ``<answer>``, before its first box or plan ('' before the answer)."""
    if ANSWER_OPEN not in text:
        return ''
    return re.split(f'{re.escape(BOX_OPEN)}|{re.escape(PLAN_OPEN)}', text.split(ANSWER_OPEN, 1)[1], maxsplit=1)[0]


def _shape_section(text: str, tails: bool) -> tuple[str | None, str]:
    """('think' | 'answer', the section's text so far), 'tail' after the answer's text (a box or the plan has
    begun) when the shapes stop at the text (``tails`` False), or None where no shape applies (before
    ``<think>``, between the sections, after the answer)."""
    if THINK_OPEN not in text:
        return None, ''
    if THINK_CLOSE not in text:
        return 'think', text.split(THINK_OPEN, 1)[1]
    if ANSWER_OPEN not in text or ANSWER_CLOSE in text:
        return None, ''
    body = text.split(ANSWER_OPEN, 1)[1]
    return ('tail', '') if not tails and (BOX_OPEN in body or PLAN_OPEN in body) else ('answer', body)


class GroundedGrammar(LogitsProcessor):
    """Per batch row, the records its map has; masks the tokens that would leave the grounded grammar."""

    def __init__(self, tokenizer, ref_token_ids: Sequence[int], records: Sequence[Sequence[ObjectRecord]],
                 class_names: Sequence[str], eos_token_id: int | None = None,
                 questions: Sequence[str] | None = None, shapes: AnswerShapes | None = None):
        self.refs = {int(t): f'obj_{k}' for k, t in enumerate(ref_token_ids)}
        self.records = [{r.id: r for r in rows} for rows in records]
        self._scenes = [Scene.of(list(rows), classes=class_names) for rows in records]
        self._boxes = [{r.id: r.box for r in rows} for rows in records]
        self.labels = sorted({label_text(c) for c in class_names}
                             | {label_text(r.label) for rows in records for r in rows}, key=len, reverse=True)
        self.class_args = {c.replace(' ', '_') for c in class_names} | {r.label for rows in records for r in rows}
        # the one word grounding reads before a box's / step's reference: 'trash_can', or a one-word class
        self.tag_words = self.class_args | {w for w in self.labels if ' ' not in w}
        self._described = [self._colours_named(q) for q in questions] if questions else [{} for _ in records]
        self.eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        self.markers, texts = _vocabulary(tokenizer)
        self.texts = {i: s for i, s in texts.items() if i not in self.refs}
        self._free_text = self._free_vocabulary(questions or [None] * len(records))
        self._spaces = [i for i, s in self.texts.items() if s.isspace()]
        self._ref_index = torch.tensor(sorted(self.refs))
        self._prompt_len: int | None = None
        self._decoded: list[list[str]] = [[] for _ in records]
        self.shapes = shapes or None
        self._pieces = {**self.texts, **{t: f'<{r}>' for t, r in self.refs.items()}}
        self._tail_pieces = {**self._pieces, **self.markers}
        self._walked: list[tuple | None] = [None for _ in records]
        self._asked = [self.shapes.asked(q) if self.shapes else None for q in (questions or [None] * len(records))]
        self._phrase_objects = [self._objects_named(asked, rows) for asked, rows in zip(self._asked, self.records)]

    def _free_vocabulary(self, questions: Sequence[str | None]) -> list[list[int]]:
        """Per row, the text tokens free text may take: no markup, no digit (every number is a fact's value), and
        a colour word only one the question says ('the black lamp'), as in every training target."""
        colours = {i: s.strip() for i, s in self.texts.items() if s.strip() in COLOR_NAMES}
        free = [i for i, s in self.texts.items() if self._free_ok(s) and not any(ch.isdigit() for ch in s)]
        out = []
        for q in questions:
            said = set(COLOR_NAMES) if q is None else {c for c in COLOR_NAMES if re.search(rf'\b{c}\b', q.lower())}
            out.append([i for i in free if i not in colours or colours[i] in said])
        return out

    # -- the grammar on text ----------------------------------------------------------------------
    def _free_ok(self, s: str) -> bool:
        """``s`` may follow free text: no markup but the opening of a fact that is a valid prefix."""
        head, bracket, rest = s.partition('[')
        if _MARKUP.search(head):
            return False
        return not bracket or self._fact_ok(rest, set())

    def _fact_ok(self, fragment: str, pool: set[str]) -> bool:
        """``fragment`` (after ``[``) is the start of a valid fact whose objects are in ``pool``, or a whole one
        followed by free text."""
        head, closed, tail = fragment.partition(']')
        if closed:
            return self._fact_args(head, pool, complete=True) and not _MARKUP.search(tail)
        return self._fact_args(head, pool, complete=False)

    def _fact_args(self, head: str, pool: set[str], complete: bool) -> bool:
        name = _NAME.match(head)[0]
        rest = head[len(name):]
        if not rest and not complete:
            return any(f.startswith(name) for f in FACTS)
        if name not in FACTS or (rest and not rest[0].isspace()):
            return False
        kinds, args = FACTS[name][0], rest.split()
        open_last = bool(args) and not rest[-1].isspace() and not complete
        if len(args) > len(kinds) or (complete and len(args) != len(kinds)):
            return False
        for i, (kind, arg) in enumerate(zip(kinds, args)):
            partial = open_last and i == len(args) - 1
            if kind == 'o' and not ((m := REF.fullmatch(arg)) and m['id'] in pool and arg not in args[:i]):
                return False   # a ref is one token; a relation is between different objects
            if kind == 'l' and not (any(c.startswith(arg) for c in self.class_args) if partial
                                    else arg in self.class_args):
                return False
        return True

    def _class_before(self, text: str) -> str | None:
        """The class word ``text`` ends with ('... the trash can '), as grounding reads a word before a reference."""
        if not text[-1:].isspace():
            return None
        body = text.rstrip()
        for w in self.labels:
            if body.endswith(w) and not body[:-len(w)][-1:].isalpha():
                return w
        return None

    # -- per step ---------------------------------------------------------------------------------
    def _state(self, text: str) -> tuple[str, str]:
        """('fact' | 'box' | 'step' | 'free', the fragment after the opening)."""
        cuts = {'fact': (text.rfind('['), text.rfind(']')), 'box': (text.rfind(BOX_OPEN), text.rfind(BOX_CLOSE)),
                'step': (text.rfind(STEP_OPEN), text.rfind(STEP_CLOSE))}
        opened = [(start, kind) for kind, (start, end) in cuts.items() if start > end]
        if not opened:
            return 'free', ''
        start, kind = max(opened)
        return kind, text[start + (1 if kind == 'fact' else len(BOX_OPEN if kind == 'box' else STEP_OPEN)):]

    def _colours_named(self, question: str) -> dict[str, set[str]]:
        """{class word: colours} the question gives that class ('the brown nightstand', 'the green trash can and
        the blue trash can')."""
        q = ' ' + re.sub(r'[^a-z ]', ' ', question.lower()) + ' '
        out: dict[str, set[str]] = {}
        for w in self.labels:
            for c in COLOR_NAMES:
                if f' {c} {w} ' in q:
                    out.setdefault(w, set()).add(c)
        return out

    @staticmethod
    def _objects_named(asked: tuple | None, records: dict) -> tuple[frozenset, ...]:
        """Per object phrase of the question, in order, the records it names: of its class, and of its colour when
        one of them has it. When the map has none of its class (the class head missed it), any record but those
        the question's other phrases name: "Bring the book to the nightstand" with the book classed a bowl must
        not bring the nightstand to itself."""
        named = []
        for phrase in (asked[2] if asked else ()):
            word, colour = class_word(phrase), phrase[:-len(class_word(phrase))].strip()
            same = {k for k, r in records.items() if label_text(r.label) == word}
            named.append(frozenset({k for k in same if records[k].color == colour} or same))
        taken = frozenset().union(*named) if named else frozenset()
        return tuple(n or frozenset(records) - taken for n in named)

    def _ref_ids(self, records: dict, word: str | None, pool: set[str] | None = None, row: int = 0,
                 strict: bool = False) -> list[int]:
        """References that may come next: to the map's objects (those in ``pool`` when given); after a class word,
        to the objects of that class when the map has any (in the pool first; ``strict``: only in the pool, as a
        box keeps to what the text speaks of), and of the colour the question gives that class when one has it.
        A plan step is not strict: 'pick chair' stays a chair, and a plan that then fails validation is refused
        and retried rather than turned into picking up something else."""
        every = [t for t, rid in self.refs.items() if rid in records]
        ids = [t for t in every if pool is None or self.refs[t] in pool]
        if word is None:
            return ids
        same = lambda cands: [t for t in cands if label_text(records[self.refs[t]].label) == word]  # noqa: E731
        ids = same(ids) or (same(every) if not strict else []) or ids
        colours = self._described[row].get(word, ())
        return [t for t in ids if records[self.refs[t]].color in colours] or ids

    def allowed(self, row: int, text: str) -> list[int]:
        """Token ids that may come next after ``text`` in row ``row``."""
        ids = self._grammar_next(row, text)
        return self._in_shape(row, text, ids) if self.shapes else ids

    def _grammar_next(self, row: int, text: str) -> list[int]:
        records = self.records[row]
        state, fragment = self._state(text)
        if state == 'free':
            return self._free_next(row, text)
        if state == 'fact':
            ids = self._fact_next(fragment, self._mentioned(text, records))
            if all(i in self.texts and self.texts[i].isspace() for i in ids):
                ids = self._fact_next(fragment, set(records))   # it needs an object the text has not named
            return ids
        pool = self._step_pool(text, fragment, row) if state == 'step' else self._box_pool(text, row)
        return self._object_tag(state, fragment, row, pool)

    # -- answer shapes ------------------------------------------------------------------------------
    def _in_shape(self, row: int, text: str, ids: list[int]) -> list[int]:
        """``ids`` that keep the reasoning / the answer on one of the model's shapes (a section's closing marker only
        once its shape is complete). Shapes of the answer's text alone (before session 16): after that text, no
        more words outside boxes and steps."""
        tails = self.shapes.tails
        section, body = _shape_section(text, tails)
        if section == 'tail':
            if self._state(text)[0] != 'free':
                return ids
            return [i for i in ids if i in self.markers or i == self.eos or self.texts.get(i, 'x').isspace()]
        matcher = self.shapes.matchers.get(section) if section else None
        if matcher is None:
            return ids
        last, asked = self._walked[row], self._asked[row]
        objects = self._phrase_objects[row]
        if last and last[0] == section and body.startswith(last[1]):
            states = matcher.advance(last[2], body[len(last[1]):], asked, objects)
        else:
            states = matcher.advance(matcher.start, body, asked, objects)
        self._walked[row] = (section, body, states)
        if not states:
            return ids   # off every shape (only if the mask was left open): the grammar alone
        whole = tails and section == 'answer'   # the answer's boxes and plan are in its shape: markers are words
        words = matcher.allowed(states, self._tail_pieces if whole else self._pieces, asked, objects)
        complete = matcher.is_complete(states)
        ends = (lambda i: self.markers.get(i) == ANSWER_CLOSE) if whole else \
            (lambda i: i in self.markers or i == self.eos)
        kept = [i for i in ids if i in words or (complete and ends(i))]
        return kept or ids

    def _spoken_of(self, text: str, row: int) -> set[str]:
        """Objects the answer's text speaks of (the reasoning's, when the answer names none): the ones it names,
        and the values of its object-valued facts (the support ``[support <obj_3>]`` found)."""
        records = self.records[row]
        for spoken in (_answer_text(text), text):
            pool = _named(spoken, records)
            for m in FACT.finditer(spoken):
                if m['name'] in _OBJECT_FACTS:
                    try:
                        value = evaluate_fact(self._scenes[row], m['name'], m['args'].split())[1]
                    except GroundingError:
                        continue
                    pool |= {value} & set(records)
            if pool:
                return pool
        return set()

    def _box_pool(self, text: str, row: int) -> set[str]:
        """Objects a box may show: one the answer speaks of (:meth:`_spoken_of`) and no box shows yet, so that a
        box never shows an object the answer does not speak of, nor one twice."""
        spoken = self._spoken_of(text, row)
        return (spoken - set(_BOXED.findall(text))) or spoken or set(self.records[row])

    def _free_next(self, row: int, text: str) -> list[int]:
        """Outside a fact, box or step: the completion's sections in order, ``<think>`` reasoning ``</think>``
        ``<answer>`` text, boxes and at most one ``<plan>`` of steps ``</answer>``, then the end."""
        ids = {m: t for t, m in self.markers.items()}
        if THINK_OPEN not in text:
            return [ids[THINK_OPEN]]
        if THINK_CLOSE not in text or ANSWER_OPEN not in text:
            words = self._free_text[row] + self._ref_ids(self.records[row], self._class_before(text), row=row)
            return words + [ids[THINK_CLOSE]] if THINK_CLOSE not in text else [ids[ANSWER_OPEN]]
        if ANSWER_CLOSE in text:
            return [self.eos]
        plan = text[text.rfind(PLAN_OPEN):] if PLAN_OPEN in text else ''
        if plan and PLAN_CLOSE not in plan:   # between steps: the next step, or the end of a plan that has one
            return self._spaces + [ids[STEP_OPEN]] + ([ids[PLAN_CLOSE]] if STEP_CLOSE in plan else [])
        words = self._free_text[row] + self._ref_ids(self.records[row], self._class_before(text), row=row)
        return words + [ids[ANSWER_CLOSE]] + ([ids[BOX_OPEN]] if self._may_box(text, row) else []) \
            + ([] if plan else [ids[PLAN_OPEN]])

    def _fact_next(self, fragment: str, pool: set[str]) -> list[int]:
        ids = [i for i, s in self.texts.items() if self._fact_ok(fragment + s, pool)]
        return ids + [t for t in self.refs if self._fact_ok(f'{fragment}<{self.refs[t]}>', pool)]

    def _step_pool(self, text: str, fragment: str, row: int) -> set[str]:
        """Objects a plan step may act on: ones the answer's text named (the reasoning's, when it names none); for
        an action on an object, also ones the robot can reach (navigated to, or next to one it navigated to: the
        validator's rule), so that the plan validates and acts on what the answer says."""
        records = self.records[row]
        pool = _named(_answer_text(text), records) or self._mentioned(text, records)   # what the answer speaks of
        action = fragment.split()[0] if fragment.split() else ''
        if action in ('', 'navigate_to'):
            return pool
        plan = text[text.rfind(PLAN_OPEN):] if PLAN_OPEN in text else ''
        visited = {m['id'] for m in _NAVIGATED.finditer(plan)} & set(records)
        boxes = self._boxes[row]
        reach = {k for k in records if k in visited or reachable(boxes[k], visited, boxes)}
        return (pool & reach) or reach or pool

    def _may_box(self, text: str, row: int) -> bool:
        """Another ``<box>`` only while some object the answer speaks of has none: a box per object, as in the
        training targets, never a run of copies in place of the plan."""
        return text.count(BOX_OPEN) < len(self._spoken_of(text, row))

    @staticmethod
    def _mentioned(text: str, records: dict) -> set[str]:
        """The map's objects the completion has named so far (all of them before it names any): a fact's or a
        plan step's object is one the text introduced ('the cup <obj_3>'), as in every training target."""
        return _named(text, records) or set(records)

    def _object_tag(self, state: str, fragment: str, row: int, pool: set[str] | None) -> list[int]:
        """Inside ``<box>`` / ``<step>``: [action] [class word] ``<obj_k>``, then the closing marker."""
        records = self.records[row]
        close = BOX_CLOSE if state == 'box' else STEP_CLOSE
        words = fragment.split()
        if REF.search(fragment):
            spaces = [i for i, s in self.texts.items() if s.isspace()]
            return spaces + [t for t, m in self.markers.items() if m == close]
        need_action = state == 'step' and (not words or (len(words) == 1 and not fragment[-1:].isspace()))
        ids = [i for i, s in self.texts.items() if self._tag_words_ok(fragment + s, state)]
        if not need_action and (fragment[-1:].isspace() or not words):
            word = words[-1] if len(words) > (state == 'step') else None
            ids += self._ref_ids(records, label_text(word) if word in self.tag_words else None, pool, row,
                                 strict=state == 'box')
        return ids

    def _tag_words_ok(self, s: str, state: str) -> bool:
        if _MARKUP.search(s):
            return False
        words, open_last = s.split(), not s[-1:].isspace()
        if state == 'step':
            if not words:
                return True
            action, words = words[0], words[1:]
            if not (any(a.startswith(action) for a in ACTIONS) if open_last and not words else action in ACTIONS):
                return False
        if len(words) > 1:
            return False
        return not words or any(w.startswith(words[0]) if open_last else w == words[0] for w in self.tag_words)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._prompt_len is None:
            self._prompt_len = input_ids.shape[1]
        mask = torch.ones_like(scores, dtype=torch.bool)
        for row in range(input_ids.shape[0]):
            done = self._decoded[row]
            for t in input_ids[row, self._prompt_len + len(done):].tolist():
                done.append(self.texts.get(t) or (f'<{self.refs[t]}>' if t in self.refs else self.markers.get(t, '')))
            ids = [i for i in self.allowed(row, ''.join(done)) if i < scores.shape[1]]
            refs = [i for i in ids if i in self.refs]
            if refs and scores[row].softmax(-1)[self._ref_index].sum() >= 0.5:
                ids = refs   # the model means to name an object here: the grammar only says which ones it may
            mask[row, ids if ids else slice(None)] = False   # no way on (cannot happen): leave the row to the model
        return scores.masked_fill(mask, float('-inf'))
