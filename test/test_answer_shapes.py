"""Answer shapes (r3d_ros.answer_shapes): the sentences of the training targets with objects, classes and facts
open; decoding under them writes one of those sentences or nothing, and the shipped model carries its shapes."""

import json
import re

import pytest
from test_grounding import _room

from r3d_ros.answer_shapes import (
    ARGS,
    ASKED,
    BINDS,
    CLASS,
    PHRASE_CLASSES,
    PHRASES,
    REF_SLOTS,
    AnswerShapes,
    ShapeMatcher,
    asked_phrases,
    phrase_binding,
    question_phrases,
    sections,
    shapes_of,
    skeleton,
)
from r3d_ros.pipeline import default_model_path
from r3d_ros.scenes.qa import generate_qa
from r3d_ros.scenes.synthetic import generate_scene

CLASS_NAMES = ('chair', 'table', 'lamp', 'box', 'trash_can')


def _refs_as_slots(text: str) -> str:
    """A generator target's ground-truth references (<lamp_21>) as the model writes them (<obj_21>)."""
    return re.sub(r'<[a-z_]+_(\d+)>', r'<obj_\1>', text)


def _classes():
    from r3d_ros.scenes.synthetic import CATEGORIES

    return tuple(CATEGORIES)


@pytest.fixture(scope='module')
def targets():
    """(question, completion) of the generator's records over 20 rooms, and of 3 rooms it never saw."""
    def of(seeds):
        return [(r.question, r.cot) for s in seeds for r in generate_qa(generate_scene(s), s)]
    return of(range(20)), of(range(500, 503))


@pytest.fixture(scope='module')
def processor():
    from r3d_ros.model import R3DProcessor

    return R3DProcessor.from_pretrained(str(default_model_path()))


def test_a_skeleton_opens_references_facts_and_the_class_phrases_that_name_objects():
    r1, r2 = REF_SLOTS[:2]
    text = 'The black lamp <lamp_2> is about [height <lamp_2>] tall. Its box reaches from [bottom <lamp_2>].'
    # ('box': a word here)
    assert skeleton(text, 'How tall is the black lamp?', CLASS_NAMES) == \
        f'The {PHRASES[0]} {r1}{BINDS[0]} is about [height {r1}] tall. Its box reaches from [bottom {r1}].'
    # objects numbered by first appearance, the same object the same slot; a class before a reference is the
    # question's phrase that names it (the reference bound to it), any class where the question names none
    text = 'The table <table_0> is next to the chair <chair_4>: [distance <chair_4> <table_0>] apart.'
    assert skeleton(text, 'What is next to the table?', CLASS_NAMES) == \
        f'The {PHRASE_CLASSES[0]} {r1}{BINDS[0]} is next to the {CLASS} {r2}: [distance {r2} {r1}] apart.'
    assert skeleton('I scan the room for trash cans: [list trash_can].', 'How many trash cans are there?',
                    CLASS_NAMES) == f'I scan the room for {PHRASES[0]}: [list{ARGS}.'   # the question's phrase
    # a phrase the question says twice is not one of its phrases by position: any phrase it says
    assert skeleton('the chair and the chair', 'Is the chair left of the chair?', CLASS_NAMES) == \
        f'the {ASKED} and the {ASKED}'
    # a class word the question does not ask about, with no reference after it, stays a word
    assert skeleton('the chair is red', 'Is there a lamp?', CLASS_NAMES) == 'the chair is red'
    assert asked_phrases('How tall is the black lamp?', CLASS_NAMES) == (('black lamp', 'lamp'), ())
    assert asked_phrases('How many trash cans are there?', CLASS_NAMES) == ((), ('trash cans',))
    assert asked_phrases('Sing a song.', CLASS_NAMES) is None


def test_a_shape_keeps_its_objects_apart_and_the_same_object_the_same():
    """'[volume REF1] for the book and [volume REF2] for the table': the shipped model once wrote one object's
    volume twice ('the book holds 0.888 cubic metres and the table 0.888') and named a third as the larger."""
    r1, r2 = REF_SLOTS[:2]
    m = ShapeMatcher([f'I compare [volume {r1}] for the {ASKED} and [volume {r2}] for the {ASKED}, so the '
                      f'[larger {r1} {r2}] is larger.'], CLASS_NAMES)
    pieces = {k: f'<obj_{k}>' for k in range(5)}
    after = lambda text: sorted(m.allowed(m.advance(m.start, text), pieces))   # noqa: E731
    assert after('I compare [volume ') == [0, 1, 2, 3, 4]                         # the first object: any
    assert after('I compare [volume <obj_3>] for the lamp and [volume ') == [0, 1, 2, 4]   # not the same again
    both = 'I compare [volume <obj_3>] for the lamp and [volume <obj_1>] for the table, so the [larger '
    assert after(both) == [3] and after(both + '<obj_3> ') == [1]                # the two it compared, in order
    assert m.matches(both + '<obj_3> <obj_1>] is larger.')
    assert not m.matches(both + '<obj_3> <obj_2>] is larger.')


