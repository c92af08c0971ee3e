"""R3DProcessor: tokenizer + scene preprocessing + prompt template, shared by inference and training.

Prompt: the tokenizer's chat template over [system: SYSTEM_PROMPT, user: placeholders + question] with the
generation prompt; for the tiny tokenizer that is::

    <|system|>{SYSTEM_PROMPT}<|user|>{<scene> x S}{(<view> x T <depth>) per view}{question}<|assistant|>

(a Qwen tokenizer gives its ``<|im_start|>`` form). A training target is the completion (``output_format``
grammar) followed by the tokenizer's EOS token. Point clouds
are (N, 6) arrays: xyz in map-frame metres (kept absolute: answers are boxes in metres) and rgb (0..1,
or 0..255 which is rescaled), sampled to ``num_points`` deterministically.

With object tokens (``num_object_tokens`` K > 0) the cloud is also split into object proposals
(``r3d_ros.mapping.segmentation``) and K x ``object_points`` rows follow the scene rows: each proposal's
points (farthest-point sampled, so its extremes and thus its box are kept), and one more column holding the
proposal index (-1 for scene rows and empty slots), then the class index of the labelled object the proposal
covers (-1: unknown; only training scenes know it). A cloud that already has these two columns
(``3 + point_features + 2``: training scenes, labelled once when loaded) is not segmented again.

With object identifiers (``object_refs``; the model's ``object_ref_token_ids``) a completion refers to proposals
instead of writing numbers: ``The desk <obj_7> is [color <obj_7>]. <box>desk <obj_7></box>``. Training targets
name ground-truth objects (``<desk_4>``) and are rewritten to the slot whose proposal matches the object's box
(:meth:`R3DProcessor.refer_objects`, IoU >= ``REFER_MIN_IOU``); a decoded completion is filled in from the
object records of the slots (:meth:`R3DProcessor.ground`, ``r3d_ros.grounding``), so every consumer sees the
published grammar, ``<box>obj_7 x y z dx dy dz</box>``, with every fact read off the map.
"""

from __future__ import annotations

import json
from pathlib import Path
import re

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature

from r3d_ros.model.tokenizer import ASSISTANT, DEPTH, OBJECT_REF, SCENE, SYSTEM, USER, VIEW
from r3d_ros.output_format import SYSTEM_PROMPT

CONFIG_NAME = 'r3d_processor.json'
#: A target box is written as a proposal reference when some proposal overlaps it at least this much.
REFER_MIN_IOU = 0.25


def sample_points(cloud: np.ndarray, n: int, seed: int = 0, features: int = 3) -> np.ndarray:
    """Exactly ``n`` rows of ``cloud`` with ``3 + features`` columns: a seeded subsample, or repeats when the
    cloud is smaller. Columns: xyz (metres, untouched), rgb (0..1; 0..255 is rescaled), then e.g. normals.
    Missing feature columns are filled (grey colour, zero normals)."""
    cloud = np.asarray(cloud, np.float32)
    if cloud.ndim != 2 or cloud.shape[1] < 3 or len(cloud) == 0:
        raise ValueError(f'point cloud must be a non-empty (N, 3+F) array, got {cloud.shape}')
    if len(cloud) >= n:
        idx = np.sort(np.random.default_rng(seed).choice(len(cloud), n, replace=False))
    else:
        idx = np.resize(np.arange(len(cloud)), n)
    out = np.zeros((n, 3 + features), np.float32)
    cols = min(cloud.shape[1], 3 + features)
    out[:, :cols] = cloud[idx, :cols]
    if cols < 6 and features >= 3:
        out[:, cols:6] = 0.5
    rgb = out[:, 3:6]
    if rgb.size and rgb.max() > 1.5:  # 0..255 colours
        out[:, 3:6] = rgb / 255.0
    return out


def _farthest_rows(xyz: np.ndarray, n: int) -> np.ndarray:
    """``n`` row indices by farthest-point sampling from row 0 (all rows, repeated, when there are fewer)."""
    if len(xyz) <= n:
        return np.resize(np.arange(len(xyz)), n)
    idx = np.zeros(n, np.int64)
    dist = np.full(len(xyz), np.inf)
    for i in range(1, n):
        dist = np.minimum(dist, ((xyz - xyz[idx[i - 1]]) ** 2).sum(1))
        idx[i] = int(dist.argmax())
    return idx


