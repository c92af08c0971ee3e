"""Point-cloud encoder in pure torch (no custom CUDA build): FPS + kNN grouping + local PointNet features +
transformer blocks -> ``num_scene_tokens`` tokens. The paper uses Point Transformer v3, whose sparse-conv
CUDA kernels cannot be built here; this encoder keeps its shape (hierarchical local grouping, then
attention) in plain torch so it runs on CPU and CUDA alike.

Absolute positions are kept: the centroid of every group (map frame, metres) is embedded and added to
its token, because the model must answer with boxes in map-frame metres.
"""

from __future__ import annotations

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


class PointEncoder(nn.Module):
    def __init__(self, feature_dim: int, hidden: int, num_tokens: int, knn: int, layers: int, heads: int):
        super().__init__()
        self.num_tokens, self.knn = num_tokens, knn
        self.local = nn.Sequential(nn.Linear(3 + feature_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.position = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        block = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3 + F): xyz in metres then features (rgb 0..1, ...) -> (B, num_tokens, hidden)."""
        points = points.to(self.position[0].weight.dtype)  # fp32 unless the whole model was cast
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
        tokens = local + self.position(centres)
        return self.norm(self.blocks(tokens))
