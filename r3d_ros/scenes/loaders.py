"""Loaders for real data in its released formats, mapped onto :class:`QARecord` and :class:`Scene`.

* Scene-30K (3D-R1's CoT data): JSON lines (or one JSON array) of objects with ``scene_id``, ``question``
  and ``cot`` holding the ``<think>…</think><answer>…</answer>`` text; optional ``answer`` / ``task`` fields
  are kept. The think/answer parts, boxes and plans are parsed with :mod:`r3d_ros.output_format`.
* ScanNet-style scene clouds: PLY with per-vertex colours (``*_vh_clean_2.ply``), read with open3d;
  or N x 6 arrays (``.npy``: x y z r g b, colours in 0-255 or 0-1), with an optional 7th column holding
  instance ids (as in the 3D-LLM / LL3DA preprocessed ``*_aligned_vert.npy`` files, which have more columns;
  only the first six, and a seventh when ``instance_column`` says so, are used).
"""

from __future__ import annotations

import json
from pathlib import Path
import re

import numpy as np

from r3d_ros.output_format import parse_completion
from r3d_ros.scenes.types import BACKGROUND, QARecord, Scene


def record_from_scene30k(item: dict) -> QARecord:
    """One Scene-30K item -> QARecord (``answer`` is the answer text without box/plan markup)."""
    if 'scene_id' not in item or 'question' not in item:
        raise ValueError(f'not a Scene-30K item (needs scene_id and question): {sorted(item)}')
    cot = str(item.get('cot') or item.get('response') or '')
    parsed = parse_completion(cot)
    answer = parsed.answer_text if parsed.answer_text else str(item.get('answer', ''))
    return QARecord(scene_id=str(item['scene_id']), question=str(item['question']), cot=cot, answer=answer,
                    task=str(item.get('task', item.get('type', ''))), think=parsed.think,
                    boxes=[{'ref': b.ref, 'center': list(b.center), 'size': list(b.size)} for b in parsed.boxes],
                    plan=[{'action': s.action, 'target': s.target, 'position': list(s.position)}
                          for s in parsed.plan],
                    short_answer=str(item.get('answer', '')) if 'answer' in item else '')


def load_scene30k(path: str | Path) -> list[QARecord]:
    """Read Scene-30K records from a JSON-lines file or a JSON array file."""
    text = Path(path).read_text(encoding='utf-8')
    stripped = text.lstrip()
    if stripped.startswith('['):
        items = json.loads(stripped)
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [record_from_scene30k(it) for it in items]


def _colors_u8(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.size and rgb.max() <= 1.0:     # open3d and some preprocessors store 0-1 floats
        rgb = rgb * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def load_ply(path: str | Path, scene_id: str | None = None) -> Scene:
    """A coloured PLY point cloud or mesh (its vertices) as a Scene without object annotations."""
    import open3d as o3d

    pcd = o3d.io.read_point_cloud(str(path))
    xyz = np.asarray(pcd.points, dtype=np.float32)
    if len(xyz) == 0:
        raise ValueError(f'{path}: no vertices')
    rgb = _colors_u8(np.asarray(pcd.colors)) if pcd.has_colors() else np.full((len(xyz), 3), 128, np.uint8)
    return _scene(scene_id or _scene_id(path), xyz, rgb, None)


def load_npy(path: str | Path, scene_id: str | None = None, instance_column: int | None = None) -> Scene:
    """An N x 6 (or wider) array file as a Scene; ``instance_column`` picks a column of instance ids."""
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != 2 or arr.shape[1] < 6:
        raise ValueError(f'{path}: expected an N x 6 array, got shape {arr.shape}')
    inst = None if instance_column is None else arr[:, instance_column].astype(np.int32)
    return _scene(scene_id or _scene_id(path), arr[:, :3].astype(np.float32), _colors_u8(arr[:, 3:6]), inst)


def load_scene_cloud(path: str | Path, scene_id: str | None = None, **kwargs) -> Scene:
    """Dispatch on the file suffix: ``.ply`` or ``.npy``."""
    suffix = Path(path).suffix.lower()
    if suffix == '.ply':
        return load_ply(path, scene_id)
    if suffix == '.npy':
        return load_npy(path, scene_id, **kwargs)
    raise ValueError(f'{path}: unsupported scene cloud format {suffix!r} (want .ply or .npy)')


def _scene_id(path) -> str:
    """ScanNet's ``sceneXXXX_YY`` when the file name has one (``scene0000_00_vh_clean_2.ply``), else the stem."""
    m = re.search(r'scene\d{4}_\d{2}', Path(path).name)
    return m.group(0) if m else Path(path).name.split('.')[0]


def _scene(scene_id, xyz, rgb, inst) -> Scene:
    finite = np.isfinite(xyz).all(axis=1)
    inst = np.full(len(xyz), BACKGROUND, np.int32) if inst is None else inst
    xyz, rgb, inst = xyz[finite], rgb[finite], inst[finite]
    lo, hi = (xyz.min(axis=0), xyz.max(axis=0)) if len(xyz) else (np.zeros(3), np.zeros(3))
    return Scene(scene_id=scene_id, points=xyz, colors=rgb, instance=inst, objects=[], room_size=hi - lo)
