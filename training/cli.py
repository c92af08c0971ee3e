"""``r3d-train``: the training pipeline's command line.

    r3d-train sft      --config sft      --data DIR --output-dir runs/sft  [--resume] [--set train.max_steps=10]
    r3d-train grpo     --config grpo     --data DIR --model runs/sft/final --output-dir runs/grpo [--resume]
    r3d-train evaluate --data DIR --model runs/grpo/final --name "SFT + GRPO" --out results/grpo.json
    r3d-train evaluate --data DIR --prior --name "answer prior" --out results/prior.json
    r3d-train table    results/prior.json results/sft.json results/grpo.json
    r3d-train select   --data DIR --split val --out-dir results/val runs/sft/final runs/grpo/checkpoint-*
    r3d-train compare  --data DIR results/sft.json results/grpo.json     # paired: flips + significance
    r3d-train binding  --data DIR --model runs/sft/final --split val      # which object slot each <obj_k> picks
    r3d-train ceiling  --data DIR --model runs/sft/final --split test     # what perfect references would reach
    r3d-train classes  --data DIR --model runs/sft/final --output-dir runs/sft/classes   # fit the shape class head
    r3d-train views    --data DIR --split train --mode selected --workers 2   # render a split's views once

Configs are YAML (``training/configs/*.yaml`` by name, or a path); ``--set a.b=value`` overrides any key.
Under ``accelerate launch --config_file training/accelerate/<setup>.yaml -m training.cli ...`` the same
commands run data-parallel / DeepSpeed (see training/README.md). Progress bars come from the trainers;
every log line is also appended to ``<output-dir>/log.jsonl``; checkpoints go to
``<output-dir>/checkpoint-N`` (``--resume`` continues from the newest) and the final model to
``<output-dir>/final``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys

from training.data import VIEW_MODES


def _views_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument('--views', choices=VIEW_MODES, default='selected',
                   help="what a model with a view tower sees (a model without one sees none): the question's "
                        "selected views, as the reasoner feeds it ('learned': with Eq. 7's fitted weights), one ring "
                        'of views, or none (the ablation)')


def _scene_views(args):
    """The ``--views`` of an evaluating command, its split's rendered views loaded when they were built."""
    from training.data import SceneViews

    if args.views == 'none':
        return None
    views = SceneViews(args.data, args.views)
    views.load(args.split)
    return views


