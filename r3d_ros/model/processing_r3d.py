"""R3DProcessor: tokenizer + scene preprocessing + prompt template, shared by inference and training.

Prompt: the tokenizer's chat template over [system: SYSTEM_PROMPT, user: placeholders + question] with the
generation prompt; for the tiny tokenizer that is::

    <|system|>{SYSTEM_PROMPT}<|user|>{<scene> x S}{(<view> x T <depth>) per view}{question}<|assistant|>

(a Qwen tokenizer gives its ``<|im_start|>`` form). A training target is the completion (``output_format``
grammar) followed by the tokenizer's EOS token. Point clouds
are (N, 6) arrays: xyz in map-frame metres (kept absolute: answers are boxes in metres) and rgb (0..1,
or 0..255 which is rescaled), sampled to ``num_points`` deterministically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature

from r3d_ros.model.tokenizer import ASSISTANT, DEPTH, SCENE, SYSTEM, USER, VIEW
from r3d_ros.output_format import SYSTEM_PROMPT

CONFIG_NAME = 'r3d_processor.json'


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


class R3DProcessor:
    """Turns questions, map clouds, rendered views/depths and (for training) target completions into model
    inputs. ``point_features`` must match the model's ``point_feature_dim`` (3: rgb; 6: rgb + normals).
    ``image_mean``/``image_std`` are the view tower's normalisation (SigLIP/SigLIP-2: 0.5/0.5; for CLIP pass
    its own). Depth maps are divided by ``max_depth`` (metres)."""

    def __init__(self, tokenizer, num_points: int = 2048, num_scene_tokens: int = 32, num_view_tokens: int = 4,
                 image_size: int = 64, max_depth: float = 10.0, point_features: int = 3,
                 image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)):
        self.tokenizer = tokenizer
        self.num_points, self.num_scene_tokens = num_points, num_scene_tokens
        self.num_view_tokens, self.image_size, self.max_depth = num_view_tokens, image_size, max_depth
        self.point_features = point_features
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {'num_points': self.num_points, 'num_scene_tokens': self.num_scene_tokens,
                'num_view_tokens': self.num_view_tokens, 'image_size': self.image_size, 'max_depth': self.max_depth,
                'point_features': self.point_features, 'image_mean': list(self.image_mean),
                'image_std': list(self.image_std)}

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
        user = f'{SCENE * self.num_scene_tokens}{views}{question.strip()}'
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
        clouds = [sample_points(c, self.num_points, features=self.point_features) for c in point_clouds]
        data = {'input_ids': input_ids, 'attention_mask': attention, 'point_clouds': torch.from_numpy(np.stack(clouds))}
        if targets is not None:
            data['labels'] = labels
        if max(view_counts) > 0:
            data['view_pixel_values'], data['view_depths'], data['view_mask'] = self._images(views, depths,
                                                                                           max(view_counts))
        return BatchFeature(data, tensor_type=return_tensors)

    def batch_decode(self, ids, skip_special_tokens: bool = False) -> list[str]:
        """Decode completions keeping the think/answer/box/plan markers (special tokens) but not pad/eos."""
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=False)
        if skip_special_tokens:
            return self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        pad, eos = self.tokenizer.pad_token, self.tokenizer.eos_token
        return [(t.replace(pad, '') if pad else t).split(eos)[0].strip() for t in texts]
