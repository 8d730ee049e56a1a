"""What one profiled operator costs, from the shapes and dtypes the profiler recorded: FLOP, and bytes moved as a
lower bound (inputs, weights and output, each counted once), for the per-layer roofline."""

from __future__ import annotations

_DTYPE_BYTES = {
    "float": 4,
    "double": 8,
    "c10::Half": 2,
    "c10::BFloat16": 2,
    "long int": 8,
    "long": 8,
    "int": 4,
    "short int": 2,
    "short": 2,
    "signed char": 1,
    "unsigned char": 1,
    "bool": 1,
    "c10::Float8_e4m3fn": 1,
    "c10::Float8_e5m2": 1,
}
DTYPE_PRECISION = {"float": "fp32", "c10::BFloat16": "bf16", "c10::Half": "fp16", "double": "fp32"}
# ops that move no data (views, shape changes, allocations): timed, not put on the roofline
_NO_TRAFFIC = {
    "aten::view",
    "aten::reshape",
    "aten::_reshape_alias",
    "aten::_unsafe_view",
    "aten::permute",
    "aten::slice",
    "aten::select",
    "aten::as_strided",
    "aten::expand",
    "aten::expand_as",
    "aten::view_as",
    "aten::t",
    "aten::transpose",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::flatten",
    "aten::unflatten",
    "aten::narrow",
    "aten::split",
    "aten::chunk",
    "aten::unbind",
    "aten::detach",
    "aten::alias",
    "aten::lift_fresh",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::empty",
    "aten::empty_like",
    "aten::empty_strided",
    "aten::new_empty",
    "aten::new_empty_strided",
    "aten::resize_",
    "aten::set_",
}
_REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "norm", "linalg_vector_norm", "var", "std", "all", "any"}
_NORMS = {"batch_norm", "native_batch_norm", "_native_batch_norm_legit_no_training", "layer_norm", "group_norm"}
_MOVES = {"pixel_shuffle", "pixel_unshuffle", "clone", "contiguous", "to", "_to_copy", "copy_", "cat", "stack", "pad"}
# where a convolution's stride, padding and dilation are among its arguments, by operator (bias and an extra tensor
# shift them): (stride, padding, dilation); the rest are taken as conv2d
_CONV_ARGS = {
    "convolution": (3, 4, 5),
    "_convolution": (3, 4, 5),
    "convolution_overrideable": (3, 4, 5),
    "mkldnn_convolution": (4, 3, 5),
    "_convolution_pointwise": (4, 3, 5),
    "cudnn_convolution": (3, 2, 4),
    "cudnn_convolution_add_relu": (5, 6, 7),
}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _tensors(shapes, dtypes) -> list:
    """(shape, element bytes, dtype) of an op's tensor arguments with at least one dimension."""
    return [
        (list(s), _DTYPE_BYTES[d], d)
        for s, d in zip(shapes, dtypes)
        if isinstance(s, list) and s and all(isinstance(v, int) for v in s) and d in _DTYPE_BYTES
    ]


def _innermost(ev):
    """The innermost event of the same operator under ``ev`` (autocast wraps an op around its cast arguments)."""
    while True:
        same = [c for c in ev.cpu_children if c.name == ev.name]
        if not same:
            return ev
        ev = same[-1]


def _descendant(ev, name: str):
    for c in ev.cpu_children:
        if c.name == name:
            return c
        found = _descendant(c, name)
        if found is not None:
            return found
    return None


def _pair(value, rank: int, default: int) -> list:
    if isinstance(value, (list, tuple)) and value:
        return [int(v) for v in value] * (rank if len(value) == 1 else 1)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [int(value)] * rank
    return [default] * rank


