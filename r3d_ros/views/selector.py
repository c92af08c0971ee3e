"""Dynamic view selection (3D-R1 Eq. 6-7): candidate cameras around the map, rendered small and scored against
the question (``scoring.py``), the top k re-rendered at full size for the reasoner.

Per question: (1) the map is cut into regions (dense cells of things above the floor, or the objects the
caller passes) and each region's close-up is rendered and embedded by the aligner: that is both the
question-relevance of each region and the pool of question-aimed candidates; (2) ring + top-down + the
most relevant close-ups make the candidates (32 by default), rendered at ``score_size`` with per-point voxel
ids; (3) S_text, S_cov, S_clip per candidate; (4) greedy top-k (``select``, what the robot runs) or the
soft selection (``soft_select``, for training the weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
from pathlib import Path

import numpy as np
import torch

from r3d_ros.views.cameras import Intrinsics, close_up_poses, region_centres, ring_poses, top_down_pose
from r3d_ros.views.renderer import render_points
from r3d_ros.views.scoring import (
    AlignerAlignment,
    ClipAlignment,
    ViewScoreWeights,
    greedy_select,
    marginal_coverage,
    normalise,
    region_visibility,
    seen_voxels,
    soft_select,
    text_to_3d,
    voxel_ids,
)

ASSET_DIR = Path(__file__).resolve().parent.parent / 'assets' / 'view_aligner'


@dataclass
class ViewSelectorConfig:
    top_k: int = 6
    per_ring: int = 5                      # 2 heights x 2 radii x 5 = 20 ring views
    ring_heights: tuple[float, ...] = (1.3, 2.4)
    ring_radii: tuple[float, ...] = (0.45, 0.85)
    region_candidates: int = 11            # + 1 top-down view = 32 candidates by default
    region_proposals: int = 30             # close-ups rendered cheaply and ranked against the question
    region_cell: float = 0.6               # metres: regions are the densest cells of this size on the floor plane
    region_radius: float = 0.6             # metres: map points this near a region centre belong to it
    region_temperature: float = 0.05       # softmax over region relevance in S_text
    image_size: int = 224                  # output views
    score_size: int = 64                   # candidates are scored from renders this small
    hfov_deg: float = 90.0
    point_radius: int = 1                  # splat radius at 224 px (scaled down for the small renders)
    coverage_voxel: float = 0.25           # metres
    relevant_regions: int = 3              # question-matched regions whose voxels count more for coverage
    relevant_weight: float = 4.0
    w_text: float = 0.3
    w_coverage: float = 0.5                # w_clip = 1 - w_coverage
    learned_weights: bool = False          # w_text, w_coverage fitted for the aligner (its selection_weights.json)
    text_encoder: str = ''                 # aligner checkpoint folder; '' = the embedded one
    clip_path: str = ''                    # CLIP/SigLIP folder for S_clip; '' = the aligner serves as CLIP
    max_points: int = 400_000              # the map is thinned beyond this for the output views
    score_points: int = 40_000             # ... and beyond this for the small scoring renders (64 px hold 4k pixels)


def load_aligner(path: str | Path = '', device: str = 'cpu'):
    from r3d_ros.views.aligner import ViewTextAligner

    path = Path(path) if path else ASSET_DIR
    if not (path / 'config.json').exists():
        raise FileNotFoundError(f'no view aligner at {path} (train one with r3d-train-aligner)')
    return ViewTextAligner.from_pretrained(str(path)).to(device).eval()


@dataclass
class SelectedView:
    index: int
    pose: np.ndarray                 # (4,4) camera-to-map
    rgb: np.ndarray                  # (H,W,3) uint8
    depth: np.ndarray                # (H,W) float32 metres, 0 = empty
    scores: dict[str, float] = field(default_factory=dict)   # text, coverage (marginal, when picked), clip, total


@dataclass
class ViewSelection:
    views: list[SelectedView]        # best first
    candidates: np.ndarray           # (C,4,4) every candidate pose
    kinds: list[str]                 # 'ring' | 'top' | 'region' per candidate
    intrinsics: Intrinsics           # of the output views
    scores: dict[str, np.ndarray]    # per-candidate normalised scores: text, coverage (alone), clip, total


@dataclass
class ScoredCandidates:
    """Everything both selection modes need; tensors on the selector's device."""

    poses: np.ndarray                # (C,4,4)
    kinds: list[str]
    text: torch.Tensor               # (C,) S_text in [0, 1]
    clip: torch.Tensor               # (C,) S_clip in [0, 1]
    seen: torch.Tensor               # (C, n_voxels) voxels each candidate sees unoccluded
    voxel_weight: torch.Tensor       # (n_voxels,) coverage weight (question-relevant voxels weigh more)
    region_centres: np.ndarray       # (R,3) map regions, most question-relevant first
    region_relevance: np.ndarray     # (R,) cosine of each region's close-up and the question


