"""Binding probe: at each ``<obj_k>`` of the teacher-forced target, which object slot does the model pick?

An object-identifier model (``object_refs``) finds an object in two steps: the point encoder's class head names
what each proposal slot holds (its class word is added to the slot), and the language model, at the token after
``<box>ref``, attends from the question's noun to the slot holding that class and copies the slot's identifier.
Greedy Acc@0.25 mixes both with the proposals' quality; this probe separates them on the dataset's own targets
(the right slot is the one ``refer_objects`` writes into the label):

* ``class_head_acc``: share of labelled slots whose predicted class is their object's class;
* ``slot_argmax_right``: the model's most likely slot at a referring token is the labelled one;
* ``slot_argmax_same_class``: ... holds an object of the labelled slot's class (the noun-to-class lookup worked);
* ``p_right`` / ``p_right_class``: the model's probability (renormalised over the slots) of the labelled slot /
  of every slot of its class; ``right_when_class_unique``: ``slot_argmax_right`` where no other slot has that class.

``r3d-train binding --data DIR --model CKPT --split val`` prints them (training/README.md, "Mirror-descent credit and
the binding probe").

The point cloud is encoded twice a batch (inside the model's forward, and once more here for the class logits, which
the forward does not return); the encoder is small beside the language model, so the probe keeps the model's own
forward rather than a copy of it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from r3d_ros.model.modeling_r3d import referring_positions
from r3d_ros.model.tokenizer import OBJECT_REF


def slot_choice_stats(slot_logits: torch.Tensor, target: torch.Tensor, slot_classes: torch.Tensor) -> dict:
    """Sums over N referring positions. ``slot_logits`` (N, K): the LM's logits of the K ``<obj_k>`` tokens;
    ``target`` (N,): the labelled slot; ``slot_classes`` (N, K): each slot's object class (-1: none)."""
    pi = torch.softmax(slot_logits.float(), -1)
    rows = torch.arange(len(target))
    pick = pi.argmax(-1)
    target_class = slot_classes[rows, target]
    same_class = slot_classes == target_class[:, None]
    unique = same_class.sum(-1) == 1
    right = pick == target
    slots = torch.arange(pi.size(-1), device=pi.device)
    p_right = float(pi[rows, target].sum())
    return {'positions': len(target),
            'slot_argmax_right': int(right.sum()),
            'slot_argmax_same_class': int((slot_classes[rows, pick] == target_class).sum()),
            'p_right': p_right,
            # the target's probability plus the rest of its class's, so that rounding never puts it below p_right
            'p_right_class': p_right + float((pi * (same_class & (slots != target[:, None]))).sum()),
            'class_unique': int(unique.sum()),
            'right_when_class_unique': int((right & unique).sum())}


def binding_probe(model, processor, records: Iterable, clouds, batch_size: int = 8) -> dict:
    """Teacher-forced slot choice and class-head accuracy of ``model`` on ``records`` (those with boxes)."""
    tok = processor.tokenizer
    slot_ids = torch.tensor([tok.convert_tokens_to_ids(OBJECT_REF.format(k))
                             for k in range(processor.num_object_tokens)])
    records = [r for r in records if r.boxes]
    sums: dict[str, float] = {}
    heads = labelled = 0
    model.eval()
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        inputs = processor(questions=[r.question for r in batch], point_clouds=[clouds[r.scene_id] for r in batch],
                           targets=[r.cot for r in batch], target_objects=[r.objects for r in batch])
        with torch.no_grad():
            logits = model(input_ids=inputs['input_ids'], attention_mask=inputs['attention_mask'],
                           point_clouds=inputs['point_clouds']).logits
            _, class_logits = model.point_encoder.encode(inputs['point_clouds'])
        classes = model.point_encoder.object_targets(inputs['point_clouds'])       # (B, K), -1 for none
        valid = classes >= 0
        labelled += int(valid.sum())
        heads += int(((class_logits.argmax(-1) == classes) & valid).sum())
        where, target = referring_positions(inputs['labels'], slot_ids)        # (row, position) of each <obj_k>
        if not len(where):
            continue
        stats = slot_choice_stats(logits[where[:, 0], where[:, 1]][:, slot_ids], target, classes[where[:, 0]])
        for k, v in stats.items():
            sums[k] = sums.get(k, 0) + v
    n = sums.get('positions', 0)
    out = {'records': len(records), 'positions': n, 'class_head_acc': heads / labelled if labelled else float('nan')}
    for k in ('slot_argmax_right', 'slot_argmax_same_class', 'p_right', 'p_right_class'):
        out[k] = sums[k] / n if n else float('nan')
    out['class_unique_share'] = sums['class_unique'] / n if n else float('nan')
    out['right_when_class_unique'] = (sums['right_when_class_unique'] / sums['class_unique']
                                      if n and sums['class_unique'] else float('nan'))
    return out


def proposal_ceiling(processor, records: Iterable, clouds) -> dict:
    """What a perfect language model could reach on these proposals (no model weights involved):

    * ``box_covered``: share of asked objects (``rec.boxes``) that some proposal covers at 3D IoU >= 0.25, the
      ceiling of Acc@0.25 for a model that can only point at proposals;
    * ``key_fact_oracle``: key-fact accuracy per task when every reference names the best-matching proposal
      (``refer_objects``) and the class head is right (each proposal's ground-truth class), grounded and
      published by the reasoner's rule (``pipeline.published_status``). What is lost here is lost to
      segmentation (objects merged, split or missed) and to colour naming, not to the model."""
    import numpy as np

    from r3d_ros.evaluation.key_facts import key_fact_correct
    from r3d_ros.evaluation.metrics import box_iou_3d
    from r3d_ros.output_format import Box
    from r3d_ros.pipeline import grounded_answer

    covered, keys = [], {}
    n_classes = len(processor.class_names)
    for rec in records:
        cloud = processor.prepare_cloud(clouds[rec.scene_id])
        boxes = processor.object_boxes(cloud)
        for b in rec.boxes:
            truth = Box('t', tuple(b['center']), tuple(b['size']))
            covered.append(max((box_iou_3d(truth, Box('p', tuple(c), tuple(s))) for c, s in boxes.values()),
                               default=0.0) >= 0.25)
        classes = np.asarray(cloud)[processor.num_points::processor.object_points, -1].astype(int)
        probs = np.full((processor.num_object_tokens, n_classes), 1.0 / n_classes)
        probs[classes >= 0] = np.eye(n_classes)[classes[classes >= 0]]
        points = np.asarray(clouds[rec.scene_id])[:, :3]
        grounded = processor.ground(processor.refer_objects(rec.cot, cloud, rec.objects), cloud, probs, points,
                                    rec.question)
        answer = grounded_answer(grounded, processor.object_records(cloud, probs), points)
        ok = key_fact_correct(rec.key_fact, answer, rec.objects, rec.plan)
        if ok is not None:
            for task in (rec.task, 'all'):
                keys.setdefault(task, []).append(float(ok))
    return {'box_covered': float(np.mean(covered)) if covered else float('nan'), 'n_boxes': len(covered),
            'key_fact_oracle': {t: {'n': len(v), 'KeyFact': float(np.mean(v))} for t, v in sorted(keys.items())}}
