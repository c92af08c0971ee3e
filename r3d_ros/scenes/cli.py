"""``r3d-make-data``: generate synthetic scenes with Scene-30K-shaped QA into a data directory.

    r3d-make-data --scenes 2000 --out data/synth --seed 0 [--workers 4] [--per-task 3]

Layout and quality filter: see :mod:`r3d_ros.scenes.dataset`. The output is byte-identical for the same
arguments whatever ``--workers`` is.
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from r3d_ros.scenes.dataset import make_dataset
from r3d_ros.scenes.synthetic import DEFAULT_POINT_DENSITY


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='r3d-make-data', description=__doc__.split('\n\n')[0])
    p.add_argument('--scenes', type=int, required=True, help='number of scenes to generate')
    p.add_argument('--out', required=True, help='output directory (created)')
    p.add_argument('--seed', type=int, default=0, help='data set seed (default 0)')
    p.add_argument('--workers', type=int, default=1, help='worker processes (default 1)')
    p.add_argument('--per-task', type=int, default=3, help='questions per task per scene (default 3)')
    p.add_argument('--min-objects', type=int, default=5)
    p.add_argument('--max-objects', type=int, default=30)
    p.add_argument('--point-density', type=float, default=DEFAULT_POINT_DENSITY,
                   help=f'surface samples per square metre (default {DEFAULT_POINT_DENSITY:g})')
    p.add_argument('--val-fraction', type=float, default=0.1)
    p.add_argument('--test-fraction', type=float, default=0.1)
    p.add_argument('--think-min-words', type=int, default=30, help='quality filter (paper: 30)')
    p.add_argument('--answer-min-words', type=int, default=20, help='quality filter (paper: 20)')
    p.add_argument('--min-steps', type=int, default=3, help='quality filter (paper: 3)')
    p.add_argument('--min-consistency', type=float, default=0.8, help='quality filter (paper: 0.8)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.scenes < 1:
        print('r3d-make-data: --scenes must be at least 1', file=sys.stderr)
        return 2
    if not 1 <= args.min_objects <= args.max_objects:
        print('r3d-make-data: need 1 <= --min-objects <= --max-objects', file=sys.stderr)
        return 2
    fractions = (1.0 - args.val_fraction - args.test_fraction, args.val_fraction, args.test_fraction)
    if min(fractions) < 0:
        print('r3d-make-data: --val-fraction + --test-fraction must not exceed 1', file=sys.stderr)
        return 2
    filter_kwargs = {'think_min_words': args.think_min_words, 'answer_min_words': args.answer_min_words,
                     'min_steps': args.min_steps, 'min_consistency': args.min_consistency}
    with tqdm(total=args.scenes, unit='scene', disable=args.no_progress, file=sys.stderr) as bar:
        stats = make_dataset(args.out, args.scenes, args.seed, workers=args.workers, per_task=args.per_task,
                             point_density=args.point_density, num_objects=(args.min_objects, args.max_objects),
                             fractions=fractions, filter_kwargs=filter_kwargs, progress=bar.update)
    print(json.dumps({k: stats[k] for k in ('generated', 'kept', 'dropped', 'splits')}, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
