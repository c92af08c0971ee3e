"""Class-agnostic object proposals from a coloured map cloud: room structure out, then clustering.

The model's object tokens are built from these segments (``r3d_ros.model.point_encoder``): a box the model
writes can then come from a proposal it picked rather than from a position it had to infer from a coarse
scene token (on the synthetic val split, the nearest of 64 FPS tokens lies 0.55 m from the asked object, and
only 8 % of the objects would be found at IoU 0.25 by copying it; these proposals reach 92 %, and 96 % of the
test split's asked objects since step 6).

Steps (open3d for the voxel grid and RANSAC planes, scikit-learn's DBSCAN for the clustering):
1. voxel down-sample (``voxel`` m), so density does not depend on how the cloud was sampled;
2. remove large horizontal/vertical planes (floor, walls, ceiling): RANSAC, a plane counts when it holds at
   least ``plane_fraction`` of the points and spans ``min_plane_extent`` m in two directions;
3. DBSCAN on xyz plus ``color_weight`` x rgb (0..1): touching objects of different colours stay apart;
4. pieces of a wall the planes missed (a far, half-seen wall in a live map) are dropped: segments lying within
   ``wall_band`` of a vertical bounding face of the map, in that wall's colour; so are flat pieces of the floor in
   the floor's colour;
5. parts below another segment join it: a segment whose top touches the underside of a larger segment and whose
   footprint lies under it (legs and side panels under a table top, which shading alone had split off: on the
   val scenes a table came out as five proposals) is one object with it, and so is a thin part (<= 15 cm across:
   a leg, a panel) standing inside its box (a table whose top took some legs already reaches the floor) or
   anywhere under it (a leg that stops short of the top: on the test scenes a table came out as five proposals;
   in a live 5 cm voxel map a 6 cm leg is up to 25 cm across, so a post that wide, at least 1.8 times as tall
   as wide and rising from the table's bottom, counts as thin, and a footprint may overhang by two voxels),
   and a thin panel rising from inside its box along most of one side (a bed's headboard, taller than the bed:
   beds were counted twice). A thing resting on top of the other (a book on a table) starts at its top and is
   never joined;
6. what stands on a top is split off it (point level, so a laptop lying within the table top's voxels counts):
   above each segment's top surface its points, the segments resting there and DBSCAN's noise are clustered
   again, and a cluster that rests on the top within its footprint, is not a panel along one side (a backrest)
   and is told from the top by height or colour is an object; a piece resting on such a thing, over its whole
   footprint, is the same thing (a lamp's shade above its darker pole).

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
    top_clearance: float = 0.01   # m above a support's top surface where what stands on it begins
    top_color_weight: float = 0.3  # above a top: a part's shading (a monitor's foot 20 % darker) joins, a colour not
    top_min_rise: float = 0.04    # m a thing in the support's own colour must rise above the top (not noise)
    top_color_tol: float = 15.0   # CIE76 distance from the top's colour above which a flat thing is another object


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
        # the same cloud gets the same labels: seeded samples, and all 200 iterations (open3d's early stop races
        # between its threads: the 5th plane of one test scene came out 4396 or 4383 voxels from run to run)
        o3d.utility.random.seed(0)
        plane, inliers = cloud.select_by_index(rest.tolist()).segment_plane(cfg.plane_distance, 3, 200,
                                                                            probability=1.0)
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

    from r3d_ros.scene_objects import lab

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
    loose = keep & (voxel_labels == -1)  # DBSCAN's noise: a laptop's few voxels above a table top
    colours = lab(vrgb)
    voxel_labels = _drop_wall_fragments(vx, vrgb, colours, voxel_labels, ~keep, cfg)
    voxel_labels = _drop_floor_fragments(vx, colours, voxel_labels, ~keep, cfg)
    voxel_labels = _merge_parts_below(vx, voxel_labels, voxel)
    labels[:] = _split_what_stands_on_tops(xyz, rgb, voxel_labels[slot], loose[slot], cfg)
    return _ordered_by_size(labels, slot)


def _ordered_by_size(labels: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """Relabel 0..K-1 by occupied voxels (largest first), so a fixed number of object tokens keeps the biggest
    segments and the order does not depend on how densely the cloud was sampled."""
    found = labels >= 0
    if not found.any():
        return labels
    pairs = np.unique(np.stack([labels[found], slot[found]], axis=1), axis=0)
    ids, counts = np.unique(pairs[:, 0], return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    remap = np.full(labels.max() + 1, -1, np.int64)
    remap[order] = np.arange(len(order))
    return np.where(found, remap[np.maximum(labels, 0)], -1)


def _split_what_stands_on_tops(xyz: np.ndarray, rgb: np.ndarray, labels: np.ndarray, loose: np.ndarray,
                               cfg: SegmentationConfig) -> np.ndarray:
    """Step 6: what stands on a support's top -> one segment per thing (point level).

    DBSCAN joins a monitor to the desk of its colour, cuts a monitor's foot from its screen, and a voxel's
    representative point hides a laptop lying in the desk top's voxels (on the test scenes 35 of 529 objects had
    no proposal at IoU 0.25, 34 of them standing on furniture, and a question about them was answered "I see no
    book"). So above each segment's top surface (its highest dense horizontal layer) its own points, the segments
    resting there and DBSCAN's noise are clustered again, colour weighing less (``top_color_weight``: a part's
    shading joins it), and each piece is judged by :func:`_label_things_on_top`.
    """
    from sklearn.cluster import DBSCAN

    out = labels.copy()
    for k in _by_footprint(xyz, labels):
        part = np.flatnonzero(out == k)
        top = _top_surface(xyz[part], cfg) if len(part) else None
        if top is None:
            continue
        height, layer = top
        lo, hi = xyz[part, :2].min(0), xyz[part, :2].max(0)
        above = np.flatnonzero(_resting_on(xyz, out, loose, k, lo, hi, height, cfg))
        if len(above) < cfg.min_points:
            continue
        feats = np.concatenate([xyz[above], cfg.top_color_weight * rgb[above]], axis=1)
        clusters = DBSCAN(eps=cfg.eps, min_samples=3).fit_predict(feats)
        pieces = sorted((above[clusters == c] for c in np.unique(clusters[clusters >= 0])),
                        key=lambda rows: float(xyz[rows, 2].min()))
        _label_things_on_top(xyz, rgb, out, part, layer, (lo, hi), height, pieces, cfg)
    return out


def _label_things_on_top(xyz, rgb, out, part, layer, footprint, height: float, pieces, cfg: SegmentationConfig) -> None:
    """Give each piece (lowest first) above support ``part``'s top at ``height`` (``footprint``: its xy lo, hi) that
    is a thing standing on it a label of its own in ``out``: it lies within the footprint, starts at the top, covers
    at most half of it, is not a panel along one side (a chair's backrest, a headboard) and rises ``top_min_rise``
    above the top or has a colour of its own (a laptop). A piece resting over the whole footprint of a thing found
    here is that thing (a lamp's shade above its darker pole)."""
    from r3d_ros.scene_objects import lab

    lo, hi = footprint
    top_colour = np.median(lab(rgb[part[layer]]), axis=0)
    found = []   # (label, lo, hi) of the things found on this top
    for rows in pieces:
        plo, phi = xyz[rows].min(0), xyz[rows].max(0)
        base = None if plo[2] <= height + cfg.top_clearance + cfg.voxel else next(
            (f for f in found if abs(plo[2] - f[2][2]) <= cfg.voxel and _overlap_xy(plo, phi, f[1], f[2])), None)
        distinct = np.linalg.norm(np.median(lab(rgb[rows]), axis=0) - top_colour) > cfg.top_color_tol
        if not _stands_on(xyz[rows], lo, hi, height if base is None else base[2][2], distinct, cfg):
            continue
        label = out.max() + 1
        if base is not None and _within_xy(base[1], base[2], plo, phi, cfg.voxel):
            label = base[0]   # the part below it (a pole under its shade) is the same thing
            found.remove(base)
            plo, phi = np.minimum(plo, base[1]), np.maximum(phi, base[2])
        if base is None:  # with its foot: the support's points under the clearance, above the surface
            under = np.all((xyz[part, :2] >= plo[:2]) & (xyz[part, :2] <= phi[:2]), axis=1)
            rows = np.union1d(rows, part[under & (xyz[part, 2] > height)])
        out[rows] = label
        found.append((label, plo, phi))


def _overlap_xy(alo, ahi, blo, bhi) -> bool:
    return bool(np.all(alo[:2] <= bhi[:2]) and np.all(blo[:2] <= ahi[:2]))


def _within_xy(alo, ahi, blo, bhi, margin: float) -> bool:
    """Whether footprint a lies within footprint b (with ``margin``)."""
    return bool(np.all(alo[:2] >= blo[:2] - margin) and np.all(ahi[:2] <= bhi[:2] + margin))


def _by_footprint(xyz: np.ndarray, labels: np.ndarray) -> list[int]:
    """Segment ids, largest footprint first (a table is split before the box standing on it is looked at)."""
    ids = [int(k) for k in np.unique(labels[labels >= 0])]
    area = {k: float(np.prod(np.ptp(xyz[labels == k, :2], axis=0))) for k in ids}
    return sorted(ids, key=lambda k: (-area[k], k))


def _resting_on(xyz, labels, loose, k, lo, hi, height, cfg: SegmentationConfig) -> np.ndarray:
    """Mask of the points above segment k's top at ``height``: its own, whole segments lying within its
    footprint from the top up, and loose (noise) points over the footprint."""
    over = np.all((xyz[:, :2] >= lo - cfg.voxel) & (xyz[:, :2] <= hi + cfg.voxel), axis=1)
    high = xyz[:, 2] > height + cfg.top_clearance
    mask = ((labels == k) | (loose & over & (labels == -1))) & high
    for j in np.unique(labels[over & (labels >= 0) & (labels != k)]):
        segment = labels == j
        if over[segment].all() and xyz[segment, 2].min() >= height - cfg.voxel:
            mask |= segment
    return mask


def _top_surface(xyz: np.ndarray, cfg: SegmentationConfig) -> tuple[float, np.ndarray] | None:
    """(height, mask of its points) of the highest dense horizontal layer (1 cm bins) spanning half the
    footprint: a table's top, a chair's seat, a mattress. None for a segment too small to carry anything."""
    extent = xyz[:, :2].max(0) - xyz[:, :2].min(0)
    if len(xyz) < 3 * cfg.min_points or extent.min() < 0.25:
        return None
    bins = np.floor((xyz[:, 2] - xyz[:, 2].min()) / 0.01).astype(np.int64)
    counts = np.bincount(bins)
    for b in np.flatnonzero(counts >= 0.3 * counts.max())[::-1]:
        layer = bins == b
        span = xyz[layer, :2].max(0) - xyz[layer, :2].min(0)
        if np.prod(span) >= 0.5 * np.prod(extent):
            return float(np.percentile(xyz[layer, 2], 95)), layer
    return None


def _stands_on(pts: np.ndarray, lo: np.ndarray, hi: np.ndarray, height: float, distinct: bool,
               cfg: SegmentationConfig) -> bool:
    """Whether a cluster of points above a top at ``height`` (footprint lo..hi) is a thing standing on it."""
    plo, phi = pts.min(0), pts.max(0)
    extent, other = phi[:2] - plo[:2], hi - lo
    inside = _within_xy(plo, phi, lo, hi, cfg.voxel)
    rests = plo[2] <= height + cfg.top_clearance + cfg.voxel
    small = np.prod(np.maximum(extent, cfg.voxel)) <= 0.5 * np.prod(other)
    # a panel along one side, at that edge (a backrest, a headboard, a sofa's arm) is part of the furniture
    at_edge = np.minimum(np.abs(plo[:2] - lo), np.abs(hi - phi[:2])) <= 2 * cfg.voxel
    panel = bool(np.any(at_edge[::-1] & (extent >= 0.85 * other)))
    rises = phi[2] - height >= cfg.top_min_rise
    return bool(len(pts) >= cfg.min_points and inside and rests and small and not panel and (rises or distinct))


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
            if _within_xy(alo, ahi, blo, bhi, 2 * voxel) and _part_of(alo, ahi, blo, bhi, voxel, gap):
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


def _drop_wall_fragments(xyz: np.ndarray, rgb: np.ndarray, colours: np.ndarray, labels: np.ndarray,
                         structure: np.ndarray, cfg: SegmentationConfig) -> np.ndarray:
    """Step 4: segments that are pieces of a wall the planes missed -> structure (-1).

    A wall a depth camera saw from metres away and in parts (its noise grows with range, ~4 cm at 5 m) does not
    fit one 3 cm plane; it comes out as thin plates that the class head then names lamps and beds. A segment is
    such a piece when (98 % of) its points lie within ``wall_band`` of one of the map's four vertical bounding
    faces (1st / 99th percentile of x and y; a piece may span a corner) and its median colour is, within
    ``wall_color_tol``, that of a wall it lies by (the structure points by that face, or all points by it when
    no plane was found there); an object against the wall reaches further into the room, or has a colour of
    its own. (``colours``: CIE Lab of ``rgb``.)
    """
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


def _drop_floor_fragments(xyz: np.ndarray, colours: np.ndarray, labels: np.ndarray, structure: np.ndarray,
                          cfg: SegmentationConfig) -> np.ndarray:
    """Step 4 for the floor: flat segments (within ``2 * plane_distance`` of the floor level) in the floor's colour
    are floor a noisy live map bent off its plane; the class head called them shelves and beds ("How many shelves
    are there?": 3 in a room with none). A book lying on the floor has a colour of its own and stays. (``colours``:
    CIE Lab per point.)"""
    level = float(np.percentile(xyz[:, 2], 1))
    floor = structure & (xyz[:, 2] <= level + cfg.plane_distance)
    if floor.sum() < cfg.min_points:
        return labels
    floor_colour = np.median(colours[floor], axis=0)
    out = labels.copy()
    for k in np.unique(labels[labels >= 0]):
        part = labels == k
        flat = xyz[part, 2].max() <= level + 2 * cfg.plane_distance
        if flat and np.linalg.norm(np.median(colours[part], axis=0) - floor_colour) <= cfg.wall_color_tol:
            out[part] = -1
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
