"""``r3d-eval``: score a model on a bag (live graph or offline) or on a dataset, with the field's metrics.

    r3d-eval BAG [--annotations BAG.questions.jsonl]        # scene_map + reasoner + r3d-play, use_sim_time
    r3d-eval BAG --offline                                  # same bag fused without ROS -> ScenePipeline
    r3d-eval BAG --compare                                  # both, and |live - offline| per metric
    r3d-eval --offline --dataset data/synth --split test --limit 50

Writes ``OUT/eval.json`` (scores per task, latency percentiles, every answer) and ``OUT/report.html``
(self-contained). Metrics: CIDEr, BLEU-1..4, METEOR, ROUGE-L (pycocoevalcap, PTB tokenizer), EM, refined
EM, Acc@0.25 / Acc@0.5, mean IoU, plan-step accuracy; see :mod:`r3d_ros.evaluation.metrics`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import sys
import time

from r3d_ros.evaluation import report
from r3d_ros.evaluation.annotations import load_annotations, write_annotations
from r3d_ros.evaluation.scoring import compare, score


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='r3d-eval', description=__doc__.split('\n\n')[0])
    ap.add_argument('bag', nargs='?', help='rosbag2 directory (MCAP or sqlite3)')
    ap.add_argument('--annotations', help='questions: Scene-30K JSON lines or ScanQA JSON '
                                          '(default: BAG.questions.jsonl next to the bag)')
    ap.add_argument('--out', help='output folder (default: BAG.eval or DATASET/eval_SPLIT)')
    ap.add_argument('--offline', action='store_true', help='no ROS: fuse the bag (or read the dataset) directly')
    ap.add_argument('--compare', action='store_true', help='live and offline on the same bag, with differences')
    ap.add_argument('--dataset', help='r3d-make-data directory (offline only)')
    ap.add_argument('--split', default='test')
    ap.add_argument('--limit', type=int, default=0, help='at most this many questions')
    ap.add_argument('--rate', type=float, default=1.0, help='playback rate of the live run')
    ap.add_argument('--model-path', help='checkpoint (default: the embedded one, as the reasoner)')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--max-new-tokens', type=int, help='decoding budget (default: config/reasoner.yaml)')
    ap.add_argument('--num-views', type=int, help='views per question (default: config/reasoner.yaml)')
    ap.add_argument('--question-delay', type=float, default=2.0,
                    help='bag seconds after the last message at which questions without a time are asked')
    ap.add_argument('--answer-timeout', type=float, default=600.0)
    ap.add_argument('--examples', type=int, default=6, help='example answers in the HTML report')
    ap.add_argument('--no-progress', action='store_true')
    return ap


def _write(out: Path, mode: str, questions, answers, meta: dict, clouds=None, scorer=None,
           examples: int = 6) -> dict:
    scores = score(questions, answers, scorer=scorer)
    result = {'meta': {'mode': mode, **meta}, 'scores': scores,
              'answers': [{'question': q.to_dict(), 'answer': answers.get(q.id)} for q in questions]}
    report.write_json(out / f'eval_{mode}.json', result)
    report.write_html(out / f'report_{mode}.html', result, questions, answers, clouds, examples)
    return result


def _print_table(mode: str, scores: dict) -> None:
    print(f'== {mode} ==')
    cols = ('n', 'KeyFact', 'Consistency', 'CIDEr', 'BLEU-4', 'METEOR', 'ROUGE-L', 'EM', 'EM-R', 'Acc@0.25',
            'Acc@0.5', 'PlanStep')
    print(f'{"task":<10}' + ''.join(f'{c:>9}' for c in cols))
    for t, r in scores['tasks'].items():
        print(f'{t:<10}' + ''.join(f'{report._fmt(c, r[c]):>9}' for c in cols))
    lat = scores['latency']
    print(f'latency: p50 {lat["p50"]:.3f}s p90 {lat["p90"]:.3f}s p99 {lat["p99"]:.3f}s (n={lat["n"]}); '
          f'status {scores["status"]}')


def _compare_modes(results: dict, questions: list, out: Path) -> None:
    """compare.json: metric differences within :data:`offline.AGREEMENT`, and per question whether the live
    map equalled the offline one (then the answers must be identical) or which frames the live map lacked."""
    from r3d_ros.evaluation import offline

    diff = compare(results['live']['scores'], results['offline']['scores'])
    ok = {k: diff[k] <= offline.AGREEMENT[k] for k in diff}
    rows = []
    for live, off in zip(results['live']['answers'], results['offline']['answers']):
        a, b = live['answer'] or {}, off['answer'] or {}
        rows.append({'id': live['question']['id'], 'live_map_points': a.get('map_points'),
                     'offline_map_points': b.get('map_points'), 'live_map_frames': a.get('map_frames'),
                     'equal_maps': bool(a) and a.get('map_points') == b.get('map_points'),
                     'identical': bool(a) and bool(b) and a.get('answer_text') == b.get('answer_text')
                     and a.get('status') == b.get('status')})
    same, equal = sum(r['identical'] for r in rows), [r for r in rows if r['equal_maps']]
    report.write_json(out / 'compare.json', {'max_abs_diff': diff, 'tolerance': offline.AGREEMENT, 'within': ok,
                                             'identical_answers': same, 'n': len(questions), 'questions': rows,
                                             'identical_on_equal_maps': all(r['identical'] for r in equal)})
    print(f'live vs offline: identical answers {same}/{len(questions)} ({sum(r["identical"] for r in equal)}/'
          f'{len(equal)} where the maps were equal); max |diff| ' + ', '.join(f'{k} {v:.3g}' for k, v in diff.items())
          + ('' if all(ok.values()) else ' (OUTSIDE the stated tolerance)'))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from r3d_ros.evaluation import metrics as M
    from r3d_ros.evaluation import offline

    progress = not args.no_progress
    meta = {'model_path': args.model_path or '', 'device': args.device, 'max_new_tokens': args.max_new_tokens,
            'started': time.strftime('%Y-%m-%d %H:%M:%S')}
    if args.dataset:
        if not args.offline:
            print('r3d-eval: --dataset is an offline evaluation (add --offline)', file=sys.stderr)
            return 2
        questions = offline.dataset_questions(args.dataset, args.split, args.limit)
        out = Path(args.out or Path(args.dataset) / f'eval_{args.split}')
        out.mkdir(parents=True, exist_ok=True)
        pipe = offline.load_pipeline(args.model_path, args.device, args.num_views, args.max_new_tokens)
        answers = offline.evaluate_dataset_offline(args.dataset, questions, pipe, progress)
        result = _write(out, 'offline', questions, answers, {**meta, 'dataset': args.dataset, 'split': args.split},
                        examples=args.examples)
        _print_table('offline (dataset)', result['scores'])
        print(f'wrote {out}/eval_offline.json and {out}/report_offline.html')
        return 0
    if not args.bag:
        print('r3d-eval: give a BAG (or --offline --dataset DIR)', file=sys.stderr)
        return 2
    from r3d_ros.bags.scene_bag import annotations_path

    bag = Path(args.bag)
    ann_path = Path(args.annotations) if args.annotations else annotations_path(bag)
    if not ann_path.exists():
        print(f'r3d-eval: no annotation file {ann_path} (use --annotations)', file=sys.stderr)
        return 2
    questions = load_annotations(ann_path)
    if args.limit:
        questions = questions[:args.limit]
    out = Path(args.out or f'{bag}.eval')
    out.mkdir(parents=True, exist_ok=True)
    ann_used = write_annotations(out / 'questions.jsonl', questions)
    meta.update(bag=str(bag), annotations=str(ann_path), rate=args.rate, question_delay=args.question_delay)
    modes = ['live', 'offline'] if args.compare else (['offline'] if args.offline else ['live'])
    results: dict[str, dict] = {}
    clouds: dict = {}
    with M.CaptionScorer() as scorer:
        for mode in modes:
            if mode == 'live':
                from r3d_ros.evaluation.live import evaluate_live

                answers = evaluate_live(bag, ann_used, out, len(questions), rate=args.rate,
                                        model_path=args.model_path, device=args.device,
                                        max_new_tokens=args.max_new_tokens, num_views=args.num_views,
                                        question_delay=args.question_delay, answer_timeout=args.answer_timeout,
                                        progress=progress)
                if not clouds:  # the report's example plots: the bag's map fused offline at the end
                    xyz_rgb = offline.fuse_bag(bag)
                    clouds = {q.id: xyz_rgb for q in questions}
            else:
                pipe = offline.load_pipeline(args.model_path, args.device, args.num_views, args.max_new_tokens)
                answers, maps = offline.evaluate_bag_offline(bag, questions, pipe, args.question_delay,
                                                             progress=progress)
                if maps:
                    last = maps[max(maps)]
                    clouds = {q.id: last for q in questions}
            results[mode] = _write(out, mode, questions, answers, meta, clouds, scorer, args.examples)
            _print_table(mode, results[mode]['scores'])
    if args.compare:
        _compare_modes(results, questions, out)
    print(f'wrote {out}/eval_*.json and {out}/report_*.html')
    return 0


if __name__ == '__main__':
    sys.exit(main())
