"""A V-Net variant with squeeze-and-excitation channel attention, spatial attention and multi-scale fusion.

Built from MONAI blocks after the attention V-Nets of the renal-tumour literature: residual encoder
stages (V-Net), each followed by channel (SE) and spatial attention; skip connections gated by the
spatial attention; and a head that fuses the decoder's outputs at every scale. It is offered beside
the default DynUNet so that both can be trained and compared on the same data.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import ChannelSELayer, Convolution, ResidualUnit
from torch import nn
from torch.nn import functional as F


class SpatialAttention(nn.Module):
    """Sigmoid voxel weights from channel-pooled features (CBAM-style spatial attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size=5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class AttentionStage(nn.Module):
    """Residual convolutions then channel and spatial attention."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.block = ResidualUnit(3, in_channels, out_channels, strides=stride, subunits=2, act="PRELU", norm="INSTANCE")
        self.channel = ChannelSELayer(3, out_channels, r=4)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(self.block(x)))


class AttentionVNet(nn.Module):
    """Encoder-decoder with attention stages and multi-scale output fusion; input sizes divisible by 2^(levels-1)."""

    def __init__(self, in_channels: int, out_channels: int, filters: tuple[int, ...] = (16, 32, 64, 128, 256)) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(
            AttentionStage(in_channels if n == 0 else filters[n - 1], f, 1 if n == 0 else 2) for n, f in enumerate(filters)
        )
        self.decoder = nn.ModuleList(
            Convolution(3, filters[n + 1] + filters[n], filters[n], kernel_size=3, act="PRELU", norm="INSTANCE") for n in reversed(range(len(filters) - 1))
        )
        self.heads = nn.ModuleList(nn.Conv3d(filters[n], out_channels, kernel_size=1) for n in reversed(range(len(filters) - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        fused = None
        for decode, head in zip(self.decoder, self.heads):
            skip = skips.pop()
            x = decode(torch.cat([F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False), skip], dim=1))
            logits = head(x)
            fused = logits if fused is None else logits + F.interpolate(fused, size=logits.shape[2:], mode="trilinear", align_corners=False)
        return fused