def _common(p: argparse.ArgumentParser, default_config: str):
    p.add_argument('--config', default=default_config,
                   help=f'YAML config: a path or a bundled name (default: {default_config})')
    p.add_argument('--data', help='dataset directory (train/val/test.jsonl + scenes/); overrides data.dir')
    p.add_argument('--output-dir', required=True, help='where checkpoints, log.jsonl and final/ go')
    p.add_argument('--resume', action='store_true', help='continue from the newest checkpoint in --output-dir')
    p.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                   help='override a config value, e.g. train.max_steps=20 (repeatable)')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='r3d-train', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('sft', help='stage 1: chain-of-thought supervised fine-tuning (trl SFTTrainer)')
    _common(p, 'sft')
    p.add_argument('--model', help='start from this R3D checkpoint (overrides model.path)')

    p = sub.add_parser('grpo', help='stage 2: GRPO with format/perception/semantic rewards (trl GRPOTrainer)')
    _common(p, 'grpo')
    p.add_argument('--model', help='the SFT checkpoint to start from (overrides model.path)')

    p = sub.add_parser('evaluate', help='held-out scores per task (EM, CIDEr, Acc@IoU, plan steps, format, sim)')
    p.add_argument('--data', required=True, help='dataset directory')
    p.add_argument('--split', default='test', choices=('train', 'val', 'test', 'test_paraphrase'),
                   help='test_paraphrase: the test questions in held-out wordings (r3d_ros.scenes.paraphrase)')
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument('--model', help='R3D checkpoint directory to evaluate')
    g.add_argument('--prior', action='store_true', help='the answer-prior baseline (most common answer per task)')
    p.add_argument('--name', help='row name in the results table (default: the model path or "answer prior")')
    p.add_argument('--out', required=True, help='results JSON (predictions go beside it as .predictions.jsonl)')
    p.add_argument('--limit', type=int, help='evaluate at most this many records')
    p.add_argument('--max-points', type=int, default=8192, help="points kept per scene (the training config's "
                   'data.max_points)')
    p.add_argument('--maps', choices=('scenes', 'laps'), default='scenes',
                   help="what each question is answered from: the scene's whole cloud, or the map a simulated "
                        "sensor lap builds (training.data.LapClouds: partial and noisy, as the robot's map is)")
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--max-new-tokens', type=int, default=256)
    p.add_argument('--regenerations', type=int, default=0,
                   help="sampled retries of refused answers (the reasoner's default: 2)")
    p.add_argument('--no-grammar', dest='grammar', action='store_false',
                   help='decode free of the grounded grammar (the ablation; the reasoner holds decoding to it)')
    p.add_argument('--no-interpret', dest='interpret', action='store_false',
                   help='ask the model the questions as written, not read as the nearest trained template '
                        '(the ablation; r3d_ros.question_intent)')
    p.add_argument('--no-shapes', dest='shapes', action='store_false',
                   help="decode free of the model's answer shapes (the ablation; r3d_ros.answer_shapes)")
    p.add_argument('--device', default='cpu')
    p.add_argument('--encoder', default='minilm', help="semantic-similarity encoder ('minilm', a path, clip:PATH)")
    p.add_argument('--swap-scenes', action='store_true',
                   help='control run: give every question the point cloud of another scene of the split (a model '
                        'that reads the scene should lose accuracy; one that answers from priors will not)')
    _views_argument(p)

    p = sub.add_parser('views', help="render a split's views once for training and evaluation (training.data."
                                     'SceneViews; ~0.3 s a question on one core)')
    p.add_argument('--data', required=True, help='dataset directory')
    p.add_argument('--split', required=True, choices=('train', 'val', 'test', 'test_paraphrase'))
    p.add_argument('--mode', choices=VIEW_MODES[:-1], default='selected')
    p.add_argument('--num-views', type=int, default=6)
    p.add_argument('--size', type=int, default=64, help="pixels (the tiny model's view tower reads 64)")
    p.add_argument('--workers', type=int, default=1)

    p = sub.add_parser('select', help='pick a checkpoint on the val split by the reward-aligned metrics')
    p.add_argument('checkpoints', nargs='+', help='candidate R3D checkpoint directories (e.g. the SFT model first, '
                                                 'then the GRPO checkpoints)')
    p.add_argument('--data', required=True, help='dataset directory')
    p.add_argument('--split', default='val', choices=('train', 'val', 'test'))
    p.add_argument('--out-dir', required=True, help='per-candidate results JSON + selection.json go here')
    p.add_argument('--limit', type=int, help='score on the first N records of the split')
    p.add_argument('--max-points', type=int, default=8192, help="points kept per scene (the training config's "
                   'data.max_points)')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--max-new-tokens', type=int, default=512)
    p.add_argument('--regenerations', type=int, default=0,
                   help="sampled retries of refused answers (the reasoner's default: 2)")
    p.add_argument('--device', default='cpu')
    p.add_argument('--encoder', default='minilm')
    _views_argument(p)
    p.add_argument('--link', help='make this path a symlink to the chosen checkpoint')

    p = sub.add_parser('compare', help='paired comparison of two evaluate runs on the same split (B against A)')
    p.add_argument('a', help='results JSON of the baseline (its .predictions.jsonl beside it)')
    p.add_argument('b', help='results JSON of the model compared with it')
    p.add_argument('--data', required=True, help='dataset directory the two runs were scored on')
    p.add_argument('--encoder', default='minilm')
    p.add_argument('--out', help='also write the comparison here (JSON)')
    p.add_argument('--tasks', nargs='+', help='compare on the records of these tasks only (e.g. attribute grounding)')

    for name, split, text in (
            ('ceiling', 'test', "object-identifier models: what perfect references and class head reach on the "
             "processor's proposals (box coverage at IoU 0.25, oracle key-fact accuracy; training/probe.py)"),
            ('binding', 'val', 'object-identifier models: teacher-forced slot choice at each <obj_k> target and '
             'class-head accuracy (training/probe.py)')):
        p = sub.add_parser(name, help=text)
        p.add_argument('--data', required=True, help='dataset directory')
        p.add_argument('--model', required=True, help='R3D checkpoint with object_refs')
        p.add_argument('--split', default=split, choices=('train', 'val', 'test'))
        p.add_argument('--limit', type=int, help='the first N records of the split')
        p.add_argument('--max-points', type=int, default=16384, help="points kept per scene (the training config's "
                       'data.max_points)')
        p.add_argument('--maps', choices=('scenes', 'laps'), default='scenes',
                       help="the scenes' whole clouds, or the maps a simulated sensor lap builds (as evaluate)")
        p.add_argument('--out', help='also write the result here (JSON)')

    p = sub.add_parser('shapes', help="write the answer shapes of the train split's targets into a checkpoint's "
                       'processor (r3d_ros.answer_shapes; sft does it for configs with data.answer_shapes)')
    p.add_argument('--data', required=True, help='dataset directory')
    p.add_argument('--model', required=True, help='R3D checkpoint directory (its r3d_processor.json is rewritten)')
    p.add_argument('--check', nargs='+', metavar='PREDICTIONS',
                   help="instead: per task, the share of evaluate predictions (.predictions.jsonl) whose reasoning "
                        "and answer text, as written, are whole shapes of the model's")

    p = sub.add_parser('classes', help="fit an object-identifier checkpoint's shape class head on the train scenes' "
                       'proposals and make it the class source (training/classes.py)')
    p.add_argument('--data', required=True, help='dataset directory')
    p.add_argument('--model', required=True, help='R3D checkpoint with object slots and classes')
    p.add_argument('--output-dir', required=True, help='where the checkpoint with the shape head goes')
    p.add_argument('--draws', type=int, default=4, help='subsamples of each train scene (augmentation)')
    p.add_argument('--laps', type=int, default=1, help='simulated sensor-lap maps of each train scene (the maps the '
                   'robot answers from; 0: whole clouds only)')
    p.add_argument('--epochs', type=int, default=300)
    p.add_argument('--max-points', type=int, default=16384, help="points kept per scene (the training config's "
                   'data.max_points)')

    p = sub.add_parser('table', help='markdown table from evaluate results JSON files')
    p.add_argument('results', nargs='+')
    return parser


