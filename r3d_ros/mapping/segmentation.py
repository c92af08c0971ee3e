"""Class-agnostic object proposals from a coloured map cloud: room structure out, then clustering.

The model's object tokens are built from these segments (``r3d_ros.model.point_encoder``): a box the model
writes can then come from a proposal it picked rather than from a position it had to infer from a coarse
scene token (on the synthetic val split, the nearest of 64 FPS tokens lies 0.55 m from the asked object, and
only 8 % of the objects would be found at IoU 0.25 by copying it; these proposals reach 92 %).

Steps (open3d for the voxel grid and RANSAC planes, scikit-learn's DBSCAN for the clustering):
1. voxel down-sample (``voxel`` m), so density does not depend on how the cloud was sampled;
2. remove large horizontal/vertical planes (floor, walls, ceiling): RANSAC, a plane counts when it holds at
   least ``plane_fraction`` of the points and spans ``min_plane_extent`` m in two directions;
3. DBSCAN on xyz plus ``color_weight`` x rgb (0..1): touching objects of different colours stay apart;
4. pieces of a wall the planes missed (a far, half-seen wall in a live map) are dropped: segments lying within
   ``wall_band`` of a vertical bounding face of the map, in that wall's colour;
5. parts below another segment join it: a segment whose top touches the underside of a larger segment and whose
   footprint lies under it (legs and side panels under a table top, which shading alone had split off: on the
   val scenes a table came out as five proposals) is one object with it, and so is a thin part (<= 15 cm across:
   a leg, a panel) standing inside its box (a table whose top took some legs already reaches the floor) or
   anywhere under it (a leg that stops short of the top: on the test scenes a table came out as five proposals;
   in a live 5 cm voxel map a 6 cm leg is up to 25 cm across, so a post that wide, at least 1.8 times as tall
   as wide and rising from the table's bottom, counts as thin, and a footprint may overhang by two voxels),
   and a thin panel rising from inside its box along most of one side (a bed's headboard, taller than the bed:
   beds were counted twice). A thing resting on top of the other (a book on a table) starts at its top and is
   never joined.

Labels are per input point: -1 for structure and noise, else 0..K-1 with 0 the largest segment (most occupied
voxels, so the order does not depend on how densely the cloud was sampled).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SegmentationConfig:
    voxel: float = 0.05
    eps: float = 0.12
    min_points: int = 6
    color_weight: float = 0.6
    max_planes: int = 8
    plane_distance: float = 0.03
    plane_fraction: float = 0.06
    min_plane_extent: float = 1.5
    wall_band: float = 0.25       # m from a vertical bounding face of the map: where wall fragments lie
    wall_color_tol: float = 15.0  # CIE76 distance to that wall's colour under which a segment is the wall
    max_points: int = 60000  # larger inputs are voxelised to a coarser grid first (DBSCAN cost)


def _voxel_indices(xyz: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """(representative index per occupied voxel, voxel slot of every point)."""
    keys = np.floor(xyz / voxel).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def _structure_mask(xyz: np.ndarray, cfg: SegmentationConfig) -> np.ndarray:
    import open3d as o3d

    structure = np.zeros(len(xyz), bool)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
    for _ in range(cfg.max_planes):
        rest = np.flatnonzero(~structure)
        if len(rest) < 3 * cfg.min_points:
            break
        o3d.utility.random.seed(0)  # RANSAC's samples: the same cloud gets the same labels
        plane, inliers = cloud.select_by_index(rest.tolist()).segment_plane(cfg.plane_distance, 3, 200)
        normal_z = abs(float(plane[2]))
        if len(inliers) < cfg.plane_fraction * len(xyz) or 0.1 <= normal_z <= 0.95:
            break  # no large plane left, or a slanted one (not room structure)
        pts = xyz[rest[inliers]]
        if np.sort(pts.max(0) - pts.min(0))[-2] < cfg.min_plane_extent:
            break  # a table top or a bed, not a floor or a wall
        structure[rest[inliers]] = True
    return structure


def segment_objects(cloud: np.ndarray, config: SegmentationConfig | None = None) -> np.ndarray:
    """(N, 3+F) cloud (xyz metres, rgb 0..1 or 0..255 in columns 3..5 when present) -> (N,) int labels."""
    from sklearn.cluster import DBSCAN

    cfg = config or SegmentationConfig()
    cloud = np.asarray(cloud, np.float32)
    if cloud.ndim != 2 or cloud.shape[1] < 3:
        raise ValueError(f'cloud must be (N, 3+F), got {cloud.shape}')
    labels = np.full(len(cloud), -1, np.int64)
    if len(cloud) < cfg.min_points:
        return labels
    xyz = cloud[:, :3]
    rgb = cloud[:, 3:6] if cloud.shape[1] >= 6 else np.full((len(cloud), 3), 0.5, np.float32)
    if rgb.max(initial=0.0) > 1.0:
        rgb = rgb / 255.0
    voxel = cfg.voxel
    rep, slot = _voxel_indices(xyz, voxel)
    while len(rep) > cfg.max_points:
        voxel *= 1.25
        rep, slot = _voxel_indices(xyz, voxel)
    vx, vrgb = xyz[rep].astype(np.float64), rgb[rep].astype(np.float64)
    keep = ~_structure_mask(vx, cfg)
    voxel_labels = np.full(len(rep), -1, np.int64)
    if keep.sum() >= cfg.min_points:
        feats = np.concatenate([vx[keep], cfg.color_weight * vrgb[keep]], axis=1)
        voxel_labels[keep] = DBSCAN(eps=cfg.eps, min_samples=cfg.min_points).fit_predict(feats)
    voxel_labels = _drop_wall_fragments(vx, vrgb, voxel_labels, ~keep, cfg)
    voxel_labels = _merge_parts_below(vx, voxel_labels, voxel)
    # relabel by size (largest first), so a fixed number of object tokens keeps the biggest segments
    found = voxel_labels[voxel_labels >= 0]
    if len(found):
        ids, counts = np.unique(found, return_counts=True)
        order = ids[np.lexsort((ids, -counts))]
        remap = np.full(voxel_labels.max() + 1, -1, np.int64)
        remap[order] = np.arange(len(order))
        voxel_labels = np.where(voxel_labels >= 0, remap[np.maximum(voxel_labels, 0)], -1)
    labels[:] = voxel_labels[slot]
    return labels


def _merge_parts_below(xyz: np.ndarray, labels: np.ndarray, voxel: float, gap: float = 0.08) -> np.ndarray:
    """Join each segment to the larger segment resting on it from above (see the module docstring, step 5)."""
    ids = [k for k in np.unique(labels) if k >= 0]
    boxes = {k: (xyz[labels == k].min(0), xyz[labels == k].max(0)) for k in ids}
    area = {k: float(np.prod(np.maximum(hi - lo, voxel)[:2])) for k, (lo, hi) in boxes.items()}
    parent = {}
    for a in ids:
        alo, ahi = boxes[a]
        for b in sorted(ids, key=lambda k: -area[k]):
            blo, bhi = boxes[b]
            if b == a or area[b] <= 2 * area[a] or min(bhi[:2] - blo[:2]) > ROOM_SIZED:
                continue
            # its footprint within b's (a noisy live map widens a leg by a voxel on each side)
            under = np.all(alo[:2] >= blo[:2] - 2 * voxel) and np.all(ahi[:2] <= bhi[:2] + 2 * voxel)
            if under and _part_of(alo, ahi, blo, bhi, voxel, gap):
                parent[a] = b
                break
    out = labels.copy()
    for a in parent:
        root = a
        while root in parent:
            root = parent[root]
        out[labels == a] = root
    return out


#: a segment wider than this (m) both ways is a leftover of the room's structure (walls a live map saw in parts),
#: not furniture: it takes no parts (it took a table's legs, leaving its top 10 cm tall)
ROOM_SIZED = 3.0


def _part_of(alo, ahi, blo, bhi, voxel: float, gap: float) -> bool:
    """Whether segment a (box alo..ahi), whose footprint lies within segment b's, is a part of b (step 5)."""
    extent, other = ahi[:2] - alo[:2], bhi[:2] - blo[:2]
    # a leg 6 cm thick fills up to 25 cm of a live 5 cm voxel map: that wide, a post rising from b's bottom (a
    # plant or a trash can standing there is wider, or not twice as tall as wide)
    post = float(extent.max()) <= 0.25 and ahi[2] - alo[2] >= 1.8 * float(extent.max()) and alo[2] <= blo[2] + 2 * voxel
    thin = float(extent.min()) <= 0.15 or post
    if ahi[2] < bhi[2]:
        # its top touches b's underside; or a thin part (leg, panel) inside b's box or anywhere below its top
        return abs(float(ahi[2] - blo[2])) <= gap or (thin and (alo[2] >= blo[2] - voxel or ahi[2] <= blo[2] + gap))
    # taller than b: a thin panel at the edge of b's footprint, along most of that side, rising from below b's
    # top (a headboard; not a screen standing on a desk that b's top took a monitor of)
    side, across = int(np.argmax(extent)), int(np.argmin(extent))
    at_edge = min(abs(float(alo[across] - blo[across])), abs(float(bhi[across] - ahi[across]))) <= 2 * voxel
    return thin and at_edge and alo[2] < bhi[2] - gap and extent[side] >= 0.6 * other[side]


