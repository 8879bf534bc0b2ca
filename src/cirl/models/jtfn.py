"""A JTFN-style network (Cheng et al., ICCV 2021), written from the description in CIRL.md.

Joint Topology-preserving and Feature-refinement Network for curvilinear structures:

* a five-stage encoder (two 3x3 conv+BN+ReLU per stage, max-pool between), run once;
* a gated skip unit per level: from the encoder feature ``x`` and the previous full-resolution
  prediction ``y`` (resized to ``x``), spatial and channel attention on ``x * (1 - y)`` give a
  gate ``M``, and the unit returns ``M * x + (1 - M) * O`` with ``O`` a dilated 3x3 conv of
  ``x * y`` (what the model already believes is crack, refined);
* four decoder units, each with a segmentation stream and a boundary stream that exchange
  features, and a 1-channel logit head per stream at its scale (1/8, 1/4, 1/2, 1);
* the skip units and the decoder run ``iterations`` times with shared weights, feeding the
  sigmoid of the last full-resolution segmentation back as ``y`` (0 at the first pass).

Widths ``base_width * (1, 2, 4, 8)`` and ``min(16 * base_width, 512)`` for the deepest stage,
which gives the paper's 64/128/256/512/512 at 64 and 32/64/128/256/512 at 32.

Also here: :func:`boundary_target` and :func:`jtfn_deep_supervision_loss`, the extra loss terms
of the aux and boundary heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cirl.distributed import global_mean, global_sum
from cirl.models.output import SegModel, SegOutput
from cirl.models.unet import ConvBlock, DownStage


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """One (conv, batch norm, ReLU) layer with 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class GatedSkip(nn.Module):
    """Gated skip unit (the paper's GAU): refines an encoder feature with the last prediction.

    Args:
        channels: channels C of the encoder feature.
        reduction: channel-attention bottleneck ratio.

    Shapes: ``x`` (N, C, h, w), ``y`` (N, 1, H, W) probabilities -> (N, C, h, w).
    """

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        self.spatial = nn.Sequential(
            nn.Conv2d(2, 1, kernel_size=3, padding=1), nn.Conv2d(1, 1, kernel_size=5, padding=2)
        )
        hidden = max(channels // reduction, 1)
        self.channel = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )
        self.refine = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        rest = x * (1 - y)  # what the last pass did not call crack
        pooled = torch.cat([rest.mean(1, keepdim=True), rest.amax(1, keepdim=True)], dim=1)
        spatial = torch.sigmoid(self.spatial(pooled))  # (N, 1, h, w)
        channel = torch.sigmoid(
            self.channel(rest.mean((2, 3), keepdim=True))
            + self.channel(rest.amax((2, 3), keepdim=True))
        )  # (N, C, 1, 1)
        gate = spatial * channel
        return gate * x + (1 - gate) * self.refine(x * y)


