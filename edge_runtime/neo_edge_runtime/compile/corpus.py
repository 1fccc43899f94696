"""Real exported models: what users bring to the compiler, made here with a fixed seed.

Each entry is an architecture written in PyTorch and exported by
``torch.onnx.export(..., dynamo=True)``, or a scikit-learn pipeline converted by
skl2onnx, so the ONNX files are exactly what those exporters emit (their opsets,
their decompositions, their names), not graphs we wrote ourselves (:mod:`.zoo`).
Weights are PyTorch's random initialization under ``torch.manual_seed``; the
scikit-learn models are fitted on scikit-learn's bundled data sets. Nothing is
downloaded.

Two sizes: ``small`` (tests: a few thousand to a few hundred thousand weights, inputs
of 16 to 64 pixels) and ``full`` (benchmarks: the published layer configurations at
their usual input sizes).

This module sits beside :mod:`.zoo` in the build-machine subpackage because the tests
and ``benchmarks/`` both read it and the device bundle leaves this folder out;
it imports torch, onnxscript and skl2onnx (the ``dev`` extra) only when a model is
built. ``python -m neo_edge_runtime.compile.corpus --size full --out DIR`` writes
the corpus to a folder.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SIZES = ("small", "full")


@dataclass(frozen=True)
class CorpusModel:
    """One corpus entry. ``build(size)`` returns (model, example inputs by name)."""

    name: str
    task: str
    exporter: str  # "torch.onnx (dynamo)" or "skl2onnx"
    build: Callable[[str], tuple]
    description: str


@dataclass(frozen=True)
class Exported:
    """A corpus model written to disk: the ONNX file, one input per name, and what the
    exporter emitted (opsets, operator types)."""

    name: str
    path: Path
    inputs: dict
    opsets: dict
    operators: list


# ---------------------------------------------------------------------------------------
# PyTorch architectures, compact


def _torch():
    import torch

    return torch, torch.nn


def _divisible(ch: float, by: int = 8) -> int:
    """Channels rounded as MobileNet and EfficientNet round them (to a multiple of 8,
    never below 90% of the request)."""
    out = max(by, int(ch + by / 2) // by * by)
    return out + by if out < 0.9 * ch else out


def _conv_bn(nn, cin, cout, k, stride=1, groups=1, act=None, dims=2):
    conv = (nn.Conv2d if dims == 2 else nn.Conv1d)(cin, cout, k, stride, k // 2, groups=groups,
                                                    bias=False)
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(cout)
    return nn.Sequential(conv, bn, *([act()] if act else []))


def _randomize_batch_norms(torch, net):
    """Batch norms with running statistics and affine parameters away from identity,
    as a trained network has them (PyTorch initializes them to 0, 1, 1 and 0)."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(1.0 + 0.2 * torch.rand(n, generator=g))
            m.weight.data.copy_(1.0 + 0.1 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return net


def resnet(size: str):
    """ResNet (He et al. 2016), basic blocks: ResNet-18 at 224x224 (``full``)."""
    torch, nn = _torch()

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(_conv_bn(nn, cin, cout, 3, stride, act=nn.ReLU),
                                      _conv_bn(nn, cout, cout, 3))
            self.short = nn.Identity() if stride == 1 and cin == cout else \
                _conv_bn(nn, cin, cout, 1, stride)

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    widths, blocks, image, classes = ((64, 128, 256, 512), 2, 224, 1000) if size == "full" \
        else ((8, 16, 32), 1, 32, 10)
    layers = [_conv_bn(nn, 3, widths[0], 7, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1)]
    cin = widths[0]
    for k, w in enumerate(widths):
        for b in range(blocks):
            layers.append(Block(cin, w, 2 if k and not b else 1))
            cin = w
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))
    return net, {"input": (1, 3, image, image)}


class _SqueezeExcite:
    """Squeeze-and-excitation (Hu et al. 2018): channel weights from a global pool."""

    @staticmethod
    def make(nn, ch, squeeze, act, gate):
        torch, _ = _torch()

        class SE(nn.Module):
            def __init__(self):
                super().__init__()
                self.reduce, self.expand = nn.Conv2d(ch, squeeze, 1), nn.Conv2d(squeeze, ch, 1)
                self.act, self.gate = act(), gate()

            def forward(self, x):
                s = torch.mean(x, dim=(2, 3), keepdim=True)
                return x * self.gate(self.expand(self.act(self.reduce(s))))

        return SE()


