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
(the grammar checks them). PHRASE1, PHRASE2, ... the question's first, second, ... object phrase as it says it
('Standing at the PHRASE1 and facing the PHRASE2'), and PHRASE_CLASS1, ... that phrase's class word before a
reference, whose object must then be one the phrase names ('the PHRASE_CLASS2 REF2' is 'the chair <obj_9>' for
"... facing the white chair", obj_9 a white chair of the map): the targets introduce the question's objects in
the order it names them, and a 4-layer model otherwise swaps them ('standing at the sofa and facing the sofa').
What stays the model's: which shape (which question it answers), which objects the question leaves open
('the closest one is the [nearest REF1]') and which facts. A model without shapes
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
#: PHRASES[j]: the question's (j+1)-th object phrase as it says it; PHRASE_CLASSES[j]: its class word before a
#: reference (private-use characters: no text the targets hold)
PHRASES = tuple(chr(0xE000 + j) for j in range(8))
PHRASE_CLASSES = tuple(chr(0xE010 + j) for j in range(8))
#: BINDS[j] right after a reference's first appearance in a skeleton: its object is one the j-th phrase names (a
#: mark on the reference, not text: 'the [side REF2 REF3 REF1]' of the answer keeps the objects the reasoning bound)
BINDS = tuple(chr(0xE020 + j) for j in range(8))
#: the trie's keys of the slots: longer than one character, so no text character (a byte token's '\x04') is one
_SLOT = {CLASS: '<class>', CLASSES: '<classes>', REF: '<ref>', ARGS: '<args>', ASKED: '<asked>',
         ASKED_MANY: '<asked-many>', **{c: f'<ref{i + 1}>' for i, c in enumerate(REF_SLOTS)},
         **{c: f'<phrase{j + 1}>' for j, c in enumerate(PHRASES)},
         **{c: f'<phrase-class{j + 1}>' for j, c in enumerate(PHRASE_CLASSES)}}
_BOUND = {f'<ref{i + 1}>': i for i in range(len(REF_SLOTS))}
_BIND_KEYS = {c: j for j, c in enumerate(BINDS)}
#: the class word of a box or plan step ('<box>trash_can <obj_3>'): any (the grammar keeps it to the object's
#: class), or PHRASE_TAGS[j], the j-th question phrase's class, before a reference bound to that phrase
TAG = chr(0xE030)
PHRASE_TAGS = tuple(chr(0xE040 + j) for j in range(8))
_SLOT.update({TAG: '<tag>', **{c: f'<phrase-tag{j + 1}>' for j, c in enumerate(PHRASE_TAGS)}})
_TAG_WORD = re.compile(r'(<box>|<step>[a-z_]+ )[a-z_]+(?= <[a-z_]+_\d+>)')
#: the answer section runs to ``</answer>``: its text, then its boxes and plan, one shape, so that the boxes and a
#: plan's steps are the ones its text announced, on the objects the question names (the 4-layer model once wrote
#: "I will bring the lamp to the desk" over a plan that inspected the desk, and walked to the laptop twice)
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


def _numbered_refs(text: str) -> tuple[str, dict[str, str]]:
    """Each reference as the slot of its object's order of first appearance (REF1, REF2, ...; REF past 15), and
    {slot: the reference it stands for}."""
    order: dict[str, int] = {}

    def slot(m: re.Match) -> str:
        i = order.setdefault(m[0], len(order))
        return REF_SLOTS[i] if i < len(REF_SLOTS) else REF
    return _REF.sub(slot, text), {REF_SLOTS[i]: ref for ref, i in order.items() if i < len(REF_SLOTS)}


