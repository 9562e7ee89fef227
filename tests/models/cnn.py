"""Small vision models written for the tests: a ResNet-style CNN, a MobileNet-style block and
an EfficientNet-style MBConv network; and ResNet-18's and ResNet-50's layouts for the
benchmarks.

They cover the ops the model-family tests promise: conv, batch norm, relu, max pool, residual
add, global average pool, linear; depthwise and pointwise conv, hardswish, squeeze-excite;
ReLU6, TensorFlow-style SAME padding (an explicit pad computed at build time or from the input
size at run time), AdaptiveAvgPool2d. Batch-norm statistics are randomized so that folding or
dropping them would change results.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual name


def _randomize_batch_norms(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """A residual block's shortcut: identity, or a strided 1x1 conv and batch norm."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a (projected) shortcut, then relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """A ResNet-style classifier: stem conv + max pool, two stages, global pool, linear."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)
        _randomize_batch_norms(self, seed=0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(image)))
        return self.fc(torch.flatten(self.pool(x), 1))


class _ImageNetResNet(nn.Module):
    """torchvision's ResNet layout around `blocks()` (called between the stem and the head,
    so parameters are drawn in torchvision's order): a 64-channel 7x7 / 2 stem and max pool,
    the blocks, global pool, linear from `features` to 1000 classes; batch-norm statistics
    randomized. Random weights: for speed, not accuracy."""

    def __init__(self, blocks: Callable[[], list[nn.Module]], features: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        self.stages = nn.Sequential(*blocks())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(features, 1000)
        _randomize_batch_norms(self, seed=0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(image))), 1))


class ResNet18(_ImageNetResNet):
    """ResNet-18's layout (torchvision's resnet18 without the download): four stages of two
    BasicBlocks (64, 128, 256, 512 channels, the last three halving the size); 11.7M
    parameters, 1.8 GMACs at 224x224."""

    def __init__(self) -> None:
        def blocks() -> list[nn.Module]:
            out: list[nn.Module] = []
            cin = 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                out += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout)]
                cin = cout
            return out

        super().__init__(blocks, 512)


class Bottleneck(nn.Module):
    """ResNet-50's block (torchvision's v1.5: the stride on the 3x3 conv): 1x1 down to
    `width`, 3x3, 1x1 up to 4 x `width`, each with batch norm, plus a (projected) shortcut."""

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = 4 * width
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class ResNet50(_ImageNetResNet):
    """ResNet-50's layout (torchvision's resnet50 without the download): four stages of 3,
    4, 6 and 3 Bottlenecks (widths 64, 128, 256, 512; 256 to 2048 output channels); 25.6M
    parameters, 4.1 GMACs at 224x224."""

    def __init__(self) -> None:
        def blocks() -> list[nn.Module]:
            out: list[nn.Module] = []
            cin = 64
            for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for i in range(count):
                    out.append(Bottleneck(cin, width, stride if i == 0 else 1))
                    cin = 4 * width
            return out

        super().__init__(blocks, 2048)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion (unless `expand` is 1), depthwise 3x3, linear 1x1
    projection, BatchNorm and ReLU6; a residual add when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2's layout (torchvision's mobilenet_v2 without the download): a 32-channel
    stride-2 stem, 17 inverted residual blocks (expansion 6, depthwise 3x3), a 1x1 conv to
    1280 channels, global pool, linear to 1000 classes; 3.5M parameters, 0.3 GMACs at
    224x224. Random weights: for speed, not accuracy."""

    # (expansion, channels, blocks, stride of the first)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 32, 3, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU6(),
        ]
        cin = 32
        for expand, cout, blocks, stride in self.SETTINGS:
            for i in range(blocks):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, num_classes)
        _randomize_batch_norms(self, seed=3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(image)), 1))


class SqueezeExcite(nn.Module):
    """Channel attention: global pool, reduce, relu, expand, hardsigmoid, scale."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(s))))
        return x * s


