#!/usr/bin/env python3
"""The model zoo: real architectures exported to ONNX the way users export them, in five export
settings, with float64 PyTorch references (loss, gradients, running statistics, one SGD step and one
SAM step) that onnxsam is checked against.

Not run in CI (needs torch + torchvision). Setup as for tools/export_models.py, plus torchvision:
    .venv/bin/pip install torchvision
    .venv/bin/python tools/zoo/zoo.py                 # full widths -> zoo/ (git-ignored, ~1.5 GB, ~4 min)
    .venv/bin/python tools/zoo/zoo.py --narrow        # tiny widths -> tests/fixtures/zoo/ (~9.1 MB, ~2 min)
    .venv/bin/python tools/zoo/zoo.py --narrow --only resnet18 vit --out /tmp/z
Options: --out DIR, --narrow, --only ARCH..., --batch B (8), --seed S (0), --list (architectures and
parameter counts only), --no-check (skip the onnxruntime check), --settings S... (a subset: only those
files are exported again; where DIR/<arch>/ already holds meta.json, batch.npz and reference.npz of the
same variant, batch and seed, the references are not recomputed (batch.npz must equal the seeded batch
and reference.npz's param/ the seeded initial weights, else it stops), meta.json keeps everything else
and the other settings' entries, whose files are only inspected again; e.g. adding a setting to an
existing zoo: --settings legacy_train),
--bn-from-file-only (export nothing: add or refresh only reference.npz's bn_after_from_file/legacy_train/ and
meta.json's legacy_train bn_from_file_* / f32_bn_from_file_* from the existing legacy_train.onnx files; the
references must be this variant's, batch's and seed's, as for --settings; no other file changes),
--stack-traces keep|strip (default: strip with --narrow, keep otherwise: the dynamo exporter writes the
Python stack trace of every node into its metadata, ~40% of a small file, with this machine's paths;
strip empties those values and changes nothing else).

Architectures (folder names): resnet18 preact_wrn mobilenet_v2 mobilenet_v3_small efficientnet_b0
shufflenet_v2 squeezenet densenet convnext regnet vit transformer_encoder mlp_mixer norm_cnn lstm gru
conv1d mixconv (MixNet-style uneven torch.split groups with their own depthwise kernels, chained
twice) bn_batchstats (BatchNorm with track_running_stats=False: batch statistics in train and eval, no
running-statistics buffers) tied_embedding (token ids in [0, 10), Embedding(10, d), mean, Linear-GELU-LayerNorm,
Linear(d, 10) whose weight IS the embedding's: one Parameter used twice, named embed.weight)
unet (small U-Net classifier: MaxPool2d down x2; up by F.interpolate bilinear align_corners=False, nn.Upsample
nearest, bilinear align_corners=True, all exported as Resize; skip concatenation). torchvision constructors where they exist, num_classes=10, dropout / stochastic depth off, fresh
seeded init (except ViT's head, which torchvision zero-initialises so that no gradient would reach the
encoder: drawn N(0, 0.02^2) here). Each has a FULL variant (standard widths, small input) and a NARROW
one (same modules and op kinds, tiny widths: 1-8 k parameters, mostly 16x16 inputs) for the committed
fixtures. `--list` prints them.

Export settings (DIR/<arch>/<setting>.onnx), all with a dynamic batch dimension, all but legacy_train
from model.eval():
  legacy         torch.onnx.export(dynamo=False, dynamic_axes=...), otherwise defaults
                 (do_constant_folding=True, default opset)
  legacy_nofold  the same with do_constant_folding=False
  dynamo         torch.onnx.export(dynamo=True, dynamic_shapes=({0: Dim("batch")},)), optimize=True
                 (default)
  dynamo_noopt   the same with optimize=False
  legacy_train   the legacy exporter in training mode, as users export a model to keep its BatchNorm
                 layers: model.train(), torch.onnx.export(dynamo=False,
                 training=torch.onnx.TrainingMode.TRAINING, opset_version=17, dynamic_axes=...),
                 do_constant_folding left at its default (True), then model.eval() again. Opset 17 on
                 purpose: an opset-17 / IR-8 file per architecture. BatchNormalization is written with
                 training_mode=1 and 3 outputs (batch statistics; new running statistics). The export
                 traces a train-mode forward, which updates the model's running statistics (and
                 num_batches_tracked): the file's running_mean / running_var initializers are those
                 updated values (meta.json: running_stat_initializers), and the zoo restores the model's
                 buffers afterwards. A train forward of this file therefore starts from those statistics:
                 its reference is bn_after_from_file/legacy_train/, not bn_after/ (below). meta.json records the export's warnings (export_warnings; torch warns
                 that constant folding may mutate parameters in training mode: constant_folding_warning).
Where the dynamic batch fails, each setting falls back to a static batch (meta.json: dynamic_batch_error,
dynamic_batch_requested "none (static fallback)"); the legacy exporter fails so on BatchNorm without
running statistics (it reshapes by the traced batch size to compute the batch statistics).
A failed export is recorded (first line of the exception) in meta.json and the zoo goes on.

References (DIR/<arch>/), all from the same freshly initialised (seeded) float32 weights:
  batch.npz      `input` (float32, or int64 token ids) with batch B, `y` int64 labels [B]
  reference.npz  (savez_compressed) PyTorch in TRAIN mode (BatchNorm uses batch statistics):
    loss, loss_per_sample                 float64 mean / per-sample cross-entropy
    grad/<param>                          float64 gradient of the mean loss, PyTorch's parameter names
    grad32/<param>                        the same computed in float32 (contiguous layout; not with --narrow)
    param/<param>                         initial values (float32)
    bn_after/<buffer>                     BatchNorm running_mean / running_var after that one float64
                                          train forward (module momentum, unbiased running_var)
    bn_after_from_file/legacy_train/<buffer>
                                          float64 running_mean / running_var after one train forward
                                          starting from the running statistics stored in legacy_train.onnx
                                          (file_running_stats: initializers by PyTorch name, or Identity
                                          aliases), what a train forward of that file must give; only with
                                          running statistics and a legacy_train file. meta.json's
                                          legacy_train entry: f32_bn_from_file_rel_error / _abs_error (per
                                          buffer, max over the two formats), f32_bn_from_file_rel_error_max,
                                          f32_bn_from_file_errors_by_format, bn_from_file_source
    sgd/<param>                           after one SGD(lr 0.1, momentum 0.9, weight_decay 5e-4) step,
                                          float64 (first step: buffer = g + wd*theta)
    sam/<param>                           after one SAM step (rho 0.05), float64: g = grad L(theta) (this
                                          forward updates BN statistics), e = rho*g/(||g||+1e-12) with ||g||
                                          over all parameters, g' = grad L(theta+e) (batch statistics,
                                          running statistics restored afterwards), then the SGD step
                                          above from theta with g' (weight decay g' + wd*theta)
    loss32, logits_eval                   float32 train loss (not with --narrow); float32 EVAL-mode logits
                                          (what the ORT check compares every exported file but
                                          legacy_train with; legacy_train, whose BatchNorm uses batch
                                          statistics, is compared with the float32 TRAIN-mode logits,
                                          computed on the fly and not stored: meta.json's ort.reference)
    bn_after32/<buffer>, sgd32/<param>,   bn_after, sgd and sam computed entirely in float32 by the same
    sam32/<param>                         code as the float64 ones (_train_references(dtype)), contiguous
                                          layout, stored as float32. Not with --narrow: the committed
                                          fixtures keep only the errors (meta.json), which is all the
                                          checkers need, and stay small
  meta.json      architecture, variant, input, batch, seed, versions, hyperparameters, parameters
                 (names, shapes), buffers, PyTorch's own float32 error: f32_rel_error / f32_abs_error per
                 parameter (||grad32-grad|| / ||grad||, ||grad32-grad||), f32_sgd_rel_error /
                 f32_sam_rel_error per parameter (||(step32-param)-(step-param)|| / ||step-param||) and
                 f32_sgd_abs_error / f32_sam_abs_error (the numerator), f32_bn_rel_error / f32_bn_abs_error
                 per buffer (||bn_after32-bn_after|| / ||bn_after||, the numerator), *_max over the tensors
                 that are not structurally ~0; and per setting: file, opset, IR version, dynamic batch,
                 export error, whether BatchNormalization survived, op histogram, initializer names that
                 are not PyTorch names, model/node metadata keys, BatchNormalization's training_mode,
                 outputs and where its mean / variance inputs come from (batchnorm), and the onnxruntime
                 check (max |ort - torch| on the batch and on its first 3 samples; ort.reference says
                 which PyTorch logits: eval mode, or train mode for legacy_train; the batch-3 reference is
                 PyTorch on those 3 samples where the logits depend on the batch, i.e. for train mode and
                 for BatchNorm without running statistics, else the first 3 rows of the batch's logits).
                 kinks, kink_bound (kink_margins; kink_note): the reference's activation decisions that
                 PyTorch's own float32 rounding can flip, i.e. pre-activations of a module with a kink
                 (nn.ReLU, ReLU6 / Hardtanh, LeakyReLU, PReLU, Hardswish, Hardsigmoid, ...; functional
                 calls such as F.relu are not seen) within that layer's float32 error of the kink, at
                 theta (grad) and at the SAM step's theta+eps (sam): [[module call, elements, least
                 distance, layer float32 error], ...]; and per comparison (grad, sgd, sam) and parameter a
                 first-order float64 bound on how far flipping any of them moves that tensor. check.py
                 excuses an engine's out-of-tolerance numbers as "float32 kink" only within that bound.

PyTorch's own float32 error (what the checkers scale their tolerance by: 3 x it) is measured over two
standard PyTorch float32 training paths: the default contiguous layout and memory_format=torch.channels_last
(the float32 model copy .to(memory_format=torch.channels_last), a 4-D float input
.contiguous(memory_format=torch.channels_last)); every f32_* error in meta.json is, per tensor, the MAX
over the two. Why: float32 gradients of ReLU/BatchNorm nets cross ReLU kinks depending on the summation
order, and one layout can happen to be far closer to float64 than the other (e.g. full WRN-16-2: ~2e-6
contiguous, 3e-3..2e-2 channels_last on most seeds), so one summation order is not "PyTorch's float32
error". Models without 4-D tensors get the same numbers from both. f32_errors_by_format gives each
format's errors ({"contiguous": {...}, "channels_last": {...}}, the same fields); the float32 arrays in
reference.npz are the contiguous run's.
"""
import argparse
import collections
import contextlib
import copy
import io
import json
import math
import os
import re
import sys
import time
import traceback
import warnings
from functools import partial

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models import efficientnet as tv_efficientnet
from torchvision.models import mobilenetv2 as tv_mobilenetv2
from torchvision.models import mobilenetv3 as tv_mobilenetv3
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.densenet import DenseNet
from torchvision.models.regnet import BlockParams, RegNet
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.shufflenetv2 import ShuffleNetV2
from torchvision.models.squeezenet import Fire, SqueezeNet
from torchvision.models.vision_transformer import VisionTransformer
from torchvision.ops.misc import Conv2dNormActivation

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = ["legacy", "legacy_nofold", "dynamo", "dynamo_noopt", "legacy_train"]
LEGACY_TRAIN_OPSET = 17
HP = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, rho=0.05)
VOCAB = 64
NUM_CLASSES = 10


# ---------------------------------------------------------------------------------------------------
# Architectures written here (no torchvision constructor)


class SmallResNet(ResNet):
    """torchvision's ResNet code (its _make_layer, forward and init) with torchvision's BasicBlock,
    a CIFAR stem (3x3 conv, no max-pool) and small widths."""

    def __init__(self, widths=(4, 8, 8, 16), layers=(1, 1, 1, 1), num_classes=NUM_CLASSES):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0])
        self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():  # as torchvision's ResNet
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


