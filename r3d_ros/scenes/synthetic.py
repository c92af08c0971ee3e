"""Procedural indoor scenes: a room (floor + four walls) with 5-30 furniture and household objects.

Each object is built from primitives (boxes, vertical cylinders, spheres) whose surfaces are sampled
uniformly at ``point_density`` points per square metre, so the cloud looks like a fused RGB-D scan.
Furniture stands on the floor, turned to one of the four wall-aligned yaws (so its axis-aligned box is
tight, as in ScanNet-style annotations); small items stand on supporting furniture (a lamp on a table,
a monitor on a desk) and record that ``parent_id``. There is no ceiling, so views from above see in.

Determinism: everything is drawn from one ``numpy.random.Generator`` seeded with ``seed``; the same seed
gives the same scene bit for bit (on the same numpy version).
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from r3d_ros.scenes.types import BACKGROUND, Scene, SceneObject

#: named colours (ground truth ``color_name``) and their RGB
COLORS: dict[str, tuple[int, int, int]] = {
    'red': (200, 30, 30), 'green': (40, 160, 60), 'blue': (30, 70, 200), 'yellow': (230, 210, 40),
    'white': (235, 235, 235), 'black': (25, 25, 25), 'gray': (128, 128, 128), 'brown': (120, 75, 35),
    'orange': (240, 130, 20), 'purple': (120, 40, 160), 'pink': (240, 150, 190), 'beige': (215, 195, 150),
}
FLOOR_RGB = (170, 160, 150)
WALL_RGB = (205, 205, 195)


@dataclass(frozen=True)
class Category:
    """An object category: size ranges (x = width, y = depth, z = height, metres), how it is built, where it goes."""

    label: str
    size_lo: tuple[float, float, float]
    size_hi: tuple[float, float, float]
    shape: str                    # builder name, see _PARTS
    colors: tuple[str, ...]
    support: bool = False         # other objects can stand on its top
    on_support: bool = False      # stands on a supporting object (else on the floor)
    openable: bool = False        # has a door/lid (plans may open/close it)
    against_wall: bool = False    # placed with its back to a wall


_WOOD = ('brown', 'beige', 'white', 'black')
_FABRIC = ('red', 'blue', 'gray', 'green', 'beige', 'brown', 'purple', 'black')
_ANY = tuple(COLORS)

CATEGORIES: dict[str, Category] = {c.label: c for c in (
    Category('chair', (0.45, 0.45, 0.8), (0.55, 0.55, 1.0), 'chair', _FABRIC + ('white',)),
    Category('table', (0.8, 0.6, 0.7), (1.6, 1.0, 0.78), 'table', _WOOD, support=True),
    Category('desk', (1.0, 0.55, 0.72), (1.6, 0.8, 0.78), 'desk', _WOOD, support=True, against_wall=True),
    Category('sofa', (1.6, 0.8, 0.75), (2.2, 0.95, 0.9), 'sofa', _FABRIC, against_wall=True),
    Category('bed', (1.0, 1.9, 0.45), (1.8, 2.1, 0.6), 'bed', ('white', 'blue', 'gray', 'beige', 'pink'),
             against_wall=True),
    Category('cabinet', (0.5, 0.45, 0.8), (1.0, 0.6, 1.2), 'box', _WOOD, support=True, openable=True,
             against_wall=True),
    Category('shelf', (0.6, 0.3, 1.2), (1.2, 0.4, 2.0), 'shelf', _WOOD, against_wall=True),
    Category('wardrobe', (0.9, 0.55, 1.8), (1.5, 0.65, 2.1), 'box', _WOOD, openable=True, against_wall=True),
    Category('refrigerator', (0.6, 0.6, 1.6), (0.8, 0.75, 1.9), 'box', ('white', 'gray', 'black'),
             openable=True, against_wall=True),
    Category('nightstand', (0.4, 0.35, 0.45), (0.55, 0.45, 0.6), 'box', _WOOD, support=True, openable=True),
    Category('armchair', (0.7, 0.7, 0.8), (0.9, 0.85, 1.0), 'sofa', _FABRIC),
    Category('stool', (0.3, 0.3, 0.45), (0.4, 0.4, 0.7), 'stool', _WOOD + ('red', 'blue')),
    Category('trash_can', (0.25, 0.25, 0.3), (0.4, 0.4, 0.6), 'cylinder', ('gray', 'black', 'blue', 'green')),
    Category('plant', (0.3, 0.3, 0.5), (0.5, 0.5, 1.2), 'plant', ('green',)),
    Category('tv', (0.9, 0.1, 0.55), (1.4, 0.12, 0.85), 'panel', ('black',), on_support=True),
    Category('monitor', (0.45, 0.15, 0.35), (0.7, 0.2, 0.5), 'panel', ('black', 'gray', 'white'), on_support=True),
    Category('lamp', (0.2, 0.2, 0.35), (0.35, 0.35, 0.6), 'lamp', ('white', 'yellow', 'black', 'orange'),
             on_support=True),
    Category('box', (0.2, 0.15, 0.12), (0.45, 0.35, 0.35), 'box', ('brown', 'beige', 'white'), on_support=True,
             openable=True),
    Category('laptop', (0.3, 0.22, 0.02), (0.38, 0.26, 0.03), 'box', ('gray', 'black', 'white'), on_support=True,
             openable=True),
    Category('book', (0.15, 0.2, 0.03), (0.2, 0.28, 0.06), 'box', ('red', 'blue', 'green', 'yellow', 'black'),
             on_support=True),
    Category('cup', (0.07, 0.07, 0.09), (0.1, 0.1, 0.12), 'cylinder', ('white', 'red', 'blue', 'yellow'),
             on_support=True),
    Category('bottle', (0.07, 0.07, 0.2), (0.09, 0.09, 0.32), 'cylinder', ('green', 'blue', 'white', 'brown'),
             on_support=True),
    Category('vase', (0.12, 0.12, 0.2), (0.2, 0.2, 0.4), 'cylinder', ('white', 'blue', 'red', 'purple'),
             on_support=True),
    Category('bowl', (0.15, 0.15, 0.06), (0.25, 0.25, 0.1), 'cylinder', ('white', 'red', 'blue', 'orange'),
             on_support=True),
)}
FLOOR_LABELS = tuple(k for k, c in CATEGORIES.items() if not c.on_support)
SMALL_LABELS = tuple(k for k, c in CATEGORIES.items() if c.on_support)

DEFAULT_POINT_DENSITY = 400.0  # points per m^2 of surface: ~40k-80k points for a typical room
MIN_POINTS_PER_PART = 24       # small parts (a cup handle-sized box) still get a recognisable cluster


# ---------------------------------------------------------------------------------------------- primitives

def _sample_box(rng, lo, hi, density, skip_bottom=True):
    """Uniform samples on the faces of the axis-aligned box [lo, hi] (the bottom face is usually hidden)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    d = hi - lo
    faces = []  # (axis, side)
    for axis in range(3):
        for side in (0, 1):
            if skip_bottom and axis == 2 and side == 0:
                continue
            faces.append((axis, side))
    areas = np.array([np.prod(np.delete(d, a)) for a, _ in faces])
    total = max(int(round(areas.sum() * density)), MIN_POINTS_PER_PART)
    counts = rng.multinomial(total, areas / areas.sum()) if areas.sum() > 0 else np.zeros(len(faces), int)
    out = []
    for (axis, side), n in zip(faces, counts):
        if n == 0:
            continue
        p = lo + rng.random((n, 3)) * d
        p[:, axis] = hi[axis] if side else lo[axis]
        out.append(p)
    return np.concatenate(out) if out else np.zeros((0, 3))


