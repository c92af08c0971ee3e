"""The three GRPO rewards on hand-written completions (format, perception IoU, semantic similarity)."""

from __future__ import annotations

import json

import pytest

from training.rewards import (
    REWARD_NAMES,
    build_reward_funcs,
    format_reward,
    format_reward_text,
    perception_reward,
    perception_reward_text,
    semantic_reward_text,
    shared_similarity,
)

CHAIR = {'ref': 'chair_3', 'center': [1.0, 2.0, 0.5], 'size': [1.0, 1.0, 1.0]}
TABLE = {'ref': 'table_1', 'center': [3.0, 0.0, 0.4], 'size': [2.0, 1.0, 0.8]}


def done(answer: str, think: str = 'First, find it. Then, box it.') -> str:
    return f'<think>{think}</think><answer>{answer}</answer>'


@pytest.mark.parametrize('text, expected', [
    (done('There are 3.'), 1.0),
    ('  <think>a</think>\n<answer>b</answer>\n', 1.0),                 # whitespace around blocks is free
    (done('x <box>chair_3 1 2 0.5 1 1 1</box>'), 1.0),
    ('<think>a</think>', 0.0),                                         # no answer block
    ('<answer>b</answer>', 0.0),                                       # no think block
    (done('b') + ' and more', 0.0),                                    # text after the answer
    ('<think>a</think><think>b</think><answer>c</answer>', 0.0),       # two think blocks
    ('<think>a</think><answer> </answer>', 0.0),                       # empty answer
    ('<think>a<answer>b</answer>', 0.0),                               # unclosed think
    ('', 0.0),
])
def test_format_reward(text, expected):
    assert format_reward_text(text) == expected


def test_perception_reward_is_iou_with_ground_truth():
    assert perception_reward_text(done('<box>chair_3 1.00 2.00 0.50 1.00 1.00 1.00</box>'), [CHAIR]) == 1.0
    # shifted by half its width along x: overlap 0.5 m^3, union 1.5 m^3
    assert perception_reward_text(done('<box>chair_3 1.5 2 0.5 1 1 1</box>'), [CHAIR]) == pytest.approx(1 / 3)
    # twice the size, same centre: IoU = 1 / 8
    assert perception_reward_text(done('<box>chair_3 1 2 0.5 2 2 2</box>'), [CHAIR]) == pytest.approx(1 / 8)
    # disjoint
    assert perception_reward_text(done('<box>chair_3 9 9 9 1 1 1</box>'), [CHAIR]) == 0.0


def test_perception_reward_zero_when_box_missing_or_unparseable_and_none_without_ground_truth():
    assert perception_reward_text(done('It is by the window.'), [CHAIR]) == 0.0
    assert perception_reward_text(done('<box>chair_3 1 2 0.5 1 1</box>'), [CHAIR]) == 0.0    # five numbers
    assert perception_reward_text(done('<box>chair_3 a b c d e f</box>'), [CHAIR]) == 0.0
    assert perception_reward_text('garbage <box>', [CHAIR]) == 0.0
    assert perception_reward_text(done('<box>chair_3 1 2 0.5 1 1 1</box>'), []) is None


def test_perception_reward_matches_boxes_by_name():
    text = done('<box>table_1 3 0 0.4 2 1 0.8</box> <box>chair_3 1.5 2 0.5 1 1 1</box>')
    assert perception_reward_text(text, [CHAIR, TABLE]) == pytest.approx((1 / 3 + 1.0) / 2)


def test_trl_forms_take_dataset_columns():
    completions = [done('<box>chair_3 1 2 0.5 1 1 1</box>'), 'no format', done('x')]
    assert format_reward(prompts=['p'] * 3, completions=completions) == [1.0, 0.0, 1.0]
    # the boxes column arrives as JSON text (datasets keep the ragged column that way)
    boxes = [json.dumps([CHAIR]), json.dumps([CHAIR]), json.dumps([])]
    assert perception_reward(prompts=['p'] * 3, completions=completions, boxes=boxes) == [1.0, 0.0, None]
    chat = [[{'role': 'assistant', 'content': completions[0]}]]
    assert format_reward(completions=chat) == [1.0]


def test_semantic_similarity_orders_paraphrase_above_unrelated():
    ref = 'There are three chairs in the room.'
    same = semantic_reward_text(done(ref), ref)
    para = semantic_reward_text(done('I count 3 chairs here.'), ref)
    other = semantic_reward_text(done('The lamp is blue.'), ref)
    assert same == pytest.approx(1.0, abs=1e-4)
    assert same > para > other
    assert semantic_reward_text(done('<box>chair_3 1 2 0.5 1 1 1</box>'), ref) == 0.0   # no answer text
    # the box markup is not part of the compared text
    assert semantic_reward_text(done(f'{ref} <box>chair_3 1 2 0.5 1 1 1</box>'), ref) == pytest.approx(same)


def test_semantic_encoder_is_the_bundled_minilm():
    sim = shared_similarity('minilm')
    emb = sim.embed(['a chair'])
    assert tuple(emb.shape) == (1, 384)   # all-MiniLM-L6-v2 width


def test_reward_funcs_by_name():
    funcs = build_reward_funcs()
    assert [f.__name__ for f in funcs] == [f'{n}_reward' for n in REWARD_NAMES]
    with pytest.raises(ValueError):
        build_reward_funcs(['format', 'brevity'])
