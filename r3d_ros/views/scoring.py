"""The scores of 3D-R1 Eq. 6-7 and the two ways to select views with them (hard greedy top-k, soft for training).

U(v) = w_t * S_text(v) + w_c * S_cov(v) + w_clip * S_clip(v), with w_c + w_clip = 1 (one mixing logit) and an
L2 pull of w_t toward 0.3 (``ViewScoreWeights.regularizer``); defaults w_t = 0.3, w_c = w_clip = 0.5.

* S_text (text -> 3D): relevance of the *map content* a view sees. E_3D(v) is realised through the map: the
  map is cut into regions (``cameras.region_centres``), each region is embedded from its own close-up render,
  and a view scores the question-relevance of the regions it sees unoccluded, weighted by how much of each
  it sees (``text_to_3d``). Unlike an image score it does not care how large the region looks in the view.
* S_cov (spatial coverage): measured geometrically on the map, since a robot answering from its map has no
  camera images I(t) to compare against: the weighted share of map voxels a view sees unoccluded that the
  views chosen so far do not (``marginal_coverage``), so the k views are not near-duplicates. Voxels of the
  question-relevant regions weigh more.
* S_clip: image-text cosine of the rendered view and the question under a contrastive image-text model: a
  local CLIP/SigLIP checkpoint (``ClipAlignment``) or, by default, the project's view-text aligner
  (``AlignerAlignment``).

Each term is brought to [0, 1] over the candidates (min-max for the cosines, share of the best candidate's
gain for coverage), so the weights are comparable.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


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


# ---------------------------------------------------------------------------------------------- image-text

class ClipAlignment:
    """S_clip from a CLIP or SigLIP checkpoint on local disk (``transformers``, never downloaded)."""

    def __init__(self, path: str, device: str = 'cpu'):
        from transformers import AutoModel, AutoProcessor

        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.device = device

    @torch.no_grad()
    def __call__(self, rgb: torch.Tensor, depth: torch.Tensor, question: str) -> torch.Tensor:
        inputs = self.processor(text=[question], images=list(rgb.cpu().numpy()), return_tensors='pt',
                                padding='max_length', truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        img = self.model.get_image_features(pixel_values=inputs['pixel_values'])
        txt = self.model.get_text_features(input_ids=inputs['input_ids'],
                                           attention_mask=inputs.get('attention_mask'))
        img, txt = (getattr(t, 'pooler_output', t) for t in (img, txt))
        return torch.nn.functional.cosine_similarity(img, txt, dim=-1).float()


class AlignerAlignment:
    """S_clip from the project's view-text aligner (``aligner.ViewTextAligner``): the embedded default."""

    def __init__(self, aligner):
        self.aligner = aligner

    @torch.no_grad()
    def __call__(self, rgb: torch.Tensor, depth: torch.Tensor, question: str) -> torch.Tensor:
        a = self.aligner
        return a.similarity(a.image_inputs(rgb, depth), a.embed_text([question]))[:, 0]


# ---------------------------------------------------------------------------------------------- map geometry

def voxel_ids(points: np.ndarray, voxel: float) -> tuple[np.ndarray, int]:
    """Per-point id of its ``voxel``-metre cell (0..n-1) and the number of occupied cells."""
    cells = np.floor((points - points.min(0)) / voxel).astype(np.int64)
    _, inverse = np.unique(cells, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return inverse, int(inverse.max()) + 1 if len(inverse) else 0


def seen_voxels(id_render: torch.Tensor, n_voxels: int) -> torch.Tensor:
    """(V, n_voxels) 1.0 where a view sees some point of the voxel unoccluded, from a voxel-id render (V,H,W)."""
    seen = torch.zeros(id_render.shape[0], n_voxels + 1, dtype=torch.bool, device=id_render.device)
    seen.scatter_(1, id_render.reshape(id_render.shape[0], -1) + 1, True)   # -1 (nothing) -> column 0
    return seen[:, 1:].float()


def region_visibility(seen: torch.Tensor, voxel_region: torch.Tensor, n_regions: int) -> torch.Tensor:
    """(V, R) share of each region's voxels a view sees; ``voxel_region`` (n_voxels,) is -1 outside regions."""
    member = torch.zeros(seen.shape[1], n_regions + 1, device=seen.device)
    member[torch.arange(seen.shape[1], device=seen.device), voxel_region + 1] = 1.0
    member = member[:, 1:]
    return (seen @ member) / member.sum(0).clamp(min=1.0)


def text_to_3d(visibility: torch.Tensor, region_relevance: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """S_text per view: visibility of the map regions, weighted by softmax(cos(question, region) / T)."""
    if visibility.shape[1] == 0:
        return torch.zeros(visibility.shape[0], device=visibility.device)
    return visibility @ torch.softmax(region_relevance / temperature, dim=0)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Min-max over the candidates to [0, 1] (all zeros when the candidates do not differ)."""
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 1e-9 else torch.zeros_like(x)


def marginal_coverage(seen: torch.Tensor, voxel_weight: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """S_cov: what each view adds to ``covered`` (soft 0..1 per voxel), as a share of the best view's gain."""
    gain = seen @ (voxel_weight * (1 - covered))
    best = gain.max()
    return gain / best if best > 0 else torch.zeros_like(gain)


# ---------------------------------------------------------------------------------------------- selection

def greedy_select(weights: ViewScoreWeights, text: torch.Tensor, clip: torch.Tensor, seen: torch.Tensor,
                  voxel_weight: torch.Tensor, k: int) -> tuple[list[int], list[dict[str, float]]]:
    """Hard top-k: each step takes the best candidate under U with coverage counted as marginal gain."""
    covered = torch.zeros_like(voxel_weight)
    chosen, rows = [], []
    for _ in range(min(k, len(text))):
        cov = marginal_coverage(seen, voxel_weight, covered)
        total = weights(text, cov, clip)
        if chosen:
            total[chosen] = -float('inf')
        best = int(torch.argmax(total))
        chosen.append(best)
        rows.append({'text': float(text[best]), 'coverage': float(cov[best]), 'clip': float(clip[best]),
                     'total': float(total[best])})
        covered = torch.maximum(covered, seen[best])
    return chosen, rows


def soft_select(weights: ViewScoreWeights, text: torch.Tensor, clip: torch.Tensor, seen: torch.Tensor,
                voxel_weight: torch.Tensor, k: int, temperature: float = 0.1) -> torch.Tensor:
    """Differentiable top-k: k rounds of softmax(U / T), each with the marginal coverage of the expected
    coverage so far; returns per-candidate view weights in [0, 1] summing to k (to weight view features by).
    As T -> 0 it picks what ``greedy_select`` picks; the task loss reaches w_t, w_c and w_clip."""
    covered = torch.zeros_like(voxel_weight)
    taken = torch.zeros_like(text)
    for _ in range(min(k, len(text))):
        total = weights(text, marginal_coverage(seen, voxel_weight, covered), clip)
        # a candidate already (softly) taken is pushed out so the rounds pick different views
        p = torch.softmax(total / temperature + torch.log1p(-taken.clamp(max=1 - 1e-6)), dim=0)
        taken = taken + p
        covered = 1 - (1 - covered) * (1 - p @ seen)
    return taken