class PreActBlock(nn.Module):
    """Pre-activation wide-resnet block (the standard WRN code): BN-ReLU-conv3x3-BN-ReLU-conv3x3; a
    1x1 conv shortcut reading relu(bn1(x)) when the shape changes, else the identity on x."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal_in_out = cin == cout and stride == 1
        self.shortcut = None if self.equal_in_out else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        o = self.relu1(self.bn1(x))
        y = self.conv2(self.relu2(self.bn2(self.conv1(o))))
        return y + (x if self.equal_in_out else self.shortcut(o))


class PreActWRN(nn.Module):
    """WRN-depth-k, pre-activation: conv3x3 stem, three groups of (depth-4)/6 blocks, BN-ReLU-avgpool-fc."""

    def __init__(self, depth=16, stem=16, widths=(32, 64, 128), num_classes=NUM_CLASSES):
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        cin = stem
        groups = []
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(cin, w, (1 if i == 0 else 2) if j == 0 else 1))
                cin = w
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class TinySqueezeNet(SqueezeNet):
    """torchvision's SqueezeNet (1_1 layout: conv/2, ceil-mode max-pools, Fire modules, dropout, final
    1x1 conv + ReLU + adaptive avg-pool) with tiny Fire modules; forward and init as torchvision."""

    def __init__(self, num_classes=NUM_CLASSES, dropout=0.0):
        nn.Module.__init__(self)
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(16, 4, 8, 8),
            Fire(16, 4, 8, 8),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(16, 8, 16, 16),
        )
        final_conv = nn.Conv2d(32, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)


class TokenTransformer(nn.Module):
    """Token ids [N, T] -> nn.Embedding + learned positions -> nn.TransformerEncoder (post-LN, ReLU,
    batch_first) -> mean over tokens -> Linear."""

    def __init__(self, d=64, nhead=4, ff=256, layers=2, seq=16, vocab=VOCAB, num_classes=NUM_CLASSES):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, nhead, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x):
        h = self.encoder(self.embed(x) + self.pos)
        return self.head(h.mean(dim=1))


class MixerBlock(nn.Module):
    def __init__(self, tokens, dim, token_hidden, channel_hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))

    def forward(self, x):  # [N, tokens, dim]
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    """MLP-Mixer: patch-embedding conv, blocks of token-mixing and channel-mixing MLPs (LayerNorm,
    GELU), LayerNorm, mean over tokens, Linear."""

    def __init__(self, image=32, patch=4, dim=128, depth=4, token_hidden=64, channel_hidden=256,
                 num_classes=NUM_CLASSES):
        super().__init__()
        tokens = (image // patch) ** 2
        self.stem = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(*[MixerBlock(tokens, dim, token_hidden, channel_hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


class NormCNN(nn.Module):
    """conv-GroupNorm-ReLU, conv/2-InstanceNorm(affine)-ReLU, conv/2-GroupNorm-ReLU, global avg-pool, fc."""

    def __init__(self, widths=(32, 64, 128), groups=(8, 16), num_classes=NUM_CLASSES):
        super().__init__()
        c1, c2, c3 = widths
        self.conv1 = nn.Conv2d(3, c1, 3, 1, 1, bias=False)
        self.gn1 = nn.GroupNorm(groups[0], c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, 2, 1, bias=False)
        self.in2 = nn.InstanceNorm2d(c2, affine=True)
        self.conv3 = nn.Conv2d(c2, c3, 3, 2, 1, bias=False)
        self.gn3 = nn.GroupNorm(groups[1], c3)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x):
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.in2(self.conv2(x)))
        x = F.relu(self.gn3(self.conv3(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class TwinGroupNorm(nn.Module):
    """conv-GroupNorm-ReLU twice at one width, avg-pool, fc: two fresh GroupNorm layers hold equal
    affines (ones, zeros), which constant folding and the dynamo optimizer store once."""

    def __init__(self, width=8, groups=2, num_classes=NUM_CLASSES):
        super().__init__()
        self.c1, self.g1 = nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(groups, width)
        self.c2, self.g2 = nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(groups, width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = F.relu(self.g2(self.c2(F.relu(self.g1(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


class MixConvNet(nn.Module):
    """timm's MixNet mixed-kernel convolution in small: the channels split unevenly (torch.split with
    sizes), each group through a depthwise convolution of its own kernel size, concatenated,
    BatchNorm, ReLU; twice in a chain, so that the second split reads what the first made (the
    dynamo exporter without its optimizer writes each as SplitToSequence + SequenceAt)."""

    def __init__(self, splits=(3, 5), splits2=(5, 3), num_classes=NUM_CLASSES):
        super().__init__()
        width = sum(splits)
        assert sum(splits2) == width
        self.splits, self.splits2 = list(splits), list(splits2)
        self.stem, self.bn0 = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.mix1 = nn.ModuleList(nn.Conv2d(c, c, 2 * i + 3, padding=i + 1, groups=c, bias=False)
                                  for i, c in enumerate(self.splits))
        self.bn1 = nn.BatchNorm2d(width)
        self.mix2 = nn.ModuleList(nn.Conv2d(c, c, 2 * i + 3, padding=i + 1, groups=c, bias=False)
                                  for i, c in enumerate(self.splits2))
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(torch.cat([m(t) for m, t in zip(self.mix1, torch.split(x, self.splits, 1))], 1)))
        x = F.relu(self.bn2(torch.cat([m(t) for m, t in zip(self.mix2, torch.split(x, self.splits2, 1))], 1)))
        return self.fc(x.mean((2, 3)))


class RNNClassifier(nn.Module):
    """Token ids [N, T] -> nn.Embedding -> nn.LSTM / nn.GRU (batch_first) -> last hidden state of the
    last layer (both directions concatenated if bidirectional) -> Linear."""

    def __init__(self, cell, emb=32, hidden=64, layers=1, bidirectional=False, vocab=VOCAB,
                 num_classes=NUM_CLASSES):
        super().__init__()
        self.bidirectional = bidirectional
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = cell(emb, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x):
        _, h = self.rnn(self.embed(x))
        if isinstance(h, tuple):  # LSTM: (h_n, c_n)
            h = h[0]
        h = torch.cat([h[-2], h[-1]], dim=1) if self.bidirectional else h[-1]
        return self.fc(h)


class Conv1dNet(nn.Module):
    """[N, 4, 64] -> (Conv1d-BatchNorm1d-ReLU-MaxPool1d) x 2 -> AdaptiveAvgPool1d(1) -> Linear."""

    def __init__(self, cin=4, widths=(32, 64), num_classes=NUM_CLASSES):
        super().__init__()
        c1, c2 = widths
        self.features = nn.Sequential(
            nn.Conv1d(cin, c1, 5, padding=2), nn.BatchNorm1d(c1), nn.ReLU(inplace=True), nn.MaxPool1d(2),
            nn.Conv1d(c1, c2, 3, padding=1), nn.BatchNorm1d(c2), nn.ReLU(inplace=True), nn.MaxPool1d(2),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(c2, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class BNBatchStats(nn.Module):
    """conv3x3-BatchNorm2d-ReLU, conv3x3/2-BatchNorm2d(affine)-ReLU, global avg-pool, Linear-BatchNorm1d-
    ReLU, Linear. Every BatchNorm has track_running_stats=False: PyTorch normalises with the batch
    statistics in train AND eval mode, and there are no running-statistics buffers."""

    def __init__(self, widths=(16, 32), hidden=32, num_classes=NUM_CLASSES):
        super().__init__()
        c1, c2 = widths
        self.conv1 = nn.Conv2d(3, c1, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1, track_running_stats=False)
        self.conv2 = nn.Conv2d(c1, c2, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2, affine=True, track_running_stats=False)
        self.fc1 = nn.Linear(c2, hidden)
        self.bn3 = nn.BatchNorm1d(hidden, track_running_stats=False)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = F.relu(self.bn3(self.fc1(x)))
        return self.fc2(x)


def _conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """A small U-Net classifier. Encoder: conv3x3-BatchNorm2d-ReLU blocks at c1 (HxW), after MaxPool2d(2) at c2
    (H/2), after MaxPool2d(2) at c3 (H/4, the bottleneck). Decoder: F.interpolate(scale_factor=2, bilinear,
    align_corners=False) of the bottleneck, cat with the c2 skip, conv-BN-ReLU to c2; nn.Upsample(scale_factor=2,
    nearest) of that, cat with the c1 skip, conv-BN-ReLU to c1. Side branch: F.interpolate(scale_factor=2,
    bilinear, align_corners=True) of the H/2 decoder output. Head: cat(c1 decoder output, side branch),
    global avg-pool, Linear(c1 + c2, classes). Every upsampling exports as ONNX Resize."""

    def __init__(self, widths=(16, 32, 64), num_classes=NUM_CLASSES):
        super().__init__()
        c1, c2, c3 = widths
        self.enc1 = _conv_bn_relu(3, c1)
        self.enc2 = _conv_bn_relu(c1, c2)
        self.bottleneck = _conv_bn_relu(c2, c3)
        self.pool = nn.MaxPool2d(2)
        self.dec2 = _conv_bn_relu(c3 + c2, c2)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec1 = _conv_bn_relu(c2 + c1, c1)
        self.fc = nn.Linear(c1 + c2, num_classes)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        u2 = F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=False)
        d2 = self.dec2(torch.cat([u2, e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        side = F.interpolate(d2, scale_factor=2, mode="bilinear", align_corners=True)
        x = F.adaptive_avg_pool2d(torch.cat([d1, side], dim=1), 1).flatten(1)
        return self.fc(x)


class TiedEmbedding(nn.Module):
    """Token ids [N, T] in [0, vocab) -> nn.Embedding(vocab, d) -> mean over tokens -> Linear(d, d) -> GELU
    -> LayerNorm(d) -> Linear(d, vocab) whose weight IS the embedding's (tied as in language models: one
    Parameter used twice, listed once by named_parameters() as embed.weight; its gradient is the sum of
    both uses). The classes are the vocabulary (vocab = num_classes). PyTorch's default init throughout
    (the head's bias is drawn, not zero)."""

    def __init__(self, d=32, vocab=NUM_CLASSES):
        super().__init__()
        self.vocab = vocab  # make_batch draws the token ids in [0, vocab)
        self.embed = nn.Embedding(vocab, d)
        self.fc = nn.Linear(d, d)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.head.weight = self.embed.weight

    def forward(self, x):
        h = self.norm(self.act(self.fc(self.embed(x).mean(dim=1))))
        return self.head(h)


# ---------------------------------------------------------------------------------------------------
# Builders: (model, input shape without batch, input dtype, description)


def _reinit_mobilenet(modules):
    """torchvision MobileNet init for modules swapped in after construction."""
    for m in modules:
        for mm in m.modules():
            if isinstance(mm, nn.Conv2d):
                nn.init.kaiming_normal_(mm.weight, mode="fan_out")
                if mm.bias is not None:
                    nn.init.zeros_(mm.bias)
            elif isinstance(mm, nn.BatchNorm2d):
                nn.init.ones_(mm.weight)
                nn.init.zeros_(mm.bias)
            elif isinstance(mm, nn.Linear):
                nn.init.normal_(mm.weight, 0, 0.01)
                nn.init.zeros_(mm.bias)


def build_resnet18(narrow):
    if narrow:
        return SmallResNet(widths=(4, 4, 8, 8)), (3, 16, 16), torch.float32, \
            "torchvision ResNet code + BasicBlock, CIFAR stem, widths 4/4/8/8, one block per stage"
    m = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
    m.maxpool = nn.Identity()
    return m, (3, 32, 32), torch.float32, "torchvision resnet18, CIFAR stem (conv1 3x3/1, maxpool=Identity)"


def build_preact_wrn(narrow):
    if narrow:
        return PreActWRN(depth=10, stem=4, widths=(4, 8, 12)), (3, 16, 16), torch.float32, \
            "pre-activation WRN, depth 10 (1 block per group: identity, conv, conv shortcut), stem 4, widths 4/8/12"
    return PreActWRN(depth=16, stem=16, widths=(32, 64, 128)), (3, 32, 32), torch.float32, \
        "pre-activation WRN-16-2 (stem 16, widths 32/64/128)"


def build_mobilenet_v2(narrow):
    if not narrow:
        return torchvision.models.mobilenet_v2(num_classes=NUM_CLASSES, dropout=0.0), (3, 32, 32), torch.float32, \
            "torchvision mobilenet_v2"
    m = tv_mobilenetv2.MobileNetV2(
        num_classes=NUM_CLASSES, width_mult=0.25, dropout=0.0,
        inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 1, 2]],
    )
    # the 1280-channel last conv is hard-coded in torchvision: swap it (and the classifier) for 32 channels
    cin = m.features[-1][0].in_channels
    m.features[-1] = Conv2dNormActivation(cin, 32, kernel_size=1, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6)
    m.classifier[1] = nn.Linear(32, NUM_CLASSES)
    m.last_channel = 32
    _reinit_mobilenet([m.features[-1], m.classifier])
    return m, (3, 16, 16), torch.float32, \
        "torchvision MobileNetV2, width_mult 0.25, settings [[1,16,1,1],[6,24,2,2],[6,32,1,2]], last conv 32"