def _sample_cylinder(rng, center_xy, radius, z0, z1, density, top=True):
    """Uniform samples on a vertical cylinder's side (and top disc)."""
    side_area = 2 * math.pi * radius * (z1 - z0)
    top_area = math.pi * radius ** 2 if top else 0.0
    total = max(int(round((side_area + top_area) * density)), MIN_POINTS_PER_PART)
    n_top = int(round(total * top_area / (side_area + top_area)))
    n_side = total - n_top
    th = rng.random(n_side) * 2 * math.pi
    side = np.stack([center_xy[0] + radius * np.cos(th), center_xy[1] + radius * np.sin(th),
                     z0 + rng.random(n_side) * (z1 - z0)], axis=1)
    r = radius * np.sqrt(rng.random(n_top))
    th = rng.random(n_top) * 2 * math.pi
    cap = np.stack([center_xy[0] + r * np.cos(th), center_xy[1] + r * np.sin(th), np.full(n_top, z1)], axis=1)
    return np.concatenate([side, cap])


def _sample_ellipsoid(rng, center, radii, density):
    """Approximately uniform samples on an ellipsoid (normalised Gaussian directions, scaled)."""
    a, b, c = radii
    p = 1.6
    area = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)  # Knud Thomsen
    n = max(int(round(area * density)), MIN_POINTS_PER_PART)
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.asarray(center) + v * np.asarray(radii)


