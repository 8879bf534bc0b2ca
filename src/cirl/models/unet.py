"""The classic U-Net (Ronneberger et al., MICCAI 2015): 4 down, 4 up, two 3x3 convs per stage.

Padded convolutions and batch norm (the common modern form), max-pool down, 2x2 transposed conv
up, skip concatenation. Widths ``base_width * (1, 2, 4, 8, 16)``; 64 is the standard network
(about 31 M parameters), 16 (``unet-small``) trains on a laptop CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from cirl.models.output import SegModel, SegOutput


class ConvBlock(nn.Sequential):
    """Two (3x3 conv, batch norm, ReLU) layers: ``(N, in, H, W) -> (N, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DownStage(nn.Sequential):
    """Max-pool by 2 then a :class:`ConvBlock`: ``(N, in, H, W) -> (N, out, H/2, W/2)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), ConvBlock(in_channels, out_channels))


class UpStage(nn.Module):
    """2x transposed conv, concatenation with the skip, then a :class:`ConvBlock`.

    ``(N, in, H/2, W/2)`` and skip ``(N, out, H, W)`` -> ``(N, out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = ConvBlock(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(SegModel):
    """U-Net with a 1x1 seg head and an optional 1x1 std head on the last decoder feature.

    Args:
        in_channels: input image channels.
        base_width: channels of the first stage; the others double (five widths in all).
        std_head: build the log-variance head (CIRL phase I).

    Input ``(N, in_channels, H, W)`` in [0, 1], H and W multiples of ``stride`` (16).
    """

    def __init__(self, in_channels: int = 3, base_width: int = 64, std_head: bool = True) -> None:
        super().__init__(in_channels)
        widths = [base_width * 2**i for i in range(5)]
        self.stride = 2 ** (len(widths) - 1)
        self.encoder = nn.ModuleList(
            [ConvBlock(in_channels, widths[0])]
            + [DownStage(widths[i], widths[i + 1]) for i in range(4)]
        )
        # Deepest first: 16b -> 8b -> 4b -> 2b -> b.
        self.decoder = nn.ModuleList(UpStage(widths[i + 1], widths[i]) for i in reversed(range(4)))
        self.seg_head = nn.Conv2d(widths[0], 1, kernel_size=1)
        self.std_head = self._make_std_head(widths[0], std_head)

    def forward(self, x: torch.Tensor) -> SegOutput:
        """``(N, C, H, W)`` in [0, 1] -> :class:`SegOutput` (no aux or boundary heads)."""
        h = self.normalise(x)
        skips = []
        for stage in self.encoder:
            h = stage(h)
            skips.append(h)
        h = skips.pop()
        for stage in self.decoder:
            h = stage(h, skips.pop())
        return SegOutput(self.seg_head(h), self._log_var(h), h, (), ())