def test_the_question_s_objects_are_bound_in_the_order_it_names_them():
    """The shipped model once answered "Imagine standing at the brown desk and facing the white chair. Is the white
    table on your left?" standing at the white chair and facing the table, and put the trash cans of "standing at
    the green trash can and facing the blue trash can" all on one. A reference after the class word of the
    question's j-th phrase is an object that phrase names, in the reasoning and in the answer's facts alike."""
    question = ('Imagine standing at the green trash can and facing the blue trash can. Is the black trash can on '
                'your left or on your right?')
    assert question_phrases(question, CLASS_NAMES) == ('green trash can', 'blue trash can', 'black trash can')
    think = ('I place myself at the trash can <trash_can_4> and face the trash can <trash_can_2>. I find the trash '
             'can <trash_can_7>. It lies [side <trash_can_4> <trash_can_2> <trash_can_7>].')
    answer = 'The trash can <trash_can_7> is on your [side <trash_can_4> <trash_can_2> <trash_can_7>].'
    binding = phrase_binding(think + answer, question, CLASS_NAMES)
    assert binding == {'<trash_can_4>': 0, '<trash_can_2>': 1, '<trash_can_7>': 2}
    r1, r2, r3 = REF_SLOTS[:3]
    p1, p2, p3 = PHRASE_CLASSES[:3]
    b1, b2, b3 = BINDS[:3]
    assert skeleton(answer, question, CLASS_NAMES, binding) == \
        f'The {p3} {r1}{b3} is on your [side {r2}{b1} {r3}{b2} {r1}].'   # the answer's own order, the same objects
    m = ShapeMatcher([skeleton(think, question, CLASS_NAMES, binding),
                      skeleton(answer, question, CLASS_NAMES, binding)], CLASS_NAMES)
    asked = AnswerShapes({}, CLASS_NAMES).asked(question)
    objects = (frozenset({'obj_1'}), frozenset({'obj_2'}), frozenset({'obj_3', 'obj_4'}))   # what each phrase names
    pieces = {k: f'<obj_{k}>' for k in range(6)}
    after = lambda text: sorted(m.allowed(m.advance(m.start, text, asked, objects), pieces, asked, objects))  # noqa: E731
    assert after('I place myself at the trash can ') == [1]
    assert after('I place myself at the trash can <obj_1> and face the trash can ') == [2]
    assert after('I place myself at the trash can <obj_1> and face the trash can <obj_2>. I find the trash can ') \
        == [3, 4]
    assert after('The trash can <obj_4> is on your [side ') == [1] and after('The trash can ') == [3, 4]
    # the class word is the phrase's: not 'the chair' where the question's second object is a trash can
    states = m.advance(m.start, 'I place myself at the trash can <obj_1> and face the ', asked, objects)
    assert not m.advance(states, 'chair', asked, objects) and m.advance(states, 'trash can', asked, objects)
    # a map where the class head finds none of a phrase's objects binds nothing there (empty: any object)
    loose = (frozenset(), frozenset({'obj_2'}), frozenset())
    assert sorted(m.allowed(m.advance(m.start, 'I place myself at the trash can ', asked, loose), pieces, asked,
                            loose)) == [0, 1, 2, 3, 4, 5]