def _conv_cost(op: str, args, concrete, overload: str) -> tuple[int, list]:
    """FLOP and output shape of a convolution from its argument shapes and values."""
    x, w = args[0][0], args[1][0]
    if "binary" in overload and len(args) > 2:  # (x, other, weight, ...)
        w = args[2][0]
    rank = len(x) - 2
    transposed = "transpose" in op or (
        op in ("convolution", "_convolution") and len(concrete) > 6 and concrete[6] is True
    )
    if "transpose" in op:
        i_stride, i_pad, i_dil = 3, 4, 7
    else:
        i_stride, i_pad, i_dil = _CONV_ARGS.get(op, (3, 4, 5))
    if "binary" in overload:
        i_stride, i_pad, i_dil = i_stride + 1, i_pad + 1, i_dil + 1

    def arg(i):
        return concrete[i] if i < len(concrete) else None

    stride, dil = _pair(arg(i_stride), rank, 1), _pair(arg(i_dil), rank, 1)
    kernel = w[2:]
    pad_value = arg(i_pad)
    if isinstance(pad_value, str):  # conv2d(padding="same" | "valid")
        pad = [d * (k - 1) // 2 if pad_value == "same" else 0 for k, d in zip(kernel, dil)]
    else:
        pad = _pair(pad_value, rank, 0)
    if transposed:
        groups = max(1, x[1] // w[0]) if w[0] else 1
        out_channels = w[1] * groups
        spatial = [(i - 1) * s - 2 * p + d * (k - 1) + 1 for i, s, p, d, k in zip(x[2:], stride, pad, dil, kernel)]
        flop = 2 * _numel(x) * w[1] * _numel(kernel)
    else:
        groups = max(1, x[1] // w[1]) if w[1] else 1
        out_channels = w[0]
        spatial = [(i + 2 * p - d * (k - 1) - 1) // s + 1 for i, s, p, d, k in zip(x[2:], stride, pad, dil, kernel)]
        flop = 2 * x[0] * out_channels * _numel(spatial) * (x[1] // groups) * _numel(kernel)
    return flop, [x[0], out_channels, *spatial]


def _broadcast(shapes: list) -> list:
    rank = max(len(s) for s in shapes)
    out = [1] * rank
    for s in shapes:
        for i, v in enumerate(s):
            j = rank - len(s) + i
            out[j] = max(out[j], v)
    return out


def op_cost(ev) -> dict:
    """FLOP, bytes moved (tensor arguments and the output, each once: a lower bound on the traffic) and the
    arithmetic's dtype of one profiled top-level operator event."""
    inner = _innermost(ev)
    full = ev.name
    op = full.split("::", 1)[-1]
    args = _tensors(ev.input_shapes, ev.input_dtypes)
    inner_args = _tensors(inner.input_shapes, inner.input_dtypes) or args
    concrete = list(getattr(inner, "concrete_inputs", None) or [])
    dtype = inner_args[0][2] if inner_args else "float"
    flop, out_shape, out_dtype, kind = 0, None, dtype, "elementwise"
    read = sum(_numel(s) * b for s, b, _ in args)
    if full in _NO_TRAFFIC or (op in ("to", "contiguous", "type_as") and not ev.cpu_children):
        return {"flop": 0, "bytes": 0, "dtype": dtype, "kind": "view", "out_shape": args[0][0] if args else []}
    if "conv" in op and len(inner_args) >= 2:
        kind = "conv"
        flop, out_shape = _conv_cost(op, inner_args, concrete, getattr(inner, "overload_name", "") or "")
    elif op.startswith("upsample") and args:
        kind = "move"
        x = args[0][0]
        size = concrete[1] if len(concrete) > 1 and isinstance(concrete[1], list) and concrete[1] else None
        if size is None:
            scales = next((c for c in reversed(concrete) if isinstance(c, list) and c), [1.0] * (len(x) - 2))
            size = [int(i * s) for i, s in zip(x[2:], scales)]
        out_shape = [*x[:2], *size]
    elif ("linear" in op or op in ("addmm", "mm", "matmul", "bmm", "baddbmm")) and len(inner_args) >= 2:
        kind = "matmul"
        if "linear" in op:
            a, w = inner_args[0][0], inner_args[1][0]
            out_shape, k = [*a[:-1], w[0]], a[-1]
        else:
            a, b = (
                (inner_args[1][0], inner_args[2][0])
                if op in ("addmm", "baddbmm")
                else (inner_args[0][0], inner_args[1][0])
            )
            batch = _broadcast([a[:-2], b[:-2]]) if len(a) > 2 and len(b) > 2 else (a[:-2] or b[:-2])
            out_shape, k = [*batch, a[-2] if len(a) > 1 else 1, b[-1]], a[-1]
        flop = 2 * _numel(out_shape) * k
    elif op in _MOVES or op.endswith("_like") or op in ("fill_", "zero_"):
        kind = "move"
        if op.endswith("_like") or op in ("fill_", "zero_"):  # writes only
            read, out_shape = 0, args[0][0] if args else []
        elif op == "copy_" and len(args) >= 2:  # (dst, src): reads src, writes dst
            read, out_shape, out_dtype = _numel(args[1][0]) * args[1][1], args[0][0], args[0][2]
        elif op in ("cat", "stack"):
            out_shape = [sum(_numel(s) for s, _, _ in args)]
        elif op in ("to", "_to_copy", "contiguous", "clone", "pixel_shuffle", "pixel_unshuffle") and args:
            copy = _descendant(ev, "aten::copy_")
            out_dtype = copy.input_dtypes[0] if copy is not None and copy.input_dtypes[0] in _DTYPE_BYTES else dtype
            out_shape = args[0][0]
        elif args:
            out_shape = _broadcast([s for s, _, _ in args])
    elif op.rstrip("_") in _REDUCTIONS and args:
        kind = "reduction"
        flop, out_shape = _numel(args[0][0]), []
    elif op in _NORMS and args:
        out_shape = args[0][0]
        flop = 2 * _numel(out_shape)
    elif op == "embedding" and len(args) >= 2:
        kind = "move"
        w, idx = args[0], args[1]
        read, out_shape, out_dtype = _numel(idx[0]) * idx[1] + _numel(idx[0]) * w[0][1] * w[1], [*idx[0], w[0][1]], w[2]
    elif args:
        out_shape = _broadcast([s for s, _, _ in args])
        flop = _numel(out_shape)
    if out_shape is None:
        out_shape = []
    written = _numel(out_shape) * _DTYPE_BYTES.get(out_dtype, 4) if out_shape else 0
    return {
        "flop": flop,
        "bytes": read + written,
        "dtype": dtype,
        "kind": kind,
        "out_shape": out_shape,
        "out_bytes": written,
    }