def _drop_wall_fragments(xyz: np.ndarray, rgb: np.ndarray, labels: np.ndarray, structure: np.ndarray,
                         cfg: SegmentationConfig) -> np.ndarray:
    """Step 4: segments that are pieces of a wall the planes missed -> structure (-1).

    A wall a depth camera saw from metres away and in parts (its noise grows with range, ~4 cm at 5 m) does not
    fit one 3 cm plane; it comes out as thin plates that the class head then names lamps and beds. A segment is
    such a piece when (98 % of) its points lie within ``wall_band`` of one of the map's four vertical bounding
    faces (1st / 99th percentile of x and y; a piece may span a corner) and its median colour is, within
    ``wall_color_tol``, that of a wall it lies by (the structure points by that face, or all points by it when
    no plane was found there); an object against the wall reaches further into the room, or has a colour of
    its own.
    """
    from r3d_ros.scene_objects import lab

    colours = lab(rgb)
    lo, hi = np.percentile(xyz[:, :2], 1, axis=0), np.percentile(xyz[:, :2], 99, axis=0)
    near, walls = [], []
    for axis in (0, 1):
        for face in (lo[axis], hi[axis]):
            by_face = np.abs(xyz[:, axis] - face) <= cfg.wall_band
            ref = by_face & structure if (by_face & structure).sum() >= 20 else by_face
            if ref.any():
                near.append(by_face)
                walls.append(np.median(colours[ref], axis=0))
    if not walls:
        return labels
    near = np.stack(near)                                   # (faces, N): point within the band of that face
    out = labels.copy()
    for k in np.unique(labels[labels >= 0]):
        part = labels == k
        touched = near[:, part].any(axis=1)
        colour = np.median(colours[part], axis=0)
        # (nearly) every point by some wall (a piece may span a corner), coloured like one of the walls it lies by
        by_wall = [walls[f] for f in np.flatnonzero(touched) if np.linalg.norm(colour - walls[f]) <= cfg.wall_color_tol]
        if near[:, part].any(axis=0).mean() >= 0.98 and by_wall:
            out[part] = -1
            out = _keep_what_is_not_wall(xyz, rgb, colours, part, by_wall, out, cfg)
    return out


