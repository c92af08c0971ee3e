"""Dynamic view selection (3D-R1 Eq. 6-7): render candidate views of the map, score each against the question,
keep the top k.

U(v) = w_t * S_text(v) + w_c * S_cov(v) + w_clip * S_clip(v), with w_c + w_clip = 1 (one mixing logit) and an
L2 pull of w_t toward 0.3 (``ViewScoreWeights.regularizer``); defaults w_t = 0.3, w_c = w_clip = 0.5.

* S_text: cosine of the question and the rendered view under the view-text aligner (``aligner.py``; the
  project's own small encoders, or any model with ``embed_text`` / ``embed_images`` / ``image_inputs``).
* S_cov: spatial coverage measured geometrically on the map (the robot has no camera images to compare
  with): the weighted share of map voxels a view sees unoccluded that the views already chosen do not see.
  Voxels near the map regions that best match the question weigh more, so coverage is question-aware, and
  the marginal form keeps the k views from being near-duplicates.
* S_clip: cosine under a CLIP/SigLIP model loaded from a local path (``ClipAlignment``); 0 when none is set.

Text and CLIP scores are min-max normalised over the candidates and coverage is taken as a share of the best
candidate's gain, so all three lie in [0, 1] and the weights are comparable.
``select`` picks greedily (hard top-k, what the robot runs); ``soft_select`` returns a softmax over the
candidates so a task loss back-propagates into the weights (training).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from r3d_ros.views.cameras import Intrinsics, close_up_poses, region_centres, ring_poses, top_down_pose
from r3d_ros.views.renderer import render_points

ASSET_DIR = Path(__file__).resolve().parent.parent / 'assets' / 'view_aligner'


@dataclass
class ViewSelectorConfig:
    top_k: int = 6
    per_ring: int = 6                      # 2 heights x 2 radii x 6 = 24 ring views
    ring_heights: tuple[float, ...] = (1.3, 2.4)
    ring_radii: tuple[float, ...] = (0.45, 0.85)
    region_candidates: int = 7             # + 1 top-down view = 32 candidates by default
    region_proposals: int = 20             # close-ups rendered cheaply and ranked against the question
    image_size: int = 224                  # output views
    score_size: int = 64                   # candidates are scored from renders this small
    hfov_deg: float = 90.0
    point_radius: int = 1                  # splat radius at 224 px (scaled down for the small renders)
    coverage_voxel: float = 0.25           # metres
    relevant_regions: int = 3              # question-matched regions whose voxels count more for coverage
    relevant_weight: float = 4.0
    w_text: float = 0.3
    w_coverage: float = 0.5                # w_clip = 1 - w_coverage
    text_encoder: str = ''                 # aligner checkpoint folder; '' = the embedded one
    clip_path: str = ''                    # CLIP/SigLIP folder for S_clip; '' = no CLIP term
    max_points: int = 400_000              # the map is thinned beyond this for the output views
    score_points: int = 40_000             # ... and beyond this for the small scoring renders (64 px hold 4k pixels)


class ViewScoreWeights(nn.Module):
    """The learnable weights of Eq. 7: w_t free, w_c = sigmoid(a), w_clip = 1 - w_c."""

    def __init__(self, w_text: float = 0.3, w_coverage: float = 0.5, w_text_prior: float = 0.3):
        super().__init__()
        self.w_text = nn.Parameter(torch.tensor(float(w_text)))
        p = min(max(w_coverage, 1e-4), 1 - 1e-4)
        self.mix_logit = nn.Parameter(torch.tensor(float(np.log(p / (1 - p)))))
        self.w_text_prior = w_text_prior

    @property
    def w_coverage(self) -> torch.Tensor:
        return torch.sigmoid(self.mix_logit)

    @property
    def w_clip(self) -> torch.Tensor:
        return 1 - torch.sigmoid(self.mix_logit)

    def regularizer(self) -> torch.Tensor:
        """L2 pull of w_t toward its prior (0.3), added to the task loss when the weights are trained."""
        return (self.w_text - self.w_text_prior) ** 2

    def forward(self, text: torch.Tensor, coverage: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        return self.w_text * text + self.w_coverage * coverage + self.w_clip * clip


class ClipAlignment:
    """S_clip from a CLIP or SigLIP checkpoint on local disk (``transformers``, never downloaded)."""

    def __init__(self, path: str, device: str = 'cpu'):
        from transformers import AutoModel, AutoProcessor

        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.device = device

    @torch.no_grad()
    def __call__(self, rgb: torch.Tensor, question: str) -> torch.Tensor:
        inputs = self.processor(text=[question], images=list(rgb.cpu().numpy()), return_tensors='pt',
                                padding='max_length', truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        img = self.model.get_image_features(pixel_values=inputs['pixel_values'])
        txt = self.model.get_text_features(input_ids=inputs['input_ids'],
                                           attention_mask=inputs.get('attention_mask'))
        img, txt = (getattr(t, 'pooler_output', t) for t in (img, txt))
        return torch.nn.functional.cosine_similarity(img, txt, dim=-1).float()


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
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class ViewSelection:
    views: list[SelectedView]
    candidates: np.ndarray           # (C,4,4) every candidate pose
    kinds: list[str]                 # 'ring' | 'top' | 'region' per candidate
    intrinsics: Intrinsics
    scores: dict[str, np.ndarray]    # per-candidate normalised scores: text, coverage (alone), clip, total


def _thin(points: np.ndarray, colors: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Every n-th point so that at most ``limit`` remain (deterministic: the same map gives the same views)."""
    if len(points) <= limit:
        return points, colors
    step = int(np.ceil(len(points) / limit))
    return points[::step], colors[::step]


