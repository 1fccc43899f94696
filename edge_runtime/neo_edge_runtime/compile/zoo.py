"""Real architectures built deterministically in code as ONNX models (no downloads).

Used by the tests (small inputs) and by ``benchmarks/`` (ImageNet-sized inputs):
MobileNetV2, ResNet-18, SqueezeNet 1.1, an MLP, and an "ops" model that exercises
every operator kind the runtime must get right. Weights are seeded random values,
scaled so activations stay in range: the architectures are real, the numbers are not
trained.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


class GraphBuilder:
    """A tiny ONNX graph builder: one method per layer kind, NCHW float32."""

    def __init__(self, name: str, seed: int = 0):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{kind}{self._n}"

    def weight(self, shape, scale: float | None = None) -> str:
        from onnx import numpy_helper

        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        std = scale if scale is not None else np.sqrt(2.0 / max(fan_in, 1))
        name = self._id("w")
        self.inits.append(numpy_helper.from_array(
            (self.rng.standard_normal(shape) * std).astype(np.float32), name))
        return name

    def const(self, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self._id("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list, **attrs) -> str:
        from onnx import helper

        out = self._id(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             bias: bool = True) -> str:
        w = self.weight((cout, cin // groups, k, k))
        ins = [x, w] + ([self.weight((cout,), 0.01)] if bias else [])
        p = k // 2
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[p, p, p, p], group=groups)

    def bn(self, x: str, c: int) -> str:
        scale = self.const((1.0 + 0.1 * self.rng.standard_normal(c)).astype(np.float32))
        bias = self.const((0.1 * self.rng.standard_normal(c)).astype(np.float32))
        mean = self.const((0.1 * self.rng.standard_normal(c)).astype(np.float32))
        var = self.const((1.0 + 0.1 * self.rng.random(c)).astype(np.float32))
        return self.node("BatchNormalization", [x, scale, bias, mean, var], epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def relu6(self, x: str) -> str:
        lo, hi = self.const(np.float32(0.0)), self.const(np.float32(6.0))
        return self.node("Clip", [x, lo, hi])

    def maxpool(self, x: str, k: int, stride: int, pad: int = 0) -> str:
        return self.node("MaxPool", [x], kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4)

    def avgpool(self, x: str, k: int, stride: int) -> str:
        return self.node("AveragePool", [x], kernel_shape=[k, k], strides=[stride, stride])

    def gap(self, x: str) -> str:
        return self.node("GlobalAveragePool", [x])

    def flatten(self, x: str) -> str:
        return self.node("Flatten", [x], axis=1)

    def gemm(self, x: str, cin: int, cout: int) -> str:
        return self.node("Gemm", [x, self.weight((cout, cin)), self.weight((cout,), 0.01)],
                         transB=1)

    def matmul(self, x: str, cin: int, cout: int) -> str:
        y = self.node("MatMul", [x, self.weight((cin, cout))])
        return self.node("Add", [y, self.weight((cout,), 0.01)])

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b])

    def concat(self, xs: list, axis: int = 1) -> str:
        return self.node("Concat", xs, axis=axis)

    def softmax(self, x: str) -> str:
        return self.node("Softmax", [x], axis=-1)

    def model(self, input_shape: list, output: str, output_shape: list,
              input_name: str = "input", output_name: str = "output"):
        import onnx
        from onnx import TensorProto, helper

        self.nodes.append(helper.make_node("Identity", [output], [output_name]))
        graph = helper.make_graph(
            self.nodes, self.name,
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, output_shape)],
            self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="neo-edge-zoo")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def ops_model(size: int = 16):
    """Every operator kind: conv, depthwise conv, BN, max/avg pooling, residual add,
    concat, gemm and matmul, softmax."""
    g = GraphBuilder("ops", seed=1)
    x = g.relu(g.bn(g.conv("input", 3, 8, 3), 8))
    dw = g.relu(g.bn(g.conv(x, 8, 8, 3, groups=8), 8))
    x = g.add(x, dw)  # residual
    x = g.concat([x, g.conv(x, 8, 8, 1)])  # 16 channels
    x = g.maxpool(x, 2, 2)
    x = g.avgpool(x, 2, 2)
    x = g.flatten(x)
    feat = 16 * (size // 4) * (size // 4)
    x = g.relu(g.gemm(x, feat, 32))
    x = g.matmul(x, 32, 10)
    return g.model([1, 3, size, size], g.softmax(x), [1, 10])


def mlp(features: int = 64, hidden: tuple = (128, 64), classes: int = 10):
    """A dynamic-free MLP classifier."""
    g = GraphBuilder("mlp", seed=2)
    x, cin = "input", features
    for h in hidden:
        x, cin = g.relu(g.gemm(x, cin, h)), h
    return g.model([1, features], g.softmax(g.gemm(x, cin, classes)), [1, classes])


def _mbv2_block(g: GraphBuilder, x: str, cin: int, cout: int, stride: int, expand: int) -> str:
    h, mid = x, cin * expand
    if expand != 1:
        h = g.relu6(g.bn(g.conv(h, cin, mid, 1, bias=False), mid))
    h = g.relu6(g.bn(g.conv(h, mid, mid, 3, stride=stride, groups=mid, bias=False), mid))
    h = g.bn(g.conv(h, mid, cout, 1, bias=False), cout)
    return g.add(x, h) if stride == 1 and cin == cout else h


def mobilenet_v2(size: int = 224, classes: int = 1000, width: float = 1.0):
    """MobileNetV2 (Sandler et al. 2018): inverted residuals, depthwise convs, ReLU6."""
    g = GraphBuilder("mobilenet_v2", seed=3)

    def c(ch):
        return max(8, int(ch * width + 4) // 8 * 8)

    x = g.relu6(g.bn(g.conv("input", 3, c(32), 3, stride=2, bias=False), c(32)))
    cin = c(32)
    for t, ch, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            x = _mbv2_block(g, x, cin, c(ch), s if i == 0 else 1, t)
            cin = c(ch)
    last = 1280 if width <= 1.0 else c(1280)
    x = g.relu6(g.bn(g.conv(x, cin, last, 1, bias=False), last))
    x = g.flatten(g.gap(x))
    return g.model([1, 3, size, size], g.gemm(x, last, classes), [1, classes])


def resnet18(size: int = 224, classes: int = 1000):
    """ResNet-18 (He et al. 2016): basic blocks with residual adds."""
    g = GraphBuilder("resnet18", seed=4)
    x = g.maxpool(g.relu(g.bn(g.conv("input", 3, 64, 7, stride=2, bias=False), 64)), 3, 2, 1)
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for b in range(2):
            s = stride if b == 0 else 1
            h = g.relu(g.bn(g.conv(x, cin, cout, 3, stride=s, bias=False), cout))
            h = g.bn(g.conv(h, cout, cout, 3, bias=False), cout)
            short = x if s == 1 and cin == cout else \
                g.bn(g.conv(x, cin, cout, 1, stride=s, bias=False), cout)
            x, cin = g.relu(g.add(h, short)), cout
    x = g.flatten(g.gap(x))
    return g.model([1, 3, size, size], g.gemm(x, 512, classes), [1, classes])


def squeezenet(size: int = 224, classes: int = 1000):
    """SqueezeNet 1.1 (Iandola et al. 2016): fire modules with concat."""
    g = GraphBuilder("squeezenet", seed=5)

    def fire(x, cin, squeeze, expand):
        s = g.relu(g.conv(x, cin, squeeze, 1))
        return g.concat([g.relu(g.conv(s, squeeze, expand, 1)),
                         g.relu(g.conv(s, squeeze, expand, 3))])

    x = g.maxpool(g.relu(g.conv("input", 3, 64, 3, stride=2)), 3, 2)
    x = fire(x, 64, 16, 64)
    x = g.maxpool(fire(x, 128, 16, 64), 3, 2)
    x = fire(x, 128, 32, 128)
    x = g.maxpool(fire(x, 256, 32, 128), 3, 2)
    x = fire(x, 256, 48, 192)
    x = fire(x, 384, 48, 192)
    x = fire(x, 384, 64, 256)
    x = fire(x, 512, 64, 256)
    x = g.relu(g.conv(x, 512, classes, 1))
    x = g.flatten(g.gap(x))
    return g.model([1, 3, size, size], x, [1, classes])


ZOO: dict[str, Callable] = {
    "mobilenet_v2": mobilenet_v2,
    "resnet18": resnet18,
    "squeezenet": squeezenet,
    "mlp": mlp,
}
