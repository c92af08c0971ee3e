"""Answer shapes: the sentences a model was trained to write, with its objects, classes and facts left open.

The grounded grammar (:mod:`r3d_ros.grammar_decoding`) keeps every fact and reference true of the map, not the
words around them: a small model drifts into word salad ("its highest point at z upp ... the box is centreding")
with every number still right. A model trained on generated targets has a closed set of sentence shapes; this
module learns them from its training targets and lets decoding write only text that follows one of them:

    The CLASS REF is about [height ARGS tall. Its box reaches from [bottom ARGS to [top ARGS above the floor ...

where CLASS is any class phrase of the model ('lamp', 'black lamp') and CLASSES its plural, before a reference
(which the grammar then keeps to that class); ASKED / ASKED_MANY a class phrase the question says ('the black
lamp is ... tall' for "How tall is the black lamp?", 'I scan the room for lamps', and before a reference where
the target's phrase was the question's: 'I find the table <table_8>' for "Which is larger, the book or the
table?"), only one it says; REF1, REF2, ... the section's first, second, ... object, each one ``<obj_k>`` (which
one: the grammar's rules), the same one wherever the target named the same object and different ones where it
named different objects, in fact arguments too ('[volume REF1] for the book and [volume REF2] for the table':
not one object's volume twice); ARGS the arguments of a fact that are not all references, up to its ``]``
(the grammar checks them). What stays the model's: which shape (which question it answers), which objects and
facts. A model without shapes
(a real backbone trained on free text) decodes as before. Hand-written: the shapes are a trie over characters
with a few open slots, matched as a small NFA; no maintained library takes per-request token masks of this kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import functools
import re

from r3d_ros.grounding import label_text, plural
from r3d_ros.scene_objects import COLOR_NAMES

CLASS, CLASSES, REF, ARGS = '\x01', '\x02', '\x04', '\x05'   # open slots in a stored skeleton
ASKED, ASKED_MANY = '\x03', '\x06'
#: REF_SLOTS[i]: the section's (i+1)-th object; REF (any object, unbound) in shapes stored before there were these
REF_SLOTS = tuple(chr(0x11 + i) for i in range(15))
#: the trie's keys of the slots: longer than one character, so no text character (a byte token's '\x04') is one
_SLOT = {CLASS: '<class>', CLASSES: '<classes>', REF: '<ref>', ARGS: '<args>', ASKED: '<asked>',
         ASKED_MANY: '<asked-many>', **{c: f'<ref{i + 1}>' for i, c in enumerate(REF_SLOTS)}}
_BOUND = {f'<ref{i + 1}>': i for i in range(len(REF_SLOTS))}
SECTIONS = ('think', 'answer')
_REF = re.compile(r'<[a-z_]+_\d+>')
_DETERMINERS = ('the', 'a', 'for')


def _phrases(class_names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(class phrases, plural phrases), longest first: 'trash can', 'black trash can'; 'trash cans'."""
    words = [label_text(c) for c in class_names]
    one = words + [f'{c} {w}' for c in COLOR_NAMES for w in words]
    many = [plural(c) for c in class_names]
    key = lambda s: (-len(s), s)  # noqa: E731
    return sorted(set(one), key=key), sorted(set(many), key=key)


@functools.lru_cache(maxsize=4)
def _phrase_pattern(class_names: tuple[str, ...]) -> tuple[re.Pattern, frozenset[str]]:
    """(a whole-word pattern of every class phrase and plural, longest first; the plurals), compiled once per
    class list, not per training target."""
    one, many = _phrases(class_names)
    longest = sorted(many + one, key=lambda w: -len(w))
    return re.compile(r'(?<![\w])(' + '|'.join(map(re.escape, longest)) + r')(?![\w])'), frozenset(many)


def _numbered_refs(text: str) -> str:
    """Each reference as the slot of its object's order of first appearance (REF1, REF2, ...; REF past 15)."""
    order: dict[str, int] = {}

    def slot(m: re.Match) -> str:
        i = order.setdefault(m[0], len(order))
        return REF_SLOTS[i] if i < len(REF_SLOTS) else REF
    return _REF.sub(slot, text)


