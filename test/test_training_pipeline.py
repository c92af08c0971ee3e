"""Smoke run of the whole pipeline through the installed ``r3d-train`` command (what CI runs): SFT a few steps
on a handful of scenes, resume it, GRPO a few steps from the SFT model, evaluate both and the answer prior,
print the table; plus the paper defaults in the bundled configs and the 2-process accelerate launch (gloo)."""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

from r3d_ros.model import R3DForConditionalGeneration, R3DProcessor
from training.config import load_config
from training.toy_data import write_toy_dataset

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false'}
SMALL = ['--set', 'model.num_points=128', '--set', 'data.max_points=1024', '--set', 'train.logging_steps=1',
         '--set', 'train.per_device_train_batch_size=4', '--set', 'train.disable_tqdm=true']


def run(*args, timeout=240):
    proc = subprocess.run([str(BIN / 'r3d-train'), *args], env=ENV, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def log_lines(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / 'log.jsonl').read_text().splitlines()]


@pytest.fixture(scope='module')
def toy_dir(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp('toy'), num_scenes=6, use_project_generator=False)


def test_paper_defaults_in_configs():
    sft, grpo = load_config('sft')['train'], load_config('grpo')['train']
    assert sft['num_train_epochs'] == 2 and sft['per_device_train_batch_size'] == 12
    assert sft['weight_decay'] == 0.1 and sft['optim'].startswith('adamw')
    assert sft['learning_rate'] == 1e-5 and sft['lr_scheduler_kwargs']['min_lr'] == 1e-6
    assert sft['lr_scheduler_type'] == 'cosine_with_min_lr'
    assert grpo['num_train_epochs'] == 2 and grpo['learning_rate'] == 1e-6 and grpo['lr_scheduler_type'] == 'constant'
    assert grpo['beta'] == 0.02 and grpo['epsilon'] == 0.2 and grpo['num_generations'] == 8
    # batch 12 prompts per optimizer step, each with its group of G completions
    assert grpo['per_device_train_batch_size'] * grpo['gradient_accumulation_steps'] == 12 * 8
    assert load_config('grpo')['rewards']['names'] == ['format', 'perception', 'semantic']
    lora = load_config('sft')['model']['lora']
    assert (lora['last_n_blocks'], lora['r'], lora['alpha'], lora['dropout']) == (8, 12, 16, 0.0)


def test_help_of_every_command():
    for cmd in ('sft', 'grpo', 'evaluate', 'table', 'select', 'compare', 'classes', 'views'):
        assert '--' in run(cmd, '--help')