# Each builder returns [(points in the object's local frame, colour scale)], local frame: origin at the
# footprint centre on the ground, x = width, y = depth (front is -y), z up.

def _parts_box(rng, s, den):
    return [(_sample_box(rng, (-s[0] / 2, -s[1] / 2, 0), (s[0] / 2, s[1] / 2, s[2]), den), 1.0)]


def _legs(rng, s, den, top_th, leg=0.05, inset=0.03):
    out = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (s[0] / 2 - inset - leg / 2), sy * (s[1] / 2 - inset - leg / 2)
            out.append((_sample_box(rng, (cx - leg / 2, cy - leg / 2, 0), (cx + leg / 2, cy + leg / 2, s[2] - top_th),
                                    den), 0.7))
    return out


def _parts_table(rng, s, den):
    th = 0.04
    return [(_sample_box(rng, (-s[0] / 2, -s[1] / 2, s[2] - th), (s[0] / 2, s[1] / 2, s[2]), den, False), 1.0),
            *_legs(rng, s, den, th)]


def _parts_desk(rng, s, den):
    th = 0.04
    return [(_sample_box(rng, (-s[0] / 2, -s[1] / 2, s[2] - th), (s[0] / 2, s[1] / 2, s[2]), den, False), 1.0),
            (_sample_box(rng, (s[0] / 2 - 0.4, -s[1] / 2, 0), (s[0] / 2, s[1] / 2, s[2] - th), den), 0.85),
            (_sample_box(rng, (-s[0] / 2, -s[1] / 2 + 0.02, 0), (-s[0] / 2 + 0.04, s[1] / 2, s[2] - th), den), 0.85)]


def _parts_chair(rng, s, den):
    seat = 0.45 * s[2] / 0.9
    return [(_sample_box(rng, (-s[0] / 2, -s[1] / 2, seat - 0.05), (s[0] / 2, s[1] / 2, seat), den, False), 1.0),
            (_sample_box(rng, (-s[0] / 2, s[1] / 2 - 0.05, seat), (s[0] / 2, s[1] / 2, s[2]), den), 1.0),
            *_legs(rng, (s[0], s[1], seat), den, 0.05, leg=0.04, inset=0.0)]


def _parts_stool(rng, s, den):
    return [(_sample_cylinder(rng, (0, 0), min(s[0], s[1]) / 2, s[2] - 0.04, s[2], den), 1.0),
            (_sample_cylinder(rng, (0, 0), 0.03, 0, s[2] - 0.04, den, top=False), 0.7)]


def _parts_sofa(rng, s, den):
    seat, arm = 0.42, 0.15
    return [(_sample_box(rng, (-s[0] / 2, -s[1] / 2, 0), (s[0] / 2, s[1] / 2 - 0.2, seat), den), 1.0),
            (_sample_box(rng, (-s[0] / 2, s[1] / 2 - 0.2, 0), (s[0] / 2, s[1] / 2, s[2]), den), 0.9),
            (_sample_box(rng, (-s[0] / 2, -s[1] / 2, 0), (-s[0] / 2 + arm, s[1] / 2 - 0.2, seat + 0.2), den), 0.9),
            (_sample_box(rng, (s[0] / 2 - arm, -s[1] / 2, 0), (s[0] / 2, s[1] / 2 - 0.2, seat + 0.2), den), 0.9)]