def _opened_fact(m: re.Match) -> str:
    """A fact whose arguments are all references keeps them (numbered slots); any other has its arguments opened."""
    if all(a in REF_SLOTS for a in m[2].split()):
        return m[0]
    return f'[{m[1]}{ARGS}'


def skeleton(text: str, question: str, class_names: Sequence[str]) -> str:
    """``text`` (a think or answer body of a training target) with its references (numbered by object), fact
    arguments and the class phrases that name objects (before a reference, or after a determiner when the
    question names them) opened. Other class words stay words ('Its box reaches from')."""
    t = re.sub(r'\[(\w+)\s+([^\]]+)\]', _opened_fact, _numbered_refs(text))
    pattern, many = _phrase_pattern(tuple(class_names))
    q = question.lower()
    refs = ''.join((REF, *REF_SLOTS))

    def opened(m: re.Match) -> str:
        before = t[:m.start()].split()[-1:] or ['']
        rest = t[m.end():]
        named = len(rest) > 1 and rest[0] == ' ' and rest[1] in refs
        said = re.search(rf'\b{re.escape(m[1])}\b', q)
        if named and not said:
            return CLASSES if m[1] in many else CLASS
        if said and (named or before[0].lower() in _DETERMINERS):
            return ASKED_MANY if m[1] in many else ASKED
        return m[0]
    return pattern.sub(opened, t)


