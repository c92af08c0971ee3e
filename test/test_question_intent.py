"""Questions in other wordings read as the trained one (r3d_ros.question_intent), with the bundled MiniLM."""

from __future__ import annotations

import pytest

from r3d_ros.question_intent import MIN_SIMILARITY, TEMPLATES, QuestionInterpreter, object_phrases
from r3d_ros.scenes.paraphrase import PARAPHRASES

CLASSES = ['chair', 'table', 'lamp', 'trash_can', 'book', 'shelf']


@pytest.fixture(scope='module')
def interpreter():
    return QuestionInterpreter(CLASSES)


def test_object_phrases_keep_order_colour_and_number():
    assert object_phrases('Between the red book and the shelves, which one is bigger?', CLASSES) == \
        [('red book', False), ('shelves', True)]
    assert object_phrases('Count the trash cans you can see.', CLASSES) == [('trash cans', True)]
    assert object_phrases('What time is it?', CLASSES) == []


def test_no_held_out_wording_is_an_exemplar():
    """The test_paraphrase split asks in PARAPHRASES' wordings: none may be among the interpreter's exemplars."""
    exemplars = {w for t in TEMPLATES for w in t.wordings}
    assert not exemplars & {alt for _, alts in PARAPHRASES for alt in alts}


def test_trained_wordings_and_unknown_objects_pass_unchanged(interpreter):
    for q in ('How many chairs are in the room?', 'Bring the red book to the table.', 'What is the weather like?'):
        read = interpreter(q)
        assert read.question == q and not read.changed


@pytest.mark.parametrize('asked, meant', [
    ('How high does the black lamp reach?', 'How tall is the black lamp?'),
    ('Please tell me what color the red book is', 'What color is the red book?'),
    ('Count the trash cans you can see.', 'How many trash cans are in the room?'),
    ('where is the book', 'Where is the book?'),
])
def test_other_wordings_are_read_as_the_template(interpreter, asked, meant):
    read = interpreter(asked)
    assert read.changed and read.question == meant and read.similarity >= MIN_SIMILARITY


def test_a_question_no_template_is_near_goes_as_asked(interpreter):
    read = interpreter('Sing a song about the lamp.')
    assert not read.changed and read.question == 'Sing a song about the lamp.' and read.similarity < MIN_SIMILARITY


def test_threshold_leaves_no_training_wording_misread(interpreter):
    """Each training paraphrase, left out of the exemplars, is read as its own template or not read at all:
    the threshold admits no wrong reading (how MIN_SIMILARITY was chosen), and still reads nearly all of them."""
    fill = {'a': 'lamp', 'b': 'table', 'c': 'chair', 'p': 'lamps'}
    rows = [(i, k, w.format(**fill)) for i, t in enumerate(TEMPLATES) for k, w in enumerate(t.wordings)]
    emb = interpreter._encoder.encode([w for *_, w in rows], normalize_embeddings=True, convert_to_tensor=True)
    read_right = left_out = 0
    for j, (i, k, w) in enumerate(rows):
        if k == 0:  # the template itself is asked as it is
            continue
        left_out += 1
        others = [m for m, (o, _, _) in enumerate(rows) if m != j and TEMPLATES[o].fields == TEMPLATES[i].fields]
        sims = (emb[others] @ emb[j]).tolist()
        best = max(range(len(sims)), key=sims.__getitem__)
        if sims[best] >= MIN_SIMILARITY:
            assert rows[others[best]][0] == i, f'{w!r} read as {TEMPLATES[rows[others[best]][0]].text!r}'
            read_right += 1
    assert read_right >= left_out - 2