def _parts_bed(rng, s, den):
    return [(_sample_box(rng, (-s[0] / 2, -s[1] / 2, 0), (s[0] / 2, s[1] / 2 - 0.06, s[2]), den), 1.0),
            (_sample_box(rng, (-s[0] / 2, s[1] / 2 - 0.06, 0), (s[0] / 2, s[1] / 2, s[2] + 0.45), den), 0.6)]


def _parts_shelf(rng, s, den):
    th = 0.025
    parts = [(_sample_box(rng, (-s[0] / 2, -s[1] / 2, 0), (-s[0] / 2 + th, s[1] / 2, s[2]), den), 1.0),
             (_sample_box(rng, (s[0] / 2 - th, -s[1] / 2, 0), (s[0] / 2, s[1] / 2, s[2]), den), 1.0),
             (_sample_box(rng, (-s[0] / 2, s[1] / 2 - th, 0), (s[0] / 2, s[1] / 2, s[2]), den), 0.85)]
    for z in np.linspace(0, s[2] - th, 5):
        parts.append((_sample_box(rng, (-s[0] / 2, -s[1] / 2, z), (s[0] / 2, s[1] / 2, z + th), den, False), 1.0))
    return parts


def _parts_cylinder(rng, s, den):
    return [(_sample_cylinder(rng, (0, 0), min(s[0], s[1]) / 2, 0, s[2], den), 1.0)]


def _parts_panel(rng, s, den):
    foot = 0.12 * s[2]
    return [(_sample_box(rng, (-s[0] / 2, -0.02, foot), (s[0] / 2, 0.02, s[2]), den), 1.0),
            (_sample_box(rng, (-0.12 * s[0], -s[1] / 2, 0), (0.12 * s[0], s[1] / 2, 0.02), den), 0.8),
            (_sample_box(rng, (-0.02, -0.02, 0), (0.02, 0.02, foot), den), 0.8)]


def _parts_lamp(rng, s, den):
    r = min(s[0], s[1]) / 2
    return [(_sample_cylinder(rng, (0, 0), r * 0.6, 0, 0.03, den), 0.6),
            (_sample_cylinder(rng, (0, 0), 0.012, 0.03, s[2] * 0.6, den, top=False), 0.6),
            (_sample_cylinder(rng, (0, 0), r, s[2] * 0.6, s[2], den), 1.0)]


def _parts_plant(rng, s, den):
    pot_h = 0.3 * s[2]
    r = min(s[0], s[1]) / 2
    return [(_sample_cylinder(rng, (0, 0), r * 0.55, 0, pot_h, den), 0.45),
            (_sample_ellipsoid(rng, (0, 0, pot_h + (s[2] - pot_h) / 2), (r, r, (s[2] - pot_h) / 2), den), 1.0)]


_PARTS = {'box': _parts_box, 'table': _parts_table, 'desk': _parts_desk, 'chair': _parts_chair,
          'stool': _parts_stool, 'sofa': _parts_sofa, 'bed': _parts_bed, 'shelf': _parts_shelf,
          'cylinder': _parts_cylinder, 'panel': _parts_panel, 'lamp': _parts_lamp, 'plant': _parts_plant}


