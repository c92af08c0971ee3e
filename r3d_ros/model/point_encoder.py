"""Point-cloud encoder in pure torch (no custom CUDA build): FPS + kNN grouping + local PointNet features +
transformer blocks -> ``num_scene_tokens`` tokens. The paper uses Point Transformer v3, whose sparse-conv
CUDA kernels cannot be built here; this encoder keeps its shape (hierarchical local grouping, then
attention) in plain torch so it runs on CPU and CUDA alike.

Absolute positions are kept: the centroid of every group (map frame, metres) is embedded and added to
its token, because the model must answer with boxes in map-frame metres.

Object tokens (``num_object_tokens > 0``): besides the FPS tokens, one token per object proposal
(``r3d_ros.mapping.segmentation``), laid out by the processor after the scene rows (``object_points`` rows
per proposal, last column the proposal index or -1 for an empty slot). Each holds a PointNet feature of the
proposal's points, Fourier features of its box, and an embedding of the box written the way the model
writes boxes (two decimals, digit by digit): writing a box then means attending to the right proposal and
copying its digits, instead of decoding metres from a coarse token (which a small model did not learn:
x/y of its boxes correlated with the truth at r = 0.1). Both kinds of token share the attention blocks.
With ``num_object_classes`` an object-class head sits on the object tokens (``encode`` returns its logits):
the model trains it on proposals matched to labelled objects and writes the predicted class's word into the
token (``R3DForConditionalGeneration.embed``), so "the desk" in a question can find the desk's token.

The class head comes in two kinds (``object_class_head``). ``'tokens'``: a linear layer on the object tokens after the
attention blocks, trained with the LM in SFT; on unseen scenes it overfits (99.3 % of training-scene proposals
classed right, 89.8 % of test ones). ``'shape'`` (:class:`ObjectShapeClassifier`): a small MLP on a descriptor of
the proposal's own rows (extents, height above the floor, vertical profile, colour), fitted by
``r3d-train classes``; the synthetic classes differ mostly in size and height, which such a descriptor states
outright (97-98 % on the same test proposals).

Object rows have two extra columns: the proposal index (-1: scene row or empty slot), then the class index
of the labelled object the proposal covers (-1: unknown, e.g. at run time).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def farthest_point_sample(xyz: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, 3) -> (B, k) indices; deterministic (starts at each cloud's first point)."""
    b, n, _ = xyz.shape
    idx = torch.zeros(b, k, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, n), float('inf'), device=xyz.device, dtype=xyz.dtype)
    farthest = torch.zeros(b, dtype=torch.long, device=xyz.device)
    batch = torch.arange(b, device=xyz.device)
    for i in range(k):
        idx[:, i] = farthest
        centre = xyz[batch, farthest].unsqueeze(1)
        dist = torch.minimum(dist, ((xyz - centre) ** 2).sum(-1))
        farthest = dist.argmax(-1)
    return idx


#: digits of a box value as the model writes it (``{v:.2f}``): sign, tens, units, tenths, hundredths
BOX_DIGIT_PLACES = (None, 1000, 100, 10, 1)