def build_mobilenet_v3_small(narrow):
    if not narrow:
        return torchvision.models.mobilenet_v3_small(num_classes=NUM_CLASSES, dropout=0.0), (3, 32, 32), \
            torch.float32, "torchvision mobilenet_v3_small"
    conf = partial(tv_mobilenetv3.InvertedResidualConfig, width_mult=0.25)
    setting = [
        conf(16, 3, 16, 16, True, "RE", 2, 1),
        conf(16, 3, 72, 24, False, "RE", 2, 1),
        conf(24, 3, 88, 24, False, "RE", 1, 1),
        conf(24, 5, 96, 40, True, "HS", 2, 1),
        conf(40, 3, 64, 40, True, "HS", 1, 1),
    ]
    m = tv_mobilenetv3.MobileNetV3(setting, last_channel=16, num_classes=NUM_CLASSES, dropout=0.0)
    return m, (3, 16, 16), torch.float32, \
        "torchvision MobileNetV3, width_mult 0.25, first 4 blocks of the small setting + one HS/SE residual block, last_channel 16"


def build_efficientnet_b0(narrow):
    if not narrow:
        return torchvision.models.efficientnet_b0(num_classes=NUM_CLASSES, dropout=0.0, stochastic_depth_prob=0.0), \
            (3, 32, 32), torch.float32, "torchvision efficientnet_b0"
    setting, _ = tv_efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    m = tv_efficientnet.EfficientNet(setting[:3], dropout=0.0, stochastic_depth_prob=0.0, num_classes=NUM_CLASSES,
                                     last_channel=32)
    return m, (3, 16, 16), torch.float32, \
        "torchvision EfficientNet, b0 config width 0.25 depth 0.25, first 3 stages, last_channel 32"


def build_shufflenet_v2(narrow):
    if not narrow:
        return torchvision.models.shufflenet_v2_x0_5(num_classes=NUM_CLASSES), (3, 64, 64), torch.float32, \
            "torchvision shufflenet_v2_x0_5"
    return ShuffleNetV2([2, 1, 1], [8, 16, 24, 32, 48], num_classes=NUM_CLASSES), (3, 16, 16), torch.float32, \
        "torchvision ShuffleNetV2, repeats [2,1,1], channels [8,16,24,32,48]"


def build_squeezenet(narrow):
    if not narrow:
        return torchvision.models.squeezenet1_1(num_classes=NUM_CLASSES, dropout=0.0), (3, 64, 64), torch.float32, \
            "torchvision squeezenet1_1"
    return TinySqueezeNet(), (3, 16, 16), torch.float32, "torchvision SqueezeNet code with tiny Fire modules"


def build_densenet(narrow):
    if not narrow:
        return DenseNet(growth_rate=12, block_config=(2, 2, 2), num_init_features=16, num_classes=NUM_CLASSES), \
            (3, 32, 32), torch.float32, "torchvision DenseNet growth 12, blocks (2,2,2), init features 16"
    return DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=NUM_CLASSES), \
        (3, 16, 16), torch.float32, "torchvision DenseNet growth 4, blocks (2,2), init features 8"


def build_convnext(narrow):
    if not narrow:
        cfg = [CNBlockConfig(32, 64, 2), CNBlockConfig(64, None, 2)]
    else:
        cfg = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)]
    shape = (3, 16, 16) if narrow else (3, 32, 32)
    return ConvNeXt(cfg, stochastic_depth_prob=0.0, num_classes=NUM_CLASSES), shape, torch.float32, \
        f"torchvision ConvNeXt {[(c.input_channels, c.out_channels, c.num_layers) for c in cfg]}"


def build_regnet(narrow):
    if not narrow:
        return torchvision.models.regnet_y_400mf(num_classes=NUM_CLASSES), (3, 32, 32), torch.float32, \
            "torchvision regnet_y_400mf (grouped convs, SE)"
    bp = BlockParams.from_init_params(depth=3, w_0=8, w_a=8.0, w_m=2.0, group_width=4, se_ratio=0.25)
    return RegNet(bp, num_classes=NUM_CLASSES, stem_width=8), (3, 16, 16), torch.float32, \
        "torchvision RegNet, BlockParams(depth 3, w_0 8, w_a 8, w_m 2, group_width 4, se 0.25), stem 8"