def _train_config(args) -> dict:
    from training.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.data:
        cfg.setdefault('data', {})['dir'] = args.data
    if getattr(args, 'model', None):
        cfg['model'] = {**{k: v for k, v in cfg.get('model', {}).items() if k in ('lora',)}, 'path': args.model}
    if not cfg.get('data', {}).get('dir'):
        raise SystemExit('no dataset: pass --data DIR or set data.dir in the config')
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'config.resolved.yaml').write_text(__import__('yaml').safe_dump(cfg, sort_keys=False))
    return cfg


class _Swapped:
    """Scene clouds looked up under another scene's id (the --swap-scenes control)."""

    def __init__(self, clouds, other: dict[str, str]):
        self.clouds, self.other = clouds, other

    def __getitem__(self, scene_id: str):
        return self.clouds[self.other[scene_id]]


def _end_distributed() -> None:
    """Tear the process group down before the interpreter exits: left to exit, a rank of an `accelerate launch`
    run can abort in its C++ teardown ('terminate called without an active exception') after saving."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault('HF_HUB_OFFLINE', '1')  # never reach for the network
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    if args.command == 'sft':
        from training.sft import run_sft

        print(run_sft(_train_config(args), args.output_dir, resume=args.resume))
        _end_distributed()
    elif args.command == 'grpo':
        from training.grpo import run_grpo

        cfg = _train_config(args)
        if not cfg.get('model', {}).get('path'):
            raise SystemExit('grpo starts from an SFT checkpoint: pass --model DIR (or set model.path)')
        print(run_grpo(cfg, args.output_dir, resume=args.resume))
        _end_distributed()
    elif args.command == 'evaluate':
        from training.data import LapClouds, SceneClouds, load_records, split_path
        from training.evaluate import evaluate, markdown_table

        records = load_records(split_path(args.data, args.split), args.limit)
        train = load_records(split_path(args.data, 'train')) if args.prior else None
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        name = args.name or ('answer prior' if args.prior else str(args.model))
        clouds = LapClouds(args.data) if args.maps == 'laps' else SceneClouds(args.data, args.max_points)
        if args.swap_scenes:
            ids = sorted({r.scene_id for r in records})
            other = dict(zip(ids, ids[1:] + ids[:1]))
            clouds = _Swapped(clouds, other)
        views = _scene_views(args)
        res = evaluate(records, clouds, None if args.prior else args.model, train,
                       args.batch_size, args.max_new_tokens, args.device, args.encoder,
                       predictions_path=out.with_suffix('.predictions.jsonl'), regenerations=args.regenerations,
                       grammar=args.grammar, interpret=args.interpret, shapes=args.shapes, views=views)
        from training.evaluate import _metrics_module

        impl = 'r3d_ros.evaluation.metrics' if _metrics_module() is not None else 'training.evaluate (fallback)'
        out.write_text(json.dumps({'name': name, 'data': str(args.data), 'split': args.split,
                                   'model': args.model, 'metrics': impl, 'maps': args.maps,
                                   'swap_scenes': args.swap_scenes,
                                   'regenerations': args.regenerations, 'grammar': args.grammar,
                                   'interpret': args.interpret, 'shapes': args.shapes,
                                   'views': res.pop('views', 'none'), 'results': res}, indent=2))
        print(markdown_table({name: res}))
    elif args.command == 'views':
        from training.data import SceneViews

        print(SceneViews(args.data, args.mode, args.num_views, args.size).build(args.split, args.workers))
    elif args.command == 'select':
        from training.data import SceneClouds, load_records, split_path
        from training.evaluate import select_checkpoint

        records = load_records(split_path(args.data, args.split), args.limit)
        best = select_checkpoint(args.checkpoints, records, SceneClouds(args.data, args.max_points), args.out_dir,
                                 args.batch_size, args.max_new_tokens, args.device, args.encoder,
                                 regenerations=args.regenerations, views=_scene_views(args))
        if args.link:
            link = Path(args.link)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(Path(best).resolve(), target_is_directory=True)
        print(best)
    elif args.command == 'compare':
        from training.data import load_records, split_path
        from training.evaluate import paired_comparison, read_answers, read_predictions

        runs = [json.loads(Path(p).read_text()) for p in (args.a, args.b)]
        if runs[0]['split'] != runs[1]['split']:
            raise SystemExit(f"the runs scored different splits ({runs[0]['split']} vs {runs[1]['split']})")
        comps = [read_predictions(Path(p).with_suffix('.predictions.jsonl')) for p in (args.a, args.b)]
        if len(comps[0]) != len(comps[1]):
            raise SystemExit(f'the runs scored different records ({len(comps[0])} vs {len(comps[1])})')
        records = load_records(split_path(args.data, runs[0]['split']), len(comps[0]))
        answers = [read_answers(Path(p).with_suffix('.predictions.jsonl')) for p in (args.a, args.b)]
        keep = [i for i, r in enumerate(records) if not args.tasks or r.task in args.tasks]
        pick = lambda rows: [rows[i] for i in keep]   # noqa: E731
        res = {'a': runs[0]['name'], 'b': runs[1]['name'], 'split': runs[0]['split'], 'tasks': args.tasks or 'all',
               'metrics': paired_comparison(pick(records), *map(pick, comps), args.encoder, *map(pick, answers))}
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
    elif args.command == 'shapes':
        from r3d_ros.answer_shapes import shapes_of
        from r3d_ros.model import R3DProcessor
        from r3d_ros.model.processing_r3d import CONFIG_NAME
        from training.data import load_records, split_path

        processor = R3DProcessor.from_pretrained(args.model)
        if args.check:
            from training.evaluate import on_shape

            for path in map(Path, args.check):
                if not path.is_file():
                    raise SystemExit(f'no predictions file {path} (r3d-train evaluate writes OUT.predictions.jsonl)')
                print(path, json.dumps(on_shape(processor, path)))
            return 0
        records = load_records(split_path(args.data, 'train'))
        processor.answer_shapes = shapes_of(((r.question, r.cot) for r in records), processor.class_names)
        (Path(args.model) / CONFIG_NAME).write_text(json.dumps(processor.to_dict(), indent=2))
        print({section: len(v) for section, v in processor.answer_shapes.items()})
    elif args.command == 'ceiling':
        from r3d_ros.model import R3DProcessor
        from training.data import LapClouds, SceneClouds, load_records, split_path
        from training.probe import proposal_ceiling

        processor = R3DProcessor.from_pretrained(args.model)
        records = load_records(split_path(args.data, args.split), args.limit)
        clouds = LapClouds(args.data) if args.maps == 'laps' else SceneClouds(args.data, args.max_points)
        res = {'model': args.model, 'split': args.split, 'maps': args.maps,
               **proposal_ceiling(processor, records, clouds)}
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
    elif args.command == 'binding':
        from training.data import LapClouds, SceneClouds, load_records, split_path
        from training.modeling import load_model_and_processor
        from training.probe import binding_probe

        model, processor = load_model_and_processor({'path': args.model})
        if not (getattr(processor, 'object_refs', False) and processor.num_object_tokens):
            raise SystemExit(f'{args.model}: not an object-identifier model (object_refs with object tokens)')
        records = load_records(split_path(args.data, args.split), args.limit)
        clouds = LapClouds(args.data) if args.maps == 'laps' else SceneClouds(args.data, args.max_points)
        res = {'model': args.model, 'split': args.split, 'maps': args.maps,
               **binding_probe(model, processor, records, clouds)}
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
    elif args.command == 'classes':
        from training.classes import run_classes

        print(json.dumps(run_classes(args.data, args.model, args.output_dir, args.draws, args.laps, args.epochs,
                                     args.max_points), indent=2))
    elif args.command == 'table':
        from training.evaluate import markdown_table

        rows = {}
        for path in args.results:
            d = json.loads(Path(path).read_text())
            rows[d['name']] = d['results']
        print(markdown_table(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
