"""``print(model)`` for a :class:`~torchweights.formats.modules.ModuleNode`, without torch.

``nn.Module.__repr__`` prints ``ClassName(<extra_repr>)`` with one ``(name): child`` line per submodule, indented
two spaces per level; ``ModuleList`` folds runs of identical children (``(0-5): 6 x Block(...)``). ``extra_repr``
is code, which is never run here: for the torch.nn classes in :data:`EXTRA_REPR` it is rebuilt from the saved
attributes and matches torch's text; every other torch class prints no extra text (as ``extra_repr`` does by
default); a class from outside torch shows its plain attributes as ``name=value`` (its own ``extra_repr``, if any,
cannot be known).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .modules import ModuleNode

__all__ = ["EXTRA_REPR", "extra_repr", "render"]

#: Most characters :func:`render` writes; a tree that shares modules many times over is cut there.
MAX_CHARS = 2_000_000

Part = str | tuple[str, Callable[[dict[str, Any]], bool]]


def _ne(name: str, default: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda a: a.get(name) != default


def _not_zero_tuple(name: str, fill: int) -> Callable[[dict[str, Any]], bool]:
    def test(a: dict[str, Any]) -> bool:
        value = a.get(name)
        return isinstance(value, (tuple, list)) and tuple(value) != (fill,) * len(value)

    return test


_INPLACE_ONLY: list[Part] = [("inplace=True", lambda a: a.get("inplace") is True)]
_INPLACE_TAIL: Part = (", inplace=True", lambda a: a.get("inplace") is True)
_CONV: list[Part] = [
    "{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}",
    (", padding={padding}", lambda a: isinstance(a.get("padding"), str) or _not_zero_tuple("padding", 0)(a)),
    (", dilation={dilation}", _not_zero_tuple("dilation", 1)),
    (", output_padding={output_padding}", _not_zero_tuple("output_padding", 0)),
    (", groups={groups}", _ne("groups", 1)),
    (", bias=False", lambda a: not a["%has_bias"]),
    (", padding_mode={padding_mode}", _ne("padding_mode", "zeros")),
]
_NORM: list[Part] = [
    "{num_features}, eps={eps}, momentum={momentum}, affine={affine}, bias={%has_bias}, "
    "track_running_stats={track_running_stats}"
]
_RNN: list[Part] = [
    "{input_size}, {hidden_size}",
    (", proj_size={proj_size}", _ne("proj_size", 0)),
    (", num_layers={num_layers}", _ne("num_layers", 1)),
    (", bias={bias}", lambda a: a.get("bias") is not True),
    (", batch_first={batch_first}", lambda a: a.get("batch_first") is not False),
    (", dropout={dropout}", _ne("dropout", 0)),
    (", bidirectional={bidirectional}", lambda a: a.get("bidirectional") is not False),
]
_CELL: list[Part] = [
    "{input_size}, {hidden_size}",
    (", bias={bias}", lambda a: "bias" in a and a["bias"] is not True),
    (", nonlinearity={nonlinearity}", lambda a: "nonlinearity" in a and a["nonlinearity"] != "tanh"),
]
_EMBEDDING: list[Part] = [
    "{num_embeddings}, {embedding_dim}",
    (", padding_idx={padding_idx}", lambda a: a.get("padding_idx") is not None),
    (", max_norm={max_norm}", lambda a: a.get("max_norm") is not None),
    (", norm_type={norm_type}", _ne("norm_type", 2)),
    (", scale_grad_by_freq={scale_grad_by_freq}", lambda a: a.get("scale_grad_by_freq") is not False),
    (", sparse=True", lambda a: a.get("sparse") is not False),
]
_MAXPOOL: list[Part] = ["kernel_size={kernel_size}, stride={stride}, padding={padding}, dilation={dilation}, "
                        "ceil_mode={ceil_mode}"]  # fmt: skip
_POOL: list[Part] = ["kernel_size={kernel_size}, stride={stride}, padding={padding}"]
_PAD: list[Part] = ["{padding}"]


def _group(names: str, parts: list[Part]) -> dict[str, list[Part]]:
    return {name: parts for name in names.split()}


#: ``extra_repr`` of torch.nn classes as saved attributes: each part is a ``str.format`` template of the
#: attributes (``{%has_bias}``: the module has a ``bias`` parameter), alone or with the test that includes it.
EXTRA_REPR: dict[str, list[Part]] = {
    **_group(
        "Linear NonDynamicallyQuantizableLinear",
        ["in_features={in_features}, out_features={out_features}, " "bias={%has_bias}"],
    ),  # fmt: skip
    "Bilinear": [
        "in1_features={in1_features}, in2_features={in2_features}, out_features={out_features}, " "bias={%has_bias}"
    ],  # fmt: skip
    **_group("Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d", _CONV),
    **_group("BatchNorm1d BatchNorm2d BatchNorm3d SyncBatchNorm InstanceNorm1d InstanceNorm2d InstanceNorm3d", _NORM),
    "LayerNorm": ["{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}, bias={%has_bias}"],
    "GroupNorm": ["{num_groups}, {num_channels}, eps={eps}, affine={affine}, bias={%has_bias}"],
    "RMSNorm": ["{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}"],
    **_group("LocalResponseNorm CrossMapLRN2d", ["{size}, alpha={alpha}, beta={beta}, k={k}"]),
    **_group("Dropout Dropout1d Dropout2d Dropout3d AlphaDropout FeatureAlphaDropout", ["p={p}, inplace={inplace}"]),
    **_group("ReLU ReLU6 SiLU Mish Hardswish SELU Hardsigmoid", _INPLACE_ONLY),
    "Threshold": ["threshold={threshold}, value={value}", _INPLACE_TAIL],
    "RReLU": ["lower={lower}, upper={upper}", _INPLACE_TAIL],
    "Hardtanh": ["min_val={min_val}, max_val={max_val}", _INPLACE_TAIL],
    **_group("ELU CELU", ["alpha={alpha}", _INPLACE_TAIL]),
    "LeakyReLU": ["negative_slope={negative_slope}", _INPLACE_TAIL],
    "GELU": ["approximate={approximate!r}"],
    **_group("Hardshrink Softshrink", ["{lambd}"]),
    "Softplus": ["beta={beta}, threshold={threshold}"],
    "PReLU": ["num_parameters={num_parameters}"],
    **_group("GLU Softmin Softmax LogSoftmax", ["dim={dim}"]),
    "Flatten": ["start_dim={start_dim}, end_dim={end_dim}"],
    "Unflatten": ["dim={dim}, unflattened_size={unflattened_size}"],
    **_group("MaxPool1d MaxPool2d MaxPool3d", _MAXPOOL),
    **_group("MaxUnpool1d MaxUnpool2d MaxUnpool3d AvgPool1d AvgPool2d AvgPool3d", _POOL),
    **_group(
        "LPPool1d LPPool2d LPPool3d",
        ["norm_type={norm_type}, kernel_size={kernel_size}, stride={stride}, " "ceil_mode={ceil_mode}"],
    ),  # fmt: skip
    **_group(
        "AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d",
        ["output_size={output_size}"],
    ),
    **_group("RNN LSTM GRU", _RNN),
    **_group("RNNCell LSTMCell GRUCell", _CELL),
    "Embedding": _EMBEDDING,
    "EmbeddingBag": [
        "{num_embeddings!r}, {embedding_dim!r}",
        (", max_norm={max_norm!r}", lambda a: a.get("max_norm") is not None),
        (", norm_type={norm_type!r}", _ne("norm_type", 2)),
        (", scale_grad_by_freq={scale_grad_by_freq!r}", lambda a: a.get("scale_grad_by_freq") is not False),
        ", mode={mode!r}",
        (", padding_idx={padding_idx!r}", lambda a: a.get("padding_idx") is not None),
    ],
    "PixelShuffle": ["upscale_factor={upscale_factor}"],
    "PixelUnshuffle": ["downscale_factor={downscale_factor}"],
    "ChannelShuffle": ["groups={groups}"],
    **_group(
        "ReflectionPad1d ReflectionPad2d ReflectionPad3d ReplicationPad1d ReplicationPad2d ReplicationPad3d "
        "CircularPad1d CircularPad2d CircularPad3d ZeroPad1d ZeroPad2d ZeroPad3d",
        _PAD,
    ),
    **_group("ConstantPad1d ConstantPad2d ConstantPad3d", ["padding={padding}, value={value}"]),
    "Fold": [
        "output_size={output_size}, kernel_size={kernel_size}, dilation={dilation}, padding={padding}, "
        "stride={stride}"
    ],  # fmt: skip
    "Unfold": ["kernel_size={kernel_size}, dilation={dilation}, padding={padding}, stride={stride}"],
}


def extra_repr(node: ModuleNode) -> str:
    """What ``node``'s ``extra_repr()`` would return: rebuilt from its attributes for the classes in
    :data:`EXTRA_REPR`, empty for other torch classes, ``name=value`` pairs for a class from outside torch."""
    attrs: dict[str, Any] = {**node.attributes, "%has_bias": node.parameters.get("bias") is not None}
    if node.cls.startswith("torch."):
        parts = EXTRA_REPR.get(node.name) if node.cls.startswith("torch.nn.modules.") else None
        if parts is None:
            return ""
        if node.name == "Upsample" or node.cls.startswith("torch.nn.modules.upsampling."):
            return _upsample(attrs)
        try:
            return "".join(p.format_map(attrs) if isinstance(p, str) else p[0].format_map(attrs) if p[1](attrs)
                           else "" for p in parts)  # fmt: skip
        except (KeyError, ValueError, IndexError, TypeError):
            return ""  # saved by a torch whose attributes differ: say nothing rather than guess
    return ", ".join(f"{k}={v!r}" for k, v in node.attributes.items())


def _upsample(attrs: dict[str, Any]) -> str:
    if attrs.get("scale_factor") is not None:
        info = f"scale_factor={attrs['scale_factor']!r}"
    else:
        info = f"size={attrs.get('size')!r}"
    return info + f", mode={attrs.get('mode')!r}"


EXTRA_REPR.update({name: [] for name in ("Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d")})


class _TooLong(Exception):
    pass


def _indent(text: str) -> str:
    first, _, rest = text.partition("\n")
    if not rest:
        return text
    return first + "\n" + "\n".join("  " + line if line.strip() else "" for line in rest.split("\n"))


def render(node: ModuleNode, max_chars: int = MAX_CHARS) -> str:
    """``print(model)``'s text for ``node``: class names, rebuilt ``extra_repr`` text, children indented by two
    spaces, ``ModuleList`` runs folded. A module inside itself (a cycle) prints as ``<cycle: Name>``; a tree whose
    text would exceed ``max_chars`` (shared modules printed many times over) is cut with a note."""
    done: dict[int, str] = {}
    active: set[int] = set()
    size = [0]

    def text(n: ModuleNode) -> str:
        if id(n) in done:
            return done[id(n)]
        if id(n) in active:
            return f"<cycle: {n.name}>"
        active.add(id(n))
        children = [(k, text(c) if c is not None else "None") for k, c in n.children.items()]
        active.discard(id(n))
        if n.cls.startswith("torch.nn.modules.container.ModuleList"):
            out = _module_list(n.name, children)
        else:
            extra = extra_repr(n)
            extra_lines = extra.split("\n") if extra else []
            lines = extra_lines + [f"({k}): {_indent(c)}" for k, c in children]
            out = n.name + "("
            if len(extra_lines) == 1 and not children:
                out += extra_lines[0]
            elif lines:
                out += "\n  " + "\n  ".join(lines) + "\n"
            out += ")"
        size[0] += len(out)
        if size[0] > max_chars:
            raise _TooLong
        done[id(n)] = out
        return out

    try:
        return text(node)
    except _TooLong:
        return f"{node.name}(... the tree's text is over {max_chars} characters: shared modules repeat; --json "
        "lists each once)"


def _module_list(name: str, children: list[tuple[str, str]]) -> str:
    if not children:
        return name + "()"
    runs: list[list[Any]] = []  # [first index, last index, text]
    for index, (_, child) in enumerate(children):
        if runs and runs[-1][2] == child:
            runs[-1][1] = index
        else:
            runs.append([index, index, child])
    lines = []
    for first, last, child in runs:
        head = f"({first}): " if first == last else f"({first}-{last}): {last - first + 1} x "
        lines.append(_indent(head + child))
    return name + "(\n  " + "\n  ".join(lines) + "\n)"
