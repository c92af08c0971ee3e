"""A small contrastive view-text aligner: the embedded default encoder for the text-relevance score.

CLIP/SigLIP cannot be downloaded here and would be overkill for rendered point-cloud views on a robot, so
the project trains its own pair of encoders (``r3d-train-aligner``): a hashed bag-of-words text encoder and
a small CNN over a rendered view (RGB + depth + hit mask), trained with a sigmoid (SigLIP-style) pair loss
on synthetic scenes to say whether the objects a question names are visible in a view. A real CLIP or SigLIP
model plugs in through ``scoring.ClipAlignment`` instead (``ViewSelectorConfig.clip_path``).
"""

from __future__ import annotations

import re
import zlib

import torch
from torch import nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel

_WORD = re.compile(r"[a-z]+")


class ViewAlignerConfig(PretrainedConfig):
    model_type = 'r3d_view_aligner'

    def __init__(self, vocab_buckets: int = 4096, embed_dim: int = 64, image_size: int = 64, max_depth: float = 8.0,
                 channels: tuple[int, ...] = (24, 48, 96), **kw):
        super().__init__(**kw)
        self.vocab_buckets, self.embed_dim, self.image_size = vocab_buckets, embed_dim, image_size
        self.max_depth, self.channels = max_depth, list(channels)


def hash_words(texts: list[str], buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EmbeddingBag inputs (flat word ids, offsets) for ``texts``; words hash to stable buckets (crc32)."""
    ids, offsets = [], []
    for text in texts:
        offsets.append(len(ids))
        words = _WORD.findall(text.lower().replace('_', ' ')) or ['']
        ids += [zlib.crc32(wd.encode()) % buckets for wd in words]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


class ViewTextAligner(PreTrainedModel):
    config_class = ViewAlignerConfig
    base_model_prefix = 'aligner'

    def __init__(self, config: ViewAlignerConfig):
        super().__init__(config)
        d = config.embed_dim
        self.words = nn.EmbeddingBag(config.vocab_buckets, d, mode='mean')
        self.text_proj = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        layers, cin = [], 5
        for cout in config.channels:
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GELU()]
            cin = cout
        self.cnn = nn.Sequential(*layers)
        self.image_proj = nn.Linear(cin, d)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))
        self.logit_bias = nn.Parameter(torch.tensor(-2.0))
        self.post_init()

    def _init_weights(self, module):  # default torch init is fine for this size; keep the learned scale/bias
        pass

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        ids, offsets = hash_words(texts, self.config.vocab_buckets)
        return F.normalize(self.text_proj(self.words(ids.to(self.device), offsets.to(self.device))), dim=-1)

    def image_inputs(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """(V,H,W,3) uint8 + (V,H,W) metres -> (V,5,S,S): colour, scaled depth, hit mask, resized."""
        hit = (depth > 0).float()[:, None]
        x = torch.cat([rgb.permute(0, 3, 1, 2).float() / 255.0, depth[:, None].float() / self.config.max_depth, hit], 1)
        s = self.config.image_size
        if x.shape[-1] != s or x.shape[-2] != s:
            x = F.adaptive_avg_pool2d(x, (s, s)) if x.shape[-1] > s else F.interpolate(x, size=(s, s))
        return x.to(self.device)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.cnn(pixels)
        # max over positions: a small named object anywhere in the view should light the view up
        return F.normalize(self.image_proj(feats.amax(dim=(-2, -1))), dim=-1)

    def similarity(self, pixels: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """(V, T) cosine of each view and each embedded text."""
        return self.embed_images(pixels) @ text_emb.T

    def forward(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """(V, T) logits that text t's objects are visible in view v."""
        return self.similarity(pixels, self.embed_text(texts)) * self.logit_scale.exp() + self.logit_bias