def _rot_z(points, yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    x, y = points[:, 0].copy(), points[:, 1].copy()
    points[:, 0] = c * x - s * y
    points[:, 1] = s * x + c * y
    return points


# ---------------------------------------------------------------------------------------------- layout

def _overlaps(lo, hi, placed, margin):
    for plo, phi in placed:
        if (lo[0] < phi[0] + margin and hi[0] > plo[0] - margin and lo[1] < phi[1] + margin
                and hi[1] > plo[1] - margin):
            return True
    return False


def _footprint(size_local, yaw):
    """Axis-aligned extents (x, y) of a footprint turned by a multiple of 90 degrees."""
    quarter = int(round(yaw / (math.pi / 2))) % 2
    return (size_local[1], size_local[0]) if quarter else (size_local[0], size_local[1])


def generate_scene(seed: int, scene_id: str | None = None, num_objects: tuple[int, int] = (5, 30),
                   point_density: float = DEFAULT_POINT_DENSITY) -> Scene:
    """A seeded random room with ``num_objects`` (inclusive range) objects; see module docstring."""
    rng = np.random.default_rng(seed)
    scene_id = scene_id if scene_id is not None else f'synth_{seed:06d}'
    width, depth, height = rng.uniform(4.0, 8.0), rng.uniform(4.0, 8.0), rng.uniform(2.5, 3.0)
    half = np.array([width / 2, depth / 2])
    n_target = int(rng.integers(num_objects[0], num_objects[1] + 1))
    # about a third of the objects are small items on supports, the rest furniture
    n_small = int(round(n_target * rng.uniform(0.25, 0.45)))
    n_floor = n_target - n_small

    objects: list[SceneObject] = []
    parts_pts, parts_rgb, parts_inst = [], [], []
    placed: list[tuple[np.ndarray, np.ndarray]] = []   # floor footprints
    tops: dict[int, list] = {}                         # support id -> footprints on its top

    def emit(obj: SceneObject, cat: Category, size_local, yaw, base):
        local = _PARTS[cat.shape](rng, size_local, point_density)
        rgb0 = np.array(obj.color_rgb, float)
        for pts, scale in local:
            pts = _rot_z(pts, yaw) + base
            col = np.clip(rgb0 * scale + rng.normal(0, 6, size=(len(pts), 3)), 0, 255)
            parts_pts.append(pts)
            parts_rgb.append(col.astype(np.uint8))
            parts_inst.append(np.full(len(pts), obj.id, np.int32))

    def add_floor_object(label):
        cat = CATEGORIES[label]
        size_local = _draw_size(rng, cat)
        for _ in range(30):
            if cat.against_wall:
                wall = int(rng.integers(4))  # 0: -y, 1: +x, 2: +y, 3: -x ; back of the object to that wall
                yaw = (wall * math.pi / 2 + math.pi) % (2 * math.pi)
                fx, fy = _footprint(size_local, yaw)
                if wall in (0, 2):
                    x = rng.uniform(-half[0] + fx / 2 + 0.05, half[0] - fx / 2 - 0.05)
                    y = (-1 if wall == 0 else 1) * (half[1] - fy / 2 - 0.02)
                else:
                    y = rng.uniform(-half[1] + fy / 2 + 0.05, half[1] - fy / 2 - 0.05)
                    x = (1 if wall == 1 else -1) * (half[0] - fx / 2 - 0.02)
            else:
                yaw = int(rng.integers(4)) * math.pi / 2
                fx, fy = _footprint(size_local, yaw)
                x = rng.uniform(-half[0] + fx / 2 + 0.1, half[0] - fx / 2 - 0.1)
                y = rng.uniform(-half[1] + fy / 2 + 0.1, half[1] - fy / 2 - 0.1)
            lo = np.array([x - fx / 2, y - fy / 2])
            hi = np.array([x + fx / 2, y + fy / 2])
            if (lo < -half).any() or (hi > half).any() or _overlaps(lo, hi, placed, 0.25):
                continue
            placed.append((lo, hi))
            color = str(rng.choice(cat.colors))
            obj = _finish(len(objects), label, color, yaw, size_local, np.array([x, y, 0.0]), None, cat)
            objects.append(obj)
            emit(obj, cat, size_local, yaw, np.array([x, y, 0.0]))
            if cat.support:
                tops[obj.id] = []
            return True
        return False

    def add_small_object(label):
        cat = CATEGORIES[label]
        supports = [o for o in objects if o.id in tops]
        if not supports:
            return False
        size_local = _draw_size(rng, cat)
        for _ in range(20):
            parent = supports[int(rng.integers(len(supports)))]
            yaw = int(rng.integers(4)) * math.pi / 2
            fx, fy = _footprint(size_local, yaw)
            plo, phi = parent.lo, parent.hi
            if fx > phi[0] - plo[0] - 0.04 or fy > phi[1] - plo[1] - 0.04:
                continue
            x = rng.uniform(plo[0] + fx / 2 + 0.02, phi[0] - fx / 2 - 0.02)
            y = rng.uniform(plo[1] + fy / 2 + 0.02, phi[1] - fy / 2 - 0.02)
            lo, hi = np.array([x - fx / 2, y - fy / 2]), np.array([x + fx / 2, y + fy / 2])
            if _overlaps(lo, hi, tops[parent.id], 0.03):
                continue
            tops[parent.id].append((lo, hi))
            color = str(rng.choice(cat.colors))
            base = np.array([x, y, parent.hi[2]])
            obj = _finish(len(objects), label, color, yaw, size_local, base, parent.id, cat)
            objects.append(obj)
            emit(obj, cat, size_local, yaw, base)
            return True
        return False

    # make sure there is at least one support surface when small objects are wanted
    support_labels = [k for k in FLOOR_LABELS if CATEGORIES[k].support]
    floor_plan = [str(rng.choice(support_labels))] if n_small else []
    floor_plan += [str(rng.choice(FLOOR_LABELS)) for _ in range(n_floor - len(floor_plan))]
    for label in floor_plan:
        add_floor_object(label)
    for _ in range(n_small):
        add_small_object(str(rng.choice(SMALL_LABELS)))
    # rooms that ran out of space still honour the minimum object count with small floor items
    tries = 0
    while len(objects) < num_objects[0] and tries < 50:
        add_floor_object(str(rng.choice(('trash_can', 'stool', 'plant', 'chair'))))
        tries += 1

    # room shell: floor and four walls (inner faces)
    shell = [_sample_box(rng, (-half[0], -half[1], -0.001), (half[0], half[1], 0.0), point_density, True)]
    shell_rgb = [FLOOR_RGB]
    for axis, sign in ((0, -1), (0, 1), (1, -1), (1, 1)):
        lo = np.array([-half[0], -half[1], 0.0])
        hi = np.array([half[0], half[1], height])
        if sign < 0:
            hi[axis] = lo[axis]
        else:
            lo[axis] = hi[axis]
        area = (hi[1 - axis] - lo[1 - axis]) * height
        n = max(int(round(area * point_density)), 1)
        p = lo + rng.random((n, 3)) * (hi - lo)
        shell.append(p)
        shell_rgb.append(WALL_RGB)
    for pts, rgb in zip(shell, shell_rgb):
        parts_pts.append(pts)
        parts_rgb.append(np.clip(np.array(rgb, float) + rng.normal(0, 4, (len(pts), 3)), 0, 255).astype(np.uint8))
        parts_inst.append(np.full(len(pts), BACKGROUND, np.int32))

    return Scene(scene_id=scene_id, points=np.concatenate(parts_pts).astype(np.float32),
                 colors=np.concatenate(parts_rgb), instance=np.concatenate(parts_inst), objects=objects,
                 room_size=np.array([width, depth, height]))


_ROUND = ('stool', 'cylinder', 'lamp', 'plant')


def _draw_size(rng, cat: Category) -> np.ndarray:
    size = rng.uniform(cat.size_lo, cat.size_hi)
    if cat.shape in _ROUND:   # round shapes have a square footprint, so the box is tight
        size[1] = size[0]
    return size


def _finish(obj_id, label, color, yaw, size_local, base, parent_id, cat) -> SceneObject:
    fx, fy = _footprint(size_local, yaw)
    height = size_local[2] + (0.45 if cat.shape == 'bed' else 0.0)   # the headboard rises above the mattress
    size = np.array([fx, fy, height])
    center = np.array([base[0], base[1], base[2] + height / 2])
    return SceneObject(id=obj_id, label=label, color_name=color, color_rgb=COLORS[color], center=center,
                       size=size, yaw=float(yaw), parent_id=parent_id)