def test_a_plan_follows_a_trained_plan_on_the_question_s_objects(targets):
    """The answer's boxes and plan are part of its shape: the plan its text announced, on the objects the question
    names. The model once wrote "I will bring the lamp to the desk" over a plan that went on to inspect the desk,
    and walked to the laptop twice before carrying it."""
    shapes = AnswerShapes(shapes_of(targets[0], _classes()), _classes())
    assert shapes.tails
    m = shapes.matchers['answer']
    question = 'Bring the red book to the white table.'
    asked = shapes.asked(question)
    objects = (frozenset({'obj_1'}), frozenset({'obj_2'}))
    pieces = {0: '<box>', 1: '</box>', 2: ' ', 3: '<plan>', 4: '<step>', 5: 'navigate_to ', 6: 'pick ', 7: 'book ',
              8: 'table ', 9: '</step>', 10: 'place ', 11: 'inspect ', **{20 + k: f'<obj_{k}>' for k in range(4)}}
    after = lambda text: sorted(m.allowed(m.advance(m.start, text, asked, objects), pieces, asked, objects))  # noqa: E731
    text = ('I will bring the book <obj_1> to the table <obj_2>: navigate to it, pick it up, navigate to the white '
            'table and place it on top. ')
    assert after(text) == [0] and after(text + '<box>') == [7]           # the book's box: its class word ...
    assert after(text + '<box>book ') == [21]                             # ... and the book
    assert after(text + '<box>book <obj_1></box>') == [2]                 # then the table's box, not the plan yet
    steps = text + '<box>book <obj_1></box> <box>table <obj_2></box> <plan><step>navigate_to book <obj_1></step>'
    assert after(steps + '<step>') == [6]                                 # pick, not inspect, not walk again
    steps += '<step>pick book <obj_1></step><step>'
    assert after(steps) == [5] and after(steps + 'navigate_to ') == [8] and after(steps + 'navigate_to table ') == [22]
    whole = steps + 'navigate_to table <obj_2></step><step>place table <obj_2></step></plan>'
    assert m.matches(whole, asked)
    assert shapes.fits(f'<think>x</think><answer>{whole}</answer>', question) is False   # 'x' is no reasoning


def test_unseen_rooms_targets_are_on_shape_and_word_salad_is_not(targets):
    seen, unseen = targets
    shapes = AnswerShapes(shapes_of(seen, _classes()), _classes())
    for _, completion in unseen:
        for name, body in sections(_refs_as_slots(completion)).items():
            assert not body or shapes.matchers[name].matches(body), (name, body)
    m = shapes.matchers['think']   # the shipped model once wrote this, every fact in it right
    salad = 'First, I locate the lamp <obj_21>, centred at [center <obj_21>]. Next, I find its lowest point at ' \
            'z = [bottom <obj_21>] and its highest point at z upp <obj_20> with the box'
    assert not m.advance(m.start, salad)
    assert m.advance(m.start, salad[:salad.index(' upp')])            # on shape up to the slip
    assert not m.matches('First, I locate the lamp <obj_21>')   # unfinished


def test_word_salad_the_grammar_let_through_is_refused_and_an_odd_ending_is_not(processor):
    """What the shipped model wrote for 'What color is the brown wardrobe?' (a colour question naming a colour, which
    the generator never asks) once its shapes had no way on: each fact in it grounded, the sentence did not. It
    leaves the shapes early and is refused; a trained sentence whose box ends oddly (the floor is no object) is not."""
    from r3d_ros.pipeline import MIN_ON_SHAPE, STATUS_OK, STATUS_UNGROUNDED, on_shape, published_status

    think = ('<think>First, I look for the brown wardrobe in the scene and find one, the wardrobe <obj_0>, centred at '
             '[center <obj_0>]. Next, I examine the points that belong to the brown wardrobe and compare their colour '
             'with the floor and walls. Then, most of these points have the same colour, which is [color <obj_0>]. '
             'Finally, I conclude that the colour of the brown wardrobe is [color <obj_0>].</think>')
    salad = think + '<answer>The wardrobe <obj_0> is in front of you fr of the [distance <obj_0> <obj_2>] to the ' \
        'left fort of the wardrobe <obj_0></answer>'
    trained = think + '<answer>The wardrobe <obj_0> is [color <obj_0>]. Its surface points, centred at [center ' \
        '<obj_0>], are mostly [color <obj_0>], so [color <obj_0>] is the colour of the brown wardrobe. <box>wardrobe ' \
        '<obj_0></box></answer>'
    question = 'What color is the brown wardrobe?'
    assert on_shape(processor, salad, question) < MIN_ON_SHAPE <= on_shape(processor, trained, question) == 1.0

    class Grounded:   # every reference and fact resolved: only the shapes tell the two apart
        ok, errors, text = True, [], trained.replace('<obj_0>', '(obj_0)')
    assert published_status(Grounded, [], None, on_shape(processor, trained, question))[0] == STATUS_OK
    status, message = published_status(Grounded, [], None, on_shape(processor, salad, question))
    assert status == STATUS_UNGROUNDED and 'trained on' in message


