"""A bounded voxel-hashed colour map fused from point clouds (no ROS imports).

Each occupied voxel keeps a running mean position and colour, a point count and the time it was last
seen. Keys are the voxel's integer coordinates packed into one int64 (21 bits per axis, ±1,048,576 voxels
= ±52 km at 5 cm). A frame is reduced with one ``np.unique`` over its keys and ``bincount`` sums, then
merged: voxel data lives in append-only arrays (capacity doubling), found through a two-level sorted index
(a large main index plus a small delta that new voxels go into, merged into main when it outgrows an
eighth of it), so a frame costs O(n log V) and never copies the whole map. Vectorised numpy throughout.

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
        self._n = 0                                     # voxels in use (rows 0.._n of the stores)
        self._keys = np.empty(1024, np.int64)           # store: packed key per voxel
        self._acc = np.empty((1024, 7), np.float64)     # store: sum x, y, z, sum r, g, b, point count
        self._seen = np.empty(1024, np.float64)         # store: last time seen
        self._main_keys = np.empty(0, np.int64)         # sorted index -> row
        self._main_rows = np.empty(0, np.int64)
        self._delta_keys = np.empty(0, np.int64)        # small sorted index of recently added voxels
        self._delta_rows = np.empty(0, np.int64)
        self.frames = self.points_in = self.points_fused = self.evicted = 0

    @property
    def keys(self) -> np.ndarray:
        return self._keys[:self._n]

    @property
    def acc(self) -> np.ndarray:
        return self._acc[:self._n]

    @property
    def last_seen(self) -> np.ndarray:
        return self._seen[:self._n]

    def __len__(self) -> int:
        return self._n

    @property
    def stats(self) -> MapStats:
        return MapStats(self._n, self.frames, self.points_in, self.points_fused, self.evicted)

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
            if not keep.all():  # the usual frame keeps every point: skip two copies
                xyz, rgb = xyz[keep], rgb[keep]
            xyz = xyz @ pose[:3, :3].T.astype(np.float32) + pose[:3, 3].astype(np.float32)
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
        if self._n > self.max_voxels:
            self._evict(self._n - self.max_voxels, origin)
        self.points_fused += len(xyz)
        return len(xyz)

    @staticmethod
    def _find(index_keys: np.ndarray, index_rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Row of each key in a sorted index, -1 where absent."""
        pos = np.searchsorted(index_keys, keys)
        pos_c = np.minimum(pos, max(len(index_keys) - 1, 0))
        found = (pos < len(index_keys)) & (index_keys[pos_c] == keys) if len(index_keys) else np.zeros(len(keys), bool)
        return np.where(found, index_rows[pos_c] if len(index_rows) else -1, -1)

    def _merge(self, keys: np.ndarray, frame_acc: np.ndarray, stamp: float) -> None:
        rows = self._find(self._main_keys, self._main_rows, keys)
        miss = rows < 0
        if miss.any() and len(self._delta_keys):
            rows[miss] = self._find(self._delta_keys, self._delta_rows, keys[miss])
            miss = rows < 0
        hit = ~miss
        r = rows[hit]
        self._acc[r] += frame_acc[hit]
        self._seen[r] = stamp
        if miss.any():
            self._append(keys[miss], frame_acc[miss], stamp)

    def _append(self, keys: np.ndarray, frame_acc: np.ndarray, stamp: float) -> None:
        n_new = len(keys)
        need = self._n + n_new
        if need > len(self._keys):
            cap = max(need, 2 * len(self._keys))
            self._keys = np.resize(self._keys, cap)
            self._acc = np.resize(self._acc, (cap, 7))
            self._seen = np.resize(self._seen, cap)
        rows = np.arange(self._n, need)
        self._keys[rows], self._acc[rows], self._seen[rows] = keys, frame_acc, stamp
        self._n = need
        # keys arrive sorted (np.unique) and are new: merge into the small delta index
        dk = np.concatenate([self._delta_keys, keys])
        dr = np.concatenate([self._delta_rows, rows])
        order = np.argsort(dk, kind='stable')
        self._delta_keys, self._delta_rows = dk[order], dr[order]
        if len(self._delta_keys) > max(4096, len(self._main_keys) // 8):
            self._rebuild_index()

    def _rebuild_index(self) -> None:
        order = np.argsort(self._keys[:self._n])
        self._main_keys, self._main_rows = self._keys[:self._n][order], order.astype(np.int64)
        self._delta_keys, self._delta_rows = np.empty(0, np.int64), np.empty(0, np.int64)

    def _evict(self, n: int, origin: np.ndarray) -> None:
        # evict a little more than needed so a growing map does not compact on every frame
        n = min(self._n, n + self.max_voxels // 20)
        acc, seen = self.acc, self.last_seen
        dist = np.linalg.norm(acc[:, :3] / acc[:, 6:7] - origin, axis=1)
        order = np.lexsort((-dist, seen))  # oldest first, then farthest from the sensor
        keep = np.ones(self._n, bool)
        keep[order[:n]] = False
        k = int(keep.sum())
        self._keys[:k], self._acc[:k], self._seen[:k] = self.keys[keep], acc[keep], seen[keep]
        self._n = k
        self.evicted += n
        self._rebuild_index()

    # -----------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xyz float32 (V,3) mean point per voxel, rgb uint8 (V,3) mean colour, counts int64 (V,))."""
        c = np.maximum(self.acc[:, 6:7], 1.0)
        xyz = (self.acc[:, :3] / c).astype(np.float32)
        rgb = np.clip(np.rint(self.acc[:, 3:6] / c), 0, 255).astype(np.uint8)
        return xyz, rgb, self.acc[:, 6].astype(np.int64)

    def bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not self._n:
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
                m._append(z['keys'], z['acc'], 0.0)
                m._seen[:m._n] = z['last_seen']
                m._rebuild_index()
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
