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
        sensor = SimulatedSensor(scene, 'depth_camera', width=320, height=240, seed=room)
        for pose in trajectory(scene, n_frames=20):
            xyz, rgb = sensor.capture(pose)
            if len(xyz) < 1000:
                continue
            pick = rng.integers(0, len(xyz), POINTS)  # resample to a fixed frame size
            placed = pose.copy()
            placed[:3, 3] += room * 12.0  # rooms side by side: the map keeps meeting new space
            frames.append((xyz[pick], rgb[pick], placed))
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


def rss_mb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--frames', type=int, default=60, help='frames for the speed comparison (20 per room)')
    ap.add_argument('--memory-frames', type=int, default=1000)
    ap.add_argument('--max-voxels', type=int, default=500_000)
    ap.add_argument('--quick', action='store_true', help='20 frames, 100 for memory')
    args = ap.parse_args()
    if args.quick:
        args.frames, args.memory_frames = 20, 100
    frames = make_frames(args.frames)
    bench_voxel_map(frames[:3])  # warm-up (allocator, imports)
    n_points = len(frames) * POINTS
    ours = min(bench_voxel_map(frames) for _ in range(2))
    o3d_t = min(bench_open3d(frames) for _ in range(2))
    # the first room alone (a small map): open3d re-downsamples its whole map every frame, so its cost
    # per frame grows with the map while ours does not; this figure shows the small-map end
    room = frames[:20]
    ours_room = min(bench_voxel_map(room) for _ in range(2))
    o3d_room = min(bench_open3d(room) for _ in range(2))
    # memory: the same frames over and over, shifted so every lap lands in new space
    rss_start = rss_mb()
    vmap = VoxelMap(voxel_size=0.05, max_voxels=args.max_voxels)
    rss_half = 0.0
    t = time.perf_counter()
    for k in range(args.memory_frames):
        xyz, rgb, pose = frames[k % len(frames)]
        shifted = pose.copy()
        shifted[:3, 3] += (k // len(frames)) * 40.0
        vmap.integrate(xyz, rgb, pose=shifted, stamp=float(k))
        if k == args.memory_frames // 2:
            rss_half = rss_mb()
    memory_run_s = time.perf_counter() - t
    print(json.dumps({
        'bench': 'map_ingest', 'frames': len(frames), 'points_per_frame': POINTS, 'voxel_size_m': 0.05,
        'r3d_ros_points_per_s': round(n_points / ours), 'open3d_points_per_s': round(n_points / o3d_t),
        'speedup_vs_open3d': round(o3d_t / ours, 2),
        'first_room_frames': len(room), 'first_room_r3d_ros_points_per_s': round(len(room) * POINTS / ours_room),
        'first_room_open3d_points_per_s': round(len(room) * POINTS / o3d_room),
        'first_room_speedup_vs_open3d': round(o3d_room / ours_room, 2),
        'memory_frames': args.memory_frames, 'memory_run_points_per_s': round(args.memory_frames * POINTS
                                                                              / memory_run_s),
        'max_voxels': args.max_voxels, 'final_voxels': len(vmap), 'evicted_voxels': vmap.stats.evicted,
        'map_mb': round(vmap.nbytes / 2**20, 1), 'rss_mb_start': round(rss_start, 1),
        'rss_mb_half': round(rss_half, 1), 'rss_mb_end': round(rss_mb(), 1), 'peak_rss_mb': round(peak_rss_mb(), 1),
    }))


if __name__ == '__main__':
    main()
