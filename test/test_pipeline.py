"""ScenePipeline (no ROS): answers, parsing, and the error paths a robot must survive."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from r3d_ros.pipeline import (
    STATUS_ERROR,
    STATUS_NOT_FOUND,
    STATUS_OK,
    STATUS_UNGROUNDED,
    ScenePipeline,
    default_model_path,
)

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def pipe():
    return ScenePipeline.from_pretrained(default_model_path(), device='cpu', max_new_tokens=24)


def _scene(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform([0, 0, 0], [5, 4, 2.5], (n, 3)).astype(np.float32), rng.integers(0, 255, (n, 3), np.uint8)


def test_answers_with_timings_and_streams_tokens(pipe):
    pieces = []
    res = pipe.answer(*_scene(), 'How many lamps are in the room?', query_id='a', on_text=pieces.append)
    assert res.id == 'a' and res.timings['new_tokens'] > 0 and res.timings['generate_s'] > 0
    assert res.map_points == len(_scene()[0])  # the answer says which map it was computed on
    assert ''.join(pieces).strip() and res.raw
    # 24 tokens cut the reasoning short: either it grounds as far as it goes, or it is refused after every retry
    # (and then nothing of it is published but ``raw``)
    assert res.status in (STATUS_OK, STATUS_UNGROUNDED), res.message
    if res.status == STATUS_UNGROUNDED:
        assert res.timings['regenerations'] == pipe.regenerations and not res.answer_text and not res.boxes
    else:
        assert 0 <= res.timings['regenerations'] <= pipe.regenerations


@pytest.mark.parametrize('question, points, message', [
    ('   ', 100, 'empty question'), ('why ' * 1000, 100, 'limit'), ('Where is the lamp?', 0, 'no map'),
])
def test_bad_requests_are_errors_not_exceptions(pipe, question, points, message):
    xyz, rgb = _scene(max(points, 1))
    res = pipe.answer(xyz[:points], rgb[:points], question)
    assert res.status == STATUS_ERROR and message in res.message
    assert res.map_points == 0 or points > 0


def test_gpu_out_of_memory_is_reported_and_the_next_query_still_runs(pipe, monkeypatch):
    """A GPU OOM cannot happen on this CPU machine, so the model raises the exact exception CUDA would."""
    real = pipe.model.generate
    calls = []

    def oom_once(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
        return real(*a, **kw)

    monkeypatch.setattr(pipe.model, 'generate', oom_once)
    first = pipe.answer(*_scene(), 'How many lamps are in the room?')
    assert first.status == STATUS_ERROR and 'GPU out of memory' in first.message
    after = pipe.answer(*_scene(), 'How many lamps are in the room?')   # 24 tokens: whole, or refused as cut off
    assert after.status in (STATUS_OK, STATUS_UNGROUNDED) and 'memory' not in after.message, after.message


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from r3d_ros.pipeline import PipelineError

    with pytest.raises(PipelineError, match='no model checkpoint'):
        ScenePipeline.from_pretrained(tmp_path / 'nothing')


def test_a_refused_answer_is_decoded_again_and_the_grounded_retry_published(pipe, monkeypatch):
    """The first decoding names an object the map lacks (refused: ungrounded); the sampled retry grounds, and it
    is what is published, with the retry counted in timings. Decoding is replaced by two fixed completions so
    the test decides which attempt grounds; everything after it (grounding, status, publishing) is the real path."""
    attempts = iter(['<think>I look.</think><answer>The lamp <obj_31> is here.</answer>',
                     '<think>I count them.</think><answer>There [count lamp].</answer>'])
    seeds = []

    def decode(batch, stop_event, streamer, seed=None, objects=None, question=''):
        seeds.append(seed)
        return next(attempts), 12

    monkeypatch.setattr(pipe, '_decode', decode)
    # the fixed completions are not sentences the model was trained on: the on-shape rule (test_answer_shapes)
    # would refuse the second too
    monkeypatch.setattr('r3d_ros.pipeline.MIN_ON_SHAPE', 0.0)
    res = pipe.answer(*_scene(), 'How many lamps are in the room?')
    assert res.status == STATUS_OK, res.message
    assert seeds == [None, 1] and res.timings['regenerations'] == 1       # greedy, then one sampled retry
    assert res.answer_text.startswith('There ') and 'lamp' in res.answer_text and '[' not in res.answer_text
    assert res.facts and res.facts[0]['fact'] == 'count'


def test_a_question_about_an_object_the_map_lacks_says_so_and_nothing_else(pipe, monkeypatch):
    """The model is not asked (it would name another object: 'Bring the sofa to the table' brought the bed to the
    cabinet); an existence question is still answered from the records."""
    points, colors = _scene()
    decoded = []
    real = pipe._decode
    monkeypatch.setattr(pipe, '_decode', lambda *a, **kw: decoded.append(1) or real(*a, **kw))
    res = pipe.answer(points, colors, 'Where is the red sofa?')
    assert 'sofa' not in {o['label'] for o in res.objects}    # the random cloud's records hold no sofa
    assert res.status == STATUS_NOT_FOUND and res.answer_text == 'I see no sofa in the map.', res.to_dict()
    assert 'sofa' in res.message and not res.boxes and not res.plan and not res.facts and not decoded
    bring = pipe.answer(points, colors, 'Bring the sofa to the bed.')
    assert bring.status == STATUS_NOT_FOUND and not bring.plan and bring.answer_text.startswith('I see no sofa')
    exists = pipe.answer(points, colors, 'Is there a sofa in the room?')
    assert exists.status != STATUS_NOT_FOUND and decoded


def test_view_encoding_is_timed_and_a_checkpoint_without_a_view_tower_ignores_views(pipe):
    """The embedded checkpoint has no view tower: views are selected and reported, encoding takes 0 s. A model
    with one (tiny, random weights) gets the selected views, and their encoding time is in ``timings``."""
    from r3d_ros.model.presets import build_tiny_model_and_processor
    from r3d_ros.views import ViewSelector, ViewSelectorConfig

    res = pipe.answer(*_scene(), 'How many lamps are in the room?')
    assert not pipe.uses_views and res.views and res.timings['view_encoding_s'] == 0.0
    model, proc = build_tiny_model_and_processor(with_views=True, num_points=256)
    with_tower = ScenePipeline(model, proc, ViewSelector(ViewSelectorConfig(top_k=2)), num_views=2,
                               max_new_tokens=4)
    res = with_tower.answer(*_scene(), 'Where is the lamp?')
    assert with_tower.uses_views and len(res.views) == 2, res.message
    assert res.timings['view_encoding_s'] > 0.0


def test_a_question_in_other_words_is_answered_as_the_trained_one_and_says_so(pipe):
    points, colors = _scene()
    asked = pipe.answer(points, colors, 'Could you point out where the lamp is?')
    direct = pipe.answer(points, colors, 'Where is the lamp?')
    assert asked.question == 'Could you point out where the lamp is?'
    assert asked.interpreted_as == 'Where is the lamp?' and direct.interpreted_as == ''
    assert asked.raw == direct.raw and asked.status == direct.status
    assert asked.timings['interpret_s'] > 0
