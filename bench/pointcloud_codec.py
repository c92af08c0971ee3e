"""Decode + encode of a 300k-point xyz+rgb PointCloud2: r3d_ros.pointcloud vs the ROS 1 per-point
``struct.unpack`` loop and vs going through open3d. Prints one JSON object last.

    .venv/bin/python bench/pointcloud_codec.py [--points 300000] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import struct
import sys
import time

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from r3d_ros.pointcloud import cloud_from_xyz_rgb, xyz_rgb_from_cloud  # noqa: E402


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def struct_loop_decode(cloud):
    """The ROS 1 sensor_msgs.point_cloud2.read_points way: one struct.unpack_from per point."""
    fmt = struct.Struct('<fffI')
    data, step = cloud.data, cloud.point_step
    out = []
    for i in range(cloud.width * cloud.height):
        x, y, z, packed = fmt.unpack_from(data, i * step)
        out.append((x, y, z, (packed >> 16) & 255, (packed >> 8) & 255, packed & 255))
    return out


def struct_loop_encode(xyz, rgb):
    fmt = struct.Struct('<fffI')
    buf = bytearray(fmt.size * len(xyz))
    for i, ((x, y, z), (r, g, b)) in enumerate(zip(xyz.tolist(), rgb.tolist())):
        fmt.pack_into(buf, i * fmt.size, x, y, z, (r << 16) | (g << 8) | b)
    return bytes(buf)


def open3d_decode(cloud):
    """Bytes -> open3d PointCloud (what a pipeline built on open3d would do), then back to numpy."""
    import open3d as o3d

    raw = np.frombuffer(cloud.data, dtype=np.float32).reshape(-1, 4)
    packed = raw[:, 3].view(np.uint32)
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(raw[:, :3].astype(np.float64)))
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1) / 255.0
    pc.colors = o3d.utility.Vector3dVector(rgb)
    return np.asarray(pc.points), np.asarray(pc.colors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--points', type=int, default=300_000)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--quick', action='store_true', help='60k points, 2 repeats')
    args = ap.parse_args()
    if args.quick:
        args.points, args.repeats = 60_000, 2
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(args.points, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (args.points, 3), dtype=np.uint8)
    cloud = cloud_from_xyz_rgb(xyz, rgb)
    ours_dec = best_of(lambda: xyz_rgb_from_cloud(cloud), args.repeats)
    ours_enc = best_of(lambda: cloud_from_xyz_rgb(xyz, rgb), args.repeats)
    loop_dec = best_of(lambda: struct_loop_decode(cloud), max(1, args.repeats // 2))
    loop_enc = best_of(lambda: struct_loop_encode(xyz, rgb), max(1, args.repeats // 2))
    o3d_dec = best_of(lambda: open3d_decode(cloud), args.repeats)
    # the baselines must decode the same thing
    ref = struct_loop_decode(cloud)[:5]
    got_xyz, got_rgb = xyz_rgb_from_cloud(cloud)
    assert np.allclose([r[:3] for r in ref], got_xyz[:5]) and np.array_equal([r[3:] for r in ref], got_rgb[:5])
    print(json.dumps({
        'bench': 'pointcloud_codec', 'points': args.points, 'bytes': len(cloud.data),
        'decode_ms': {'r3d_ros': round(ours_dec * 1e3, 3), 'struct_loop': round(loop_dec * 1e3, 1),
                      'open3d': round(o3d_dec * 1e3, 2)},
        'encode_ms': {'r3d_ros': round(ours_enc * 1e3, 3), 'struct_loop': round(loop_enc * 1e3, 1)},
        'decode_speedup_vs_struct_loop': round(loop_dec / ours_dec, 1),
        'decode_speedup_vs_open3d': round(o3d_dec / ours_dec, 1),
        'encode_speedup_vs_struct_loop': round(loop_enc / ours_enc, 1),
    }))


if __name__ == '__main__':
    main()
