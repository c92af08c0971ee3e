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

With object identifiers (``object_refs``; the model's ``object_ref_token_ids``) a box may refer to a proposal
instead of spelling its numbers: ``<box>desk_4 <obj_7></box>``. Training targets are rewritten that way where a
proposal matches the true box (:meth:`R3DProcessor.refer_boxes`, IoU >= ``REFER_MIN_IOU``), and decoding
writes the proposal's box back (:meth:`R3DProcessor.resolve_object_refs`), so every consumer of a completion
still sees ``<box>name x y z dx dy dz</box>``.
"""

from __future__ import annotations

import json
from pathlib import Path
import re

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature

from r3d_ros.model.tokenizer import ASSISTANT, DEPTH, OBJECT_REF, SCENE, SYSTEM, USER, VIEW
from r3d_ros.output_format import BOX_PATTERN, SYSTEM_PROMPT

CONFIG_NAME = 'r3d_processor.json'
#: A target box is written as a proposal reference when some proposal overlaps it at least this much.
REFER_MIN_IOU = 0.25
_REF_TOKEN = re.compile(re.escape(OBJECT_REF).replace(r'\{\}', r'(\d+)'))


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
                 object_points: int = 32, object_refs: bool = False):
        self.tokenizer = tokenizer
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
                   object_refs=config.use_object_refs, **kwargs)

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {'num_points': self.num_points, 'num_scene_tokens': self.num_scene_tokens,
                'num_view_tokens': self.num_view_tokens, 'image_size': self.image_size, 'max_depth': self.max_depth,
                'point_features': self.point_features, 'image_mean': list(self.image_mean),
                'image_std': list(self.image_std), 'num_object_tokens': self.num_object_tokens,
                'object_points': self.object_points, 'object_refs': self.object_refs}

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        (path / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> R3DProcessor:
        path = Path(path)
        return cls(AutoTokenizer.from_pretrained(str(path)), **json.loads((path / CONFIG_NAME).read_text()))

    # -- prompts -----------------------------------------------------------------------------
    def prompt(self, question: str, num_views: int = 0) -> str:
        """The prompt text with one placeholder token per scene / view / depth embedding."""
        views = (VIEW * self.num_view_tokens + DEPTH) * num_views
        user = f'{SCENE * (self.num_scene_tokens + self.num_object_tokens)}{views}{question.strip()}'
        if getattr(self.tokenizer, 'chat_template', None):
            messages = [{'role': 'system', 'content': SYSTEM_PROMPT}, {'role': 'user', 'content': user}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f'{SYSTEM}{SYSTEM_PROMPT}{USER}{user}{ASSISTANT}'  # a tokenizer saved without a template

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
                 padding_side: str | None = None) -> BatchFeature:
        """Batch for the model. With ``targets``: labels on the completion tokens only (-100 elsewhere)."""
        n = len(questions)
        view_counts = [len(v or []) for v in views] if views is not None else [0] * n
        prompts = [self.prompt(q, k) for q, k in zip(questions, view_counts)]
        tok = self.tokenizer
        side = padding_side or ('right' if targets is not None else 'left')
        clouds = self.cloud_tensor(point_clouds)
        if targets is not None and self.object_refs:
            targets = [self.refer_boxes(t, c) for t, c in zip(targets, clouds)]
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
    def object_boxes(self, cloud) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Slot -> (centre, size) of each non-empty object slot of a :meth:`prepare_cloud` output: the
        axis-aligned box of the proposal's rows (farthest-point sampled, so its extremes are among them)."""
        if hasattr(cloud, 'detach'):
            cloud = cloud.detach().float().cpu().numpy()
        rows = np.asarray(cloud, np.float32)[self.num_points:]
        out = {}
        for k in range(self.num_object_tokens):
            part = rows[k * self.object_points:(k + 1) * self.object_points]
            if len(part) and part[0, -2] >= 0:
                lo, hi = part[:, :3].min(0), part[:, :3].max(0)
                out[k] = ((lo + hi) / 2, hi - lo)
        return out

    def refer_boxes(self, completion: str, cloud) -> str:
        """A training target with each ``<box>ref x y z dx dy dz</box>`` that a proposal of ``cloud`` matches
        (best 3D IoU >= ``REFER_MIN_IOU``) written as ``<box>ref <obj_k></box>``; other boxes are kept."""
        from r3d_ros.evaluation.metrics import box_iou_3d
        from r3d_ros.output_format import Box

        boxes = self.object_boxes(cloud)

        def refer(m: re.Match) -> str:
            nums = [float(v) for v in m['nums'].split()]
            truth = Box('t', tuple(nums[:3]), tuple(nums[3:]))
            ious = {k: box_iou_3d(truth, Box('p', tuple(c), tuple(s))) for k, (c, s) in boxes.items()}
            best = max(ious, key=ious.get, default=None)
            if best is None or ious[best] < REFER_MIN_IOU:
                return m[0]
            return f'<box>{m["ref"]} {OBJECT_REF.format(best)}</box>'
        return BOX_PATTERN.sub(refer, completion)

    def resolve_object_refs(self, text: str, cloud) -> str:
        """``<obj_k>`` -> the numbers of slot k's proposal box (``x y z dx dy dz``, metres to the centimetre); a
        reference to an empty or unknown slot is left as written (its box then does not parse)."""
        boxes = self.object_boxes(cloud)

        def resolve(m: re.Match) -> str:
            box = boxes.get(int(m[1]))
            if box is None:
                return m[0]
            return ' '.join(f'{v:.2f}' for v in (*box[0], *box[1]))
        return _REF_TOKEN.sub(resolve, text)

    def batch_decode(self, ids, skip_special_tokens: bool = False, point_clouds=None) -> list[str]:
        """Decode completions keeping the think/answer/box/plan markers (special tokens) but not pad/eos.
        With ``point_clouds`` (the batch's, row-aligned) object references are resolved to boxes."""
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=False)
        if skip_special_tokens:
            return self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        pad, eos = self.tokenizer.pad_token, self.tokenizer.eos_token
        texts = [(t.replace(pad, '') if pad else t).split(eos)[0].strip() for t in texts]
        if self.object_refs and point_clouds is not None:
            texts = [self.resolve_object_refs(t, c) for t, c in zip(texts, point_clouds)]
        return texts