def _share(gain: torch.Tensor) -> torch.Tensor:
    """Coverage gains as a share of the best candidate's (0 when no candidate adds anything)."""
    best = gain.max()
    return gain / best if best > 0 else torch.zeros_like(gain)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 1e-9 else torch.zeros_like(x)


class ViewSelector:
    """Candidates -> renders -> Eq. 6-7 scores -> top-k views (see module docstring)."""

    def __init__(self, config: ViewSelectorConfig | None = None, device: str = 'cpu', aligner=None, clip=None):
        self.config = config or ViewSelectorConfig()
        self.device = device
        c = self.config
        self.weights = ViewScoreWeights(c.w_text, c.w_coverage).to(device)
        self.aligner = aligner if aligner is not None else load_aligner(c.text_encoder, device)
        self.clip = clip if clip is not None else (ClipAlignment(c.clip_path, device) if c.clip_path else None)
        self.out_intrinsics = Intrinsics(c.image_size, c.image_size, c.hfov_deg)
        self.score_intrinsics = Intrinsics(c.score_size, c.score_size, c.hfov_deg)

    # -- candidates --------------------------------------------------------------------------
    def candidates(self, points: np.ndarray, colors_t: torch.Tensor, points_t: torch.Tensor,
                   question_emb: torch.Tensor) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Ring + top-down poses, plus the close-ups of the regions that best match the question."""
        c = self.config
        rings = ring_poses(points, c.per_ring, c.ring_heights, c.ring_radii)
        poses, kinds = [*rings, top_down_pose(points, c.hfov_deg)], ['ring'] * len(rings) + ['top']
        centres = region_centres(points, max_regions=c.region_proposals)
        ranked = centres[:0]
        if len(centres) and c.region_candidates > 0:
            close = close_up_poses(points, centres)
            r = self._render(points_t, colors_t, close, self.score_intrinsics)
            with torch.no_grad():
                rel = self.aligner.embed_images(self.aligner.image_inputs(r.rgb, r.depth)) @ question_emb
            order = torch.argsort(rel, descending=True).cpu().numpy()
            ranked = centres[order]
            keep = order[:c.region_candidates]
            poses += list(close[keep])
            kinds += ['region'] * len(keep)
        return np.stack(poses), kinds, ranked

    def _render(self, points_t, colors_t, poses, intrinsics, ids=None):
        radius = max(0, round(self.config.point_radius * intrinsics.width / self.config.image_size))
        return render_points(points_t, colors_t, torch.as_tensor(np.asarray(poses), device=self.device), intrinsics,
                             point_radius=radius, ids=ids)

    # -- scoring -----------------------------------------------------------------------------
    def score(self, points: np.ndarray, colors: np.ndarray, question: str) -> dict:
        """Every candidate rendered small and scored; the pieces both selection modes need."""
        c = self.config
        full_points, full_colors = _thin(points, colors, c.max_points)
        points, colors = _thin(points, colors, c.score_points)
        points_t = torch.as_tensor(np.ascontiguousarray(points, np.float32), device=self.device)
        colors_t = torch.as_tensor(np.ascontiguousarray(colors, np.uint8), device=self.device)
        with torch.no_grad():
            q = self.aligner.embed_text([question])[0]
        poses, kinds, ranked = self.candidates(points, colors_t, points_t, q)
        # voxel ids drive coverage: which map voxels each candidate sees unoccluded
        vox = np.floor((points - points.min(0)) / c.coverage_voxel).astype(np.int64)
        _, voxel_id = np.unique(vox, axis=0, return_inverse=True)
        voxel_id = voxel_id.reshape(-1)
        n_vox = int(voxel_id.max()) + 1
        r = self._render(points_t, colors_t, poses, self.score_intrinsics,
                         ids=torch.as_tensor(voxel_id, device=self.device))
        seen = torch.zeros(len(poses), n_vox + 1, dtype=torch.bool, device=self.device)
        seen.scatter_(1, (r.ids.reshape(len(poses), -1) + 1).clamp(min=0), True)
        seen = seen[:, 1:].float()
        vox_weight = torch.ones(n_vox, device=self.device)
        if len(ranked) and c.relevant_regions > 0:
            centres = torch.as_tensor(ranked[:c.relevant_regions], dtype=torch.float32, device=self.device)
            near = (torch.cdist(points_t, centres).min(dim=1).values < 1.0)
            vox_weight[torch.as_tensor(voxel_id, device=self.device)[near]] = c.relevant_weight
        with torch.no_grad():
            text = self.aligner.embed_images(self.aligner.image_inputs(r.rgb, r.depth)) @ q
            clip = self.clip(r.rgb, question).to(self.device) if self.clip is not None else torch.zeros_like(text)
        return {'poses': poses, 'kinds': kinds, 'seen': seen,
                'full_points': torch.as_tensor(np.ascontiguousarray(full_points, np.float32), device=self.device),
                'full_colors': torch.as_tensor(np.ascontiguousarray(full_colors, np.uint8), device=self.device),
                'vox_weight': vox_weight, 'text': _normalise(text), 'clip': _normalise(clip) if self.clip else clip}

    def soft_select(self, scored: dict, temperature: float = 0.1) -> torch.Tensor:
        """Differentiable selection: softmax(U / T) over candidates (coverage taken per view, not marginal).
        Multiply the per-view features by these weights and the task loss reaches w_t, w_c, w_clip."""
        cov = _share(scored['seen'] @ scored['vox_weight'])
        return torch.softmax(self.weights(scored['text'], cov, scored['clip']) / temperature, dim=0)

    @torch.no_grad()
    def select(self, points: np.ndarray, colors: np.ndarray, question: str, k: int | None = None) -> ViewSelection:
        """Greedy top-k under U with marginal coverage; the chosen views re-rendered at full size."""
        k = k or self.config.top_k
        s = self.score(np.asarray(points, np.float32), np.asarray(colors, np.uint8), question)
        seen, wv = s['seen'], s['vox_weight']
        covered = torch.zeros_like(wv)
        base_cov = _share(seen @ wv)
        chosen, rows = [], []
        for _ in range(min(k, len(s['poses']))):
            gain = _share(seen @ (wv * (1 - covered)))
            total = self.weights(s['text'], gain, s['clip'])
            if chosen:
                total[chosen] = -float('inf')
            best = int(torch.argmax(total))
            chosen.append(best)
            rows.append({'text': float(s['text'][best]), 'coverage': float(gain[best]), 'clip': float(s['clip'][best]),
                         'total': float(total[best])})
            covered = torch.maximum(covered, seen[best])
        full = self._render(s['full_points'], s['full_colors'], s['poses'][chosen], self.out_intrinsics)
        views = [SelectedView(index=i, pose=s['poses'][i], rgb=full.rgb[j].cpu().numpy(),
                              depth=full.depth[j].cpu().numpy(), scores=rows[j]) for j, i in enumerate(chosen)]
        total_all = self.weights(s['text'], base_cov, s['clip'])
        return ViewSelection(views=views, candidates=s['poses'], kinds=s['kinds'], intrinsics=self.out_intrinsics,
                             scores={'text': s['text'].cpu().numpy(), 'coverage': base_cov.cpu().numpy(),
                                     'clip': s['clip'].cpu().numpy(), 'total': total_all.cpu().numpy()})
