"""Point splatting with a z-buffer, in pure torch, batched over views (CPU or CUDA, whatever the tensors are on).

Every point is projected into every view; a point of radius ``point_radius`` pixels covers a
(2r+1) x (2r+1) square. The z-buffer is one ``scatter_reduce(amin)`` over a flat buffer holding all views'
pixels, of packed int64 keys ``depth_bits << 32 | point_index``: the bit pattern of a positive float32 orders
like the float, so the minimum key is the nearest point *and* names it. Colour, depth and any per-point id
then come from that one front-most point, with no second pass. Points outside an image go to spare slots
past the end of the buffer instead of being masked out (compaction costs more than it saves).
Views are processed in chunks so that memory stays bounded for big maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r3d_ros.views.cameras import Intrinsics

_EMPTY = torch.iinfo(torch.int64).max
_INDEX_BITS = 32  # maps of up to 4 G points


@dataclass
class Render:
    rgb: torch.Tensor        # (V, H, W, 3) uint8
    depth: torch.Tensor      # (V, H, W) float32 metres along the optical axis, 0 where nothing was hit
    index: torch.Tensor      # (V, H, W) int64 index of the visible point, -1 where nothing was hit
    ids: torch.Tensor | None = None  # (V, H, W) int64 per-point id of the visible point (-1: none)


def render_points(points: torch.Tensor, colors: torch.Tensor, poses: torch.Tensor, intrinsics: Intrinsics,
                  point_radius: int = 1, ids: torch.Tensor | None = None, near: float = 0.05,
                  max_splats: int = 16_000_000) -> Render:
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
    dv, du = torch.meshgrid(offsets, offsets, indexing='ij')
    splat = (dv * (w + 4 * point_radius) + du).reshape(-1)   # flat offsets of one splat in the padded image
    chunk = max(1, min(n_views, max_splats // max(1, n_points * splat.numel())))
    chunk = min(chunk, 2**31 // ((h + 4 * point_radius) * (w + 4 * point_radius)) - 1)  # int32 pixel indices
    keys = torch.cat([_render_chunk(points, poses[s:s + chunk], intrinsics, point_radius, splat, near)
                      for s in range(0, n_views, chunk)]).view(n_views, h, w)
    hit = keys != _EMPTY
    index = torch.where(hit, keys & ((1 << _INDEX_BITS) - 1), -1)
    depth = torch.where(hit, keys >> _INDEX_BITS, 0).to(torch.int32).view(torch.float32)
    safe = index.clamp(min=0)
    rgb = colors.to(device)[safe] * hit[..., None]
    out_ids = torch.where(hit, ids.to(device)[safe], -1) if ids is not None else None
    return Render(rgb=rgb.to(torch.uint8), depth=depth, index=index, ids=out_ids)


def _render_chunk(points, poses, intrinsics: Intrinsics, radius: int, splat, near) -> torch.Tensor:
    """Packed z-buffer keys (V*H*W,) of one chunk of views."""
    v, n = poses.shape[0], points.shape[0]
    h, w = intrinsics.height, intrinsics.width
    rot, trans = poses[:, :3, :3], poses[:, :3, 3:]
    # R^T (p - t) laid out (V, 3, N), so x, y, z below are contiguous rows (elementwise ops run much faster)
    local = torch.baddbmm(-(rot.transpose(1, 2) @ trans), rot.transpose(1, 2), points.T.expand(v, 3, n))
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    in_front = x > near
    inv = intrinsics.fx / torch.where(in_front, x, 1.0)
    # x forward, y left, z up  ->  image right = -y, image down = -z; int32 until the final flat index
    u = torch.floor(intrinsics.cx - y * inv).to(torch.int32)
    vv = torch.floor(intrinsics.cy - z * inv).to(torch.int32)
    # render into an image padded by twice the splat radius: every point whose splat touches the image has its
    # centre in the inner band, so all its splat pixels stay in its own row and view (no masking per splat
    # pixel); the padding is cropped at the end
    pad, hp, wp = 2 * radius, h + 4 * radius, w + 4 * radius
    inside = in_front & (u >= -radius) & (u < w + radius) & (vv >= -radius) & (vv < h + radius)
    spare = v * hp * wp + int(splat.max())                  # splats of points that miss every image land here
    rows = torch.arange(v, device=points.device, dtype=torch.int32)[:, None] * hp + pad
    base = torch.where(inside, (vv + rows) * wp + (u + pad), spare).to(torch.int64)
    flat = base[..., None] + splat if splat.numel() > 1 else base
    key = (x.view(torch.int32).to(torch.int64) << _INDEX_BITS) | torch.arange(n, device=points.device)
    zbuf = torch.full((spare + int(splat.max()) + 1,), _EMPTY, dtype=torch.int64, device=points.device)
    keys = key[..., None].expand(-1, -1, splat.numel()) if splat.numel() > 1 else key
    zbuf.scatter_reduce_(0, flat.reshape(-1), keys.reshape(-1), reduce='amin')
    return zbuf[:v * hp * wp].view(v, hp, wp)[:, pad:pad + h, pad:pad + w].reshape(-1)
