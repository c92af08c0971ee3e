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


class PointEncoder(nn.Module):
    def __init__(self, feature_dim: int, hidden: int, num_tokens: int, knn: int, layers: int, heads: int,
                 num_object_tokens: int = 0, object_points: int = 32, num_points: int = 0,
                 num_object_classes: int = 0):
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
        self.object_classifier = nn.Linear(hidden, num_object_classes) if num_object_classes else None

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
        logits = self.object_classifier(out[:, scene.shape[1]:]) if self.object_classifier is not None else None
        return out, logits

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.encode(points)[0]

    def object_targets(self, points: torch.Tensor) -> torch.Tensor:
        """(B, K) class index per object slot from the rows' last column (-1: none)."""
        rows = points[:, self.num_points:].reshape(points.shape[0], self.num_object_tokens, self.object_points, -1)
        return rows[:, :, 0, -1].long()
