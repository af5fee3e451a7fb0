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


def test_conv_encoder_without_norm_treats_samples_independently() -> None:
    torch.manual_seed(0)
    plain, normed = ConvEncoder(widths=(4, 8), norm="none"), ConvEncoder(widths=(4, 8))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in normed.modules()) == 2
    x = torch.randn(4, 3, 16, 16)
    # In training mode a sample's features depend on its batch only through batch statistics.
    torch.testing.assert_close(plain(x)[:1], plain(x[:1]))
    assert not torch.allclose(normed(x)[:2], normed(x[:2]))
    with pytest.raises(ValueError, match="norm"):
        ConvEncoder(norm="layer")  # type: ignore[arg-type]
