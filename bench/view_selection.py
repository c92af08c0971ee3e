"""Render + score 32 candidate views of a 200k-point map (r3d_ros.views), CPU and (where present) CUDA, beside
rendering the same 32 candidates with a per-view numpy z-buffer loop (np.minimum.at), in one run.

    .venv/bin/python bench/view_selection.py [--points 200000] [--repeats 5]

The selector's work per question: ring + top-down poses, 20 region close-ups ranked against the question,
32 candidates rendered at the scoring size (64 px) with voxel ids and scored (aligner, coverage), greedy
top-6, and the 6 winners re-rendered at 224 px. The baseline renders only the 32 candidates at 224 px
(no scoring), so the ratio understates the selector's advantage. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from r3d_ros.scenes.synthetic import generate_scene  # noqa: E402
from r3d_ros.views import Intrinsics, ViewSelector, ViewSelectorConfig  # noqa: E402


def numpy_loop_render(points, colors, poses, intr: Intrinsics):
    """The straightforward way: one view at a time, project, keep the nearest point per pixel."""
    out = []
    for pose in poses:
        local = (points - pose[:3, 3]) @ pose[:3, :3]
        x, y, z = local.T
        ok = x > 0.05
        u = np.floor(intr.cx - intr.fx * y[ok] / x[ok]).astype(np.int64)
        v = np.floor(intr.cy - intr.fx * z[ok] / x[ok]).astype(np.int64)
        inside = (u >= 0) & (u < intr.width) & (v >= 0) & (v < intr.height)
        flat = v[inside] * intr.width + u[inside]
        depth = np.full(intr.width * intr.height, np.inf)
        np.minimum.at(depth, flat, x[ok][inside])
        rgb = np.zeros((intr.width * intr.height, 3), np.uint8)
        front = x[ok][inside] <= depth[flat]
        rgb[flat[front]] = colors[ok][inside][front]
        out.append((rgb.reshape(intr.height, intr.width, 3), depth.reshape(intr.height, intr.width)))
    return out


def timed(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument('--points', type=int, default=200_000)
    ap.add_argument('--repeats', type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    scene = generate_scene(3, point_density=2000.0)
    pick = np.random.default_rng(0).choice(len(scene.points), args.points, replace=len(scene.points) < args.points)
    points, colors = scene.points[pick], scene.colors[pick]
    question = 'Where is the chair?'
    result = {'bench': 'view_selection', 'map_points': len(points), 'candidates': 32, 'top_k': 6,
              'torch_threads': torch.get_num_threads()}
    cpu = ViewSelector(ViewSelectorConfig(), device='cpu')
    poses = cpu.select(points, colors, question).candidates
    result['cpu_select_ms'] = 1000 * timed(lambda: cpu.select(points, colors, question), args.repeats)
    result['numpy_loop_render_32_ms'] = 1000 * timed(lambda: numpy_loop_render(points, colors, poses, Intrinsics()),
                                                     max(1, args.repeats // 2))
    result['cpu_speedup_vs_numpy_loop'] = result['numpy_loop_render_32_ms'] / result['cpu_select_ms']
    if torch.cuda.is_available():
        gpu = ViewSelector(ViewSelectorConfig(), device='cuda')
        result['gpu'] = torch.cuda.get_device_name()
        result['gpu_select_ms'] = 1000 * timed(lambda: gpu.select(points, colors, question), args.repeats * 4,
                                               torch.cuda.synchronize)
        result['gpu_speedup_vs_numpy_loop'] = result['numpy_loop_render_32_ms'] / result['gpu_select_ms']
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
