"""Tests for the encoders: the upstream CIFAR ResNet-18 stem and the small ConvEncoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jepa_rate.models import ConvEncoder, cifar_resnet18


def test_cifar_resnet18_stem() -> None:
    net = cifar_resnet18()
    assert isinstance(net.conv1, nn.Conv2d) and net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity) and isinstance(net.fc, nn.Identity)
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 512)
    with pytest.raises(TypeError, match="zero_init_residual must be a bool"):
        cifar_resnet18(zero_init_residual="no")  # type: ignore[arg-type]


def test_conv_encoder_size() -> None:
    enc = ConvEncoder()
    assert 300_000 <= sum(p.numel() for p in enc.parameters()) <= 1_000_000
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, enc.out_dim)
    with pytest.raises(ValueError, match="widths"):
        ConvEncoder(widths=())