def build_vit(narrow):
    if not narrow:
        kw = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    else:
        kw = dict(image_size=16, patch_size=4, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    m = VisionTransformer(num_classes=NUM_CLASSES, dropout=0.0, attention_dropout=0.0, **kw)
    # torchvision zero-initialises the head: every gradient but the head's would be exactly 0
    nn.init.normal_(m.heads.head.weight, std=0.02)
    size = kw["image_size"]
    return m, (3, size, size), torch.float32, f"torchvision VisionTransformer {kw}, head re-initialised N(0, 0.02^2)"


def build_transformer_encoder(narrow):
    kw = dict(d=16, nhead=2, ff=32, layers=1) if narrow else dict(d=64, nhead=4, ff=256, layers=2)
    return TokenTransformer(**kw), (16,), torch.int64, f"Embedding(64) + positions + nn.TransformerEncoder {kw}"


def build_mlp_mixer(narrow):
    kw = dict(image=16, patch=4, dim=16, depth=2, token_hidden=8, channel_hidden=32) if narrow else \
        dict(image=32, patch=4, dim=128, depth=4, token_hidden=64, channel_hidden=256)
    return MLPMixer(**kw), (3, kw["image"], kw["image"]), torch.float32, f"MLP-Mixer {kw}"


def build_norm_cnn(narrow):
    kw = dict(widths=(8, 16, 16), groups=(2, 4)) if narrow else dict(widths=(32, 64, 128), groups=(8, 16))
    shape = (3, 16, 16) if narrow else (3, 32, 32)
    return NormCNN(**kw), shape, torch.float32, f"GroupNorm / InstanceNorm2d(affine) CNN {kw}"


def build_twin_groupnorm(narrow):
    width = 8 if narrow else 32
    return TwinGroupNorm(width), (3, 8, 8) if narrow else (3, 16, 16), torch.float32, \
        f"conv-GroupNorm-ReLU twice at width {width} (fresh, equal affines the exporters store once), pool, fc"


def build_mixconv(narrow):
    kw = dict(splits=(3, 5), splits2=(5, 3)) if narrow else dict(splits=(24, 40), splits2=(40, 24))
    shape = (3, 8, 8) if narrow else (3, 32, 32)
    return MixConvNet(**kw), shape, torch.float32, \
        f"MixNet-style mixed-kernel depthwise convolutions over uneven torch.split groups, twice chained {kw}"


def build_lstm(narrow):
    kw = dict(emb=8, hidden=12, layers=1) if narrow else dict(emb=32, hidden=64, layers=2)
    return RNNClassifier(nn.LSTM, **kw), (12,), torch.int64, f"Embedding(64) + nn.LSTM {kw} + last hidden -> Linear"


def build_gru(narrow):
    kw = dict(emb=8, hidden=12, layers=1) if narrow else dict(emb=32, hidden=64, layers=1)
    return RNNClassifier(nn.GRU, bidirectional=True, **kw), (12,), torch.int64, \
        f"Embedding(64) + bidirectional nn.GRU {kw} + last hidden (both directions) -> Linear"


def build_conv1d(narrow):
    kw = dict(widths=(8, 16)) if narrow else dict(widths=(32, 64))
    return Conv1dNet(**kw), (4, 64), torch.float32, f"Conv1d/BatchNorm1d/ReLU/MaxPool1d x2 {kw}"


def build_bn_batchstats(narrow):
    kw = dict(widths=(4, 8), hidden=8) if narrow else dict(widths=(16, 32), hidden=32)
    return BNBatchStats(**kw), (3, 16, 16), torch.float32, \
        f"conv-BN2d-ReLU, conv/2-BN2d(affine)-ReLU, avg-pool, Linear-BN1d-ReLU, Linear {kw}; every BatchNorm " \
        "track_running_stats=False (batch statistics in train and eval, no running-statistics buffers)"


def build_tied_embedding(narrow):
    d = 8 if narrow else 32
    return TiedEmbedding(d=d), (12,), torch.int64, \
        f"Embedding({NUM_CLASSES}, {d}) -> mean over tokens -> Linear({d}, {d}) -> GELU -> LayerNorm({d}) -> " \
        f"Linear({d}, {NUM_CLASSES}) whose weight is the embedding's (tied: one Parameter, embed.weight); " \
        f"token ids in [0, {NUM_CLASSES})"


def build_unet(narrow):
    kw = dict(widths=(4, 8, 8)) if narrow else dict(widths=(16, 32, 64))
    shape = (3, 16, 16) if narrow else (3, 32, 32)
    return UNet(**kw), shape, torch.float32, \
        f"U-Net classifier {kw}: conv-BN-ReLU, MaxPool2d x2, up by bilinear (align_corners=False) and nearest " \
        "with skip concatenation + conv-BN-ReLU, side branch bilinear (align_corners=True), avg-pool, Linear"


ARCHS = {
    "resnet18": build_resnet18,
    "preact_wrn": build_preact_wrn,
    "mobilenet_v2": build_mobilenet_v2,
    "mobilenet_v3_small": build_mobilenet_v3_small,
    "efficientnet_b0": build_efficientnet_b0,
    "shufflenet_v2": build_shufflenet_v2,
    "squeezenet": build_squeezenet,
    "densenet": build_densenet,
    "convnext": build_convnext,
    "regnet": build_regnet,
    "vit": build_vit,
    "transformer_encoder": build_transformer_encoder,
    "mlp_mixer": build_mlp_mixer,
    "norm_cnn": build_norm_cnn,
    "twin_groupnorm": build_twin_groupnorm,
    "mixconv": build_mixconv,
    "lstm": build_lstm,
    "gru": build_gru,
    "conv1d": build_conv1d,
    "bn_batchstats": build_bn_batchstats,
    "tied_embedding": build_tied_embedding,
    "unet": build_unet,
}


# ---------------------------------------------------------------------------------------------------
# References


def _vocab(model):
    """The token-id range [0, vocab) of an int64-input model: VOCAB unless the model says (model.vocab)."""
    return getattr(model, "vocab", VOCAB)


def make_batch(shape, dtype, batch, seed, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed + 1)
    if dtype == torch.int64:
        x = torch.randint(0, vocab, (batch,) + tuple(shape), generator=g)
    else:
        x = torch.randn((batch,) + tuple(shape), generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    return x, y


def _running_buffers(model):
    return [n for n, _ in model.named_buffers() if n.endswith("running_mean") or n.endswith("running_var")]


def _loss_grads(model, x, y):
    params = [p for _, p in model.named_parameters()]
    lps = F.cross_entropy(model(x), y, reduction="none")
    loss = lps.mean()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return loss, lps, grads


def _sgd_step(m, grads):
    """One torch.optim.SGD step (first step: momentum buffer = g + wd*theta) with the given gradients."""
    opt = torch.optim.SGD(m.parameters(), lr=HP["lr"], momentum=HP["momentum"], weight_decay=HP["weight_decay"])
    for p, g in zip(m.parameters(), grads):
        p.grad = g.clone()
    opt.step()


def _train_references(model, x, y, dtype, channels_last=False):
    """The train-mode references computed entirely in `dtype` (torch.float64: the references;
    torch.float32: PyTorch's own float32 versions), each part from a fresh deep copy of `model` cast to
    `dtype` (model itself is not touched). channels_last: the copies are converted with
    .to(memory_format=torch.channels_last) and a 4-D float input with
    .contiguous(memory_format=torch.channels_last) (the other standard PyTorch layout: same maths, other
    summation orders; a model without 4-D tensors gets the same numbers). Returns a dict: loss, lps
    (per-sample loss), grads (list, in named_parameters order), bn_after (running statistics after that
    one train forward), no_grad (parameters that the loss does not reach), sgd and sam ({name: parameter
    after the step})."""
    if x.is_floating_point():
        x = x.to(dtype)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)

    def fresh():
        m = copy.deepcopy(model).to(dtype)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        return m.train()

    r = {}

    # loss, gradients, running statistics after one train forward
    m = fresh()
    loss, lps, grads = _loss_grads(m, x, y)
    r["loss"], r["lps"], r["grads"] = loss, lps, grads
    bufs = dict(m.named_buffers())
    r["bn_after"] = {b: bufs[b].detach().clone() for b in _running_buffers(m)}
    r["no_grad"] = [n for n, p in m.named_parameters() if not p.requires_grad]

    # one SGD step
    m = fresh()
    _, _, g = _loss_grads(m, x, y)
    _sgd_step(m, g)
    r["sgd"] = {n: p.detach().clone() for n, p in m.named_parameters()}

    # one SAM step
    m = fresh()
    _, _, g = _loss_grads(m, x, y)  # clean forward: updates BN running statistics
    norm = torch.sqrt(sum((gi * gi).sum() for gi in g))
    theta = [p.detach().clone() for p in m.parameters()]
    saved = {n: b.detach().clone() for n, b in m.named_buffers()}
    with torch.no_grad():
        for p, gi in zip(m.parameters(), g):
            p.add_(HP["rho"] * gi / (norm + 1e-12))
    _, _, g_adv = _loss_grads(m, x, y)
    with torch.no_grad():
        for p, t in zip(m.parameters(), theta):
            p.copy_(t)
        bufs = dict(m.named_buffers())
        for n, b in saved.items():
            bufs[n].copy_(b)
    _sgd_step(m, g_adv)
    r["sam"] = {n: p.detach().clone() for n, p in m.named_parameters()}
    return r


def _rel(d, ref_norm):
    return d / ref_norm if ref_norm > 0 else (0.0 if d == 0 else math.inf)


# the memory formats PyTorch's own float32 error is measured over (the recorded error is the max)
F32_FORMATS = ("contiguous", "channels_last")
# the per-tensor error kinds (keys of _f32_errors' result; meta.json field f"f32_{kind}_error")
F32_KINDS = ("rel", "abs", "sgd_rel", "sgd_abs", "sam_rel", "sam_abs", "bn_rel", "bn_abs")


def _f32_errors(model, names, r64, r32):
    """PyTorch's float32 error of one float32 run r32 against the float64 run r64, per tensor, norms in
    float64: gradients (abs ||g32 - g||, rel / ||g||), the SGD and SAM updates theta' - theta (abs
    ||(step32 - theta) - (step - theta)||, rel / ||step - theta||) and the running statistics after the
    train forward (abs ||bn_after32 - bn_after||, rel / ||bn_after||)."""
    err = {k: {} for k in F32_KINDS}
    for n, g, g32 in zip(names, r64["grads"], r32["grads"]):
        d = (g32.double() - g).norm().item()
        err["abs"][n] = d
        err["rel"][n] = _rel(d, g.norm().item())
    params = dict(model.named_parameters())
    for step in ("sgd", "sam"):
        for n in names:
            theta = params[n].detach().double()
            u64 = r64[step][n] - theta
            u32 = r32[step][n].double() - theta
            d = (u32 - u64).norm().item()
            err[f"{step}_abs"][n] = d
            err[f"{step}_rel"][n] = _rel(d, u64.norm().item())
    for b, v64 in r64["bn_after"].items():
        d = (r32["bn_after"][b].double() - v64).norm().item()
        err["bn_abs"][b] = d
        err["bn_rel"][b] = _rel(d, v64.norm().item())
    return err


# ---------------------------------------------------------------------------------------------------
# Kinks: activation decisions of the float64 reference that PyTorch's own float32 rounding can flip

KINK_NOTE = ("kinks: per point (grad: the train forward at theta, for the gradients and the SGD step; sam: the SAM "
             "step's second forward, at theta+eps), [module call, elements, least distance, float32 error]: the float64 "
             "pre-activations of an activation module with a kink (ReLU, ReLU6/Hardtanh, LeakyReLU, PReLU, Hardswish, "
             "Hardsigmoid, ...; functional calls are not seen) within that layer's float32 error (max |x32 - x64| over "
             "the layer, worst of contiguous and channels_last) of the kink: decisions PyTorch's own float32 rounding "
             "can flip (elements exactly on the kink are structural and left out). kink_bound[grad|sgd|sam][param]: "
             "first-order upper bound on ||change|| of the gradient / SGD update / SAM update when any subset of them "
             "flips (float64; absent: 0; null: not computed, kink_bound_error says why). check.py excuses an engine's "
             "out-of-tolerance tensor as a float32 kink only within tolerance + that bound")
# at most this many near-kink elements per point (theta, theta+eps) get the flip bound (one backward each;
# the theta ones one float64 SAM gradient each); more: the bound is not computed (None)
KINK_BOUND_MAX_ELEMENTS = 64


def _kink_points(mod):
    """The kinks of an activation module: [(point, jump)], jump = f'(point+) - f'(point-) (where the
    derivative jumps: a float32 value on the other side of the point takes the other derivative), or
    None. Only modules can be hooked: functional calls (F.relu, torch.clamp, ...) are not seen."""
    name = type(mod).__name__
    if isinstance(mod, nn.Hardtanh):  # ReLU6 too
        return [(float(mod.min_val), 1.0), (float(mod.max_val), -1.0)]
    if isinstance(mod, nn.ReLU):
        return [(0.0, 1.0)]
    if isinstance(mod, nn.LeakyReLU):
        return [(0.0, 1.0 - mod.negative_slope)]
    if isinstance(mod, nn.PReLU):  # per channel: _flip_jump
        return [(0.0, None)]
    if isinstance(mod, nn.ELU) and mod.alpha != 1.0:
        return [(0.0, 1.0 - mod.alpha)]
    if isinstance(mod, nn.Threshold):
        return [(float(mod.threshold), 1.0)]
    if isinstance(mod, nn.Hardswish) or name in ("HardSwish", "HardSwishMe"):  # x * relu6(x + 3) / 6
        return [(-3.0, -0.5), (3.0, -0.5)]
    if isinstance(mod, nn.Hardsigmoid) or name in ("HardSigmoid", "HardSigmoidMe"):  # relu6(x + 3) / 6
        return [(-3.0, 1.0 / 6.0), (3.0, -1.0 / 6.0)]
    if name in ("HardMish", "HardMishMe"):  # 0.5 * x * clamp(x + 2, 0, 2)
        return [(-2.0, -1.0)]
    return None


class _KinkProbe:
    """Forward pre-hooks on every module with a kink (_kink_points) of a model: the input (pre-activation)
    of each call, keyed by module name ('name#k' for the k-th call of a module called more than once).
    ref (float64 pre-activations by key): store only max |x - ref| per key (the float32 runs). graph: keep
    the pre-activation and the output in the autograd graph (the module gets a clone of its input, the
    caller a clone of its output, so in-place activations and later in-place ops leave both intact)."""

    def __init__(self, model, ref=None, graph=False):
        self.ref, self.graph = ref, graph
        self.x, self.y, self.err, self.points, self.mods = {}, {}, {}, {}, {}
        self.calls, self.cur = collections.Counter(), {}
        self.handles = []
        for name, mod in model.named_modules():
            pts = _kink_points(mod)
            if pts and any(j != 0 for _, j in pts):
                self.handles.append(mod.register_forward_pre_hook(partial(self._pre, name, pts)))
                if graph:
                    self.handles.append(mod.register_forward_hook(partial(self._post, name)))

    def _pre(self, name, pts, mod, inp):
        self.calls[name] += 1
        key = name if self.calls[name] == 1 else f"{name}#{self.calls[name]}"
        self.cur[name] = key
        self.points[key], self.mods[key] = pts, mod
        x = inp[0]
        if self.ref is not None:
            r = self.ref[key]
            assert tuple(r.shape) == tuple(x.shape), f"{key}: {tuple(x.shape)} vs {tuple(r.shape)} in float64"
            self.err[key] = float((x.detach().double() - r).abs().max()) if x.numel() else 0.0
            return None
        if not self.graph:
            self.x[key] = x.detach().clone()
            return None
        self.x[key] = x
        return (x.clone(),) + tuple(inp[1:])

    def _post(self, name, mod, inp, out):
        self.y[self.cur[name]] = out
        return out.clone()

    def remove(self):
        for h in self.handles:
            h.remove()


def _kink_copy(model, dtype, channels_last=False):
    m = copy.deepcopy(model).to(dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m.train()


def _kink_input(x, dtype, channels_last=False):
    if x.is_floating_point():
        x = x.to(dtype)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    return x


def _sam_perturb(m, g):
    """theta + rho*g/(||g||+1e-12) in place, the same operations as _train_references' SAM step."""
    norm = torch.sqrt(sum((gi * gi).sum() for gi in g))
    with torch.no_grad():
        for p, gi in zip(m.parameters(), g):
            p.add_(HP["rho"] * gi / (norm + 1e-12))


def _near_kinks(probe, err):
    """{key: [(flat index, distance to the nearest kink, that kink, its jump)]} of the float64
    pre-activations whose distance to a kink is <= err[key] (the layer's float32 error). An element
    exactly ON a kink is structural (a ReLU of a ReLU, zero padding: float32 gets the same exact value),
    not a rounding accident, and is left out."""
    out = {}
    for key, x in probe.x.items():
        e = err.get(key, 0.0)
        pts = [(k, j) for k, j in probe.points[key] if j != 0]
        if e <= 0 or x.numel() == 0 or not pts:
            continue
        v = x.detach().reshape(-1)
        d, which = torch.stack([(v - k).abs() for k, _ in pts]).min(0)
        idx = ((d <= e) & (d > 0)).nonzero().reshape(-1)
        if idx.numel():
            out[key] = [(i, float(d[i]), pts[w][0], pts[w][1]) for i, w in zip(idx.tolist(), which[idx].tolist())]
    return out


def _flip_jump(probe, key, i, k, j):
    """The change of the derivative when element i's decision flips: -jump on the right of the kink
    (the derivative drops to the left one), +jump on the left; PReLU: jump 1 - weight[channel]."""
    x = probe.x[key].detach().reshape(-1)
    if j is None:  # PReLU
        w = probe.mods[key].weight.detach().reshape(-1)
        shape = probe.x[key].shape
        c = 0 if w.numel() == 1 else (i // int(np.prod(shape[2:], dtype=np.int64))) % shape[1]
        j = 1.0 - float(w[c])
    return -j if float(x[i]) > k else j


def _kink_summary(near, err):
    return [[key, len(v), min(d for _, d, _, _ in v), err[key]] for key, v in near.items()]


def _loss_of(m, x, y):
    return F.cross_entropy(m(x), y)


def kink_margins(model, x, y, r64, r32):
    """The activation decisions of the float64 reference that PyTorch's own float32 rounding can flip, and
    how far flipping them can move the gradients and steps.

    kinks[point] = [[key, count, min distance, layer float32 error], ...] for point "grad" (the train
    forward at theta: gradients and the SGD step) and "sam" (the SAM step's second forward, at theta+eps):
    per call of an activation module with a kink (_kink_points: ReLU, ReLU6/Hardtanh, LeakyReLU, PReLU,
    ELU(alpha != 1), Threshold, Hardswish, Hardsigmoid, timm's HardMish), the float64 pre-activation
    elements whose distance to a kink is <= that layer's float32 error (max |x32 - x64| over the layer,
    the worst of the F32_FORMATS runs: x32 at theta, or at theta+eps32 with float32's own eps, against
    x64 at theta or theta+eps64); only layers with such elements.

    bound[comparison][param] (comparison: grad, sgd, sam; only nonzero entries): an upper bound, to first
    order, on ||change of that tensor|| when ANY subset of those decisions flips, in float64: a flip of
    element i (pre-activation x_i, output y_i, derivative jump J) changes the gradient by
    -+J * dL/dy_i * grad_theta x_i (the backward is linear in the activation derivatives; the forward
    moves by at most |x_i|), so grad: sum over theta's elements of |J dL/dy_i| ||grad_p x_i||; sgd: lr x
    that; sam: lr x (sum over theta's elements of ||g'(theta + eps(g + dg_i)) - g'(theta + eps(g))||,
    the SAM gradient recomputed from the flipped first gradient, plus the grad-style sum over the
    elements at theta+eps). bound[comparison] is None when a point it depends on (grad, sgd: theta;
    sam: both) has more than KINK_BOUND_MAX_ELEMENTS such elements, or when the hooked forward does not
    reproduce the reference gradient. Returns (kinks, bound, info): info["bound_error"] = {comparison:
    why its bound is None}."""
    names = [n for n, p in model.named_parameters()]
    lr = HP["lr"]
    x64 = _kink_input(x, torch.float64)
    kinks, info = {}, {"bound_error": {}}

    # float64 at theta, with the graph kept (the flip bound)
    m = _kink_copy(model, torch.float64)
    params = list(m.parameters())
    probe = _KinkProbe(m, graph=True)
    loss = _loss_of(m, x64, y)
    probe.remove()
    if not probe.x:
        return {"grad": [], "sam": []}, {"grad": {}, "sgd": {}, "sam": {}}, info
    g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)]
    same = all(torch.equal(a, b) for a, b in zip(g, r64["grads"]))
    if not same:
        dev = max(((a - b).norm() / b.norm().clamp_min(1e-300)).item() for a, b in zip(g, r64["grads"]))
        if dev > 1e-9:
            why = f"the hooked float64 forward's gradient differs from the reference's ({dev:.1e})"
            info["bound_error"] = {c: why for c in ("grad", "sgd", "sam")}

    # PyTorch's float32 error of every pre-activation at theta and at theta+eps32, per format
    pre64 = {k: v.detach() for k, v in probe.x.items()}
    err_theta, err_sam = {}, {}
    # float64 at theta+eps64 (graph kept: the flip bound at the SAM point)
    ms = _kink_copy(model, torch.float64)
    _sam_perturb(ms, r64["grads"])
    probe_s = _KinkProbe(ms, graph=True)
    loss_s = _loss_of(ms, x64, y)
    probe_s.remove()
    pre64_s = {k: v.detach() for k, v in probe_s.x.items()}
    for f, r in r32.items():
        cl = f == "channels_last"
        xf = _kink_input(x, torch.float32, cl)
        for pre, err, grads in ((pre64, err_theta, None), (pre64_s, err_sam, r["grads"])):
            mf = _kink_copy(model, torch.float32, cl)
            if grads is not None:
                _sam_perturb(mf, grads)
            pf = _KinkProbe(mf, ref=pre)
            mf(xf)  # with autograd on, as the training forward runs
            pf.remove()
            for key, e in pf.err.items():
                err[key] = max(err.get(key, 0.0), e)

    near = _near_kinks(probe, err_theta)
    near_s = _near_kinks(probe_s, err_sam)
    kinks = {"grad": _kink_summary(near, err_theta), "sam": _kink_summary(near_s, err_sam)}
    n, n_s = sum(len(v) for v in near.values()), sum(len(v) for v in near_s.values())
    cap = KINK_BOUND_MAX_ELEMENTS
    if not info["bound_error"]:
        for c, where, count in (("grad", "theta", n), ("sgd", "theta", n), ("sam", "theta", n),
                                ("sam", "theta+eps", n_s)):
            if count > cap and c not in info["bound_error"]:
                info["bound_error"][c] = f"{count} near-kink elements at {where}: more than {cap}, not bounded"
    bound = {c: None if c in info["bound_error"] else collections.defaultdict(float) for c in ("grad", "sgd", "sam")}

    def flip_grads(pr, lo, ps, nr):
        """(key, i, [d grad per param]) for every near-kink element: the gradient change of its flip."""
        keys = [k for k in nr if pr.y[k].requires_grad]
        if not keys:
            return
        a = torch.autograd.grad(lo, [pr.y[k] for k in keys], retain_graph=True, allow_unused=True)
        for key, ak in zip(keys, a):
            if ak is None:
                continue
            ak = ak.reshape(-1)
            for i, d, k, j in nr[key]:
                e = torch.zeros(pr.x[key].numel(), dtype=torch.float64)
                e[i] = _flip_jump(pr, key, i, k, j) * ak[i]
                if e[i] == 0:
                    continue
                dg = torch.autograd.grad(pr.x[key], ps, grad_outputs=e.reshape(pr.x[key].shape),
                                         retain_graph=True, allow_unused=True)
                yield key, i, [torch.zeros_like(p) if t is None else t for p, t in zip(ps, dg)]

    if bound["grad"] is not None:
        g_sam_ref = None
        for key, i, dg in flip_grads(probe, loss, params, near):
            for nme, t in zip(names, dg):
                v = t.norm().item()
                bound["grad"][nme] += v
                bound["sgd"][nme] += lr * v
            if bound["sam"] is None:
                continue
            # the SAM gradient at the perturbed point of the flipped first gradient
            if g_sam_ref is None:
                g_sam_ref = torch.autograd.grad(loss_s, list(ms.parameters()), retain_graph=True, allow_unused=True)
                g_sam_ref = [torch.zeros_like(p) if t is None else t for p, t in zip(ms.parameters(), g_sam_ref)]
            mi = _kink_copy(model, torch.float64)
            _sam_perturb(mi, [a + b for a, b in zip(r64["grads"], dg)])
            _, _, gi = _loss_grads(mi, x64, y)
            for nme, a, b in zip(names, gi, g_sam_ref):
                bound["sam"][nme] += lr * (a - b).norm().item()
    if bound["sam"] is not None:
        for key, i, dg in flip_grads(probe_s, loss_s, list(ms.parameters()), near_s):
            for nme, t in zip(names, dg):
                bound["sam"][nme] += lr * t.norm().item()
    bound = {c: None if b is None else {p: v for p, v in b.items() if v > 0} for c, b in bound.items()}
    return kinks, bound, info


def references(model, x, y, store_f32=True):
    """Everything in reference.npz, from deep copies (model itself is not touched), and PyTorch's own
    float32 errors (float32 vs float64 references) for meta.json. The float32 references are computed
    twice, contiguous and channels_last (_train_references): err[kind] is per tensor the max over the two
    formats, err["by_format"][format][kind] each one. store_f32=False (--narrow): the float32 arrays
    (grad32/, sgd32/, sam32/, bn_after32/, loss32) are left out of reference.npz, the errors are not."""
    names = [n for n, _ in model.named_parameters()]
    out = {f"param/{n}": p.detach().numpy().copy() for n, p in model.named_parameters()}
    r64 = _train_references(model, x, y, torch.float64)
    r32 = {f: _train_references(model, x, y, torch.float32, channels_last=(f == "channels_last"))
           for f in F32_FORMATS}
    unused = list(r64["no_grad"])

    # float64 loss, gradients, running statistics after one train forward
    out["loss"] = np.float64(r64["loss"].item())
    out["loss_per_sample"] = r64["lps"].detach().numpy()
    for n, g in zip(names, r64["grads"]):
        out[f"grad/{n}"] = g.numpy()
    for b, v in r64["bn_after"].items():
        out[f"bn_after/{b}"] = v.numpy()

    # float32 loss and gradients (the contiguous run)
    c32 = r32["contiguous"]
    if store_f32:
        out["loss32"] = np.float32(c32["loss"].item())
        for n, g in zip(names, c32["grads"]):
            out[f"grad32/{n}"] = g.numpy()
    err = {"grad_norm": {}, "bn_norm": {}}
    for n, g in zip(names, r64["grads"]):
        gn = g.norm().item()
        err["grad_norm"][n] = gn
        if gn == 0:
            unused.append(n)
    for b, v64 in r64["bn_after"].items():
        err["bn_norm"][b] = v64.norm().item()

    # eval-mode float32 logits (the ORT check's reference)
    me = copy.deepcopy(model).eval()
    with torch.no_grad():
        out["logits_eval"] = me(x).numpy()

    # one SGD step, one SAM step, float64
    for n in names:
        out[f"sgd/{n}"] = r64["sgd"][n].numpy()
    for n in names:
        out[f"sam/{n}"] = r64["sam"][n].numpy()

    # the float32 versions of the running statistics and of the two steps (the contiguous run)
    if store_f32:
        for b, v in c32["bn_after"].items():
            out[f"bn_after32/{b}"] = v.numpy()
        for n in names:
            out[f"sgd32/{n}"] = c32["sgd"][n].numpy()
        for n in names:
            out[f"sam32/{n}"] = c32["sam"][n].numpy()

    # PyTorch's float32 errors, per memory format and their max
    err["by_format"] = {f: _f32_errors(model, names, r64, r32[f]) for f in F32_FORMATS}
    for k in F32_KINDS:
        err[k] = {t: max(err["by_format"][f][k][t] for f in F32_FORMATS) for t in err["by_format"][F32_FORMATS[0]][k]}

    # the reference's activation decisions within PyTorch's float32 error of a kink (meta.json: kinks)
    t0 = time.time()
    try:
        kinks, bound, info = kink_margins(model, x, y, r64, r32)
        err["kinks"] = {"kinks": kinks, "kink_bound": bound, "kink_bound_error": info["bound_error"]}
    except Exception as e:  # noqa: BLE001 (the analysis must not cost the zoo its references)
        err["kinks"] = {"kinks": None, "kink_bound": None, "kink_bound_error": None, "kinks_error": _first_line(e)}
    err["kinks"]["kink_seconds"] = round(time.time() - t0, 2)
    return out, err, sorted(set(unused))


# the reference.npz prefix of the running statistics after one train forward from legacy_train.onnx's own
BN_FROM_FILE = "bn_after_from_file/legacy_train/"


def file_running_stats(path, buffers):
    """The running statistics stored in an ONNX file: ({buffer: float32 array}, {how found: count}). A
    buffer is the initializer of its PyTorch name, or one that a chain of Identity nodes aliases to that
    name ("identity_alias"). Raises KeyError for a buffer found neither way."""
    m = onnx.load(path)
    inits = {i.name: i for i in m.graph.initializer}
    identity = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "Identity"}
    stats, how = {}, collections.Counter()
    for b in buffers:
        name, hops = b, 0
        while name not in inits and name in identity and hops <= len(identity):
            name, hops = identity[name], hops + 1
        if name not in inits:
            raise KeyError(f"{b}: neither an initializer nor an Identity alias of one in {os.path.basename(path)}")
        stats[b] = onnx.numpy_helper.to_array(inits[name])
        how["initializer" if hops == 0 else "identity_alias"] += 1
    return stats, dict(how)