class MobileNetBlock(nn.Module):
    """A MobileNetV3 inverted residual: pointwise expand, depthwise 3x3, squeeze-excite,
    pointwise project, residual add; hardswish activations."""

    def __init__(self, channels: int = 16, expansion: int = 4) -> None:
        super().__init__()
        hidden = channels * expansion
        self.expand = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(),
        )
        self.se = SqueezeExcite(hidden, hidden // 4)
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False),
                                     nn.BatchNorm2d(channels))  # fmt: skip
        _randomize_batch_norms(self, seed=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.se(self.depthwise(self.expand(x))))


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow SAME padding along one axis: (before, after), the extra pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dStaticSamePadding(nn.Conv2d):
    """Conv with SAME padding worked out for a fixed image size and applied by an explicit
    ZeroPad2d, as efficientnet-pytorch's layer of the same name does."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        image_size: tuple[int, int],
        **kwargs: int,
    ) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, **kwargs)
        top, bottom = same_pads(image_size[0], kernel, stride)
        left, right = same_pads(image_size[1], kernel, stride)
        self.static_padding: nn.Module = nn.Identity()
        if top or bottom or left or right:
            self.static_padding = nn.ZeroPad2d((left, right, top, bottom))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_padding(x))


class Conv2dDynamicSamePadding(nn.Conv2d):
    """Conv with SAME padding computed from the input's size on every call (math.ceil, max,
    F.pad), as efficientnet-pytorch's dynamic variant does."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, **kwargs: int) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.size()[-2:]
        kh, kw = self.weight.size()[-2:]
        sh, sw = self.stride
        oh, ow = math.ceil(ih / sh), math.ceil(iw / sw)
        pad_h = max((oh - 1) * sh + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pad_w = max((ow - 1) * sw + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk with SAME padding, optional squeeze-excite
    (AdaptiveAvgPool2d(1), sigmoid gate), 1x1 project; ReLU6; residual when shapes allow."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        kernel: int,
        stride: int,
        expand: int,
        se: bool,
        image_size: tuple[int, int],
        dynamic_padding: bool,
    ) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()
        )
        conv: nn.Module
        if dynamic_padding:
            conv = Conv2dDynamicSamePadding(
                hidden, hidden, kernel, stride, groups=hidden, bias=False
            )
        else:
            conv = Conv2dStaticSamePadding(
                hidden, hidden, kernel, stride, image_size, groups=hidden, bias=False
            )
        self.depthwise = nn.Sequential(conv, nn.BatchNorm2d(hidden), nn.ReLU6())
        self.se: nn.Module | None = None
        if se:
            reduced = max(1, cin // 4)
            self.se = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(hidden, reduced, 1),
                nn.ReLU6(),
                nn.Conv2d(reduced, hidden, 1),
                nn.Sigmoid(),
            )
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(self.expand(x))
        if self.se is not None:
            h = h * self.se(h)
        h = self.project(h)
        return x + h if self.residual else h


class TinyMBConvNet(nn.Module):
    """An EfficientNet/MobileNetV2-style ImageNet classifier in miniature: a stride-2 stem with
    SAME padding, three MBConv blocks (one strided, two with squeeze-excite), a 1x1 head conv,
    AdaptiveAvgPool2d(1) and a Linear head. `dynamic_padding` computes the depthwise convs'
    SAME pads from the input size at run time instead of fixing them for `image_size`."""

    def __init__(
        self,
        image_size: tuple[int, int] = (32, 32),
        num_classes: int = 10,
        *,
        dynamic_padding: bool = False,
    ) -> None:
        super().__init__()
        h, w = image_size
        self.stem = nn.Sequential(
            Conv2dStaticSamePadding(3, 8, 3, 2, image_size, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
        )
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        blocks = []
        for cin, cout, kernel, stride, se in [
            (8, 8, 3, 1, True),
            (8, 16, 5, 2, False),
            (16, 16, 3, 1, True),
        ]:
            blocks.append(
                MBConvBlock(
                    cin,
                    cout,
                    kernel=kernel,
                    stride=stride,
                    expand=2,
                    se=se,
                    image_size=(h, w),
                    dynamic_padding=dynamic_padding,
                )
            )
            h, w = math.ceil(h / stride), math.ceil(w / stride)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(32, num_classes)
        _randomize_batch_norms(self, seed=2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(image)))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))