def mobilenet_v3_small(size: str):
    """MobileNetV3-Small (Howard et al. 2019): inverted residuals with hardswish and
    squeeze-excite gated by hardsigmoid. ``full``: the published table at 224x224."""
    torch, nn = _torch()
    # kernel, expansion, out, squeeze-excite, hardswish, stride
    table = [(3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2),
             (3, 88, 24, False, False, 1), (5, 96, 40, True, True, 2),
             (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
             (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1),
             (5, 288, 96, True, True, 2), (5, 576, 96, True, True, 1),
             (5, 576, 96, True, True, 1)]
    image, classes, last, hidden = 224, 1000, 576, 1024
    if size != "full":
        table, image, classes, last, hidden = table[:5], 32, 10, 96, 64

    class Block(nn.Module):
        def __init__(self, cin, k, exp, cout, se, hs, stride):
            super().__init__()
            act = nn.Hardswish if hs else nn.ReLU
            layers = [] if exp == cin else [_conv_bn(nn, cin, exp, 1, act=act)]
            layers.append(_conv_bn(nn, exp, exp, k, stride, groups=exp, act=act))
            if se:
                layers.append(_SqueezeExcite.make(nn, exp, _divisible(exp / 4), nn.ReLU,
                                                  nn.Hardsigmoid))
            layers.append(_conv_bn(nn, exp, cout, 1))
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    layers, cin = [_conv_bn(nn, 3, 16, 3, 2, act=nn.Hardswish)], 16
    for k, exp, cout, se, hs, s in table:
        layers.append(Block(cin, k, exp, cout, se, hs, s))
        cin = cout
    layers += [_conv_bn(nn, cin, last, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(last, hidden), nn.Hardswish(), nn.Linear(hidden, classes)]
    return nn.Sequential(*layers), {"input": (1, 3, image, image)}


def efficientnet_b0(size: str):
    """EfficientNet-B0 (Tan and Le 2019): MBConv blocks, depthwise convolutions, SiLU,
    squeeze-excite gated by a sigmoid. ``full``: B0's stages at 224x224."""
    torch, nn = _torch()
    # expansion, kernel, stride, out, repeats
    stages = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    image, classes, head = 224, 1000, 1280
    if size != "full":
        stages = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 1)]
        image, classes, head = 32, 10, 128

    class MBConv(nn.Module):
        def __init__(self, cin, exp, k, stride, cout):
            super().__init__()
            mid = cin * exp
            layers = [] if exp == 1 else [_conv_bn(nn, cin, mid, 1, act=nn.SiLU)]
            layers += [_conv_bn(nn, mid, mid, k, stride, groups=mid, act=nn.SiLU),
                       _SqueezeExcite.make(nn, mid, max(1, cin // 4), nn.SiLU, nn.Sigmoid),
                       _conv_bn(nn, mid, cout, 1)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    layers, cin = [_conv_bn(nn, 3, 32, 3, 2, act=nn.SiLU)], 32
    for exp, k, s, cout, n in stages:
        for i in range(n):
            layers.append(MBConv(cin, exp, k, s if i == 0 else 1, cout))
            cin = cout
    layers += [_conv_bn(nn, cin, head, 1, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(head, classes)]
    return nn.Sequential(*layers), {"input": (1, 3, image, image)}


def yolo(size: str):
    """A small YOLO-style detector (after YOLOv5/v8-n): a CSP backbone with SiLU, a
    spatial pyramid pool (SPPF), a feature-pyramid neck (nearest upsampling, concat) and
    two detection heads, one output per stride (16 and 32): three anchors x (4 box + 1
    objectness + classes) channels per cell. ``full``: 320x320, 80 classes."""
    torch, nn = _torch()
    width, image, classes = (16, 320, 80) if size == "full" else (4, 32, 3)

    def cbs(cin, cout, k=1, s=1):
        return _conv_bn(nn, cin, cout, k, s, act=nn.SiLU)

    class C2(nn.Module):  # cross-stage partial block, one bottleneck
        def __init__(self, cin, cout):
            super().__init__()
            self.split, half = cbs(cin, cout, 1), cout // 2
            self.m = nn.Sequential(cbs(half, half, 3), cbs(half, half, 3))
            self.out = cbs(cout + half, cout, 1)

        def forward(self, x):
            a, b = self.split(x).chunk(2, 1)
            return self.out(torch.cat([a, b, b + self.m(b)], 1))

    class SPPF(nn.Module):
        def __init__(self, ch):
            super().__init__()
            self.reduce, self.pool = cbs(ch, ch // 2), nn.MaxPool2d(5, 1, 2)
            self.out = cbs(ch * 2, ch)

        def forward(self, x):
            x = self.reduce(x)
            y1 = self.pool(x)
            y2 = self.pool(y1)
            return self.out(torch.cat([x, y1, y2, self.pool(y2)], 1))

    w = [width * m for m in (1, 2, 4, 8, 16)]
    per_cell = 3 * (5 + classes)

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(cbs(3, w[0], 3, 2), cbs(w[0], w[1], 3, 2), C2(w[1], w[1]),
                                      cbs(w[1], w[2], 3, 2), C2(w[2], w[2]))
            self.p4 = nn.Sequential(cbs(w[2], w[3], 3, 2), C2(w[3], w[3]))
            self.p5 = nn.Sequential(cbs(w[3], w[4], 3, 2), C2(w[4], w[4]), SPPF(w[4]))
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.merge = C2(w[4] + w[3], w[3])
            self.down = cbs(w[3], w[3], 3, 2)
            self.merge5 = C2(w[3] + w[4], w[4])
            self.head4, self.head5 = nn.Conv2d(w[3], per_cell, 1), nn.Conv2d(w[4], per_cell, 1)

        def forward(self, x):
            p4 = self.p4(self.stem(x))
            p5 = self.p5(p4)
            n4 = self.merge(torch.cat([self.up(p5), p4], 1))
            n5 = self.merge5(torch.cat([self.down(n4), p5], 1))
            return self.head4(n4), self.head5(n5)

    return Detector(), {"input": (1, 3, image, image)}


def unet(size: str):
    """U-Net (Ronneberger et al. 2015) for segmentation: an encoder of double 3x3
    convolutions and max pools, a decoder of 2x2 stride-2 transposed convolutions and
    skip concatenations, per-pixel class scores. ``full``: 4 levels from 16 channels,
    256x256."""
    torch, nn = _torch()
    widths, image, classes = ((16, 32, 64, 128), 256, 4) if size == "full" \
        else ((8,), 16, 3)

    def double(cin, cout):
        return nn.Sequential(_conv_bn(nn, cin, cout, 3, act=nn.ReLU),
                             _conv_bn(nn, cout, cout, 3, act=nn.ReLU))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.ModuleList()
            cin = 3
            for w in widths:
                self.down.append(double(cin, w))
                cin = w
            self.bottom = double(cin, cin * 2)
            self.up, self.dec = nn.ModuleList(), nn.ModuleList()
            cin *= 2
            for w in reversed(widths):
                self.up.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
                self.dec.append(double(2 * w, w))
                cin = w
            self.out = nn.Conv2d(cin, classes, 1)

        def forward(self, x):
            skips = []
            for d in self.down:
                x = d(x)
                skips.append(x)
                x = torch.max_pool2d(x, 2)
            x = self.bottom(x)
            for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
                x = dec(torch.cat([up(x), skip], 1))
            return self.out(x)

    return UNet(), {"input": (1, 3, image, image)}


def _kws(size: str, cell: str):
    torch, nn = _torch()
    mfcc, frames, hidden, classes = (40, 98, 128, 12) if size == "full" else (10, 16, 16, 4)

    class KWS(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(_conv_bn(nn, mfcc, hidden, 5, 2, act=nn.ReLU, dims=1),
                                      _conv_bn(nn, hidden, hidden, 3, act=nn.ReLU, dims=1))
            self.rnn = getattr(nn, cell)(hidden, hidden, batch_first=True)
            self.head = nn.Linear(hidden, classes)

        def forward(self, x):
            y, _ = self.rnn(self.conv(x).transpose(1, 2))
            return torch.softmax(self.head(y[:, -1]), -1)

    return KWS(), {"input": (1, mfcc, frames)}


def kws_gru(size: str):
    """Keyword spotting over MFCC frames: a strided Conv1d front end, then a GRU, the
    last step classified (after the CRNN of Arik et al. 2017). ``full``: 40 MFCCs x 98
    frames (one second at 10 ms), 12 keywords."""
    return _kws(size, "GRU")


def kws_lstm(size: str):
    """:func:`kws_gru` with an LSTM."""
    return _kws(size, "LSTM")


def sensor_cnn(size: str):
    """Human-activity recognition over inertial sensors: Conv1d blocks with batch norm,
    max pooling, a global average. ``full``: 9 channels x 128 samples (2.56 s at 50 Hz,
    the UCI HAR layout), 6 activities."""
    torch, nn = _torch()
    channels, samples, widths, classes = (9, 128, (64, 128, 128), 6) if size == "full" \
        else (6, 64, (16, 32), 4)
    layers, cin = [], channels
    for w in widths:
        layers += [_conv_bn(nn, cin, w, 5, act=nn.ReLU, dims=1), nn.MaxPool1d(2)]
        cin = w
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(cin, classes))
    return net, {"input": (1, channels, samples)}


def vit(size: str):
    """A Vision Transformer (Dosovitskiy et al. 2021), pre-norm, class token, GELU.
    ``full``: ViT-Ti/16 (width 192, 12 layers, 3 heads) at 224x224."""
    torch, nn = _torch()
    image, patch, width, depth, heads, classes = (224, 16, 192, 12, 3, 1000) if size == "full" \
        else (16, 4, 32, 2, 4, 5)
    tokens = (image // patch) ** 2 + 1

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, width, patch, stride=patch)
            self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
            layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                               activation="gelu", batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, classes)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
            return self.head(self.norm(self.encoder(x)[:, 0]))

    return ViT(), {"input": (1, 3, image, image)}


# ---------------------------------------------------------------------------------------
# scikit-learn pipelines


def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def scaler_logistic_regression(size: str):
    """StandardScaler then LogisticRegression on scikit-learn's digits (64 features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _digits()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300 if size == "full"
                                                                else 100))
    return model.fit(X, y), X


def random_forest(size: str):
    """A RandomForestClassifier on digits (``small``: 5 trees of depth 4; ``full``: 100
    of depth 10)."""
    from sklearn.ensemble import RandomForestClassifier

    X, y = _digits()
    trees, depth = (100, 10) if size == "full" else (5, 4)
    return RandomForestClassifier(n_estimators=trees, max_depth=depth, random_state=0)\
        .fit(X, y), X


def scaler_mlp_regressor(size: str):
    """StandardScaler then an MLPRegressor on scikit-learn's diabetes data (10 features)."""
    from sklearn.datasets import load_diabetes
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_diabetes(return_X_y=True)
    hidden = (128, 64) if size == "full" else (16,)
    model = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=hidden, max_iter=200, random_state=0))
    import warnings

    with warnings.catch_warnings():  # not converging in 200 iterations is fine here
        warnings.simplefilter("ignore")
        return model.fit(X, y), X.astype(np.float32)


CORPUS: dict[str, CorpusModel] = {m.name: m for m in [
    CorpusModel("resnet", "classification", "torch.onnx (dynamo)", resnet,
                "ResNet-18-style, basic blocks"),
    CorpusModel("mobilenet_v3_small", "classification", "torch.onnx (dynamo)",
                mobilenet_v3_small, "MobileNetV3-Small, hardswish, squeeze-excite"),
    CorpusModel("efficientnet_b0", "classification", "torch.onnx (dynamo)", efficientnet_b0,
                "EfficientNet-B0-style, depthwise, SiLU, squeeze-excite"),
    CorpusModel("yolo", "detection", "torch.onnx (dynamo)", yolo,
                "YOLO-style detector, two output scales"),
    CorpusModel("unet", "segmentation", "torch.onnx (dynamo)", unet,
                "U-Net, ConvTranspose upsampling"),
    CorpusModel("kws_gru", "keyword spotting", "torch.onnx (dynamo)", kws_gru,
                "Conv1d + GRU over MFCC frames"),
    CorpusModel("kws_lstm", "keyword spotting", "torch.onnx (dynamo)", kws_lstm,
                "Conv1d + LSTM over MFCC frames"),
    CorpusModel("sensor_cnn", "time series", "torch.onnx (dynamo)", sensor_cnn,
                "Conv1d over inertial sensor channels"),
    CorpusModel("vit", "classification", "torch.onnx (dynamo)", vit,
                "Vision Transformer, pre-norm"),
    CorpusModel("scaler_logistic_regression", "tabular", "skl2onnx",
                scaler_logistic_regression, "StandardScaler + LogisticRegression"),
    CorpusModel("random_forest", "tabular", "skl2onnx", random_forest,
                "RandomForestClassifier"),
    CorpusModel("scaler_mlp_regressor", "tabular", "skl2onnx", scaler_mlp_regressor,
                "StandardScaler + MLPRegressor"),
]}


def _describe(path: Path) -> tuple[dict, list]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}
    ops = sorted({(f"{n.domain}." if n.domain else "") + n.op_type for n in model.graph.node})
    return opsets, ops


def export(name: str, size: str, out_dir: str | Path) -> Exported:
    """Build corpus model ``name`` at ``size`` and write ``<out_dir>/<name>-<size>.onnx``
    with its exporter; returns the file and an example input (seeded normal values for
    the networks, rows of the training data for scikit-learn)."""
    if name not in CORPUS:
        raise KeyError(f"unknown corpus model {name!r}; the corpus has {', '.join(CORPUS)}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}; got {size!r}")
    entry = CORPUS[name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{size}.onnx"
    if entry.exporter == "skl2onnx":
        inputs = _export_sklearn(entry, size, path)
    else:
        inputs = _export_torch(entry, size, path)
    opsets, ops = _describe(path)
    return Exported(name, path, inputs, opsets, ops)


def _export_torch(entry: CorpusModel, size: str, path: Path) -> dict:
    import torch

    torch.manual_seed(0)
    net, shapes = entry.build(size)
    _randomize_batch_norms(torch, net).eval()
    rng = np.random.default_rng(0)
    inputs = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    n_out = 2 if entry.name == "yolo" else 1
    with torch.no_grad():
        torch.onnx.export(net, tuple(torch.from_numpy(v) for v in inputs.values()), str(path),
                          dynamo=True, input_names=list(inputs),
                          output_names=["output"] if n_out == 1
                          else [f"output{k}" for k in range(n_out)],
                          # One self-contained file (the exporter's default puts the
                          # weights in a ``.data`` file beside it).
                          external_data=False, verbose=False)
    return inputs


def _export_sklearn(entry: CorpusModel, size: str, path: Path) -> dict:
    from skl2onnx import to_onnx

    model, X = entry.build(size)
    # Probabilities as a plain tensor (skl2onnx's default is a sequence of maps, which
    # no compiler serves); opset 17 as the rest of the corpus, ai.onnx.ml 3.
    options = {"zipmap": False} if hasattr(model, "predict_proba") else None
    onnx_model = to_onnx(model, X[:1], options=options,
                         target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onnx_model.SerializeToString())
    return {onnx_model.graph.input[0].name: X[:1]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m neo_edge_runtime.compile.corpus",
                                description="Write the model corpus as ONNX files.")
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--out", default="build/corpus")
    p.add_argument("--models", default=",".join(CORPUS),
                   help=f"comma-separated subset of {', '.join(CORPUS)}")
    args = p.parse_args(argv)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        e = export(name, args.size, args.out)
        np.savez(Path(args.out) / f"{name}-{args.size}-input.npz", **e.inputs)
        print(json.dumps({"model": name, "file": str(e.path), "opsets": e.opsets,
                          "operators": e.operators}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