def test_sft_then_grpo_then_evaluate_end_to_end(toy_dir, tmp_path):
    sft_dir, grpo_dir = tmp_path / 'sft', tmp_path / 'grpo'
    # the object-identifier variant with the slot pointer, so the smoke run covers proposals, object tokens, the
    # class head, the pointer and boxes written as <obj_k> references end to end
    run('sft', '--config', 'tiny_sft_pointer', '--data', str(toy_dir), '--output-dir', str(sft_dir), *SMALL,
        '--set', 'train.max_steps=2', '--set', 'train.save_steps=2')
    assert (sft_dir / 'checkpoint-2').is_dir()
    # resumable: a second run continues from checkpoint-2 instead of starting over
    run('sft', '--config', 'tiny_sft_pointer', '--data', str(toy_dir), '--output-dir', str(sft_dir), *SMALL,
        '--set', 'train.max_steps=4', '--set', 'train.save_steps=2', '--resume')
    steps = [d['step'] for d in log_lines(sft_dir) if 'loss' in d]
    assert steps == [1, 2, 3, 4]
    # the object-class head is trained beside the LM (proposals matched to the toy scenes' labelled objects)
    assert all(d.get('object_class_loss', 0) > 0 for d in log_lines(sft_dir) if 'loss' in d)
    final = sft_dir / 'final'
    loaded = R3DForConditionalGeneration.from_pretrained(str(final))    # a plain checkpoint the reasoner can load
    assert loaded.config.num_object_tokens == 32 and len(loaded.config.object_class_token_ids) > 0
    assert len(loaded.config.object_ref_token_ids) == 32 and R3DProcessor.from_pretrained(str(final)).object_refs
    assert loaded.config.use_object_pointer

    # the shipped GRPO recipe: key-fact reward, mirror-descent credit at the referring <obj_k> tokens (the split of
    # trl's advantage is checked against trl's own on every step), the slot pointer's own learning rate
    run('grpo', '--config', 'tiny_grpo_pointer', '--data', str(toy_dir), '--model', str(final),
        '--output-dir', str(grpo_dir), *SMALL, '--set', 'train.max_steps=2', '--set', 'train.num_generations=4',
        '--set', 'train.gradient_accumulation_steps=1', '--set', 'train.max_completion_length=12',
        '--set', 'train.save_steps=2')
    grpo_logs = [d for d in log_lines(grpo_dir) if 'loss' in d]
    assert len(grpo_logs) == 2
    for key in ('rewards/format_reward/mean', 'rewards/perception_reward/mean', 'rewards/semantic_reward/mean',
                'rewards/key_fact_reward/mean', 'kl', 'clip_ratio/region_mean'):
        assert key in grpo_logs[-1], key
    assert (grpo_dir / 'final' / 'model.safetensors').exists()

    results = {}
    for name, extra in (('prior', ['--prior']), ('sft', ['--model', str(final)]),
                        ('grpo', ['--model', str(grpo_dir / 'final')])):
        out = tmp_path / f'{name}.json'
        run('evaluate', '--data', str(toy_dir), *extra, '--name', name, '--out', str(out), '--limit', '4',
            '--max-new-tokens', '16')
        results[name] = json.loads(out.read_text())['results']
        assert out.with_suffix('.predictions.jsonl').exists()
    assert results['prior']['all']['n'] == 4
    assert 'Format' not in results['prior']['all'] and 'Format' in results['sft']['all']
    assert 'Acc@0.25' in results['sft']['grounding']
    table = run('table', *(str(tmp_path / f'{n}.json') for n in results))
    assert '| prior | grounding |' in table and '| grpo | all |' in table
    cmp = json.loads(run('compare', '--data', str(toy_dir), str(tmp_path / 'sft.json'), str(tmp_path / 'grpo.json')))
    assert cmp['split'] == 'test' and set(cmp['metrics']) == {'Format', 'Acc@0.25', 'SemSim', 'KeyFact'}
    assert cmp['metrics']['Format']['n'] == 4
    tasks = [json.loads(line)['task'] for line in (tmp_path / 'sft.predictions.jsonl').read_text().splitlines()]
    cmp = json.loads(run('compare', '--data', str(toy_dir), str(tmp_path / 'sft.json'), str(tmp_path / 'grpo.json'),
                         '--tasks', tasks[0]))
    assert cmp['tasks'] == [tasks[0]] and cmp['metrics']['Format']['n'] == tasks.count(tasks[0])

    # the binding probe reads the teacher-forced <obj_k> targets; the fallback toy scenes' boxes match no proposal,
    # so it reads a few of the project generator's scenes
    scenes = tmp_path / 'generated'
    subprocess.run([str(BIN / 'r3d-make-data'), '--scenes', '6', '--out', str(scenes), '--no-progress'], env=ENV,
                   check=True, capture_output=True, timeout=240)
    probe = json.loads(run('binding', '--data', str(scenes), '--model', str(final), '--split', 'val',
                           '--max-points', '1024'))
    assert probe['positions'] > 0 and 0.0 <= probe['p_right'] <= probe['p_right_class'] <= 1.0
    assert 0.0 <= probe['slot_argmax_right'] <= probe['slot_argmax_same_class'] <= 1.0

    # the shape class head fitted on the same scenes' proposals replaces the token head in a loadable checkpoint
    report = json.loads(run('classes', '--data', str(scenes), '--model', str(final), '--output-dir',
                            str(tmp_path / 'classes'), '--draws', '2', '--epochs', '5', '--max-points', '1024'))
    # laps=1 by default: each split is scored on its whole clouds and on its scenes' simulated sensor-lap maps
    assert report['fit']['train_slots'] > 0 and report['laps'] == 1
    assert set(report['after']) == {'train', 'val', 'test', 'train_laps', 'val_laps', 'test_laps'}
    assert report['before']['val']['slots'] == report['after']['val']['slots'] > 0
    shaped = R3DForConditionalGeneration.from_pretrained(str(tmp_path / 'classes'))
    assert shaped.config.object_class_head == 'shape' and shaped.point_encoder.object_shape_classifier is not None
    assert (tmp_path / 'classes' / 'classes.json').exists() and R3DProcessor.from_pretrained(str(tmp_path / 'classes'))

    # checkpoint choice on val: the SFT model is a candidate, the chosen one is linked
    run('select', '--data', str(toy_dir), '--split', 'val', '--limit', '4', '--max-new-tokens', '16',
        '--out-dir', str(tmp_path / 'val'), '--link', str(grpo_dir / 'selected'), str(final), str(grpo_dir / 'final'))
    sel = json.loads((tmp_path / 'val' / 'selection.json').read_text())
    assert [c['checkpoint'] for c in sel['candidates']] == [str(final), str(grpo_dir / 'final')]
    assert sel['chosen'] == max(sel['candidates'], key=lambda c: c['score'])['checkpoint']
    assert (grpo_dir / 'selected').resolve() == Path(sel['chosen']).resolve()


