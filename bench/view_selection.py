"""Render + score 32 candidate views of a 200k-point map (r3d_ros.views) on the CPU and, when CUDA is present, on
the GPU, beside rendering the same 32 candidates with open3d and with a naive per-view numpy loop, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/view_selection.py [--points 200000] [--repeats 5]

Rows (best of ``--repeats``; GPU rows synchronise before stopping the clock):
* ``score_32``: what the selector does per question before picking: 20 region close-ups rendered and
  embedded, 32 candidates (24 ring, 1 top-down, 7 close-ups) rendered at the scoring size (64 px) with
  voxel ids, S_text / S_cov / S_clip for each. The map is thinned to ``score_points`` (40k) for this, as the
  selector does; ``score_32_all_points`` scores on the whole map (the GPU can afford it).
* ``select_top6``: score_32 + greedy top-6 + the 6 winners rendered at 224 px from the whole map.
* ``render_32_224``: our renderer alone, all 32 candidates at 224 px from the whole map (point radius 0 and 1),
  the like-for-like row against the two baselines:
* ``open3d_render_32_224``: ``open3d.t.geometry.PointCloud.project_to_rgbd_image`` per view (CPU z-buffer,
  1-pixel points; open3d's offscreen GL renderer needs a display/EGL, which robots and CI often lack);
* ``numpy_loop_render_32_224``: one view at a time, project, ``np.minimum.at`` z-buffer.
Prints one JSON object last.
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
from r3d_ros.views import Intrinsics, ViewSelector, ViewSelectorConfig, render_points  # noqa: E402

# our camera frame (x forward, y left, z up) -> the OpenCV/open3d one (x right, y down, z forward)
_TO_OPENCV = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


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


def open3d_renderer(points, colors, intr: Intrinsics):
    """A function rendering RGB-D for a list of poses with open3d's point-cloud projection, or None."""
    try:
        import open3d as o3d
    except ImportError:
        return None
    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.ascontiguousarray(points, np.float32)))
    cloud.point.colors = o3d.core.Tensor(colors.astype(np.float32) / 255.0)
    # open3d rounds to the nearest pixel centre, we floor: shift the principal point by half a pixel
    k = o3d.core.Tensor([[intr.fx, 0, intr.cx - 0.5], [0, intr.fx, intr.cy - 0.5], [0, 0, 1]], o3d.core.float64)

    def render(poses):
        return [cloud.project_to_rgbd_image(intr.width, intr.height, k,
                                            o3d.core.Tensor(_TO_OPENCV @ np.linalg.inv(pose), o3d.core.float64),
                                            depth_scale=1.0, depth_max=1000.0) for pose in poses]
    return render


def timed(fn, repeats: int, sync=lambda: None) -> float:
    """Best wall time of ``repeats`` calls after one warm-up, in ms."""
    fn()
    sync()
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def bench_device(device: str, points, colors, question: str, poses, repeats: int) -> dict:
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    selector = ViewSelector(ViewSelectorConfig(), device=device)
    everything = ViewSelector(ViewSelectorConfig(score_points=len(points)), device=device,
                              aligner=selector.aligner, clip=selector.clip)
    pts = torch.as_tensor(points, device=device)
    cols = torch.as_tensor(colors, device=device)
    poses_t = torch.as_tensor(poses, device=device)
    intr = Intrinsics()
    out = {
        'score_32_ms': timed(lambda: selector.score(points, colors, question), repeats, sync),
        'score_32_all_points_ms': timed(lambda: everything.score(points, colors, question), repeats, sync),
        'select_top6_ms': timed(lambda: selector.select(points, colors, question), repeats, sync),
    }
    for radius in (0, 1):
        out[f'render_32_224_r{radius}_ms'] = timed(
            lambda r=radius: render_points(pts, cols, poses_t, intr, point_radius=r), repeats, sync)
    return out


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
    poses = ViewSelector(ViewSelectorConfig()).score(points, colors, question).poses
    assert len(poses) == 32, len(poses)
    result = {'bench': 'view_selection', 'map_points': len(points), 'candidates': len(poses), 'top_k': 6,
              'torch_threads': torch.get_num_threads()}
    result.update({f'cpu_{k}': v for k, v in bench_device('cpu', points, colors, question, poses,
                                                          args.repeats).items()})
    o3d_render = open3d_renderer(points, colors, Intrinsics())
    if o3d_render is not None:
        result['open3d_render_32_224_ms'] = timed(lambda: o3d_render(poses), args.repeats)
    result['numpy_loop_render_32_224_ms'] = timed(lambda: numpy_loop_render(points, colors, poses, Intrinsics()),
                                                  max(1, args.repeats // 2))
    for base in ('open3d', 'numpy_loop'):
        if f'{base}_render_32_224_ms' in result:
            result[f'cpu_render_r0_speedup_vs_{base}'] = (result[f'{base}_render_32_224_ms']
                                                          / result['cpu_render_32_224_r0_ms'])
    if torch.cuda.is_available():
        result['gpu'] = torch.cuda.get_device_name()
        result.update({f'gpu_{k}': v for k, v in bench_device('cuda', points, colors, question, poses,
                                                              args.repeats * 4).items()})
        for base in ('open3d', 'numpy_loop'):
            if f'{base}_render_32_224_ms' in result:
                result[f'gpu_render_r0_speedup_vs_{base}'] = (result[f'{base}_render_32_224_ms']
                                                              / result['gpu_render_32_224_r0_ms'])
        result['gpu_score_32_within_25ms'] = result['gpu_score_32_all_points_ms'] <= 25.0
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
