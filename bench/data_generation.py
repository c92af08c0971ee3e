"""Time to generate N synthetic scenes with their QA (scene store + JSON lines + quality filter) on one core.

    python bench/data_generation.py            # 2,000 scenes (the issue's target: under 10 minutes)
    python bench/data_generation.py --quick    # 100 scenes

Baseline measured in the same run: generating the scenes alone (no QA, no filter, no writing), so the
ratio shows what QA + filtering + storage add. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import tempfile
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')

from r3d_ros.scenes.dataset import make_dataset, scene_seed  # noqa: E402
from r3d_ros.scenes.synthetic import generate_scene  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true', help='100 scenes instead of 2,000')
    ap.add_argument('--scenes', type=int, default=None)
    args = ap.parse_args()
    n = args.scenes or (100 if args.quick else 2000)
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})   # one core
    except (AttributeError, OSError):
        pass
    t0 = time.perf_counter()
    for i in range(n):
        generate_scene(scene_seed(0, i))
    scenes_only = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stats = make_dataset(Path(tmp) / 'data', n, seed=0, workers=1)
        full = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).rglob('*') if p.is_file())
    print(json.dumps({'scenes': n, 'seconds': round(full, 2), 'seconds_per_scene': round(full / n, 4),
                      'minutes_for_2000_scenes_extrapolated': round(full / n * 2000 / 60, 2),
                      'records_kept': stats['kept'], 'records_generated': stats['generated'],
                      'bytes_on_disk': size, 'baseline_scenes_only_seconds': round(scenes_only, 2),
                      'ratio_full_vs_scenes_only': round(full / scenes_only, 2),
                      'target_seconds_for_2000': 600, 'cores': 1}))


if __name__ == '__main__':
    main()
