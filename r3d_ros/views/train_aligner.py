"""``r3d-train-aligner``: train the view-text aligner (``aligner.py``) on renders of synthetic scenes.

For each training scene: candidate cameras like the selector's (rings, top-down, close-ups of 0.8 m map
regions) and a close-up of every object are rendered small with the per-point instance ids; each question of
``r3d_ros.scenes.qa`` that names objects is paired with every view, labelled 1 when a named object covers at
least ``--min-pixels`` of the view. The loss is the sigmoid pair loss over all (view, question) pairs of a
scene. The embedded weights were made by

    r3d-train-aligner --out r3d_ros/assets/view_aligner            # defaults: 320 scenes (seeds 50000+), 20 epochs

Held-out scenes for the selection test use seeds below 50000, so they never overlap these.

``--fit-weights`` instead fits the selection weights of Eq. 7 (w_t, w_c; w_clip = 1 - w_c) for the aligner in
``--out``: per question, every candidate is scored as the selector scores it, and the differentiable top-k
(``scoring.soft_select``) is trained to take views that see the voxels of the objects the question names, with
the L2 pull of w_t toward 0.3. The paper learns them through the task loss; a visibility target is what that loss
asks of the views, at a cost this machine can pay. Written to ``selection_weights.json`` beside the aligner,
used by a selector whose config sets ``learned_weights`` (``r3d-train evaluate --views learned``):

    r3d-train-aligner --fit-weights --out r3d_ros/assets/view_aligner   # 100 scenes x 4 questions, 40 epochs
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


def selection_examples(n_scenes: int, seed0: int, selector, per_scene: int = 4) -> list[dict]:
    """Per question: its candidates' scores (``ViewSelector.score``) and the share of the named objects' voxels
    each candidate sees (``target``), on the voxels the selector counts coverage on."""
    from r3d_ros.views.scoring import voxel_ids

    out = []
    for s in range(seed0, seed0 + n_scenes):
        scene = generate_scene(s)
        step = max(1, int(np.ceil(len(scene.points) / selector.config.score_points)))   # as the selector thins
        voxel, _ = voxel_ids(scene.points[::step], selector.config.coverage_voxel)
        instance = scene.instance[::step]
        for question, ids in object_questions(scene, s)[:per_scene]:
            asked = np.unique(voxel[np.isin(instance, ids)])
            if not len(asked):
                continue
            sc = selector.score(scene.points, scene.colors, question)
            out.append({'text': sc.text, 'clip': sc.clip, 'seen': sc.seen, 'voxel_weight': sc.voxel_weight,
                        'target': sc.seen[:, torch.as_tensor(asked)].mean(1)})
    return out


def fit_weights(examples: list[dict], k: int = 6, epochs: int = 40, lr: float = 0.05, temperature: float = 0.1,
                seed: int = 0):
    """Eq. 7's weights (from the defaults) trained through the soft top-k to see the named objects."""
    from r3d_ros.views.scoring import ViewScoreWeights, soft_select

    torch.manual_seed(seed)
    weights = ViewScoreWeights()
    opt = torch.optim.Adam(weights.parameters(), lr=lr)
    for _ in range(epochs):
        for i in torch.randperm(len(examples)).tolist():
            e = examples[i]
            taken = soft_select(weights, e['text'], e['clip'], e['seen'], e['voxel_weight'], k, temperature)
            loss = -(taken @ e['target']) / k + weights.regularizer()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return weights


@torch.no_grad()
def named_objects_seen(weights, examples: list[dict], k: int = 6) -> float:
    """Mean over questions of the best share of the named objects' voxels one of the k greedy picks sees."""
    from r3d_ros.views.scoring import greedy_select

    return float(np.mean([float(e['target'][greedy_select(weights, e['text'], e['clip'], e['seen'],
                                                           e['voxel_weight'], k)[0]].max()) for e in examples]))


def fit_main(args) -> int:
    from r3d_ros.views.scoring import ViewScoreWeights
    from r3d_ros.views.selector import ViewSelector, ViewSelectorConfig

    selector = ViewSelector(ViewSelectorConfig(text_encoder=args.out))
    train_set = selection_examples(args.scenes, args.seed0, selector)
    val_set = selection_examples(args.val_scenes, args.seed0 + args.scenes, selector)
    weights = fit_weights(train_set, epochs=args.epochs)
    fixed = ViewScoreWeights()
    stats = {'w_text': round(weights.w_text.item(), 4), 'w_coverage': round(weights.w_coverage.item(), 4),
             'train_questions': len(train_set), 'val_questions': len(val_set), 'epochs': args.epochs,
             'val_named_objects_seen_fixed': round(named_objects_seen(fixed, val_set), 4),
             'val_named_objects_seen_learned': round(named_objects_seen(weights, val_set), 4)}
    (Path(args.out) / 'selection_weights.json').write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description='Train the view-text aligner used to score candidate views.')
    ap.add_argument('--out', required=True, help='checkpoint folder (save_pretrained)')
    ap.add_argument('--scenes', type=int, default=320)
    ap.add_argument('--val-scenes', type=int, default=20)
    ap.add_argument('--seed0', type=int, default=TRAIN_SEED0)
    ap.add_argument('--epochs', type=int, default=20)
    ap.add_argument('--size', type=int, default=64, help='render size (the selector scores at this size)')
    ap.add_argument('--min-pixels', type=int, default=40, help='pixels a named object needs to count as seen')
    ap.add_argument('--fit-weights', action='store_true',
                    help="fit Eq. 7's selection weights for the aligner in --out (see the module docstring; "
                         'with --scenes 100 --val-scenes 20 --epochs 40)')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.fit_weights:
        return fit_main(args)
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
