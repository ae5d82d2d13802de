"""The built-in networks of the papers pqz reproduces, for MNIST (28x28x1) and CIFAR (32x32x3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet300100(nn.Module):
    """LeNet-300-100: the fully connected MNIST network of Deep Compression (266,610 parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (batch, 784)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet-5 as in Deep Compression: 20 and 50 5x5 filters, 500 hidden units."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)  # (batch, 20, 12, 12)
        x = F.max_pool2d(self.conv2(x), 2)  # (batch, 50, 4, 4)
        x = F.relu(self.fc1(x.flatten(1)))  # (batch, 500)
        return self.fc2(x)


class AlexNetCifar(nn.Module):
    """AlexNet's five convolutions and three fully connected layers, scaled for 32x32 input."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 32 -> 15
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 15 -> 7
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 7 -> 3
        )
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(256 * 3 * 3, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(1024, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (batch, 256, 3, 3)
        return self.classifier(x.flatten(1))


VGG16_LAYERS = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG16Cifar(nn.Module):
    """VGG-16 with batch norm for CIFAR: 13 3x3 convolutions, a 512-512-512 classifier (15.3M)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in VGG16_LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            assert isinstance(item, int)
            layers += [
                nn.Conv2d(in_channels, item, kernel_size=3, padding=1),
                nn.BatchNorm2d(item),
                nn.ReLU(inplace=True),
            ]
            in_channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (batch, 512, 1, 1)
        return self.classifier(x.flatten(1))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a residual; `pad_shortcut`: He et al.'s parameter-free option A."""

    def __init__(self, in_planes: int, planes: int, stride: int, pad_shortcut: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad_shortcut = pad_shortcut
        self.stride = stride
        self.extra_channels = planes - in_planes
        self.shortcut: nn.Module = nn.Identity()
        if not pad_shortcut and (stride != 1 or in_planes != planes):
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad_shortcut and (self.stride != 1 or self.extra_channels):
            # Option A: subsample, then zero-pad the new channels on both sides.
            half = self.extra_channels // 2
            x = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, half, half))
        else:
            x = self.shortcut(x)
        return F.relu(out + x)


class ResNetCifar(nn.Module):
    """ResNet for 32x32 input: a 3x3 stem, stages of basic blocks, global pooling, one Linear."""

    def __init__(
        self,
        blocks_per_stage: tuple[int, ...],
        widths: tuple[int, ...],
        num_classes: int,
        pad_shortcut: bool,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for index, (n_blocks, planes) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            blocks = []
            for block in range(n_blocks):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, pad_shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)  # (batch, channels, h, w)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (batch, channels)
        return self.fc(x)


def resnet18_cifar(num_classes: int = 10) -> ResNetCifar:
    """ResNet-18 for CIFAR (11.2M parameters), 1x1 projection shortcuts."""
    return ResNetCifar((2, 2, 2, 2), (64, 128, 256, 512), num_classes, pad_shortcut=False)


def resnet20_cifar(num_classes: int = 10) -> ResNetCifar:
    """He et al.'s ResNet-20 for CIFAR (0.27M parameters), zero-padding shortcuts."""
    return ResNetCifar((3, 3, 3), (16, 32, 64), num_classes, pad_shortcut=True)