def object_rows(cloud: np.ndarray, labels: np.ndarray, num_objects: int, points_per_object: int,
                classes: np.ndarray | None = None) -> np.ndarray:
    """(K * M, C + 2) rows: M points of each of the K largest proposals (labels 0..K-1), the proposal index,
    then the proposal's class index from ``classes`` (per point, the same over a proposal; -1 when absent)."""
    out = np.zeros((num_objects * points_per_object, cloud.shape[1] + 2), np.float32)
    out[:, -2:] = -1
    for k in range(min(num_objects, int(labels.max(initial=-1)) + 1)):
        rows = np.flatnonzero(labels == k)
        if not len(rows):
            continue  # a proposal the subsampling emptied: its slot stays empty
        pick = rows[_farthest_rows(cloud[rows, :3], points_per_object)]
        sl = slice(k * points_per_object, (k + 1) * points_per_object)
        out[sl, :-2], out[sl, -2] = cloud[pick], k
        if classes is not None:
            out[sl, -1] = classes[rows[0]]
    return out


class R3DProcessor:
    """Turns questions, map clouds, rendered views/depths and (for training) target completions into model
    inputs. ``point_features`` must match the model's ``point_feature_dim`` (3: rgb; 6: rgb + normals).
    ``image_mean``/``image_std`` are the view tower's normalisation (SigLIP/SigLIP-2: 0.5/0.5; for CLIP pass
    its own). Depth maps are divided by ``max_depth`` (metres)."""

    def __init__(self, tokenizer, num_points: int = 2048, num_scene_tokens: int = 32, num_view_tokens: int = 4,
                 image_size: int = 64, max_depth: float = 10.0, point_features: int = 3,
                 image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 image_std: tuple[float, float, float] = (0.5, 0.5, 0.5), num_object_tokens: int = 0,
                 object_points: int = 32, object_refs: bool = False, class_names: tuple[str, ...] = (),
                 answer_shapes: dict | None = None):
        self.tokenizer = tokenizer
        self.class_names = tuple(class_names)
        # the sentences the model was trained to write, per section (r3d_ros.answer_shapes; {} = free text)
        self.answer_shapes = {k: list(v) for k, v in (answer_shapes or {}).items()}
        self._shapes = (None, None)   # (the answer_shapes dict it was built from, AnswerShapes)
        self.num_points, self.num_scene_tokens = num_points, num_scene_tokens
        self.num_view_tokens, self.image_size, self.max_depth = num_view_tokens, image_size, max_depth
        self.point_features = point_features
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.num_object_tokens, self.object_points = num_object_tokens, object_points
        self.object_refs = bool(object_refs and num_object_tokens)

    @classmethod
    def for_config(cls, tokenizer, config, **kwargs) -> R3DProcessor:
        """The processor that matches an :class:`R3DConfig` (token counts, points, features)."""
        return cls(tokenizer, num_points=config.num_points, num_scene_tokens=config.num_scene_tokens,
                   num_view_tokens=config.num_view_tokens, point_features=config.point_feature_dim,
                   num_object_tokens=config.num_object_tokens, object_points=config.object_points,
                   object_refs=config.use_object_refs,
                   class_names=tuple(getattr(config, 'object_class_names', None) or ()), **kwargs)

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {'num_points': self.num_points, 'num_scene_tokens': self.num_scene_tokens,
                'num_view_tokens': self.num_view_tokens, 'image_size': self.image_size, 'max_depth': self.max_depth,
                'point_features': self.point_features, 'image_mean': list(self.image_mean),
                'image_std': list(self.image_std), 'num_object_tokens': self.num_object_tokens,
                'object_points': self.object_points, 'object_refs': self.object_refs,
                'class_names': list(self.class_names), 'answer_shapes': self.answer_shapes}

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        (path / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> R3DProcessor:
        path = Path(path)
        kwargs = json.loads((path / CONFIG_NAME).read_text())
        if 'class_names' not in kwargs and (path / 'config.json').exists():  # saved before records had classes
            kwargs['class_names'] = json.loads((path / 'config.json').read_text()).get('object_class_names') or ()
        return cls(AutoTokenizer.from_pretrained(str(path)), **kwargs)

    # -- prompts -----------------------------------------------------------------------------
    def prompt(self, question: str, num_views: int = 0) -> str:
        """The prompt text with one placeholder token per scene / view / depth embedding."""
        views = (VIEW * self.num_view_tokens + DEPTH) * num_views
        user = f'{SCENE * (self.num_scene_tokens + self.num_object_tokens)}{views}{question.strip()}'
        if getattr(self.tokenizer, 'chat_template', None):
            messages = [{'role': 'system', 'content': SYSTEM_PROMPT}, {'role': 'user', 'content': user}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f'{SYSTEM}{SYSTEM_PROMPT}{USER}{user}{ASSISTANT}'  # a tokenizer saved without a template

    @staticmethod
    def question_of(prompt: str) -> str:
        """The question inside a :meth:`prompt` text: after the last placeholder, before the next role marker."""
        rest = prompt
        for mark in (SCENE, VIEW, DEPTH):
            rest = rest.rsplit(mark, 1)[-1] if mark in rest else rest
        return re.split(r'<\|[a-z_]+\|>', rest, maxsplit=1)[0].strip()

    def _images(self, views, depths, n_views):
        b = len(views)
        size = self.image_size
        pixels = torch.zeros(b, n_views, 3, size, size)
        depth = torch.zeros(b, n_views, 1, size, size)
        mask = torch.zeros(b, n_views, dtype=torch.long)
        mean, std = torch.tensor(self.image_mean)[:, None, None], torch.tensor(self.image_std)[:, None, None]
        for i, sample in enumerate(views):
            for j, img in enumerate(sample or []):
                t = torch.as_tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
                pixels[i, j] = (torch.nn.functional.interpolate(t, size=(size, size), mode='bilinear',
                                                                 align_corners=False)[0] - mean) / std
                if depths is not None and depths[i] is not None:
                    d = torch.as_tensor(np.asarray(depths[i][j]), dtype=torch.float32)[None, None] / self.max_depth
                    depth[i, j] = torch.nn.functional.interpolate(d, size=(size, size), mode='nearest')[0]
                mask[i, j] = 1
        return pixels, depth, mask

    def __call__(self, questions, point_clouds, views=None, depths=None, targets=None, return_tensors='pt',
                 padding_side: str | None = None, target_objects=None) -> BatchFeature:
        """Batch for the model. With ``targets``: labels on the completion tokens only (-100 elsewhere); with
        ``target_objects`` (per target, the objects its references name) the references become slots."""
        n = len(questions)
        view_counts = [len(v or []) for v in views] if views is not None else [0] * n
        prompts = [self.prompt(q, k) for q, k in zip(questions, view_counts)]
        tok = self.tokenizer
        side = padding_side or ('right' if targets is not None else 'left')
        clouds = self.cloud_tensor(point_clouds)
        if targets is not None and self.object_refs and target_objects is not None:
            targets = [self.refer_objects(t, c, o) for t, c, o in zip(targets, clouds, target_objects)]
        rows, label_rows = [], []
        for i, p in enumerate(prompts):
            ids = tok(p, add_special_tokens=False)['input_ids']
            labels = [-100] * len(ids)
            if targets is not None:
                tgt = tok(targets[i] + tok.eos_token, add_special_tokens=False)['input_ids']
                ids, labels = ids + tgt, labels + tgt
            rows.append(ids)
            label_rows.append(labels)
        width = max(len(r) for r in rows)
        input_ids = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        for i, (ids, lab) in enumerate(zip(rows, label_rows)):
            sl = slice(0, len(ids)) if side == 'right' else slice(width - len(ids), width)
            input_ids[i, sl] = torch.tensor(ids)
            attention[i, sl] = 1
            labels[i, sl] = torch.tensor(lab)
        data = {'input_ids': input_ids, 'attention_mask': attention, 'point_clouds': clouds}
        if targets is not None:
            data['labels'] = labels
        if max(view_counts) > 0:
            data['view_pixel_values'], data['view_depths'], data['view_mask'] = self._images(views, depths,
                                                                                           max(view_counts))
        return BatchFeature(data, tensor_type=return_tensors)

    def prepare_cloud(self, cloud: np.ndarray) -> np.ndarray:
        """One cloud as the model reads it: ``num_points`` scene rows (+ the object rows and label column)."""
        if not self.num_object_tokens:
            return sample_points(cloud, self.num_points, features=self.point_features)
        from r3d_ros.mapping.segmentation import segment_objects

        cloud = np.asarray(cloud, np.float32)
        width = 3 + self.point_features
        labels = classes = None
        if cloud.ndim == 2 and cloud.shape[1] == width + 2:
            cloud, labels, classes = cloud[:, :width], cloud[:, width].astype(np.int64), cloud[:, width + 1]
        feats = sample_points(cloud, max(len(cloud), 1), features=self.point_features)  # all rows, rgb scaled
        if labels is None:
            labels = segment_objects(feats)
        scene = sample_points(feats, self.num_points, features=self.point_features)
        scene = np.concatenate([scene, np.full((len(scene), 2), -1, np.float32)], axis=1)
        rows = object_rows(feats, labels, self.num_object_tokens, self.object_points, classes)
        return np.concatenate([scene, rows])

    def cloud_tensor(self, point_clouds) -> torch.Tensor:
        """(B, rows, columns) float32 tensor of :meth:`prepare_cloud` outputs."""
        return torch.from_numpy(np.stack([self.prepare_cloud(c) for c in point_clouds]))

    # -- object identifiers ------------------------------------------------------------------
    def object_slots(self, cloud) -> dict[int, np.ndarray]:
        """Slot -> its rows (``object_points`` x (3 + F)) for each non-empty object slot of a :meth:`prepare_cloud`
        output (farthest-point sampled, so the proposal's extremes and thus its box are among them)."""
        if hasattr(cloud, 'detach'):
            cloud = cloud.detach().float().cpu().numpy()
        rows = np.asarray(cloud, np.float32)[self.num_points:]
        out = {}
        for k in range(self.num_object_tokens):
            part = rows[k * self.object_points:(k + 1) * self.object_points]
            if len(part) and part[0, -2] >= 0:
                out[k] = part[:, :-2]
        return out

    def object_boxes(self, cloud) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Slot -> (centre, size) of each non-empty object slot: the axis-aligned box of its rows."""
        out = {}
        for k, part in self.object_slots(cloud).items():
            lo, hi = part[:, :3].min(0), part[:, :3].max(0)
            out[k] = ((lo + hi) / 2, hi - lo)
        return out

    def object_records(self, cloud, class_probs=None):
        """The map's object records (``r3d_ros.scene_objects``) from the slots the model read and its class head's
        probabilities ((K, C), the model's ``object_class_probs``; None: class 'object')."""
        from r3d_ros.scene_objects import records_from_slots

        if hasattr(class_probs, 'detach'):
            class_probs = class_probs.detach().float().cpu().numpy()
        return records_from_slots(self.object_slots(cloud), class_probs, self.class_names)

    def grammar(self, records, questions=None, shapes: bool = True):
        """The logits processor that holds decoding to the grounded grammar, for one list of object records (and
        the question) per batch row (``r3d_ros.grammar_decoding``); ``shapes``: and to the model's answer shapes
        when it has them."""
        from r3d_ros.grammar_decoding import GroundedGrammar

        refs = [self.tokenizer.convert_tokens_to_ids(OBJECT_REF.format(k)) for k in range(self.num_object_tokens)]
        return GroundedGrammar(self.tokenizer, refs, records, self.class_names, questions=questions,
                               shapes=self.shapes if shapes else None)

    @property
    def shapes(self):
        """``answer_shapes`` as matchers (``r3d_ros.answer_shapes.AnswerShapes``), built once per shapes dict: the
        matchers cache their token masks across requests; assigning ``answer_shapes`` rebuilds them."""
        from r3d_ros.answer_shapes import AnswerShapes

        if self._shapes[0] is not self.answer_shapes:
            self._shapes = (self.answer_shapes, AnswerShapes(self.answer_shapes, self.class_names))
        return self._shapes[1]

    def ground(self, completion: str, cloud, class_probs=None, map_points=None, question: str | None = None):
        """The completion with its references, facts, boxes and plan steps filled in from the object records
        (``r3d_ros.grounding.ground``); ``map_points`` (N, 3+) let plan steps check free space; ``question``
        lets class arguments be the asked class."""
        from r3d_ros import grounding

        scene = grounding.Scene.of(self.object_records(cloud, class_probs), map_points, classes=self.class_names)
        return grounding.ground(completion, scene, question)

    def refer_objects(self, completion: str, cloud, objects: list[dict]) -> str:
        """A training target with each ground-truth reference ``<ref>`` of ``objects`` ({'ref', 'center', 'size'})
        written as the proposal slot that matches its box best (3D IoU >= ``REFER_MIN_IOU``, else the best one
        that overlaps it at all); a reference no proposal overlaps is left as written."""
        from r3d_ros.evaluation.metrics import box_iou_3d
        from r3d_ros.output_format import Box

        boxes = self.object_boxes(cloud)
        for obj in objects:
            truth = Box('t', tuple(obj['center']), tuple(obj['size']))
            ious = {k: box_iou_3d(truth, Box('p', tuple(c), tuple(s))) for k, (c, s) in boxes.items()}
            best = max(ious, key=ious.get, default=None)
            if best is not None and ious[best] > 0:
                completion = completion.replace(f'<{obj["ref"]}>', OBJECT_REF.format(best))
        return completion

    def batch_decode(self, ids, skip_special_tokens: bool = False) -> list[str]:
        """Decode completions keeping the think/answer/box/plan markers and ``<obj_k>`` references (special
        tokens) but not pad/eos; :meth:`ground` fills the references in."""
        if skip_special_tokens:
            return self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=False)
        pad, eos = self.tokenizer.pad_token, self.tokenizer.eos_token
        return [(t.replace(pad, '') if pad else t).split(eos)[0].strip() for t in texts]
