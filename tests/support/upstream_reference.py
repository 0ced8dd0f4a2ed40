"""Independent, minimal re-implementations of the two UPSTREAM DANet module trees.

Written from `/work/shared/reference/danet-facts.md` (and the upstream code it describes), NOT from
danet_deploy: nothing here imports danet_deploy, so tests that compare the two are not circular.

- `OfficialDANet`: junfu1115/DANet (2020 code). Backbone under `pretrained.` (7x7 stem or the deep stem
  `conv1 = Sequential(conv3x3, BN, ReLU, conv3x3, BN, ReLU, conv3x3)` + `bn1`), head under `head.`
  (`conv5a`, `conv5c`, `sa`, `sc`, `conv51`, `conv52`, `conv6`, `conv7`, `conv8`). Upsampling with
  align_corners=True; forward returns (fused, pam_aux, cam_aux) like the official model.
- `MMSegDANet`: MMSegmentation `EncoderDecoder` with a ResNetV1c `backbone` (deep stem `stem.0..8`),
  a `DAHead` `decode_head` and an FCN `auxiliary_head` on layer3. Upsampling with align_corners=False
  (the 512x1024 configs); forward returns the fused logits only, like MMSeg's test-time path.

The state_dict keys and shapes of both are exactly the upstream ones; `randomize_` gives every weight,
bias, BN running statistic and attention gamma a non-trivial value so that any wrong mapping shows up
in the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


# --- backbone blocks (identical attribute names in both projects) ---------------------------------------


class Bottleneck(nn.Module):
    """Both projects' "pytorch"-style bottleneck: the stride sits on the 3x3 conv (conv2)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        return self.relu(out + residual)


def make_res_layer(inplanes: int, planes: int, dilations: Sequence[int], stride: int) -> nn.Sequential:
    """One ResNet stage; `dilations` lists the dilation of every block explicitly."""
    downsample = None
    if stride != 1 or inplanes != planes * 4:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * 4),
        )
    blocks = [Bottleneck(inplanes, planes, stride, dilations[0], downsample)]
    blocks += [Bottleneck(planes * 4, planes, 1, d) for d in dilations[1:]]
    return nn.Sequential(*blocks)


def stage_dilations(depth: int, layer4_dilations: Sequence[int]) -> list[list[int]]:
    """Per-block dilations of layer1..4 at output stride 8 (layer3: contracted first block, 1 then 2)."""
    n1, n2, n3, n4 = BLOCKS[depth]
    if len(layer4_dilations) != n4:
        raise ValueError(f"layer4 has {n4} blocks, got dilations {tuple(layer4_dilations)}")
    return [[1] * n1, [1] * n2, [1] + [2] * (n3 - 1), list(layer4_dilations)]


# --- official DANet (junfu1115/DANet, encoding/models) ---------------------------------------------------