def _keep_what_is_not_wall(xyz, rgb, colours, part, walls, labels, cfg: SegmentationConfig) -> np.ndarray:
    """The points of a wall piece in a colour of their own, clustered again as objects of their own: a table
    standing against a half-seen wall joins the wall's segment, and went with it (a live demo map lost its table
    top so, and the class head called a leg the table)."""
    from sklearn.cluster import DBSCAN

    dist = np.min([np.linalg.norm(colours - w, axis=1) for w in walls], axis=0)
    rest = np.flatnonzero(part & (dist > cfg.wall_color_tol))
    if len(rest) < cfg.min_points:
        return labels
    feats = np.concatenate([xyz[rest], cfg.color_weight * rgb[rest]], axis=1)
    sub = DBSCAN(eps=cfg.eps, min_samples=cfg.min_points).fit_predict(feats)
    labels[rest] = np.where(sub >= 0, sub + labels.max() + 1, -1)
    return labels


def segment_boxes(cloud: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Axis-aligned (centre, size) per label 0..K-1 from each segment's min/max."""
    out = []
    for k in range(int(labels.max(initial=-1)) + 1):
        pts = np.asarray(cloud)[labels == k, :3]
        lo, hi = pts.min(0), pts.max(0)
        out.append(((lo + hi) / 2, hi - lo))
    return out
