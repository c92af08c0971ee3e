"""Point splatting with a z-buffer, in pure torch, batched over views (CPU or CUDA, whatever the tensors are on).

Every point is projected into every view; a point of radius ``point_radius`` pixels covers a
(2r+1) x (2r+1) square. The z-buffer is a ``scatter_reduce(amin)`` of depths into one flat buffer holding all
views' pixels; a second scatter (``amax`` of the point index among the splats at the winning depth) picks
which point owns each pixel, so colour, depth and any per-point id come from one front-most point.
Views are processed in chunks so that memory stays bounded for big maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r3d_ros.views.cameras import Intrinsics


@dataclass
class Render:
    rgb: torch.Tensor        # (V, H, W, 3) uint8
    depth: torch.Tensor      # (V, H, W) float32 metres along the optical axis, 0 where nothing was hit
    index: torch.Tensor      # (V, H, W) int64 index of the visible point, -1 where nothing was hit
    ids: torch.Tensor | None = None  # (V, H, W) int64 per-point id of the visible point (-1: none)


def render_points(points: torch.Tensor, colors: torch.Tensor, poses: torch.Tensor, intrinsics: Intrinsics,
                  point_radius: int = 1, ids: torch.Tensor | None = None, near: float = 0.05,
                  max_splats: int = 24_000_000) -> Render:
    """Render ``points`` (N,3) with ``colors`` (N,3) uint8 from camera-to-map ``poses`` (V,4,4).

    ``ids`` (N,) int64, optional, is rendered like colour (e.g. instance or voxel ids, for visibility).
    ``max_splats`` bounds the temporaries (views x points x splat pixels) per chunk.
    """
    device = points.device
    points = points.to(torch.float32)
    poses = poses.to(device=device, dtype=torch.float32)
    n_views, n_points = poses.shape[0], points.shape[0]
    h, w = intrinsics.height, intrinsics.width
    offsets = torch.arange(-point_radius, point_radius + 1, device=device)
    du, dv = torch.meshgrid(offsets, offsets, indexing='xy')
    du, dv = du.reshape(-1), dv.reshape(-1)
    per_view = max(1, n_points * du.numel())
    chunk = max(1, min(n_views, max_splats // per_view))
    depth_out = torch.zeros(n_views, h, w, device=device)
    index_out = torch.full((n_views, h, w), -1, dtype=torch.long, device=device)
    for start in range(0, n_views, chunk):
        sl = slice(start, min(start + chunk, n_views))
        depth, index = _render_chunk(points, poses[sl], intrinsics, du, dv, near)
        depth_out[sl], index_out[sl] = depth, index
    hit = index_out >= 0
    safe = index_out.clamp(min=0)
    rgb = colors.to(device)[safe] * hit[..., None]
    out_ids = torch.where(hit, ids.to(device)[safe], torch.full_like(safe, -1)) if ids is not None else None
    return Render(rgb=rgb.to(torch.uint8), depth=depth_out, index=index_out, ids=out_ids)


def _render_chunk(points, poses, intrinsics: Intrinsics, du, dv, near):
    v, n = poses.shape[0], points.shape[0]
    h, w = intrinsics.height, intrinsics.width
    rot, trans = poses[:, :3, :3], poses[:, :3, 3]
    local = torch.einsum('vji,vnj->vni', rot, points[None] - trans[:, None])   # R^T (p - t)
    x, y, z = local.unbind(-1)
    in_front = x > near
    inv = 1.0 / torch.where(in_front, x, torch.ones_like(x))
    # x forward, y left, z up  ->  image right = -y, image down = -z
    u = torch.floor(intrinsics.cx - intrinsics.fx * y * inv).long()
    vv = torch.floor(intrinsics.cy - intrinsics.fx * z * inv).long()
    pu = u[..., None] + du                      # (V, N, S)
    pv = vv[..., None] + dv
    ok = in_front[..., None] & (pu >= 0) & (pu < w) & (pv >= 0) & (pv < h)
    view = torch.arange(v, device=points.device)[:, None, None]
    flat = ((view * h + pv) * w + pu)[ok]
    depth = x[..., None].expand_as(pu)[ok]
    point = torch.arange(n, device=points.device)[None, :, None].expand_as(pu)[ok]
    zbuf = torch.full((v * h * w,), float('inf'), device=points.device)
    zbuf.scatter_reduce_(0, flat, depth, reduce='amin')
    front = depth <= zbuf[flat]
    owner = torch.full((v * h * w,), -1, dtype=torch.long, device=points.device)
    owner.scatter_reduce_(0, flat[front], point[front], reduce='amax')
    zbuf = torch.where(torch.isinf(zbuf), torch.zeros_like(zbuf), zbuf)
    return zbuf.view(v, h, w), owner.view(v, h, w)