def box_digits(values: torch.Tensor) -> torch.Tensor:
    """(..., 6) box values in metres -> (..., 6, 5) digit ids 0..9 (sign: 0 = +, 1 = -)."""
    cents = torch.round(values * 100).long()
    mag = cents.abs().clamp(max=9999)
    places = [(cents < 0).long()] + [(mag // p) % 10 for p in BOX_DIGIT_PLACES[1:]]
    return torch.stack(places, dim=-1)


def fourier_features(x: torch.Tensor, num_frequencies: int = 8) -> torch.Tensor:
    """(..., D) -> (..., 2 D F): sin/cos at periods 25.6 m down to 0.2 m."""
    freqs = 2.0 ** torch.arange(num_frequencies, device=x.device, dtype=x.dtype) / 25.6
    angles = 2 * math.pi * x[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


#: length of :func:`object_shape_descriptors`
SHAPE_DESCRIPTOR_DIM = 19


def object_shape_descriptors(rows: torch.Tensor) -> torch.Tensor:
    """(..., M, 3 + F) rows of one proposal each (xyz metres, rgb 0..1 first in F) -> (..., 19), each entry of
    order 1: log extents (larger, smaller footprint side, height), bottom and top height, log footprint area,
    log height / length, the share of points in each quarter of the height, median colour of the brighter half
    and colour spread, shares of points at the footprint's rim and in its middle (a table top vs a cabinet)."""
    xyz, rgb = rows[..., :3].float(), rows[..., 3:6].float()
    lo, hi = xyz.min(dim=-2).values, xyz.max(dim=-2).values
    size = hi - lo
    ext = size[..., :2].sort(dim=-1, descending=True).values
    height = size[..., 2:]
    geometry = [(ext + 0.01).log(), (height + 0.01).log(), lo[..., 2:], hi[..., 2:],
                (ext.prod(-1, keepdim=True) + 1e-4).log(), (height / ext[..., :1].clamp(min=1e-3) + 0.01).log()]
    rel = (xyz[..., 2] - lo[..., None, 2]) / height.clamp(min=1e-3)
    quarters = nn.functional.one_hot((rel * 4).floor().long().clamp(0, 3), 4).float().mean(dim=-2)
    brightness = rgb.sum(-1)
    half = brightness.topk(max(rows.shape[-2] // 2, 1), dim=-1).indices
    lit = rgb.gather(-2, half[..., None].expand(*half.shape, 3))
    centre = (lo[..., None, :2] + hi[..., None, :2]) / 2
    radial = ((xyz[..., :2] - centre) / (size[..., None, :2] / 2).clamp(min=1e-3)).abs().amax(-1)
    rim = torch.stack([(radial > 0.8).float().mean(-1), (radial < 0.5).float().mean(-1)], dim=-1)
    return torch.cat(geometry + [quarters, lit.median(dim=-2).values, rgb.std(dim=-2), rim], dim=-1)


class ObjectShapeClassifier(nn.Module):
    """Object class from :func:`object_shape_descriptors` of the proposal's rows (``object_class_head: shape``)."""

    def __init__(self, num_classes: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(SHAPE_DESCRIPTOR_DIM, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, num_classes))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """(..., M, 3 + F) rows per proposal -> (..., C) logits."""
        return self.net(object_shape_descriptors(rows).to(self.net[0].weight.dtype))


class PointEncoder(nn.Module):
    def __init__(self, feature_dim: int, hidden: int, num_tokens: int, knn: int, layers: int, heads: int,
                 num_object_tokens: int = 0, object_points: int = 32, num_points: int = 0,
                 num_object_classes: int = 0, object_class_head: str = 'tokens'):
        super().__init__()
        self.num_tokens, self.knn = num_tokens, knn
        self.local = nn.Sequential(nn.Linear(3 + feature_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.position = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        block = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.num_object_tokens, self.object_points, self.num_points = num_object_tokens, object_points, num_points
        if num_object_tokens:
            self.object_local = nn.Sequential(nn.Linear(3 + feature_dim, hidden), nn.GELU(),
                                              nn.Linear(hidden, hidden))
            self.object_box = nn.Sequential(nn.Linear(6 * 16, hidden), nn.GELU(), nn.Linear(hidden, hidden))
            self.object_digits = nn.Embedding(6 * len(BOX_DIGIT_PLACES) * 10, hidden)
            self.object_type = nn.Parameter(torch.zeros(hidden))
        if object_class_head not in ('tokens', 'shape'):
            raise ValueError(f"object_class_head must be 'tokens' or 'shape', got {object_class_head!r}")
        shape = bool(num_object_classes) and object_class_head == 'shape'
        self.object_classifier = nn.Linear(hidden, num_object_classes) if num_object_classes and not shape else None
        self.object_shape_classifier = ObjectShapeClassifier(num_object_classes) if shape else None

    @property
    def has_class_head(self) -> bool:
        return self.object_classifier is not None or self.object_shape_classifier is not None

    def shape_class_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, K*M, 3+F+2) proposal rows -> (B, K, C) logits of the shape head (empty slots: garbage, masked
        wherever slots are read)."""
        grouped, _ = self._object_boxes(rows)
        return self.object_shape_classifier(grouped[..., :-2])

    def _scene_tokens(self, points: torch.Tensor) -> torch.Tensor:
        xyz, feats = points[..., :3], points[..., 3:]
        with torch.no_grad():
            centres_idx = farthest_point_sample(xyz.detach(), self.num_tokens)
        batch = torch.arange(points.shape[0], device=points.device)[:, None]
        centres = xyz[batch, centres_idx]                                   # (B, S, 3)
        k = min(self.knn, xyz.shape[1])
        nn_idx = torch.cdist(centres, xyz).topk(k, largest=False).indices    # (B, S, k)
        group_xyz = xyz[batch[:, :, None], nn_idx] - centres[:, :, None]     # local coordinates
        group_feat = feats[batch[:, :, None], nn_idx]
        local = self.local(torch.cat([group_xyz, group_feat], -1)).max(dim=2).values
        return local + self.position(centres)

    def _object_boxes(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K*M, 3+F+2) proposal rows -> (B, K, M, 3+F+2) rows, boxes (B, K, 6) from their min/max."""
        rows = rows.reshape(rows.shape[0], self.num_object_tokens, self.object_points, -1)
        lo, hi = rows[..., :3].min(dim=2).values, rows[..., :3].max(dim=2).values
        return rows, torch.cat([(lo + hi) / 2, hi - lo], dim=-1)

    def object_box_features(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, K, hidden): the boxes' Fourier features + their written digits, for the model's direct box path."""
        _, box = self._object_boxes(rows)
        slots = torch.arange(6 * len(BOX_DIGIT_PLACES), device=rows.device).reshape(6, -1) * 10
        digits = self.object_digits(box_digits(box.detach()) + slots).sum(dim=(-3, -2))
        return self.object_box(fourier_features(box)) + digits

    def _object_tokens(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K*M, 3+F+2) proposal rows -> tokens (B, K, hidden), valid (B, K)."""
        grouped, box = self._object_boxes(rows)
        valid = grouped[:, :, 0, -2] >= 0
        xyz, feats = grouped[..., :3], grouped[..., 3:-2]
        local = self.object_local(torch.cat([xyz - box[:, :, None, :3], feats], -1)).max(dim=2).values
        tokens = local + self.object_box_features(rows) + self.object_type
        return tokens * valid[..., None], valid

    def encode(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """points (B, N, 3 + F): xyz in metres then features (rgb 0..1, ...) -> (B, num_tokens, hidden), None.

        With object tokens: (B, num_points + K * object_points, 3 + F + 2) -> (B, num_tokens + K, hidden) and
        the object-class logits (B, K, C) (None without a class head)."""
        points = points.to(self.position[0].weight.dtype)  # fp32 unless the whole model was cast
        if not self.num_object_tokens:
            return self.norm(self.blocks(self._scene_tokens(points))), None
        scene = self._scene_tokens(points[:, :self.num_points, :-2])
        objects, valid = self._object_tokens(points[:, self.num_points:])
        tokens = torch.cat([scene, objects], dim=1)
        keep = torch.cat([torch.ones_like(valid[:, :1]).expand(-1, scene.shape[1]), valid], dim=1)
        out = self.norm(self.blocks(tokens, src_key_padding_mask=~keep)) * keep[..., None]
        logits = None
        if self.object_shape_classifier is not None:
            logits = self.shape_class_logits(points[:, self.num_points:])
        elif self.object_classifier is not None:
            logits = self.object_classifier(out[:, scene.shape[1]:])
        return out, logits

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.encode(points)[0]

    def object_targets(self, points: torch.Tensor) -> torch.Tensor:
        """(B, K) class index per object slot from the rows' last column (-1: none)."""
        rows = points[:, self.num_points:].reshape(points.shape[0], self.num_object_tokens, self.object_points, -1)
        return rows[:, :, 0, -1].long()