def test_the_grammar_under_shapes_lets_only_a_shape_go_on(processor, targets):
    from r3d_ros.grammar_decoding import GroundedGrammar

    records, _, _ = _room()   # obj_0 table, obj_1 chair, obj_2 lamp
    shapes = AnswerShapes(shapes_of(targets[0], _classes()), _classes())
    refs = [processor.tokenizer.convert_tokens_to_ids(f'<obj_{k}>') for k in range(processor.num_object_tokens)]
    g = GroundedGrammar(processor.tokenizer, refs, [records], processor.class_names,
                        questions=['What color is the lamp?'], shapes=shapes)
    tok = processor.tokenizer
    after = lambda text: [tok.convert_ids_to_tokens(i) if i in g.markers or i in g.refs else tok.decode([i])  # noqa: E731
                          for i in g.allowed(0, text)]
    start = after('<think>')
    assert start and all('First'.startswith(s) or s.startswith('First') for s in start), start
    # mid-sentence: only what some shape writes next, never the end of the reasoning
    mid = after('<think>First, I look for the lamp in the scene and find one, the lamp')
    assert mid and all(s.isspace() for s in mid) and '</think>' not in mid, mid
    assert after('<think>First, I look for the lamp in the scene and find one, the lamp ') == ['<obj_2>']
    # a class phrase the question asks about is the question's: the demo's "how many lamps" once reasoned that it
    # would "scan the whole room for chairs"
    counting = GroundedGrammar(processor.tokenizer, refs, [records], processor.class_names,
                               questions=['How many lamps are in the room?'], shapes=shapes)
    scan = [tok.decode([i]) for i in counting.allowed(0, '<think>First, I scan the whole room for')]
    assert scan and all('lamps'.startswith(s.strip()) for s in scan), scan
    body = ('First, I look for the lamp in the scene and find one, the lamp <obj_2>, centred at [center <obj_2>]. '
            'Next, I examine the points that belong to the lamp and compare their colour with the floor and walls. '
            'Then, most of these points have the same colour, which is [color <obj_2>]. Finally, I conclude that the '
            'colour of the lamp is [color <obj_2>].')
    assert '</think>' in after('<think>' + body)          # a whole shape: the reasoning may end
    answer = ('<think>' + body + '</think><answer>The lamp <obj_2> is [color <obj_2>]. Its surface points, centred '
              'at [center <obj_2>], are mostly [color <obj_2>], so [color <obj_2>] is the colour of the lamp.')
    # the answer's shape runs on into its box: the box of the lamp it spoke of, then the end
    assert after(answer) == [' '] and after(answer + ' ') == ['<box>']
    assert [s for s in after(answer + ' <box>lamp ') if s.startswith('<obj_')] == ['<obj_2>']
    done = after(answer + ' <box>lamp <obj_2></box>')
    assert '</answer>' in done and all(s == '</answer>' or s.isspace() for s in done), done   # no other box, plan


def test_the_processor_keeps_its_shapes_and_the_shipped_model_has_them(processor, tmp_path):
    assert set(processor.answer_shapes) == {'think', 'answer'} and all(processor.answer_shapes.values())
    processor.save_pretrained(tmp_path)
    again = type(processor).from_pretrained(tmp_path)
    assert again.answer_shapes == processor.answer_shapes
    assert processor.grammar([[]]).shapes and processor.grammar([[]], shapes=False).shapes is None
    again.answer_shapes = {}   # what evaluate --no-shapes does: the matchers follow the assignment
    assert not again.shapes and again.grammar([[]]).shapes is None


@pytest.mark.slow
def test_the_shipped_model_writes_whole_shapes_about_unseen_rooms(processor):
    """Generated rooms, the generator's questions, greedy, the reasoner's pipeline: every reasoning and answer
    text it publishes is one of its shapes, whole (unless the token budget cut it)."""
    import torch

    from r3d_ros.pipeline import ScenePipeline

    torch.set_num_threads(1)
    pipe = ScenePipeline.from_pretrained(default_model_path(), device='cpu', max_new_tokens=512, regenerations=0,
                                         with_views=False)
    shapes = processor.shapes
    checked = 0
    for seed in (601, 602):
        scene = generate_scene(seed)
        for qa in generate_qa(scene, seed, per_task={'attribute': 1, 'spatial': 1, 'planning': 1}):
            res = pipe.answer(scene.points, scene.colors, qa.question)
            if res.timings['new_tokens'] >= pipe.max_new_tokens:
                continue
            for name, body in sections(res.raw).items():
                assert not body or shapes.matchers[name].matches(body), (qa.question, name, body)
            checked += 1
    assert checked >= 4


def test_on_shape_counts_the_predictions_written_as_whole_shapes(processor, targets, tmp_path):
    from training.evaluate import on_shape

    good = _refs_as_slots(targets[1][0][1])
    bad = good.replace(' is ', ' iz ', 1)
    path = tmp_path / 'p.predictions.jsonl'
    path.write_text('\n'.join(f'{{"task": "attribute", "written": {json.dumps(w)}}}' for w in (good, bad)))
    assert on_shape(processor, path) == {'attribute': 50.0, 'all': 50.0}
