"""The torch modules a detector is built from beyond torchvision's own (imports torch: only
:func:`napari_clumps.model.build_detector` imports this module, when a network is built)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool


class TimmFPN(nn.Module):
    """A timm encoder's last four stages (strides 4-32) + an FPN with a stride-64 max-pool level."""

    def __init__(self, encoder: nn.Module, fpn_channels: int):
        super().__init__()
        n_levels = len(encoder.feature_info)
        self.indices = list(range(n_levels - 4, n_levels))
        encoder.prune_intermediate_layers(self.indices, prune_head=True, prune_norm=False)
        self.body = encoder
        in_channels = [encoder.feature_info[i]["num_chs"] for i in self.indices]
        self.fpn = FeaturePyramidNetwork(in_channels, fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor):
        features = self.body.forward_intermediates(x, indices=self.indices, intermediates_only=True)
        return self.fpn({str(i): f for i, f in enumerate(features)})


class FixedScaleTransform(GeneralizedRCNNTransform):
    """torchvision's transform, resizing by a fixed factor instead of to ``min_size``.

    Clumps are PSF-sized: the network must see them at the pixel size it was trained on,
    whatever the cutout's size, so the image is not stretched to a fixed side.
    """

    scale: float = 1.0

    @classmethod
    def replacing(cls, transform: GeneralizedRCNNTransform, scale: float) -> FixedScaleTransform:
        """The same normalisation as ``transform``, resizing by ``scale``."""
        new = cls(transform.min_size, transform.max_size, transform.image_mean, transform.image_std, size_divisible=32)
        new.scale = float(scale)
        return new

    def resize(self, image, target=None):
        if self.scale == 1.0:
            return image, target
        size = image.shape[-2:]
        image = torch.nn.functional.interpolate(
            image[None], scale_factor=self.scale, mode="bilinear", align_corners=False, recompute_scale_factor=True
        )[0]
        if target is not None and "boxes" in target:
            target["boxes"] = resize_boxes(target["boxes"], size, image.shape[-2:])
        return image, target
