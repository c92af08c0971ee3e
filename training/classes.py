"""``r3d-train classes``: fit the shape class head of an object-identifier checkpoint and make it the class source.

Why a separate stage: every object record's class, and so every count, every yes/no and which records a class word
may refer to, comes from the class head. The token head that SFT trains beside the LM learns the training scenes'
proposals by heart (99.3 % right on them, 89.8 % on the test scenes' proposals: tables read as desks, chairs as
cabinets, lamps as boxes). The shape head (``r3d_ros.model.point_encoder.ObjectShapeClassifier``) reads a
descriptor of the proposal's own rows instead, which generalises, and is cheap enough to fit here in a minute on
the frozen checkpoint, so the LM SFT trained is kept as it is.

Data: the train split's scenes as the processor lays them out (the rows a slot holds at run time), ``draws``
subsamples of each scene's points (every draw picks other rows per slot: augmentation at no labelling cost), and
``laps`` maps of each scene built as the robot builds them (``training.data.LapClouds``: a simulated depth
camera's lap fused into the voxel map). The live maps matter: their proposals are partial and noisy, and on
the test scenes' lap maps the token head names 58.7 % of them right, the shape head fitted on whole clouds only
78.6 %. Targets are the classes of the labelled objects the proposals cover (``training.data.proposal_classes``).
The epoch with the best val-slot accuracy (whole clouds and lap maps together) is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
import copy
import json
from pathlib import Path

import numpy as np
import torch


def prepared_clouds(processor, clouds, scene_ids: Sequence[str], draws: int = 1, max_points: int = 16384,
                    seed: int = 0) -> list[np.ndarray]:
    """:meth:`R3DProcessor.prepare_cloud` of each scene (``clouds``: a ``SceneClouds`` without a point limit), for
    ``draws`` seeded subsamples of ``max_points`` points; draw 0 is the one ``SceneClouds(dir, max_points)``
    takes, i.e. what evaluation sees."""
    out = []
    for sid in scene_ids:
        cloud = clouds[sid]
        for d in range(draws):
            part = cloud
            if len(cloud) > max_points:
                idx = np.random.default_rng(seed + d).choice(len(cloud), max_points, replace=False)
                part = cloud[np.sort(idx)]
            out.append(processor.prepare_cloud(part))
    return out


def slot_examples(processor, prepared: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (N, M, 3 + F), classes (N,)) of the labelled, non-empty object slots of prepared clouds."""
    rows, classes = [], []
    for c in prepared:
        slots = c[processor.num_points:].reshape(processor.num_object_tokens, processor.object_points, -1)
        keep = (slots[:, 0, -2] >= 0) & (slots[:, 0, -1] >= 0)
        rows.append(slots[keep, :, :-2])
        classes.append(slots[keep, 0, -1])
    return torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(classes)).long()


@torch.no_grad()
def class_head_accuracy(model, processor, prepared: Sequence[np.ndarray], batch_size: int = 16) -> dict:
    """Share of labelled slots the model's class head (whichever it has) names right, and the count."""
    right = total = 0
    for i in range(0, len(prepared), batch_size):
        batch = torch.from_numpy(np.stack(prepared[i:i + batch_size]))
        probs = model.object_class_probs(batch)
        targets = model.point_encoder.object_targets(batch)
        valid = (targets >= 0) & (batch[:, processor.num_points::processor.object_points, -2] >= 0)
        right += int((probs.argmax(-1) == targets)[valid].sum())
        total += int(valid.sum())
    return {'accuracy': round(100.0 * right / max(total, 1), 2), 'slots': total}