def phrase_binding(text: str, question: str, class_names: Sequence[str]) -> dict[str, int]:
    """{reference: j} for each reference of ``text`` (a whole target, reasoning first) that a class word names
    ('the chair <chair_4>'), bound in order of first mention to the question's first phrase of that class not
    bound yet: the targets introduce the question's objects in the order it names them."""
    pattern, many = _phrase_pattern(tuple(class_names))
    said = [p for p in question_phrases(question, class_names)][:len(PHRASES)]
    bound: dict[str, int] = {}
    for m in re.finditer(pattern.pattern + r'\s+(<[a-z_]+_\d+>)', text):
        if m[2] in bound:
            continue
        j = next((j for j, p in enumerate(said) if j not in bound.values() and p not in many
                  and class_word(p) == class_word(m[1])), None)
        if j is not None:
            bound[m[2]] = j
    return bound


def _opened_fact(m: re.Match) -> str:
    """A fact whose arguments are all references keeps them (numbered slots); any other has its arguments opened."""
    if all(a in REF_SLOTS for a in m[2].split()):
        return m[0]
    return f'[{m[1]}{ARGS}'


def class_word(phrase: str) -> str:
    """The class of an object phrase without its colour: 'black lamp' -> 'lamp', 'trash can' -> 'trash can'."""
    head, _, rest = phrase.partition(' ')
    return rest if rest and head in COLOR_NAMES else phrase


def question_phrases(question: str, class_names: Sequence[str]) -> tuple[str, ...]:
    """The object phrases ``question`` names, in order ('black lamp', 'table', 'lamps'), longest match first."""
    pattern, _ = _phrase_pattern(tuple(class_names))
    return tuple(pattern.findall(question.lower()))


def skeleton(text: str, question: str, class_names: Sequence[str], binding: dict[str, int] | None = None) -> str:
    """``text`` (a think or answer body of a training target) with its references (numbered by object), fact
    arguments and the class phrases that name objects (before a reference, or after a determiner when the
    question names them) opened: as the question's j-th phrase, or its class word before a reference the
    phrase names (``binding``, :func:`phrase_binding` of the whole target; of ``text`` when not given). Other
    class words stay words ('Its box reaches from')."""
    numbered, slots = _numbered_refs(_TAG_WORD.sub(lambda m: m[1] + TAG, text))
    t = re.sub(r'\[(\w+)\s+([^\]]+)\]', _opened_fact, numbered)
    pattern, many = _phrase_pattern(tuple(class_names))
    q = question.lower()
    said_in_order = list(question_phrases(question, class_names))[:len(PHRASES)]
    refs = ''.join((REF, *REF_SLOTS))
    binding = phrase_binding(text, question, class_names) if binding is None else binding

    def phrase_of(slot: str, phrase: str) -> int | None:
        j = binding.get(slots.get(slot, ''))
        return j if j is not None and class_word(said_in_order[j]) == class_word(phrase) else None

    def tagged(t: str) -> str:   # a box's / step's class word before a bound reference: that phrase's class
        return re.sub(f'{TAG} ([{"".join(slots)}])', lambda m: (
            f'{PHRASE_TAGS[j]} {m[1]}' if (j := binding.get(slots[m[1]])) is not None and j < len(PHRASE_TAGS)
            else m[0]), t) if slots else t

    def marked(t: str) -> str:   # BIND_j after each bound reference's first appearance
        seen: set[str] = set()
        out = []
        for ch in t:
            out.append(ch)
            if ch in slots and ch not in seen:
                seen.add(ch)
                j = binding.get(slots[ch])
                out.extend([BINDS[j]] if j is not None and j < len(BINDS) else [])
        return ''.join(out)

    def opened(m: re.Match) -> str:
        before = t[:m.start()].split()[-1:] or ['']
        rest = t[m.end():]
        named = len(rest) > 1 and rest[0] == ' ' and rest[1] in refs
        if named and rest[1] != REF and (j := phrase_of(rest[1], m[1])) is not None:
            return PHRASE_CLASSES[j] if m[1] == class_word(m[1]) else PHRASES[j] if m[1] == said_in_order[j] else CLASS
        said = re.search(rf'\b{re.escape(m[1])}\b', q)
        if said and not named and before[0].lower() in _DETERMINERS and said_in_order.count(m[1]) == 1:
            return PHRASES[said_in_order.index(m[1])]
        if named and not said:
            return CLASSES if m[1] in many else CLASS
        if said and (named or before[0].lower() in _DETERMINERS):
            return ASKED_MANY if m[1] in many else ASKED
        return m[0]
    return marked(tagged(pattern.sub(opened, t)))