def _bn_after_from(model, x, stats, dtype, channels_last=False):
    """Running statistics after one train-mode forward on x of a deep copy of model (model itself is not
    touched) cast to dtype whose running statistics are first set to stats ({buffer: array});
    channels_last as in _train_references."""
    if x.is_floating_point():
        x = x.to(dtype)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    m = copy.deepcopy(model).to(dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    m.train()
    bufs = dict(m.named_buffers())
    with torch.no_grad():
        for b, v in stats.items():
            assert tuple(bufs[b].shape) == v.shape, f"{b}: {v.shape} in the file, {tuple(bufs[b].shape)} in the model"
            bufs[b].copy_(torch.from_numpy(np.array(v)).to(dtype))
        m(x)
    return {b: bufs[b].detach().clone() for b in stats}


def legacy_train_bn_references(model, x, path, negligible_bn):
    """For legacy_train.onnx, whose running statistics are PyTorch's after the export's train forward (not
    the fresh ones the other files store): the running statistics after one train-mode forward on x
    STARTING FROM THE FILE'S (file_running_stats), float64 -> reference.npz's
    bn_after_from_file/legacy_train/<buffer>, and PyTorch's own float32 error of them (max over
    F32_FORMATS, as every f32_* field) -> meta.json's legacy_train entry. Returns (arrays, entry fields);
    both empty without running statistics."""
    buffers = _running_buffers(model)
    if not buffers:
        return {}, {}
    for mod in model.modules():  # momentum=None (cumulative average) would need num_batches_tracked too
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            assert mod.momentum is not None, "BatchNorm with momentum=None"
    stats, how = file_running_stats(path, buffers)
    r64 = _bn_after_from(model, x, stats, torch.float64)
    by_format = {}
    for f in F32_FORMATS:
        r32 = _bn_after_from(model, x, stats, torch.float32, channels_last=(f == "channels_last"))
        e = {"rel": {}, "abs": {}}
        for b, v64 in r64.items():
            d = (r32[b].double() - v64).norm().item()
            e["abs"][b] = d
            e["rel"][b] = _rel(d, v64.norm().item())
        by_format[f] = e

    def fields(e):
        return {"f32_bn_from_file_rel_error": e["rel"], "f32_bn_from_file_abs_error": e["abs"],
                "f32_bn_from_file_rel_error_max": max((v for b, v in e["rel"].items() if b not in negligible_bn),
                                                      default=0.0)}
    err = {k: {b: max(by_format[f][k][b] for f in F32_FORMATS) for b in buffers} for k in ("rel", "abs")}
    entry = {
        "bn_from_file_note": f"reference.npz's {BN_FROM_FILE}<buffer> (float64): PyTorch's running statistics "
                             "after one train-mode forward on the batch starting from the running statistics "
                             "stored in this file (PyTorch's after the export's train forward, not the fresh "
                             "ones), what one train forward of this file must give; f32_bn_from_file_*: "
                             "PyTorch's own float32 error of them (max over contiguous and channels_last; the "
                             "maximum skips running_stats_with_negligible_value)",
        "bn_from_file_source": how,
        **fields(err),
        "f32_bn_from_file_errors_by_format": {f: fields(by_format[f]) for f in F32_FORMATS},
    }
    return {BN_FROM_FILE + b: v.numpy() for b, v in r64.items()}, entry


def _replace_in_reference(d, prefix, arrays):
    """reference.npz with its arrays under prefix replaced by `arrays`, every other array as it is (the
    file is rewritten only when that changes something: _savez_unless_same)."""
    path = os.path.join(d, "reference.npz")
    with np.load(path) as r:
        kept = {k: r[k] for k in r.files if not k.startswith(prefix)}
    _savez_unless_same(path, True, **kept, **arrays)


def add_bn_from_file(arch, args, out_root):
    """--bn-from-file-only: legacy_train_bn_references for an existing DIR/<arch>/ (the references must be
    this model's, as for --settings), written into reference.npz and meta.json's legacy_train entry;
    nothing is exported, no other file is touched. Returns meta (None when there is nothing to do)."""
    torch.manual_seed(args.seed)
    model, shape, dtype, _ = ARCHS[arch](args.narrow)
    model.eval()
    d = os.path.join(out_root, arch)
    reuse = _reusable(d, args, model, shape, dtype, subset=False)
    if reuse is None:
        sys.exit(f"{d}: no meta.json / batch.npz / reference.npz of this variant, batch and seed")
    meta, x, _, _ = reuse
    entry = meta["settings"].get("legacy_train")
    path = os.path.join(d, "legacy_train.onnx")
    if entry is None or entry.get("error") is not None or not os.path.exists(path):
        print(f"{arch}: no legacy_train.onnx", file=sys.stderr)
        return None
    arrays, fields = legacy_train_bn_references(model, x, path, meta.get("running_stats_with_negligible_value", []))
    _replace_in_reference(d, BN_FROM_FILE, arrays)
    before = json.dumps(meta, indent=1)
    for k in [k for k in entry if k.startswith(("bn_from_file_", "f32_bn_from_file_"))]:
        del entry[k]
    entry.update(fields)
    if json.dumps(meta, indent=1) != before:
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
    return meta


# ---------------------------------------------------------------------------------------------------
# Export and inspection


def _first_line(e):
    s = f"{type(e).__name__}: {e}".strip()
    return s.splitlines()[0][:500] if s else type(e).__name__


def _group_warnings(caught):
    """Caught warnings, one entry per (category, message up to quoted names) in first-seen order:
    {category, message (the first one's, up to 1000 characters), count}."""
    groups = {}
    for w in caught:
        msg = str(w.message).strip()
        key = (w.category.__name__, re.sub(r"'[^']*'", "'…'", msg))
        if key not in groups:
            groups[key] = {"category": w.category.__name__, "message": msg[:1000], "count": 0}
        groups[key]["count"] += 1
    return list(groups.values())


def export_legacy_train(model, x, path, dims=None):
    """The legacy exporter in training mode, as users export a model to keep its BatchNorm layers:
    model.train(), export with training=TrainingMode.TRAINING (constant folding at its default, on),
    model.eval() again. The export traces a train-mode forward, which updates the model's BatchNorm
    running statistics and num_batches_tracked: they are restored afterwards (the changed ones are
    listed), and the file's running-statistics initializers are compared with the values before and
    after that forward. The export's warnings are returned grouped."""
    notes = {"training": "torch.onnx.TrainingMode.TRAINING", "opset_requested": LEGACY_TRAIN_OPSET,
             "do_constant_folding": "default (True)", "model_mode_during_export": "train"}
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.train()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            notes.update(_legacy_export(model, x, path, dims, training=torch.onnx.TrainingMode.TRAINING,
                                        opset_version=LEGACY_TRAIN_OPSET))
    finally:
        model.eval()
        after = {n: b.detach().clone() for n, b in model.named_buffers()}
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(saved[n])
    notes["export_warnings"] = _group_warnings(caught)
    notes["constant_folding_warning"] = next(
        (w["message"] for w in notes["export_warnings"] if "constant folding" in w["message"]), None)
    changed = [n for n in saved if not torch.equal(saved[n], after[n])]
    bn_buffers = [n for n in saved if n.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")]
    notes["export_changed_model_buffers"] = {
        "count": len(changed),
        "all_batchnorm_buffers": bool(changed) and set(changed) == set(bn_buffers),
        **({} if bool(changed) and set(changed) == set(bn_buffers) else {"names": changed}),
    }
    notes["model_buffers_restored"] = True
    inits = {i.name: i for i in onnx.load(path).graph.initializer}
    rs = {"before_export": [], "after_export_forward": [], "other": [], "absent": []}
    for b in _running_buffers(model):
        if b not in inits:
            rs["absent"].append(b)
            continue
        v = onnx.numpy_helper.to_array(inits[b])
        same = lambda t: v.shape == tuple(t.shape) and np.array_equal(v, t.numpy())  # noqa: E731
        k = "before_export" if same(saved[b]) else "after_export_forward" if same(after[b]) else "other"
        rs[k].append(b)
    notes["running_stat_initializers"] = {
        "note": "the file's running_mean / running_var initializers vs the model's buffers before the export "
                "and after the export's train-mode trace forward (one momentum update on the export batch)",
        "counts": {k: len(v) for k, v in rs.items()},
        **{k: v for k, v in rs.items() if v and k != "after_export_forward"},
    }
    return notes


def _export_dynamic_or_static(model, x, path, dynamic, how, **kw):
    """torch.onnx.export with a dynamic batch (`dynamic`: the exporter's keyword for it); if that fails,
    with a static batch (meta.json: dynamic_batch_error, e.g. BatchNorm without running statistics in
    the legacy exporter, whose export reshapes to the traced batch size). Returns the notes."""
    notes = {}
    try:
        torch.onnx.export(model, (x,), path, **dynamic, **kw)
        notes["dynamic_batch_requested"] = how
    except Exception as e:  # noqa: BLE001
        notes["dynamic_batch_error"] = _first_line(e)
        if os.path.exists(path):
            os.remove(path)
        torch.onnx.export(model, (x,), path, **kw)
        notes["dynamic_batch_requested"] = "none (static fallback)"
    return notes


def _legacy_export(model, x, path, dims=None, **kw):
    """torch.onnx.export(dynamo=False) with dynamic axes (dims: {axis: name}, default the batch), else
    a static shape."""
    dims = dims or {0: "batch"}
    return _export_dynamic_or_static(
        model, x, path, dict(dynamic_axes={"input": dict(dims), "logits": {0: "batch"}}),
        f"dynamic_axes={{'input': {dict(dims)}}}",
        dynamo=False, input_names=["input"], output_names=["logits"], **kw)


def export(model, x, path, setting, dims=None):
    """Export one setting; returns a dict of notes (dynamic-batch method, fallbacks). dims: the input's
    dynamic axes {axis: name} (default {0: "batch"}; text models add the sequence axis)."""
    if setting == "legacy_train":
        return export_legacy_train(model, x, path, dims)
    if setting.startswith("legacy"):
        return _legacy_export(model, x, path, dims, do_constant_folding=(setting == "legacy"))
    dims = dims or {0: "batch"}
    return _export_dynamic_or_static(
        model, x, path, dict(dynamic_shapes=({a: torch.export.Dim(n) for a, n in dims.items()},)),
        "dynamic_shapes=({" + ", ".join(f'{a}: torch.export.Dim("{n}")' for a, n in dims.items()) + "},)",
        dynamo=True, input_names=["input"], output_names=["logits"], optimize=(setting == "dynamo"),
        external_data=False)


def strip_stack_traces(path):
    """Empty the pkg.torch.onnx.stack_trace node metadata (the key stays): the committed fixtures then hold
    no absolute paths of the exporting machine, and the dynamo files shrink by ~40%. Nothing else changes."""
    m = onnx.load(path)
    n = 0
    for node in m.graph.node:
        for p in node.metadata_props:
            if p.key == "pkg.torch.onnx.stack_trace" and p.value:
                p.value = ""
                n += 1
    if n == 0:
        return None
    onnx.save(m, path)
    return f"pkg.torch.onnx.stack_trace emptied on {n} nodes"


def inspect_onnx(path, param_names, buffer_names):
    m = onnx.load(path)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    inp = m.graph.input[0]
    dim0 = inp.type.tensor_type.shape.dim[0]
    ops = collections.Counter(n.op_type for n in m.graph.node)
    func_ops = collections.Counter(n.op_type for f in m.functions for n in f.node)
    known = set(param_names) | set(buffer_names)
    inits = [i.name for i in m.graph.initializer]
    node_meta = sorted({p.key for n in m.graph.node for p in n.metadata_props})
    init_set = set(inits)
    producer = {o: n.op_type for n in m.graph.node for o in n.output}
    graph_inputs = {i.name for i in m.graph.input}

    def source(name):
        if name in init_set:
            return "initializer"
        if name in graph_inputs:
            return "graph input"
        return producer.get(name, "missing")

    bn_nodes = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    bn_attr = lambda n, a, default: next(  # noqa: E731
        (onnx.helper.get_attribute_value(t) for t in n.attribute if t.name == a), default)
    batchnorm = {
        "training_mode": dict(sorted(collections.Counter(str(bn_attr(n, "training_mode", 0)) for n in bn_nodes).items())),
        "outputs": dict(sorted(collections.Counter(str(sum(bool(o) for o in n.output)) for n in bn_nodes).items())),
        "mean_var_from": dict(sorted(collections.Counter(
            f"{source(n.input[3])} / {source(n.input[4])}" for n in bn_nodes if len(n.input) >= 5).items())),
    }
    return {
        "file": os.path.basename(path),
        "bytes": os.path.getsize(path),
        "opset": opset,
        "ir_version": m.ir_version,
        "producer": f"{m.producer_name} {m.producer_version}",
        "input": {"name": inp.name, "dim0": dim0.dim_param or dim0.dim_value},
        "output_names": [o.name for o in m.graph.output],
        "dynamic_batch": bool(dim0.dim_param),
        "batchnorm_nodes": ops.get("BatchNormalization", 0),
        "batchnorm": batchnorm,
        "op_histogram": dict(sorted(ops.items())),
        "function_count": len(m.functions),
        "function_op_histogram": dict(sorted(func_ops.items())),
        "n_nodes": len(m.graph.node),
        "n_initializers": len(inits),
        "initializers_pytorch_named": sum(n in known for n in inits),
        "initializers_other_names": [n for n in inits if n not in known],
        "pytorch_params_missing": [n for n in param_names if n not in inits],
        "model_metadata_keys": [p.key for p in m.metadata_props],
        "node_metadata_keys": node_meta,
        "value_info_count": len(m.graph.value_info),
    }


def ort_check(path, x, ref, ref3=None):
    """max |onnxruntime - ref| on the batch x, and on its first 3 samples against ref3 (PyTorch on x[:3];
    default ref[:3], right where a sample's logits do not depend on the rest of the batch)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    res = {}
    got = sess.run(None, {name: x})[0]
    res["max_abs_diff"] = float(np.abs(got - ref).max())
    res["max_rel_diff"] = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
    try:
        got3 = sess.run(None, {name: x[:3]})[0]
        res["batch3_max_abs_diff"] = float(np.abs(got3 - (ref[:3] if ref3 is None else ref3)).max())
    except Exception as e:  # noqa: BLE001
        res["batch3_error"] = _first_line(e)
    return res


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def _f32_fields(err, negligible, negligible_bn):
    """meta.json's float32-error fields from _f32_errors-shaped per-tensor errors; the maxima skip the
    structurally ~0 tensors (params_with_negligible_gradient, running_stats_with_negligible_value)."""
    def mx(d, skip):
        return max((v for k, v in d.items() if k not in skip), default=0.0)
    return {
        "f32_rel_error": err["rel"],
        "f32_abs_error": err["abs"],
        "f32_rel_error_max": mx(err["rel"], negligible),
        "f32_sgd_rel_error": err["sgd_rel"],
        "f32_sgd_abs_error": err["sgd_abs"],
        "f32_sgd_rel_error_max": mx(err["sgd_rel"], negligible),
        "f32_sam_rel_error": err["sam_rel"],
        "f32_sam_abs_error": err["sam_abs"],
        "f32_sam_rel_error_max": mx(err["sam_rel"], negligible),
        "f32_bn_rel_error": err["bn_rel"],
        "f32_bn_abs_error": err["bn_abs"],
        "f32_bn_rel_error_max": mx(err["bn_rel"], negligible_bn),
    }


def _savez_unless_same(path, compressed, **arrays):
    """np.savez(_compressed), but an existing file holding the same arrays (names, dtypes, shapes, values)
    is left as it is: the zip entries carry the write time, so a regeneration would otherwise change every
    committed .npz byte-wise without changing its content."""
    if os.path.exists(path):
        try:
            with np.load(path) as old:
                same = set(old.files) == set(arrays) and all(
                    old[k].dtype == np.asarray(v).dtype and old[k].shape == np.shape(v)
                    and old[k].tobytes() == np.ascontiguousarray(v).tobytes() for k, v in arrays.items())
        except Exception:  # noqa: BLE001
            same = False
        if same:
            return
    (np.savez_compressed if compressed else np.savez)(path, **arrays)


def _parameter_aliases(model):
    """{named_parameters() name: [the other names of the same tensor]} for tied parameters."""
    first, out = {}, {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out.setdefault(first[id(p)], []).append(n)
        else:
            first[id(p)] = n
    return out


def _batch_stats_in_eval(model):
    """Whether some BatchNorm has no running statistics (track_running_stats=False): it normalises with
    the batch statistics in eval mode too, so a sample's eval logits depend on the rest of the batch."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None for m in model.modules())


def _logits(model, x, train, dtype=torch.float32):
    """Logits of a deep copy of model (model itself is not touched) cast to dtype, in train or eval mode."""
    m = copy.deepcopy(model).to(dtype).train(train)
    with torch.no_grad():
        return m(x.to(dtype) if x.is_floating_point() else x).numpy()


def _ort_reference(model, x, train, batch_dependent, what, ref=None):
    """What ort_check compares with: (logits on x (ref, else computed), logits on x[:3] or None (then the
    first 3 rows), a description, and PyTorch's own float32 error of both: max |float32 - float64|)."""
    ref = _logits(model, x, train) if ref is None else ref
    ref3 = _logits(model, x[:3], train) if batch_dependent else None
    f64 = {"reference_f32_vs_f64_max_abs": float(np.abs(ref - _logits(model, x, train, torch.float64)).max())}
    b64 = _logits(model, x[:3], train, torch.float64)
    f64["batch3_reference_f32_vs_f64_max_abs"] = float(np.abs((ref[:3] if ref3 is None else ref3) - b64).max())
    return ref, ref3, what, f64


def _reusable(d, args, model, shape, dtype, subset=True):
    """(meta, x, y, logits_eval) of an existing DIR/<arch>/ whose references are kept when only some
    settings are exported again (--settings: a subset), or None (everything is made afresh). The kept
    references must be this model's: batch.npz must be the seeded batch and reference.npz's param/ the
    seeded initial weights, else it stops."""
    if subset and set(SETTINGS) <= set(args.settings):
        return None
    files = [os.path.join(d, f) for f in ("meta.json", "batch.npz", "reference.npz")]
    if not all(os.path.exists(f) for f in files):
        return None
    with open(files[0]) as f:
        meta = json.load(f)
    if (meta.get("variant"), meta.get("batch_size"), meta.get("seed")) != \
            ("narrow" if args.narrow else "full", args.batch, args.seed):
        return None
    x, y = make_batch(shape, dtype, args.batch, args.seed, _vocab(model))
    with np.load(files[1]) as b:
        if not (np.array_equal(b["input"], x.numpy()) and np.array_equal(b["y"], y.numpy())):
            sys.exit(f"{d}: batch.npz is not the seeded batch: export all settings again")
    with np.load(files[2]) as r:
        for n, p in model.named_parameters():
            if f"param/{n}" not in r.files or not np.array_equal(r[f"param/{n}"], p.detach().numpy()):
                sys.exit(f"{d}: reference.npz's param/{n} is not the seeded initial weight: export all settings again")
        logits_eval = r["logits_eval"]
    return meta, x, y, logits_eval


def run_arch(arch, args, out_root):
    torch.manual_seed(args.seed)
    model, shape, dtype, desc = ARCHS[arch](args.narrow)
    model.eval()
    d = os.path.join(out_root, arch)
    os.makedirs(d, exist_ok=True)
    params = [(n, list(p.shape)) for n, p in model.named_parameters()]
    buffers = [(n, list(b.shape)) for n, b in model.named_buffers()]
    param_names = [n for n, _ in params]
    buffer_names = [n for n, _ in buffers]
    reuse = _reusable(d, args, model, shape, dtype)
    if reuse is not None:
        # only the selected settings are exported again; the references, meta.json's other fields and
        # the other settings' entries stay (their files are inspected again: inspect_onnx's fields)
        meta, x, y, logits_eval = reuse
        for f in os.listdir(d):
            if any(f == f"{s}.onnx" or f.startswith(f"{s}.onnx.") for s in args.settings):
                os.remove(os.path.join(d, f))
        kept = {s: e for s, e in meta["settings"].items() if s not in args.settings}
        for s, e in kept.items():
            path = os.path.join(d, e.get("file", f"{s}.onnx"))
            if e.get("error") is None and os.path.exists(path):
                e.update(inspect_onnx(path, param_names, buffer_names))
        now = {"torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__}
        if meta.get("versions") != now:
            print(f"{arch}: references made with {meta.get('versions')}, exporting {args.settings} with {now}",
                  file=sys.stderr)
    else:
        meta, x, y, logits_eval, kept = _fresh_references(model, arch, args, d, shape, dtype, desc, params, buffers)
    if args.check:
        ort_refs = {}
        if set(args.settings) - {"legacy_train"}:
            ort_refs["eval"] = _ort_reference(model, x, False, _batch_stats_in_eval(model),
                                              "logits_eval (reference.npz): PyTorch float32, eval mode", logits_eval)
        if "legacy_train" in args.settings:
            ort_refs["train"] = _ort_reference(model, x, True, True,
                                               "PyTorch float32 logits in TRAIN mode (BatchNorm with batch statistics), "
                                               "computed from the same weights (not stored)")
    else:
        ort_refs = None
    return _export_settings(model, arch, args, d, x, param_names, buffer_names, ort_refs, meta, kept)


def _fresh_references(model, arch, args, d, shape, dtype, desc, params, buffers):
    """All settings' .onnx files in d removed, the references computed and written (batch.npz and
    reference.npz, unless they hold the same arrays), meta.json's fields but the settings'; returns
    (meta, x, y, logits_eval, kept settings: none)."""
    for f in os.listdir(d):
        if f.endswith(".onnx") or f.endswith(".onnx.data"):
            os.remove(os.path.join(d, f))
    x, y = make_batch(shape, dtype, args.batch, args.seed, _vocab(model))
    t0 = time.time()
    ref, err, unused = references(model, x, y, store_f32=not args.narrow)
    # gradients that are 0 in exact arithmetic (a bias followed by a normalisation over the same axis:
    # a BN shift before the next conv+BN, a conv bias before BN, ...): float64 leaves ~1e-17 there
    gmax = max(err["grad_norm"].values(), default=0.0)
    negligible = [n for n, v in err["grad_norm"].items() if v <= 1e-9 * gmax]
    # running statistics that are 0 in exact arithmetic (the running_mean of a BN whose input has zero
    # batch mean per channel, e.g. a bias-free 1x1 conv of a previous BN's output): ~1e-17 in float64
    bmax = max(err["bn_norm"].values(), default=0.0)
    negligible_bn = [b for b, v in err["bn_norm"].items() if v <= 1e-9 * bmax]
    t_ref = time.time() - t0
    _savez_unless_same(os.path.join(d, "batch.npz"), False, input=x.numpy(), y=y.numpy())
    # legacy_train's bn_after_from_file/ arrays are replaced after its export (_export_settings); until then the
    # existing ones are kept, so that an unchanged reference.npz is not rewritten
    kept_from_file = {}
    if "legacy_train" in args.settings and os.path.exists(os.path.join(d, "reference.npz")):
        try:
            with np.load(os.path.join(d, "reference.npz")) as r:
                kept_from_file = {k: r[k] for k in r.files if k.startswith(BN_FROM_FILE)}
        except Exception:  # noqa: BLE001
            kept_from_file = {}
    _savez_unless_same(os.path.join(d, "reference.npz"), True, **ref, **kept_from_file)

    meta = {
        "architecture": arch,
        "variant": "narrow" if args.narrow else "full",
        "description": desc,
        "input": {"name": "input", "shape": [args.batch] + list(shape), "dtype": str(x.numpy().dtype),
                  "vocab": _vocab(model) if dtype == torch.int64 else None},
        "output": {"name": "logits", "shape": [args.batch, NUM_CLASSES]},
        "batch_size": args.batch,
        "seed": args.seed,
        "stack_traces": args.stack_traces,
        "num_params": count_params(model),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__},
        "hyperparameters": dict(HP, sam_eps=1e-12, loss="mean cross-entropy", mode="train",
                                sgd="torch.optim.SGD, first step (buffer = g + wd*theta)",
                                sam="eps = rho*g/(||g||+1e-12), g' at theta+eps (BN stats restored), SGD from theta with g'"),
        "parameters": [{"name": n, "shape": s} for n, s in params],
        # a parameter PyTorch uses under several names (a tied head: embed.weight is head.weight):
        # named_parameters() lists the first, state_dict() all; exporters may keep either
        "parameter_aliases": _parameter_aliases(model),
        "buffers": [{"name": n, "shape": s} for n, s in buffers],
        "running_stat_buffers": _running_buffers(model),
        "params_without_gradient": unused,
        "params_with_negligible_gradient": negligible,
        "grad_norm": err["grad_norm"],
        "f32_error_note": "PyTorch's own float32 error, per tensor the MAX over two standard PyTorch float32 training "
                          "paths: the default contiguous layout and memory_format=torch.channels_last (model "
                          "copy .to(memory_format=torch.channels_last), 4-D input .contiguous(memory_format="
                          "torch.channels_last); models without 4-D tensors get the same numbers from both). "
                          "Float32 gradients of ReLU/BatchNorm nets cross ReLU kinks depending on the summation "
                          "order, so one layout alone can be luckily close to float64; f32_errors_by_format "
                          "gives each format's errors (same fields)",
        **_f32_fields(err, negligible, negligible_bn),
        "f32_rel_error_max_note": "over parameters whose float64 gradient norm is > 1e-9 x the largest "
                                  "(params_with_negligible_gradient are structurally ~0: compare those absolutely)",
        "f32_step_rel_error_note": "||(step32 - param) - (step - param)|| / ||step - param|| per parameter (abs: the "
                                   "numerator), step = sgd or sam, everything computed in float32 (step32) vs float64 "
                                   "(step); the maxima skip params_with_negligible_gradient",
        "running_stats_with_negligible_value": negligible_bn,
        "f32_bn_rel_error_note": "||bn_after32 - bn_after|| / ||bn_after|| per running-statistics buffer (abs: "
                                 "the numerator); the maximum skips running_stats_with_negligible_value (float64 "
                                 "norm <= 1e-9 x the largest: structurally 0, compare those absolutely)",
        "f32_errors_by_format": {f: _f32_fields(err["by_format"][f], negligible, negligible_bn) for f in F32_FORMATS},
        "kink_note": KINK_NOTE,
        **err["kinks"],
        "reference_seconds": round(t_ref, 2),
        "settings": {},
    }
    return meta, x, y, ref["logits_eval"], {}


def _export_settings(model, arch, args, d, x, param_names, buffer_names, ort_refs, meta, kept):
    new = {}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    before_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    for setting in args.settings:
        path = os.path.join(d, f"{setting}.onnx")
        entry = {"file": f"{setting}.onnx", "error": None}
        t0 = time.time()
        log = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                warnings.simplefilter("ignore")
                entry.update(export(model, x, path, setting, getattr(args, "dims", None)))
        except Exception as e:  # noqa: BLE001
            entry["error"] = _first_line(e)
            entry["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
            for f in (path, path + ".data"):
                if os.path.exists(f):
                    os.remove(f)
        entry["export_seconds"] = round(time.time() - t0, 2)
        if entry["error"] is None and args.stack_traces == "strip":
            entry["postprocess"] = strip_stack_traces(path)
        if entry["error"] is None:
            entry.update(inspect_onnx(path, param_names, buffer_names))
            entry["external_data_files"] = sorted(f for f in os.listdir(d) if f.startswith(setting + ".onnx."))
            if args.check:
                ref, ref3, what, f64 = ort_refs["train" if setting == "legacy_train" else "eval"]
                try:
                    entry["ort"] = ort_check(path, x.numpy(), ref, ref3)
                except Exception as e:  # noqa: BLE001
                    entry["ort"] = {"error": _first_line(e)}
                entry["ort"]["reference"] = what
                entry["ort"]["batch3_reference"] = "rows 0-2 of the reference" if ref3 is None else \
                    "PyTorch on input[:3], same mode (the logits depend on the batch)"
                entry["ort"].update(f64)  # PyTorch's own float32 error of the same logits, for scale
        if setting == "legacy_train":
            from_file = {}
            if entry["error"] is None:
                from_file, fields = legacy_train_bn_references(model, x, path,
                                                               meta.get("running_stats_with_negligible_value", []))
                entry.update(fields)
            _replace_in_reference(d, BN_FROM_FILE, from_file)
        new[setting] = entry
        model.eval()
    for n, p in model.named_parameters():  # exports must not change the weights
        assert torch.equal(p.detach(), before[n]), f"{arch}: export changed {n}"
    for n, b in model.named_buffers():  # nor the buffers (legacy_train restores those its forward updates)
        assert torch.equal(b.detach(), before_buffers[n]), f"{arch}: export changed buffer {n}"
    # the legacy exporter drops nn.Embedding's padding_idx and onnxsam warns: the flags a user passes
    for s, e in new.items():
        flags = padding_flags(model) if s.startswith("legacy") and e.get("error") is None else []
        if flags:
            e["onnxsam_flags"] = flags
    order = [s for s in SETTINGS if s in new or s in kept] + [s for s in kept if s not in SETTINGS]
    meta["settings"] = {s: new[s] if s in new else kept[s] for s in order}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def padding_flags(model):
    """`--padding-idx TABLE=ROW|none` for every nn.Embedding: what onnxsam's warning asks a user of a
    legacy export (which drops padding_idx) to say."""
    flags = []
    for n, mod in model.named_modules():
        if isinstance(mod, nn.Embedding):
            row = "none" if mod.padding_idx is None else mod.padding_idx
            flags += ["--padding-idx", f"{n}.weight={row}"]
    return flags


KNOWN_OPS = {"Conv", "Relu", "Add", "MatMul", "Gemm", "BatchNormalization", "Reshape", "Transpose", "Flatten",
             "GlobalAveragePool", "ReduceMean", "Concat", "Constant", "Shape", "Gather", "Unsqueeze", "Slice",
             "Identity"}


def summary(metas):
    print()
    print("ort: max |onnxruntime - PyTorch| of the float32 eval logits (legacy_train: train-mode logits), absolute "
          "and relative to max |logit|; b3: the same on a batch of 3 (dynamic batch); BN: BatchNormalization nodes "
          "(+t: training_mode=1)")
    print(f"{'arch':20s} {'params':>9s} {'setting':14s} {'ok':3s} {'opset':5s} {'dyn':3s} {'BN':>5s} {'ort abs':>8s} "
          f"{'ort rel':>8s} {'b3 abs':>8s}  ops beyond the common set / error")
    for meta in metas:
        for s, e in meta["settings"].items():
            if e.get("error"):
                print(f"{meta['architecture']:20s} {meta['num_params']:9d} {s:14s} ERR  {e['error'][:110]}")
                continue
            ort = e.get("ort", {})
            other = sorted(set(e["op_histogram"]) - KNOWN_OPS)
            bn = f"{e['batchnorm_nodes']}" + ("+t" if e.get("batchnorm", {}).get("training_mode", {}).get("1") else "")
            od = f"{ort['max_abs_diff']:.1e}" if "max_abs_diff" in ort else ort.get("error", "-")[:8]
            rd = f"{ort['max_rel_diff']:.1e}" if "max_rel_diff" in ort else "-"
            b3 = f"{ort['batch3_max_abs_diff']:.1e}" if "batch3_max_abs_diff" in ort else ("ERR" if ort else "-")
            print(f"{meta['architecture']:20s} {meta['num_params']:9d} {s:14s} ok  {e['opset']!s:5s} "
                  f"{'y' if e['dynamic_batch'] else 'n':3s} {bn:>5s} {od:>8s} {rd:>8s} {b3:>8s}  "
                  f"{' '.join(other)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="output folder (default zoo/, or tests/fixtures/zoo/ with --narrow)")
    ap.add_argument("--narrow", action="store_true", help="tiny widths (the committed fixtures)")
    ap.add_argument("--only", nargs="+", choices=list(ARCHS), metavar="ARCH", help="a subset of architectures")
    ap.add_argument("--settings", nargs="+", choices=SETTINGS, default=SETTINGS, help="a subset of export settings")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list", action="store_true", help="print the architectures and parameter counts, export nothing")
    ap.add_argument("--stack-traces", choices=["keep", "strip"],
                    help="dynamo files' pkg.torch.onnx.stack_trace node metadata (default: strip with --narrow, "
                         "else keep)")
    ap.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime eval check")
    ap.add_argument("--bn-from-file-only", action="store_true",
                    help="export nothing: add (or refresh) only reference.npz's bn_after_from_file/legacy_train/ "
                         "and meta.json's f32_bn_from_file_* from the existing legacy_train.onnx files")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.stack_traces is None:
        args.stack_traces = "strip" if args.narrow else "keep"
    archs = args.only or list(ARCHS)
    if args.list:
        for a in archs:
            torch.manual_seed(args.seed)
            m, shape, dtype, desc = ARCHS[a](args.narrow)
            print(f"{a:20s} {count_params(m):10d}  {tuple(shape)} {str(dtype)[6:]:7s} {desc}")
        return 0
    default = os.path.join(ROOT, "tests", "fixtures", "zoo") if args.narrow else os.path.join(ROOT, "zoo")
    out_root = args.out or default
    os.makedirs(out_root, exist_ok=True)
    metas = []
    if args.bn_from_file_only:
        for a in archs:
            t0 = time.time()
            meta = add_bn_from_file(a, args, out_root)
            if meta is not None and "f32_bn_from_file_rel_error_max" in meta["settings"]["legacy_train"]:
                print(f"{a}: {len(meta['running_stat_buffers'])} running statistics from legacy_train.onnx, "
                      f"f32 rel error max {meta['settings']['legacy_train']['f32_bn_from_file_rel_error_max']:.1e}, "
                      f"{time.time() - t0:.1f}s", flush=True)
        return 0
    for a in archs:
        t0 = time.time()
        meta = run_arch(a, args, out_root)
        metas.append(meta)
        ok = sum(e.get("error") is None for e in meta["settings"].values())
        print(f"{a}: {meta['num_params']} params, {ok}/{len(meta['settings'])} exports, {time.time() - t0:.1f}s",
              flush=True)
    summary(metas)
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out_root) for f in fs)
    print(f"\n{out_root}: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