def fit_shape_head(model, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   epochs: int = 300, lr: float = 3e-3, batch_size: int = 256, seed: int = 0) -> dict:
    """Give ``model`` a fresh shape head fitted on ``train`` slots (the epoch best on ``val`` kept), drop its token
    head and switch its config to ``object_class_head: shape``; returns the fit's figures."""
    from r3d_ros.model.point_encoder import ObjectShapeClassifier

    torch.manual_seed(seed)
    enc = model.point_encoder
    head = ObjectShapeClassifier(len(model.config.object_class_token_ids))
    # descriptors are fixed per slot: compute them once, train only the MLP on top
    x_train, x_val = (_descriptors(r).to(head.net[0].weight.dtype) for r, _ in (train, val))
    y_train, y_val = train[1], val[1]
    opt = torch.optim.AdamW(head.parameters(), lr, weight_decay=1e-2)
    best, best_acc, best_epoch = None, -1.0, 0
    for epoch in range(epochs):
        head.train()
        for b in torch.randperm(len(x_train)).split(batch_size):
            loss = torch.nn.functional.cross_entropy(head.net(x_train[b]), y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            acc = float((head.net(x_val).argmax(-1) == y_val).float().mean())
        if acc > best_acc:
            best, best_acc, best_epoch = copy.deepcopy(head.state_dict()), acc, epoch + 1
    head.load_state_dict(best)
    with torch.no_grad():
        train_acc = float((head.net(x_train).argmax(-1) == y_train).float().mean())
    enc.object_shape_classifier, enc.object_classifier = head.eval(), None
    model.config.object_class_head = 'shape'
    return {'train_slots': len(y_train), 'val_slots': len(y_val), 'epoch': best_epoch,
            'train_accuracy': round(100 * train_acc, 2), 'val_accuracy': round(100 * best_acc, 2)}


def _descriptors(rows: torch.Tensor) -> torch.Tensor:
    from r3d_ros.model.point_encoder import object_shape_descriptors

    return object_shape_descriptors(rows)


def run_classes(data_dir: str | Path, model_dir: str | Path, output_dir: str | Path, draws: int = 4,
                laps: int = 1, epochs: int = 300, max_points: int = 16384) -> dict:
    """The whole stage: slots of the train / val / test scenes (whole clouds, and lap maps under ``SPLIT_laps``),
    the fit, the checkpoint with its shape head in ``output_dir``, and the class-head accuracy before and after
    (``output_dir/classes.json``)."""
    from training.data import LapClouds, SceneClouds, load_records, split_path
    from training.modeling import load_model_and_processor, save_model

    model, processor = load_model_and_processor({'path': str(model_dir)})
    if not processor.num_object_tokens or not model.config.object_class_token_ids:
        raise SystemExit(f'{model_dir}: no object slots with classes to fit a class head for')
    model.eval()
    clouds = SceneClouds(data_dir, max_points=None)
    scenes = {s: sorted({r.scene_id for r in load_records(split_path(data_dir, s))}) for s in ('train', 'val', 'test')}
    prepared = {s: prepared_clouds(processor, clouds, ids, draws if s == 'train' else 1, max_points)
                for s, ids in scenes.items()}
    if laps:
        for s, ids in scenes.items():
            prepared[f'{s}_laps'] = [processor.prepare_cloud(LapClouds(data_dir, lap)[sid])
                                     for lap in range(laps if s == 'train' else 1) for sid in ids]
    before = {s: class_head_accuracy(model, processor, p) for s, p in prepared.items()} \
        if model.point_encoder.has_class_head else None
    fit_on = {s: [c for key, p in prepared.items() if key.split('_')[0] == s for c in p] for s in ('train', 'val')}
    fit = fit_shape_head(model, slot_examples(processor, fit_on['train']), slot_examples(processor, fit_on['val']),
                         epochs=epochs)
    after = {s: class_head_accuracy(model, processor, p) for s, p in prepared.items()}
    report = {'model': str(model_dir), 'draws': draws, 'laps': laps, 'max_points': max_points, 'fit': fit,
              'before': before, 'after': after}
    out = save_model(model, processor, output_dir)
    (out / 'classes.json').write_text(json.dumps(report, indent=2))
    return report