def asked_phrases(question: str, class_names: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(class phrases, plural phrases) ``question`` says ('black lamp' and 'lamp' for "the black lamp"); None when
    it says none (an ASKED slot then takes any, as it would without the question)."""
    _, many = _phrase_pattern(tuple(class_names))
    said = set(question_phrases(question, class_names))
    said |= {class_word(w) for w in said}   # the class without its colour
    if not said:
        return None
    return tuple(sorted(said - many)), tuple(sorted(said & many))


def sections(completion: str, tails: bool = True) -> dict[str, str]:
    """{'think': body, 'answer': body (its text, boxes and plan; ``tails`` False: its text before the first box or
    plan, as shapes learnt before session 16 hold it)} of a completion in the output grammar."""
    think = re.search(r'<think>(.*?)</think>', completion, re.S)
    end = r'(?:</answer>|$)' if tails else r'(?:<box>|<plan>|</answer>|$)'
    answer = re.search(rf'<answer>(.*?){end}', completion, re.S)
    return {'think': think[1].strip() if think else '', 'answer': answer[1].strip() if answer else ''}


def shapes_of(targets: Iterable[tuple[str, str]], class_names: Sequence[str]) -> dict[str, list[str]]:
    """{section: sorted distinct skeletons} of (question, completion) training pairs."""
    out: dict[str, set[str]] = {s: set() for s in SECTIONS}
    for question, completion in targets:
        binding = phrase_binding(completion, question, class_names)
        for name, body in sections(completion).items():
            if body:
                out[name].add(skeleton(body, question, class_names, binding))
    return {s: sorted(v) for s, v in out.items()}


class ShapeMatcher:
    """The skeletons of one section as a character trie; a state is a set of (node, pending, bound) where pending
    is the rest of a class phrase being written, ARGS inside a fact, or '' at a node, and bound the objects
    ('obj_3', ...) REF1, REF2, ... stand for so far. ``phrase_refs[(node, ref key)]``: the question phrase whose
    objects that reference must be one of (the skeleton's BIND mark on it)."""

    def __init__(self, skeletons: Sequence[str], class_names: Sequence[str]):
        self.children: list[dict[str, int]] = [{}]
        self.terminal: list[bool] = [False]
        self.phrase_refs: dict[tuple[int, str], int | None] = {}
        for s in skeletons:
            node, edge = 0, None
            for ch in (_SLOT.get(c, c) for c in s):
                if ch in _BIND_KEYS:   # a mark on the reference just read, not a symbol
                    j = _BIND_KEYS[ch]
                    self.phrase_refs[edge] = j if self.phrase_refs.get(edge, j) == j else None   # shapes disagree
                    continue
                if ch not in self.children[node]:
                    self.children.append({})
                    self.terminal.append(False)
                    self.children[node][ch] = len(self.children) - 1
                edge, node = (node, ch), self.children[node][ch]
            self.terminal[node] = True
        self._one, self._many = _phrases(class_names)
        self._tags = sorted(set(class_names) | {w for w in self._one if ' ' not in w}, key=lambda w: (-len(w), w))
        #: the skeletons run on past the answer's text into its boxes and plan
        self.has_tail = any('<box>' in k or '<plan>' in k for k in skeletons)
        self.start = frozenset({(0, '', ())})
        self._allowed: dict[tuple, frozenset] = {}
        self._expansions: dict[tuple | None, dict[str, Sequence[str]]] = {}

    def expansions(self, asked: tuple | None = None) -> dict[str, Sequence[str]]:
        """What each class slot may be written as: any class phrase (plural) before a reference; one the question
        says (``asked``: :meth:`AnswerShapes.asked`) for an ASKED slot, any when it says none of that number; the
        question's j-th phrase (its class word) for PHRASEj (PHRASE_CLASSj), any when it names fewer."""
        if asked not in self._expansions:
            said_one, said_many, said = asked or ((), (), ())
            out = {_SLOT[CLASS]: self._one, _SLOT[CLASSES]: self._many, _SLOT[TAG]: self._tags,
                   _SLOT[ASKED]: said_one or self._one, _SLOT[ASKED_MANY]: said_many or self._many}
            for j in range(len(PHRASES)):
                out[_SLOT[PHRASES[j]]] = [said[j]] if j < len(said) else self._one + self._many
                out[_SLOT[PHRASE_CLASSES[j]]] = [class_word(said[j])] if j < len(said) else self._one
                out[_SLOT[PHRASE_TAGS[j]]] = [class_word(said[j]).replace(' ', '_')] if j < len(said) else self._tags
            self._expansions[asked] = out
        return self._expansions[asked]

    def _step(self, node: int, pending: str, bound: tuple, sym: str, expansions: dict,
              objects: Sequence[frozenset] = ()) -> Iterable[tuple]:
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
                j = self.phrase_refs.get((node, key))
                if j is not None and j < len(objects) and objects[j] and obj not in objects[j]:
                    continue   # not an object the question's phrase names
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

    def advance(self, states: frozenset, text: str, asked: tuple | None = None,
                objects: Sequence[frozenset] = ()) -> frozenset:
        """The states after ``text`` (an ``<obj_k>`` in it is one REF symbol); empty: off every shape.
        ``objects[j]``: the map's objects the question's j-th phrase names (empty: any)."""
        return self._walk(states, _symbols(text), self.expansions(asked), objects)[0]

    def _walk(self, states: frozenset, symbols, expansions, objects: Sequence[frozenset] = ()) -> tuple[frozenset, int]:
        """(the states after ``symbols``, empty when they leave every shape; how many symbols were read on them)."""
        read = 0
        for sym in symbols:
            states = frozenset(s for node, pending, bound in states
                               for s in self._step(node, pending, bound, sym, expansions, objects))
            if not states:
                break
            read += 1
        return states, read

    def is_complete(self, states: frozenset) -> bool:
        return any(self.terminal[node] and not pending for node, pending, _ in states)

    def matches(self, text: str, asked: tuple | None = None) -> bool:
        """``text`` is one whole shape."""
        return self.is_complete(self.advance(self.start, text, asked))

    def share_walked(self, text: str, asked: tuple | None = None) -> float:
        """The share of ``text``'s symbols read before it leaves every shape (1.0: it never does)."""
        symbols = list(_symbols(text))
        states, read = self._walk(self.start, symbols, self.expansions(asked))
        return 1.0 if states else read / len(symbols)

    def allowed(self, states: frozenset, pieces: dict[int, str], asked: tuple | None = None,
                objects: Sequence[frozenset] = ()) -> frozenset:
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
        refs = {i for i, s in pieces.items() if _is_ref(s) and self.advance(states, s, asked, objects)}
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
        return all(m.matches(body, asked) for name, body in sections(completion, self.tails).items()
                   if (m := self.matchers.get(name)))

    def share_on_shape(self, completion: str, question: str | None = None) -> float:
        """The least share of a section of ``completion`` that stays on the shapes before leaving them: near 1 for a
        trained sentence with an odd ending ('standing on the floor' boxes no object), low for word salad the
        grammar alone let through once the shapes had no way on."""
        asked = self.asked(question)
        return min((m.share_walked(body, asked) for name, body in sections(completion, self.tails).items()
                    if body and (m := self.matchers.get(name))), default=1.0)

    @property
    def tails(self) -> bool:
        """The answer's shapes hold its boxes and plan too (learnt since session 16)."""
        return 'answer' in self.matchers and self.matchers['answer'].has_tail

    def asked(self, question: str | None) -> tuple | None:
        """(:func:`asked_phrases`, :func:`question_phrases`) of ``question`` in this model's classes (None: no
        question, or one that names no object)."""
        said = None if question is None else asked_phrases(question, self.class_names)
        return None if said is None else (*said, question_phrases(question, self.class_names))