class OfficialResNet(nn.Module):
    """encoding's dilated ResNet: `conv1`/`bn1` stem (7x7 or deep), `maxpool`, `layer1..4`, optional `fc`."""

    def __init__(
        self,
        depth: int = 50,
        width: int = 64,
        stem: Sequence[int] = (64, 64, 128),
        layer4_dilations: Sequence[int] = (2, 4, 4),
        with_fc: bool = False,
        fc_classes: int = 10,
    ):
        super().__init__()
        if len(stem) == 3:
            a, b, c = stem
            self.conv1 = nn.Sequential(
                conv3x3(3, a, stride=2),
                nn.BatchNorm2d(a),
                nn.ReLU(inplace=False),
                conv3x3(a, b),
                nn.BatchNorm2d(b),
                nn.ReLU(inplace=False),
                conv3x3(b, c),
            )
        else:
            (c,) = stem
            self.conv1 = nn.Conv2d(3, c, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        d1, d2, d3, d4 = stage_dilations(depth, layer4_dilations)
        self.layer1 = make_res_layer(c, width, d1, stride=1)
        self.layer2 = make_res_layer(width * 4, width * 2, d2, stride=2)
        self.layer3 = make_res_layer(width * 8, width * 4, d3, stride=1)
        self.layer4 = make_res_layer(width * 16, width * 8, d4, stride=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        if with_fc:
            self.fc = nn.Linear(width * 32, fc_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.layer4(self.layer3(x))


class PAM_Module(nn.Module):
    def __init__(self, in_dim: int):
        super().__init__()
        self.query_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        proj_query = self.query_conv(x).view(b, -1, w * h).permute(0, 2, 1)
        proj_key = self.key_conv(x).view(b, -1, w * h)
        attention = self.softmax(torch.bmm(proj_query, proj_key))
        proj_value = self.value_conv(x).view(b, -1, w * h)
        out = torch.bmm(proj_value, attention.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * out + x


class CAM_Module(nn.Module):
    def __init__(self, in_dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        proj_query = x.view(b, c, -1)
        proj_key = x.view(b, c, -1).permute(0, 2, 1)
        energy = torch.bmm(proj_query, proj_key)
        energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        attention = self.softmax(energy_new)
        out = torch.bmm(attention, x.view(b, c, -1)).view(b, c, h, w)
        return self.gamma * out + x


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=False)
    )


def _drop_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Dropout2d(0.1, False), nn.Conv2d(in_ch, out_ch, 1))


class DANetHead(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        inter = in_channels // 4
        self.conv5a = _conv_bn_relu(in_channels, inter)
        self.conv5c = _conv_bn_relu(in_channels, inter)
        self.sa = PAM_Module(inter)
        self.sc = CAM_Module(inter)
        self.conv51 = _conv_bn_relu(inter, inter)
        self.conv52 = _conv_bn_relu(inter, inter)
        self.conv6 = _drop_conv(inter, out_channels)
        self.conv7 = _drop_conv(inter, out_channels)
        self.conv8 = _drop_conv(inter, out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sa_conv = self.conv51(self.sa(self.conv5a(x)))
        sa_output = self.conv6(sa_conv)
        sc_conv = self.conv52(self.sc(self.conv5c(x)))
        sc_output = self.conv7(sc_conv)
        sasc_output = self.conv8(sa_conv + sc_conv)
        return sasc_output, sa_output, sc_output


class OfficialDANet(nn.Module):
    """`pretrained` + `head`; returns (fused, pam_aux, cam_aux), each upsampled with align_corners=True."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 50,
        width: int = 64,
        stem: Sequence[int] = (64, 64, 128),
        layer4_dilations: Sequence[int] = (2, 4, 4),
        with_fc: bool = False,
    ):
        super().__init__()
        self.pretrained = OfficialResNet(depth, width, stem, layer4_dilations, with_fc=with_fc)
        self.head = DANetHead(width * 32, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = x.shape[2:]
        outputs = self.head(self.pretrained(x))
        return tuple(F.interpolate(o, size, mode="bilinear", align_corners=True) for o in outputs)


# --- MMSegmentation (ResNetV1c + DAHead + FCNHead) ------------------------------------------------------


class ResNetV1c(nn.Module):
    """Deep stem 3 -> C/2 -> C/2 -> C (`stem.0..8`, conv/BN/ReLU x3), then `maxpool`, `layer1..4`."""

    def __init__(
        self,
        depth: int = 50,
        base_channels: int = 64,
        stem_channels: int | None = None,
        layer4_dilations: Sequence[int] = (2, 4, 4),
    ):
        super().__init__()
        c = base_channels if stem_channels is None else stem_channels
        self.stem = nn.Sequential(
            conv3x3(3, c // 2, stride=2),
            nn.BatchNorm2d(c // 2),
            nn.ReLU(inplace=False),
            conv3x3(c // 2, c // 2),
            nn.BatchNorm2d(c // 2),
            nn.ReLU(inplace=False),
            conv3x3(c // 2, c),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=False),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        d1, d2, d3, d4 = stage_dilations(depth, layer4_dilations)
        w = base_channels
        self.layer1 = make_res_layer(c, w, d1, stride=1)
        self.layer2 = make_res_layer(w * 4, w * 2, d2, stride=2)
        self.layer3 = make_res_layer(w * 8, w * 4, d3, stride=1)
        self.layer4 = make_res_layer(w * 16, w * 8, d4, stride=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.maxpool(self.stem(x))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4


class ConvModule(nn.Module):
    """mmcv ConvModule with BN + ReLU: `conv` (bias='auto' -> no bias with a norm), `bn`, `activate`."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.activate = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class Scale(nn.Module):
    """mmcv Scale: a 0-d learnable `scale`."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class PAM(nn.Module):
    """mmseg PAM (a _SelfAttentionBlock without matmul_norm / out projection) + gamma."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.key_project = nn.Conv2d(in_channels, channels, 1)
        self.query_project = nn.Conv2d(in_channels, channels, 1)
        self.value_project = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = Scale(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        query = self.query_project(x)
        query = query.reshape(*query.shape[:2], -1).permute(0, 2, 1)  # B, N, C'
        key = self.key_project(x)
        key = key.reshape(*key.shape[:2], -1)  # B, C', N
        value = self.value_project(x)
        value = value.reshape(*value.shape[:2], -1).permute(0, 2, 1)  # B, N, C
        sim_map = F.softmax(torch.matmul(query, key), dim=-1)  # no matmul_norm
        context = torch.matmul(sim_map, value).permute(0, 2, 1).reshape(b, -1, h, w)
        return self.gamma(context) + x


class CAM(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = Scale(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        proj_query = x.view(b, c, -1)
        proj_key = x.view(b, c, -1).permute(0, 2, 1)
        energy = torch.bmm(proj_query, proj_key)
        energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        attention = F.softmax(energy_new, dim=-1)
        out = torch.bmm(attention, x.view(b, c, -1)).view(b, c, h, w)
        return self.gamma(out) + x


class DAHead(nn.Module):
    def __init__(self, in_channels: int, channels: int, pam_channels: int, num_classes: int):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.pam_in_conv = ConvModule(in_channels, channels)
        self.pam = PAM(channels, pam_channels)
        self.pam_out_conv = ConvModule(channels, channels)
        self.pam_conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.cam_in_conv = ConvModule(in_channels, channels)
        self.cam = CAM()
        self.cam_out_conv = ConvModule(channels, channels)
        self.cam_conv_seg = nn.Conv2d(channels, num_classes, 1)

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(feat))

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = inputs[3]
        pam_feat = self.pam_out_conv(self.pam(self.pam_in_conv(x)))
        pam_out = self.pam_conv_seg(self.dropout(pam_feat))
        cam_feat = self.cam_out_conv(self.cam(self.cam_in_conv(x)))
        cam_out = self.cam_conv_seg(self.dropout(cam_feat))
        return self.cls_seg(pam_feat + cam_feat), pam_out, cam_out


class FCNHead(nn.Module):
    """The training-only auxiliary head on layer3 (`convs.0.{conv,bn}`, `conv_seg`)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.convs = nn.Sequential(ConvModule(in_channels, channels))

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(inputs[2])))


class MMSegDANet(nn.Module):
    """EncoderDecoder(backbone, decode_head, auxiliary_head); forward = test-time fused logits."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 50,
        base_channels: int = 64,
        layer4_dilations: Sequence[int] = (2, 4, 4),
        align_corners: bool = False,
    ):
        super().__init__()
        w = base_channels
        self.align_corners = align_corners
        self.backbone = ResNetV1c(depth, base_channels=w, layer4_dilations=layer4_dilations)
        self.decode_head = DAHead(w * 32, w * 8, w, num_classes)  # 2048 -> 512, pam_channels 64 at w=64
        self.auxiliary_head = FCNHead(w * 16, w * 4, num_classes)  # 1024 -> 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.decode_head(self.backbone(x))[0]
        return F.interpolate(fused, x.shape[2:], mode="bilinear", align_corners=self.align_corners)


# --- helpers --------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, pam_gamma: float = 0.5, cam_gamma: float = 0.3) -> nn.Module:
    """Random weights, biases and BN statistics (variance-preserving), non-zero attention gammas; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
        elif isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.copy_(torch.rand(n, generator=gen) * 0.6 + 0.5)
            module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) * 0.8 + 0.6)
            module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
    for name, param in model.named_parameters():
        if name.endswith(("sa.gamma", "pam.gamma.scale")):
            param.fill_(pam_gamma)
        elif name.endswith(("sc.gamma", "cam.gamma.scale")):
            param.fill_(cam_gamma)
    return model.eval()


# --- SA-Net (wofmanaf/SA-Net, models/sa_resnet.py `sa_layer`), as published -----------------------------------


class sa_layer(nn.Module):  # upstream name
    """Constructs a Channel Spatial Group module (SA-Net's reference code, unchanged in substance)."""

    def __init__(self, channel: int, groups: int = 64):
        super().__init__()
        self.groups = groups
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.cweight = nn.Parameter(torch.zeros(1, channel // (2 * groups), 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, channel // (2 * groups), 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, channel // (2 * groups), 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, channel // (2 * groups), 1, 1))
        self.sigmoid = nn.Sigmoid()
        self.gn = nn.GroupNorm(channel // (2 * groups), channel // (2 * groups))

    @staticmethod
    def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
        b, _, h, w = x.shape
        x = x.reshape(b, groups, -1, h, w)
        x = x.permute(0, 2, 1, 3, 4)
        return x.reshape(b, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = x.reshape(b * self.groups, -1, h, w)
        x_0, x_1 = x.chunk(2, dim=1)
        xn = self.avg_pool(x_0)
        xn = self.cweight * xn + self.cbias
        xn = x_0 * self.sigmoid(xn)
        xs = self.gn(x_1)
        xs = self.sweight * xs + self.sbias
        xs = x_1 * self.sigmoid(xs)
        out = torch.cat([xn, xs], dim=1)
        out = out.reshape(b, -1, h, w)
        return self.channel_shuffle(out, 2)


class SELayer(nn.Module):
    """Squeeze-and-Excitation (Hu et al.) as commonly written: pooled vector -> Linear -> ReLU -> Linear -> sigmoid."""

    def __init__(self, channel: int, hidden: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channel), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        return x * self.fc(y).view(b, c, 1, 1)