def asked_phrases(question: str, class_names: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(class phrases, plural phrases) ``question`` says ('black lamp' and 'lamp' for "the black lamp"); None when
    it says none (an ASKED slot then takes any, as it would without the question)."""
    pattern, many = _phrase_pattern(tuple(class_names))
    said = set(pattern.findall(question.lower()))
    said |= {w.split(' ', 1)[1] for w in said if w.split(' ', 1)[0] in COLOR_NAMES}   # the class without its colour
    if not said:
        return None
    return tuple(sorted(said - many)), tuple(sorted(said & many))


def sections(completion: str) -> dict[str, str]:
    """{'think': body, 'answer': text before its first box or plan} of a completion in the output grammar."""
    think = re.search(r'<think>(.*?)</think>', completion, re.S)
    answer = re.search(r'<answer>(.*?)(?:<box>|<plan>|</answer>|$)', completion, re.S)
    return {'think': think[1].strip() if think else '', 'answer': answer[1].strip() if answer else ''}


def shapes_of(targets: Iterable[tuple[str, str]], class_names: Sequence[str]) -> dict[str, list[str]]:
    """{section: sorted distinct skeletons} of (question, completion) training pairs."""
    out: dict[str, set[str]] = {s: set() for s in SECTIONS}
    for question, completion in targets:
        for name, body in sections(completion).items():
            if body:
                out[name].add(skeleton(body, question, class_names))
    return {s: sorted(v) for s, v in out.items()}


class ShapeMatcher:
    """The skeletons of one section as a character trie; a state is a set of (node, pending, bound) where pending
    is the rest of a class phrase being written, ARGS inside a fact, or '' at a node, and bound the objects
    ('obj_3', ...) REF1, REF2, ... stand for so far."""

    def __init__(self, skeletons: Sequence[str], class_names: Sequence[str]):
        self.children: list[dict[str, int]] = [{}]
        self.terminal: list[bool] = [False]
        for s in skeletons:
            node = 0
            for ch in (_SLOT.get(c, c) for c in s):
                if ch not in self.children[node]:
                    self.children.append({})
                    self.terminal.append(False)
                    self.children[node][ch] = len(self.children) - 1
                node = self.children[node][ch]
            self.terminal[node] = True
        self._one, self._many = _phrases(class_names)
        self.start = frozenset({(0, '', ())})
        self._allowed: dict[tuple, frozenset] = {}
        self._expansions: dict[tuple | None, dict[str, Sequence[str]]] = {}

    def expansions(self, asked: tuple | None = None) -> dict[str, Sequence[str]]:
        """What each class slot may be written as: any class phrase (plural) before a reference; one the question
        says (``asked``, :func:`asked_phrases`) for an ASKED slot, any when it says none of that number."""
        if asked not in self._expansions:
            said_one, said_many = asked or ((), ())
            self._expansions[asked] = {_SLOT[CLASS]: self._one, _SLOT[CLASSES]: self._many,
                                       _SLOT[ASKED]: said_one or self._one, _SLOT[ASKED_MANY]: said_many or self._many}
        return self._expansions[asked]

    def _step(self, node: int, pending: str, bound: tuple, sym: str, expansions: dict) -> Iterable[tuple]:
        if pending == ARGS:
            yield (node, '', bound) if sym == ']' else (node, ARGS, bound)
            return
        if pending:
            if sym == pending[0]:
                yield node, pending[1:], bound
            return
        if self.terminal[node] and sym.isspace():
            yield node, '', bound   # a finished shape takes the space before the next section's marker
        ref = sym.startswith('<obj_')
        for key, child in self.children[node].items():
            if ref and key in _BOUND:
                i, obj = _BOUND[key], sym[1:-1]
                if i < len(bound) and bound[i] == obj:
                    yield child, '', bound
                elif i == len(bound) and obj not in bound:
                    yield child, '', bound + (obj,)
            elif key == sym or (ref and key == _SLOT[REF]):
                yield child, '', bound
            elif key == _SLOT[ARGS]:
                yield (child, '', bound) if sym == ']' else (child, ARGS, bound)
            elif key in expansions and not ref:
                yield from ((child, e[1:], bound) for e in expansions[key] if e[0] == sym)

    def advance(self, states: frozenset, text: str, asked: tuple | None = None) -> frozenset:
        """The states after ``text`` (an ``<obj_k>`` in it is one REF symbol); empty: off every shape."""
        expansions = self.expansions(asked)
        for sym in _symbols(text):
            states = frozenset(s for node, pending, bound in states
                               for s in self._step(node, pending, bound, sym, expansions))
            if not states:
                break
        return states

    def is_complete(self, states: frozenset) -> bool:
        return any(self.terminal[node] and not pending for node, pending, _ in states)

    def matches(self, text: str, asked: tuple | None = None) -> bool:
        """``text`` is one whole shape."""
        return self.is_complete(self.advance(self.start, text, asked))

    def allowed(self, states: frozenset, pieces: dict[int, str], asked: tuple | None = None) -> frozenset:
        """Ids of ``pieces`` (token id -> text) that keep ``states`` on some shape. Text pieces never read the
        bound objects, so their ids are cached per state set without them (the shapes are the model's, so the
        cache serves every request); reference pieces are checked against the bindings each time."""
        core = frozenset((node, pending, ()) for node, pending, _ in states)
        key = (core, asked)
        if key not in self._allowed:
            if len(self._allowed) > 50_000:
                self._allowed.clear()
            self._allowed[key] = frozenset(i for i, s in pieces.items()
                                           if s and not _is_ref(s) and self.advance(core, s, asked))
        refs = {i for i, s in pieces.items() if _is_ref(s) and self.advance(states, s, asked)}
        return self._allowed[key] | refs if refs else self._allowed[key]


def _is_ref(piece: str) -> bool:
    return piece.startswith('<obj_') and piece.endswith('>')


def _symbols(text: str) -> list[str]:
    """Characters, and each ``<obj_k>`` as one symbol."""
    out: list[str] = []
    for i, part in enumerate(re.split(r'(<obj_\d+>)', text)):
        out.extend([part] if i % 2 else list(part))
    return out


class AnswerShapes:
    """A model's shapes per section (``R3DProcessor.answer_shapes``), with the matcher of each."""

    def __init__(self, shapes: dict[str, Sequence[str]], class_names: Sequence[str]):
        self.class_names = tuple(class_names)
        self.matchers = {s: ShapeMatcher(shapes.get(s) or (), class_names) for s in SECTIONS if shapes.get(s)}

    def __bool__(self) -> bool:
        return bool(self.matchers)

    def fits(self, completion: str, question: str | None = None) -> bool:
        """Each section of ``completion`` that has shapes is one of them, whole (with the class phrases
        ``question`` says where a shape asks for them)."""
        asked = self.asked(question)
        return all(m.matches(body, asked) for name, body in sections(completion).items()
                   if (m := self.matchers.get(name)))

    def asked(self, question: str | None) -> tuple | None:
        """:func:`asked_phrases` of ``question`` in this model's classes (None: no question)."""
        return None if question is None else asked_phrases(question, self.class_names)