def _thin(points: np.ndarray, colors: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Every n-th point so that at most ``limit`` remain (deterministic: the same map gives the same views)."""
    if len(points) <= limit:
        return points, colors
    step = int(np.ceil(len(points) / limit))
    return points[::step], colors[::step]


def _object_regions(objects, question: str) -> tuple[np.ndarray, np.ndarray]:
    """Centres of caller-given objects (``.center`` / ``['center']``) and a bonus of 1 for those whose label
    the question names (a detector's label is stronger evidence than a render's similarity)."""
    centres, bonus = [], []
    words = set(question.lower().replace('?', ' ').replace(',', ' ').split())
    for o in objects:
        get = o.get if isinstance(o, dict) else lambda key, obj=o: getattr(obj, key, None)
        centres.append(np.asarray(get('center'), dtype=np.float64).reshape(3))
        label = str(get('label') or '').lower().replace('_', ' ')
        bonus.append(float(bool(label) and set(label.split()) <= words))
    return np.asarray(centres).reshape(-1, 3), np.asarray(bonus)


class ViewSelector:
    """Candidates -> renders -> Eq. 6-7 scores -> top-k views (see module docstring)."""

    def __init__(self, config: ViewSelectorConfig | None = None, device: str = 'cpu', aligner=None, clip=None):
        self.config = config or ViewSelectorConfig()
        self.device = device
        c = self.config
        self.weights = ViewScoreWeights(*self._weights()).to(device)
        self.aligner = aligner if aligner is not None else load_aligner(c.text_encoder, device)
        if clip is None:
            clip = ClipAlignment(c.clip_path, device) if c.clip_path else AlignerAlignment(self.aligner)
        self.clip = clip
        self.out_intrinsics = Intrinsics(c.image_size, c.image_size, c.hfov_deg)
        self.score_intrinsics = Intrinsics(c.score_size, c.score_size, c.hfov_deg)

    def _weights(self) -> tuple[float, float]:
        """(w_text, w_coverage): the config's, or those ``r3d-train-aligner --fit-weights`` fitted."""
        c = self.config
        if not c.learned_weights:
            return c.w_text, c.w_coverage
        path = (Path(c.text_encoder) if c.text_encoder else ASSET_DIR) / 'selection_weights.json'
        if not path.exists():
            raise FileNotFoundError(f'no fitted selection weights at {path} (r3d-train-aligner --fit-weights)')
        fitted = json.loads(path.read_text())
        return float(fitted['w_text']), float(fitted['w_coverage'])

    def _render(self, points_t, colors_t, poses, intrinsics, ids=None):
        radius = max(0, round(self.config.point_radius * intrinsics.width / self.config.image_size))
        return render_points(points_t, colors_t, torch.as_tensor(np.asarray(poses), device=self.device), intrinsics,
                             point_radius=radius, ids=ids)

    # -- scoring -----------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, points: np.ndarray, colors: np.ndarray, question: str, objects=None) -> ScoredCandidates:
        """Every candidate rendered small and scored. ``objects``: optional known objects (anything with a
        ``center`` and optionally a ``label``); their close-ups join the region proposals."""
        c = self.config
        points, colors = _thin(np.asarray(points, np.float32), np.asarray(colors, np.uint8), c.score_points)
        points_t = torch.as_tensor(np.ascontiguousarray(points), device=self.device)
        colors_t = torch.as_tensor(np.ascontiguousarray(colors), device=self.device)
        q = self.aligner.embed_text([question])

        # regions: proposals from the map (+ given objects); relevance = aligner cosine of their close-ups
        centres = region_centres(points, cell=c.region_cell, max_regions=c.region_proposals)
        bonus = np.zeros(len(centres))
        if objects is not None and len(objects):
            obj_centres, obj_bonus = _object_regions(objects, question)
            centres, bonus = np.concatenate([obj_centres, centres]), np.concatenate([obj_bonus, bonus])
        close = close_up_poses(points, centres)
        relevance = np.zeros(len(centres))
        if len(centres):
            r = self._render(points_t, colors_t, close, self.score_intrinsics)
            sim = self.aligner.similarity(self.aligner.image_inputs(r.rgb, r.depth), q)[:, 0]
            relevance = sim.cpu().numpy().astype(np.float64) + bonus
        order = np.argsort(-relevance, kind='stable')
        centres, relevance, close = centres[order], relevance[order], close[order] if len(centres) else close

        rings = ring_poses(points, c.per_ring, c.ring_heights, c.ring_radii)
        poses = np.concatenate([rings, top_down_pose(points, c.hfov_deg)[None], close[:c.region_candidates]])
        kinds = ['ring'] * len(rings) + ['top'] + ['region'] * min(c.region_candidates, len(close))

        # which map voxels each candidate sees unoccluded (one render with per-point voxel ids)
        voxel_id, n_vox = voxel_ids(points, c.coverage_voxel)
        voxel_id_t = torch.as_tensor(voxel_id, device=self.device)
        r = self._render(points_t, colors_t, poses, self.score_intrinsics, ids=voxel_id_t)
        seen = seen_voxels(r.ids, n_vox)

        # voxels -> regions (nearest centre within region_radius): S_text and the coverage weights
        voxel_region = torch.full((n_vox,), -1, dtype=torch.long, device=self.device)
        voxel_weight = torch.ones(n_vox, device=self.device)
        if len(centres):
            dist = torch.cdist(points_t, torch.as_tensor(centres, dtype=torch.float32, device=self.device))
            nearest_d, nearest = dist.min(dim=1)
            member = nearest_d < c.region_radius
            voxel_region[voxel_id_t[member]] = nearest[member]
            relevant = member & (nearest < c.relevant_regions)
            voxel_weight[voxel_id_t[relevant]] = c.relevant_weight
        vis = region_visibility(seen, voxel_region, len(centres))
        rel_t = torch.as_tensor(relevance, dtype=torch.float32, device=self.device)
        text = text_to_3d(vis, rel_t, c.region_temperature)
        clip = self.clip(r.rgb, r.depth, question).to(self.device)
        return ScoredCandidates(poses=poses, kinds=kinds, text=normalise(text), clip=normalise(clip), seen=seen,
                                voxel_weight=voxel_weight, region_centres=centres, region_relevance=relevance)

    # -- selection ---------------------------------------------------------------------------
    def _full_views(self, points, colors, poses, indices, scores) -> list[SelectedView]:
        """``poses`` rendered at the output size from the map (thinned to ``max_points``)."""
        points, colors = _thin(np.asarray(points, np.float32), np.asarray(colors, np.uint8), self.config.max_points)
        full = self._render(torch.as_tensor(np.ascontiguousarray(points), device=self.device),
                            torch.as_tensor(np.ascontiguousarray(colors), device=self.device), poses,
                            self.out_intrinsics)
        return [SelectedView(index=int(i), pose=poses[j], rgb=full.rgb[j].cpu().numpy(),
                             depth=full.depth[j].cpu().numpy(), scores=scores[j]) for j, i in enumerate(indices)]

    @torch.no_grad()
    def ring(self, points: np.ndarray, colors: np.ndarray, k: int | None = None) -> list[SelectedView]:
        """``k`` views on one ring around the map, the same whatever the question: the baseline selection is
        measured against (the official 3D-R1 code's fixed ring, inside the room as ``ring_poses`` explains)."""
        k = k or self.config.top_k
        poses = ring_poses(points, k, self.config.ring_heights[:1], self.config.ring_radii[-1:])
        return self._full_views(points, colors, poses, range(k), [{} for _ in range(k)])

    def soft_select(self, scored: ScoredCandidates, k: int | None = None, temperature: float = 0.1) -> torch.Tensor:
        """Differentiable selection (``scoring.soft_select``): per-candidate view weights summing to k. Weight
        the candidates' features by them and the task loss reaches w_t, w_c and w_clip."""
        return soft_select(self.weights, scored.text, scored.clip, scored.seen, scored.voxel_weight,
                           k or self.config.top_k, temperature)

    @torch.no_grad()
    def select(self, points: np.ndarray, colors: np.ndarray, question: str, k: int | None = None,
               objects=None) -> ViewSelection:
        """Greedy top-k under U with marginal coverage; the chosen views re-rendered at full size."""
        k = k or self.config.top_k
        s = self.score(points, colors, question, objects=objects)
        chosen, rows = greedy_select(self.weights, s.text, s.clip, s.seen, s.voxel_weight, k)
        views = self._full_views(points, colors, s.poses[chosen], chosen, rows)
        alone = marginal_coverage(s.seen, s.voxel_weight, torch.zeros_like(s.voxel_weight))
        total = self.weights(s.text, alone, s.clip)
        return ViewSelection(views=views, candidates=s.poses, kinds=s.kinds, intrinsics=self.out_intrinsics,
                             scores={'text': s.text.cpu().numpy(), 'coverage': alone.cpu().numpy(),
                                     'clip': s.clip.cpu().numpy(), 'total': total.cpu().numpy()})
