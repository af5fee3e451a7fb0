"""Image encoders ``(B, C, H, W) -> (B, D)`` for seq-JEPA: the upstream CIFAR ResNet-18 and a small CNN."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from jepa_rate._validation import check_bool, check_choice, check_int

__all__ = ["ConvEncoder", "cifar_resnet18"]


def cifar_resnet18(*, in_channels: int = 3, zero_init_residual: bool = True) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem used by upstream seq-JEPA; outputs 512-d features.

    ``conv1`` becomes a 3x3 stride-1 convolution (no bias), the max-pool and the classifier are removed
    (``fc = Identity``), and residual branches end in zero-initialised BN (``zero_init_residual``, as
    upstream). The new ``conv1`` gets torchvision's Kaiming-normal (fan-out) initialisation. The returned
    module carries ``out_dim = 512``, which :class:`~jepa_rate.models.SeqJEPA` reads. 11,168,832 parameters
    for 3 input channels.

    torchvision is an optional dependency (``pip install "jepa-rate[examples]"``) imported on call.

    Args:
        in_channels: Image channels.
        zero_init_residual: Zero-initialise the last BN of every residual branch.

    Returns:
        The encoder.

    Raises:
        ImportError: If torchvision is not installed.
        TypeError: If ``in_channels`` is not an int.
        ValueError: If ``in_channels < 1``.

    Shape:
        - input: ``(B, in_channels, H, W)``
        - output: ``(B, 512)``

    Examples:
        >>> import torch
        >>> net = cifar_resnet18()
        >>> net(torch.randn(2, 3, 32, 32)).shape, sum(p.numel() for p in net.parameters())
        (torch.Size([2, 512]), 11168832)
    """
    check_int(in_channels, "in_channels")
    try:
        models = importlib.import_module("torchvision.models")
    except ImportError as err:
        raise ImportError(
            "cifar_resnet18 needs torchvision, an optional dependency of jepa_rate: "
            'install it with `pip install "jepa-rate[examples]"` or `pip install torchvision`'
        ) from err
    net: nn.Module = models.resnet18(
        weights=None, zero_init_residual=check_bool(zero_init_residual, "zero_init_residual")
    )
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.out_dim = 512  # type: ignore[assignment]
    return net


class ConvEncoder(nn.Module):
    """A small CNN encoder that trains in minutes on a laptop CPU.

    One stride-1 ``Conv3x3 -> BN -> ReLU`` block at the first width, then one stride-2 block per further
    width, global average pooling, and an optional linear projection to ``out_dim``. The defaults
    ``widths=(32, 64, 128, 256)`` give about 0.39 M parameters and 256-d features on 32x32 images.

    Args:
        in_channels: Image channels.
        widths: Channels of the successive blocks (each after the first halves the resolution).
        out_dim: If given, a final ``Linear(widths[-1], out_dim)``; else the features are ``widths[-1]``-d.
        norm: ``"batch"`` (BatchNorm after each convolution) or ``"none"``: the same network without it,
            whose batch statistics no longer couple the samples of a batch (a collapse control for
            teacherless methods, see ``docs/concepts/seq_jepa.md``).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``widths`` is empty or a size is not positive.

    Shape:
        - input: ``(B, in_channels, H, W)``
        - output: ``(B, out_dim)``

    Examples:
        >>> import torch
        >>> enc = ConvEncoder(out_dim=64)
        >>> enc(torch.randn(4, 3, 32, 32)).shape, enc.out_dim
        (torch.Size([4, 64]), 64)
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64, 128, 256),
        out_dim: int | None = None,
        norm: Literal["batch", "none"] = "batch",
    ) -> None:
        super().__init__()
        check_int(in_channels, "in_channels")
        check_choice(norm, "norm", ("batch", "none"))
        widths = tuple(widths)
        if not widths:
            raise ValueError(f"widths must name at least one block, got {widths!r}")
        for i, width in enumerate(widths):
            check_int(width, f"widths[{i}]")
        blocks: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            blocks += [
                nn.Conv2d(channels, width, kernel_size=3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(width) if norm == "batch" else nn.Identity(),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head: nn.Module = (
            nn.Identity() if out_dim is None else nn.Linear(channels, check_int(out_dim, "out_dim"))
        )
        self.out_dim = channels if out_dim is None else out_dim
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Encodes images ``(B, C, H, W)`` to features ``(B, out_dim)``."""
        if x.ndim != 4:
            raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
        out: Tensor = self.head(self.features(x))
        return out
