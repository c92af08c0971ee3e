"""A bounded voxel-hashed colour map fused from point clouds (no ROS imports).

Each occupied voxel keeps a running mean position and colour, a point count and the time it was last
seen. Keys are the voxel's integer coordinates packed into one int64 (21 bits per axis, ±1,048,576 voxels
= ±52 km at 5 cm), kept sorted, so a frame is fused with one ``np.unique`` over the frame's keys and one
``searchsorted`` merge into the map: vectorised numpy, no Python loop per point.

Memory is bounded by ``max_voxels``. When an insert would exceed it, the voxels seen longest ago are
evicted first (ties broken by distance from the sensor, farthest first): in a moving robot's map the
stalest voxels are the ones behind it, and age eviction keeps whatever the sensor currently sees.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
import tempfile

import numpy as np

_BITS = 21
_OFFSET = 1 << (_BITS - 1)
_MASK = (1 << _BITS) - 1


def pack_keys(ijk: np.ndarray) -> np.ndarray:
    """(N, 3) int voxel coordinates -> (N,) int64 keys (order-preserving per axis after offset)."""
    u = (ijk.astype(np.int64) + _OFFSET) & _MASK
    return (u[:, 0] << (2 * _BITS)) | (u[:, 1] << _BITS) | u[:, 2]


def unpack_keys(keys: np.ndarray) -> np.ndarray:
    return np.stack([(keys >> (2 * _BITS)) & _MASK, (keys >> _BITS) & _MASK, keys & _MASK], axis=1) - _OFFSET


@dataclass
class MapStats:
    voxels: int
    frames: int
    points_in: int
    points_fused: int
    evicted: int


class VoxelMap:
    """Voxel map in a fixed frame. ``integrate`` takes points already in that frame (or a sensor pose)."""

    def __init__(self, voxel_size: float = 0.05, max_voxels: int = 2_000_000, min_range: float = 0.1,
                 max_range: float = 10.0):
        if voxel_size <= 0:
            raise ValueError('voxel_size must be positive')
        self.voxel_size, self.max_voxels = float(voxel_size), int(max_voxels)
        self.min_range, self.max_range = float(min_range), float(max_range)
        self.reset()

    def reset(self) -> None:
        self.keys = np.empty(0, np.int64)             # sorted packed voxel coordinates
        self.acc = np.empty((0, 7), np.float64)        # per voxel: sum x, y, z, sum r, g, b, point count
        self.last_seen = np.empty(0, np.float64)
        self.frames = self.points_in = self.points_fused = self.evicted = 0

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def stats(self) -> MapStats:
        return MapStats(len(self.keys), self.frames, self.points_in, self.points_fused, self.evicted)

    # -----------------------------------------------------------------------------------------
    def integrate(self, xyz: np.ndarray, rgb: np.ndarray | None = None, pose: np.ndarray | None = None,
                  stamp: float = 0.0) -> int:
        """Fuse one frame. ``xyz`` in the sensor frame when ``pose`` (4x4 sensor-to-map) is given, else in
        the map frame. Points that are not finite or out of [min_range, max_range] from the sensor are
        dropped. Returns the number of points fused."""
        xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
        self.frames += 1
        self.points_in += len(xyz)
        rgb = np.full((len(xyz), 3), 128, np.uint8) if rgb is None else np.asarray(rgb).reshape(-1, 3)
        if len(xyz) == 0:
            return 0
        origin = np.zeros(3, np.float32)
        if pose is not None:
            pose = np.asarray(pose, np.float64)
            rng2 = np.einsum('ij,ij->i', xyz, xyz)
            keep = np.isfinite(rng2) & (rng2 >= self.min_range ** 2) & (rng2 <= self.max_range ** 2)
            xyz = xyz[keep] @ pose[:3, :3].T.astype(np.float32) + pose[:3, 3].astype(np.float32)
            rgb = rgb[keep]
            origin = pose[:3, 3].astype(np.float32)
        elif not np.isfinite(xyz).all():  # whole-array check first: the per-row mask costs 10x more
            keep = np.isfinite(xyz).all(axis=1)
            xyz, rgb = xyz[keep], rgb[keep]
        if len(xyz) == 0:
            return 0
        ijk = np.floor(xyz * (1.0 / self.voxel_size)).astype(np.int64)
        frame_keys = pack_keys(ijk)
        uniq, inverse, counts = np.unique(frame_keys, return_inverse=True, return_counts=True)
        n = len(uniq)
        frame_acc = np.empty((n, 7), np.float64)
        for a in range(3):  # bincount is numpy's fastest grouped sum
            frame_acc[:, a] = np.bincount(inverse, weights=xyz[:, a], minlength=n)
            frame_acc[:, 3 + a] = np.bincount(inverse, weights=rgb[:, a], minlength=n)
        frame_acc[:, 6] = counts
        self._merge(uniq, frame_acc, stamp)
        if len(self.keys) > self.max_voxels:
            self._evict(len(self.keys) - self.max_voxels, origin)
        self.points_fused += len(xyz)
        return len(xyz)

    def _merge(self, keys: np.ndarray, frame_acc: np.ndarray, stamp: float) -> None:
        pos = np.searchsorted(self.keys, keys)
        hit = pos < len(self.keys)
        hit[hit] = self.keys[pos[hit]] == keys[hit]
        if hit.all():
            self.acc[pos] += frame_acc  # one row-wise gather/scatter for all seven sums
            self.last_seen[pos] = stamp
            return
        p = pos[hit]
        self.acc[p] += frame_acc[hit]
        self.last_seen[p] = stamp
        new = ~hit
        ins = pos[new]
        self.keys = np.insert(self.keys, ins, keys[new])
        self.acc = np.insert(self.acc, ins, frame_acc[new], axis=0)
        self.last_seen = np.insert(self.last_seen, ins, stamp)

    def _evict(self, n: int, origin: np.ndarray) -> None:
        centres = self.acc[:, :3] / self.acc[:, 6:7]
        dist = np.linalg.norm(centres - origin, axis=1)
        order = np.lexsort((-dist, self.last_seen))  # oldest first, then farthest
        drop = np.zeros(len(self.keys), bool)
        drop[order[:n]] = True
        keep = ~drop
        self.keys, self.acc, self.last_seen = self.keys[keep], self.acc[keep], self.last_seen[keep]
        self.evicted += n

    # -----------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xyz float32 (V,3) mean point per voxel, rgb uint8 (V,3) mean colour, counts int64 (V,))."""
        c = np.maximum(self.acc[:, 6:7], 1.0)
        xyz = (self.acc[:, :3] / c).astype(np.float32)
        rgb = np.clip(np.rint(self.acc[:, 3:6] / c), 0, 255).astype(np.uint8)
        return xyz, rgb, self.acc[:, 6].astype(np.int64)

    def bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not len(self.keys):
            return None
        xyz = self.snapshot()[0]
        return xyz.min(axis=0), xyz.max(axis=0)

    def save(self, path: str | Path) -> Path:
        """Atomically write the map: ``.npz`` keeps everything; ``.ply`` (open3d-readable) keeps points+colours.

        Written to a temporary file in the same folder, then renamed, so a crash never leaves half a map."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix=path.suffix)
        os.close(fd)
        try:
            if path.suffix == '.npz':
                with open(tmp, 'wb') as f:
                    np.savez(f, voxel_size=self.voxel_size, keys=self.keys, acc=self.acc, last_seen=self.last_seen)
            elif path.suffix == '.ply':
                import open3d as o3d

                xyz, rgb, _ = self.snapshot()
                pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
                pc.colors = o3d.utility.Vector3dVector(rgb.astype(np.float64) / 255.0)
                if not o3d.io.write_point_cloud(tmp, pc, write_ascii=False):
                    raise OSError(f'open3d could not write {tmp}')
            else:
                raise ValueError(f'unsupported map format {path.suffix!r} (use .npz or .ply)')
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path, **kw) -> VoxelMap:
        path = Path(path)
        if path.suffix == '.npz':
            with np.load(path) as z:
                m = cls(voxel_size=float(z['voxel_size']), **kw)
                m.keys, m.acc, m.last_seen = z['keys'], z['acc'], z['last_seen']
            return m
        if path.suffix == '.ply':
            import open3d as o3d

            pc = o3d.io.read_point_cloud(str(path))
            m = cls(**kw)
            xyz = np.asarray(pc.points, np.float32)
            rgb = (np.asarray(pc.colors) * 255.0 + 0.5).astype(np.uint8) if pc.has_colors() else None
            m.integrate(xyz, rgb)
            return m
        raise ValueError(f'unsupported map format {path.suffix!r}')