class TwoStreamDecoder(nn.Module):
    """Decoder unit with a segmentation and a boundary stream that exchange features.

    Both streams are upsampled by a 2x transposed conv. The segmentation stream concatenates the
    gated skip and runs a :class:`ConvBlock`; the boundary stream concatenates (a 1x1 projection
    of) the segmentation feature; the segmentation stream then adds a residual computed from
    itself and (a 1x1 projection of) the boundary feature.

    Args:
        in_channels: channels of both incoming streams (the deeper level).
        out_channels: channels at this level (also the skip's channels).

    Shapes: ``seg``, ``boundary`` (N, in, h, w), ``skip`` (N, out, 2h, 2w) ->
    ``seg``, ``boundary`` (N, out, 2h, 2w), ``seg_logits``, ``boundary_logits`` (N, 1, 2h, 2w).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()

        def up() -> nn.Sequential:
            return nn.Sequential(
                nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )

        self.up_seg = up()
        self.up_boundary = up()
        self.seg = ConvBlock(2 * out_channels, out_channels)
        self.seg_to_boundary = conv_bn_relu(out_channels, out_channels, kernel_size=1)
        self.boundary = conv_bn_relu(2 * out_channels, out_channels)
        self.boundary_to_seg = conv_bn_relu(out_channels, out_channels, kernel_size=1)
        self.seg_refine = conv_bn_relu(2 * out_channels, out_channels)
        self.seg_head = nn.Conv2d(out_channels, 1, kernel_size=3, padding=1)
        self.boundary_head = nn.Conv2d(out_channels, 1, kernel_size=3, padding=1)

    def forward(
        self, seg: torch.Tensor, boundary: torch.Tensor, skip: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        seg = self.seg(torch.cat([self.up_seg(seg), skip], dim=1))
        boundary = self.boundary(
            torch.cat([self.up_boundary(boundary), self.seg_to_boundary(seg)], dim=1)
        )
        seg = seg + self.seg_refine(torch.cat([seg, self.boundary_to_seg(boundary)], dim=1))
        return seg, boundary, self.seg_head(seg), self.boundary_head(boundary)


class JTFN(SegModel):
    """JTFN-style iterative two-stream network with an optional std head.

    Args:
        in_channels: input image channels.
        base_width: channels of the first stage (64: ~42 M parameters, 32: ~15 M, 16: ~4 M).
        std_head: build the log-variance head (CIRL phase I) on the last full-resolution
            segmentation feature.
        iterations: passes T of the skip units and decoder (shared weights), >= 1.

    Input ``(N, in_channels, H, W)`` in [0, 1], H and W multiples of ``stride`` (16).
    Output: ``logits`` from the final pass; ``aux_logits`` the other ``4 * T - 1`` seg heads
    (pass by pass, fine to coarse); ``boundary_logits`` all ``4 * T`` boundary heads.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_width: int = 64,
        std_head: bool = True,
        iterations: int = 2,
    ) -> None:
        super().__init__(in_channels)
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.iterations = iterations
        widths = [base_width * 2**i for i in range(4)] + [min(16 * base_width, 512)]
        self.stride = 2 ** (len(widths) - 1)
        self.encoder = nn.ModuleList(
            [ConvBlock(in_channels, widths[0])]
            + [DownStage(widths[i], widths[i + 1]) for i in range(4)]
        )
        self.skips = nn.ModuleList(GatedSkip(w) for w in widths)
        self.boundary_entry = conv_bn_relu(widths[-1], widths[-1], kernel_size=1)
        # Deepest first: 1/8, 1/4, 1/2, 1.
        self.decoder = nn.ModuleList(
            TwoStreamDecoder(widths[i + 1], widths[i]) for i in reversed(range(4))
        )
        self.std_head = self._make_std_head(widths[0], std_head)

    def forward(self, x: torch.Tensor) -> SegOutput:
        """``(N, C, H, W)`` in [0, 1] -> :class:`SegOutput` with aux and boundary heads."""
        h = self.normalise(x)
        encoded = []
        for stage in self.encoder:
            h = stage(h)
            encoded.append(h)

        y = x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])
        seg_heads: list[torch.Tensor] = []
        boundary_heads: list[torch.Tensor] = []
        for _ in range(self.iterations):
            gated = [skip(feature, y) for skip, feature in zip(self.skips, encoded, strict=True)]
            seg = gated.pop()
            boundary = self.boundary_entry(seg)
            pass_seg, pass_boundary = [], []
            for unit in self.decoder:
                seg, boundary, seg_logits, boundary_logits = unit(seg, boundary, gated.pop())
                pass_seg.append(seg_logits)
                pass_boundary.append(boundary_logits)
            # Fine to coarse, like the heads' scales 1, 1/2, 1/4, 1/8.
            seg_heads.extend(reversed(pass_seg))
            boundary_heads.extend(reversed(pass_boundary))
            y = torch.sigmoid(pass_seg[-1])  # feedback keeps its gradient, as in the paper

        # The last pass's full-resolution seg head is at index -4 (fine to coarse per pass).
        logits = seg_heads.pop(-4)
        return SegOutput(logits, self._log_var(seg), seg, tuple(seg_heads), tuple(boundary_heads))


def boundary_target(mask: torch.Tensor) -> torch.Tensor:
    """The 1-pixel ring outside a mask: ``dilate(mask, 3x3) - mask``.

    Args:
        mask: ``(N, 1, H, W)`` float {0, 1}.

    Returns:
        ``(N, 1, H, W)`` float {0, 1}, 1 on background pixels 8-adjacent to the mask.
    """
    return F.max_pool2d(mask, kernel_size=3, stride=1, padding=1) - mask


def jtfn_deep_supervision_loss(
    out: SegOutput, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean BCE of the aux seg heads (vs the mask) and the boundary heads (vs its ring).

    Every head is upsampled bilinearly to the target size; the loss is the mean over heads of
    each head's mean BCE-with-logits over valid pixels. ``out.logits`` is not included (the
    training loop supervises it).

    Args:
        out: model output; uses ``aux_logits`` and ``boundary_logits``.
        target: ``(N, 1, H, W)`` float {0, 1} crack mask.
        valid: optional ``(N, 1, H, W)`` pixel weights (1 = counted, 0 = ignored).

    Returns:
        Scalar tensor; 0 when the output has no extra heads.
    """
    heads = [(logits, target) for logits in out.aux_logits]
    if out.boundary_logits:
        ring = boundary_target(target)
        heads += [(logits, ring) for logits in out.boundary_logits]
    if not heads:
        return out.logits.new_zeros(())
    size = target.shape[-2:]
    weight = None if valid is None else valid.to(target.dtype)
    losses = []
    for logits, truth in heads:
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        bce = F.binary_cross_entropy_with_logits(logits.float(), truth.float(), reduction="none")
        if weight is None:
            losses.append(global_mean(bce))
        else:
            losses.append(
                global_sum((bce * weight).sum()) / global_sum(weight.sum()).clamp_min(1.0)
            )
    return torch.stack(losses).mean()
