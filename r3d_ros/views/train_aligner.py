"""``r3d-train-aligner``: train the view-text aligner (``aligner.py``) on renders of synthetic scenes.

For each training scene: candidate cameras like the selector's (rings, top-down, close-ups of 0.8 m map
regions) and a close-up of every object are rendered small with the per-point instance ids; each question of
``r3d_ros.scenes.qa`` that names objects is paired with every view, labelled 1 when a named object covers at
least ``--min-pixels`` of the view. The loss is the sigmoid pair loss over all (view, question) pairs of a
scene. The embedded weights were made by

    r3d-train-aligner --out r3d_ros/assets/view_aligner            # defaults: 320 scenes (seeds 50000+), 20 epochs

Held-out scenes for the selection test use seeds below 50000, so they never overlap these.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import time

import numpy as np
import torch
import torch.nn.functional as F

from r3d_ros.scenes.qa import generate_qa
from r3d_ros.scenes.synthetic import generate_scene
from r3d_ros.views.aligner import ViewAlignerConfig, ViewTextAligner
from r3d_ros.views.cameras import Intrinsics, close_up_poses, region_centres, ring_poses, top_down_pose
from r3d_ros.views.renderer import render_points

TRAIN_SEED0 = 50_000


def named_objects(record) -> list[int]:
    """Object ids a QA record names through its boxes (refs look like ``chair_4``)."""
    ids = []
    for box in record.boxes:
        tail = str(box.get('ref', '')).rsplit('_', 1)[-1]
        if tail.isdigit():
            ids.append(int(tail))
    return ids


def object_questions(scene, seed: int) -> list[tuple[str, list[int]]]:
    """(question, named object ids) for every generated question of ``scene`` that names objects."""
    return [(r.question, ids) for r in generate_qa(scene, seed) if (ids := named_objects(r))]


def visible_objects(ids: torch.Tensor, min_pixels: int) -> list[set[int]]:
    """Per view (V,H,W instance-id render): the object ids covering at least ``min_pixels`` pixels."""
    out = []
    for view in ids.reshape(ids.shape[0], -1):
        vals, counts = torch.unique(view[view >= 0], return_counts=True)
        out.append({int(v) for v, n in zip(vals, counts) if n >= min_pixels})
    return out


def candidate_poses(scene) -> np.ndarray:
    """Candidates like the selector's (rings, top-down, region close-ups) plus a close-up of every object: those
    show each object large, the cleanest lesson of what a name looks like."""
    points = scene.points
    close = close_up_poses(points, np.concatenate([region_centres(points).reshape(-1, 3),
                                                   np.array([o.center for o in scene.objects]).reshape(-1, 3)]))
    return np.concatenate([ring_poses(points), top_down_pose(points)[None], close])


def build_examples(n_scenes: int, seed0: int, size: int, min_pixels: int, point_density: float = 250.0):
    examples = []
    intr = Intrinsics(size, size)
    for s in range(seed0, seed0 + n_scenes):
        scene = generate_scene(s, point_density=point_density)
        questions = object_questions(scene, s)
        if not questions:
            continue
        poses = candidate_poses(scene)
        r = render_points(torch.from_numpy(scene.points), torch.from_numpy(scene.colors), torch.from_numpy(poses),
                          intr, point_radius=0, ids=torch.from_numpy(scene.instance.astype(np.int64)))
        seen = visible_objects(r.ids, min_pixels)
        labels = torch.tensor([[float(any(o in vis for o in objs)) for _, objs in questions] for vis in seen])
        examples.append({'rgb': r.rgb, 'depth': r.depth, 'texts': [q for q, _ in questions], 'labels': labels})
    return examples


def train(examples, epochs: int = 20, lr: float = 3e-3, seed: int = 0, log=print) -> ViewTextAligner:
    torch.manual_seed(seed)
    model = ViewTextAligner(ViewAlignerConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(examples))
    pixels = [model.image_inputs(e['rgb'], e['depth']) for e in examples]
    for epoch in range(epochs):
        order = torch.randperm(len(examples)).tolist()
        total = 0.0
        for i in order:
            e = examples[i]
            logits = model(pixels[i], e['texts'])
            # positives are rare (a named object is in a few views): weight them up to balance the pairs
            pos = e['labels'].mean().clamp(1e-3, 1 - 1e-3)
            loss = F.binary_cross_entropy_with_logits(logits, e['labels'], pos_weight=(1 - pos) / pos)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log(f'epoch {epoch + 1}/{epochs} loss {total / len(examples):.4f}')
    return model.eval()


@torch.no_grad()
def ranking_accuracy(model: ViewTextAligner, examples) -> float:
    """Share of questions whose best-scored view shows a named object (held-out check printed by the CLI)."""
    hits = n = 0
    for e in examples:
        scores = model(model.image_inputs(e['rgb'], e['depth']), e['texts'])
        best = scores.argmax(dim=0)
        for t in range(len(e['texts'])):
            if e['labels'][:, t].any():
                hits += int(e['labels'][best[t], t] > 0)
                n += 1
    return hits / max(n, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description='Train the view-text aligner used to score candidate views.')
    ap.add_argument('--out', required=True, help='checkpoint folder (save_pretrained)')
    ap.add_argument('--scenes', type=int, default=320)
    ap.add_argument('--val-scenes', type=int, default=20)
    ap.add_argument('--seed0', type=int, default=TRAIN_SEED0)
    ap.add_argument('--epochs', type=int, default=20)
    ap.add_argument('--size', type=int, default=64, help='render size (the selector scores at this size)')
    ap.add_argument('--min-pixels', type=int, default=40, help='pixels a named object needs to count as seen')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = build_examples(args.scenes, args.seed0, args.size, args.min_pixels)
    val = build_examples(args.val_scenes, args.seed0 + args.scenes, args.size, args.min_pixels)
    print(f'rendered {len(data)} training scenes in {time.perf_counter() - t0:.1f}s', flush=True)
    model = train(data, args.epochs, log=lambda m: print(m, flush=True))
    model.save_pretrained(args.out)
    stats = {'train_scenes': len(data), 'val_scenes': len(val), 'epochs': args.epochs,
             'val_top1_view_shows_named_object': round(ranking_accuracy(model, val), 4),
             'val_random_view_shows_named_object': round(float(np.mean(
                 [e['labels'][:, t].mean() for e in val for t in range(len(e['texts']))])), 4),
             'seconds': round(time.perf_counter() - t0, 1)}
    (Path(args.out) / 'training_stats.json').write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