def test_views_rendered_once_then_trained_on_and_evaluated_with(toy_dir, tmp_path):
    """The view-tower path end to end: a split's views rendered into their cache, an SFT model with a view tower
    trained on them, and evaluated with the question's selected views, a ring, or none (issue 22's ablation)."""
    import numpy as np

    for split, mode in (('train', 'ring'), ('test', 'selected')):
        cache = Path(run('views', '--data', str(toy_dir), '--split', split, '--mode', mode).strip().splitlines()[-1])
        with np.load(cache) as z:
            keys, rgb, depth = z['keys'], z['rgb'], z['depth']
        assert rgb.shape[1:] == (6, 64, 64, 3) and depth.shape[1:] == (6, 64, 64) and len(keys) == len(rgb)
        assert rgb.std() > 0 and (depth > 0).any()   # rendered scenes, not blank images
    model_dir = tmp_path / 'sft_views'
    run('sft', '--config', 'tiny_sft_pointer', '--data', str(toy_dir), '--output-dir', str(model_dir), *SMALL,
        '--set', 'train.max_steps=2', '--set', 'model.with_views=true', '--set', 'data.views=ring')
    assert R3DForConditionalGeneration.from_pretrained(str(model_dir / 'final')).config.use_views
    for views in ('selected', 'ring', 'none'):
        out = tmp_path / f'{views}.json'
        run('evaluate', '--data', str(toy_dir), '--model', str(model_dir / 'final'), '--views', views,
            '--out', str(out), '--limit', '2', '--max-new-tokens', '8')
        assert json.loads(out.read_text())['views'] == views
    # a model without a view tower is evaluated on what it reads: no views, whatever was asked
    run('sft', '--config', 'tiny_sft_pointer', '--data', str(toy_dir), '--output-dir', str(tmp_path / 'plain'),
        *SMALL, '--set', 'train.max_steps=1')
    out = tmp_path / 'plain.json'
    run('evaluate', '--data', str(toy_dir), '--model', str(tmp_path / 'plain' / 'final'), '--views', 'selected',
        '--out', str(out), '--limit', '2', '--max-new-tokens', '8')
    assert json.loads(out.read_text())['views'] == 'none'


def test_paired_comparison_by_hand():
    from r3d_ros.output_format import Box, format_completion
    from r3d_ros.scenes.types import QARecord
    from training.evaluate import paired_comparison

    gt = {'ref': 'desk_1', 'center': [1.0, 2.0, 0.4], 'size': [1.0, 0.6, 0.8]}
    hit = Box('desk_1', (1.0, 2.0, 0.4), (1.0, 0.6, 0.8))
    miss = Box('desk_1', (-2.0, 0.0, 0.4), (1.0, 0.6, 0.8))
    records = [QARecord('s', f'q{i}', '', 'The desk is here.', 'grounding', boxes=[gt]) for i in range(5)]
    good = format_completion('First, I look. Then, I find it.', 'The desk is here.', [hit])
    wrong = format_completion('First, I look. Then, I find it.', 'The desk is here.', [miss])
    broken = good.replace('</think>', '')
    a = [good, good, wrong, broken, good]
    b = [good, wrong, good, good, wrong]
    res = paired_comparison(records, a, b)
    # Format: a is broken once (record 3), b never -> one record only b gets right
    assert (res['Format']['only_a'], res['Format']['only_b']) == (0, 1)
    # Acc@0.25: a hits 0, 1, 3 (the broken one still parses its box), 4; b hits 0, 2, 3
    assert (res['Acc@0.25']['only_a'], res['Acc@0.25']['only_b']) == (2, 1)
    assert res['Acc@0.25']['a'] == 0.8 and res['Acc@0.25']['b'] == 0.6
    assert 0 < res['Acc@0.25']['p'] <= 1
    # same answer text everywhere: no similarity difference
    assert res['SemSim']['changed'] == 0 and res['SemSim']['p'] == 1.0
    with pytest.raises(ValueError):
        paired_comparison(records, a, b[:2])


def test_sft_under_accelerate_launch_two_cpu_processes(toy_dir, tmp_path):
    # the shipped SFT config, so DDP also carries the object tokens, the class head and the slot pointer
    out = tmp_path / 'ddp'
    proc = subprocess.run(
        [str(BIN / 'accelerate'), 'launch', '--config_file', str(REPO / 'training/accelerate/cpu_2proc.yaml'),
         '-m', 'training.cli', 'sft', '--config', 'tiny_sft_pointer', '--data', str(toy_dir), '--output-dir', str(out),
         *SMALL, '--set', 'train.max_steps=3', '--set', 'train.per_device_train_batch_size=2',
         '--set', 'train.save_steps=3'],
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = [d for d in log_lines(out) if 'loss' in d]
    assert [d['step'] for d in logs] == [1, 2, 3]
    assert {d['world_size'] for d in logs} == {2}
    assert (out / 'final' / 'model.safetensors').exists()
