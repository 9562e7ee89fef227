"""Channels-last regions: a Relax pass that moves NCHW <-> NHWC transposes out of the way.

An int8 convolution computes channels-last (ops/conv.py `emit_conv_integer_rows`: its input
transposed NHWC, its product [pixels, channels]) and hands back NCHW, the layout of the model,
through a transpose. Between two such convolutions the graph runs element-wise work (the
dequantization, a ReLU, a residual addition, the next layer's quantization) and pooling in
NCHW, so each layer writes its output transposed and the next one transposes it back: two
passes over the activations with strided accesses.

This pass computes that work channels-last instead. For each value `v` bound as
`permute_dims(u, [0, 3, 1, 2])` (NCHW of a channels-last `u`) it keeps a channels-last twin,
and carries twins forward through

- element-wise ops (`ELEMENTWISE`) whose other operands are twins too, scalars, or tensors
  that vary along the channels only (a per-channel scale or bias, [C, 1, 1] or [1, C, 1, 1])
  or along the image only ([1, 1, H, W]): reshaped channels-last, the same order;
- concatenations of values that all have twins (along the axis renumbered);
- 2-D max / average pooling (the same op with `layout="NHWC"`);
- mean / sum / max / min over axes with `keepdims` (the axes renumbered);

and a `permute_dims(v, [0, 2, 3, 1])` of a value with a twin becomes the twin itself, as does
a reshape of a one-pixel value ([N, C, 1, 1] and [N, 1, 1, C] hold the same order). Where a
value with a twin is also read NCHW (by an op that cannot run channels-last, or as a graph
output), the NCHW value becomes a transpose of its twin rather than a second computation
from transposed inputs; dead-code elimination then drops what nothing reads any more (the
write-backs and transposes inside a region). So no value is computed twice, and a transpose
is left only where something reads a region's value NCHW, one per such value.

Then the element-wise work on a convolution's product runs on the product itself: a
convolution's [N, pixels, C] rows are viewed [N, H, W, C] by a reshape, and FuseOps fuses
element-wise consumers into the product kernel, not a reshape, so the product's epilogue (its
dequantization, a ReLU, the next layer's quantization) would be a kernel of its own reading
the int32 product back from memory. An element-wise op whose operands are such views of the
same shape, scalars, or tensors varying along C only runs on the rows instead ([1, 1, 1, C]
viewed [1, 1, C]); its result is viewed [N, H, W, C] for whatever else reads it, and a reshape
of it back to rows is the rows themselves. The int8 product kernel then computes its epilogue
on each tile (schedules/int8.py) and writes the 8-bit activations the next product reads.

Element-wise ops, concatenations and pooling compute the same bits in either layout (the same
elements; a pooling window in the same order). A reduction's schedule follows the layout (a
sum along the contiguous channels adds in vector lanes), so a float mean or sum may round
differently in its last bits; integer results are the same.
"""

from __future__ import annotations

from typing import Any

import tvm_ffi
from tvm import ir, relax, tirx

TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)
_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}  # NCHW axis -> the same axis channels-last

_UNARY = (
    "abs acos acosh asin asinh atan atanh bitwise_not ceil cos cosh erf exp floor isfinite isinf "
    "isnan log logical_not negative round rsqrt sigmoid sign sin sinh sqrt square tan tanh trunc "
    "astype clip nn.relu nn.gelu nn.gelu_tanh nn.silu nn.leakyrelu"
)
_BINARY = (
    "add subtract multiply divide floor_divide floor_mod mod power maximum minimum equal "
    "not_equal less less_equal greater greater_equal logical_and logical_or logical_xor "
    "bitwise_and bitwise_or bitwise_xor left_shift right_shift where"
)
ELEMENTWISE = frozenset("relax." + name for name in f"{_UNARY} {_BINARY}".split())
POOLS = frozenset({"relax.nn.max_pool2d", "relax.nn.avg_pool2d"})
REDUCTIONS = frozenset({"relax.mean", "relax.sum", "relax.max", "relax.min"})


def channels_last_pass() -> Any:
    """The pass (module doc), then the bindings it made redundant folded and dropped."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="ChannelsLastRegions")
    def regions(mod: Any, _ctx: Any) -> Any:
        changed: list[bool] = []

        @relax.transform.dataflowblock_pass(opt_level=0)
        def blocks(block: relax.DataflowBlock, _mod: Any, _ctx: Any) -> relax.DataflowBlock:
            rewrite = _Rewrite()
            new = rewrite.block(block)
            changed.append(rewrite.sunk)
            return new if rewrite.sunk else block  # no transpose cancelled: left as it was

        rewritten = blocks(mod)
        if not any(changed):
            return mod
        functions = [
            gv.name_hint for gv, f in mod.functions_items() if isinstance(f, relax.Function)
        ]
        tidy = [
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(functions),  # only unused bindings
        ]
        return tvm.transform.Sequential(tidy)(rewritten)

    return regions


def op_name(value: Any) -> str | None:
    """The name of the Relax op `value` calls ("relax.add"), or None if it is no such call."""
    if isinstance(value, relax.Call) and isinstance(value.op, ir.Op):
        return str(value.op.name)
    return None


def _axes(call: relax.Call) -> tuple[int, ...] | None:
    axes = call.attrs.axes
    return None if axes is None else tuple(int(a) for a in axes)


def _is_rows_of(reshape: relax.Call) -> bool:
    """Whether `reshape` views [N, P, C] rows as [N, H, W, C] (the same C)."""
    source, ty = reshape.args[0].ty, reshape.ty
    if not isinstance(source, relax.TensorType) or source.ndim != 3 or ty.ndim != 4:
        return False
    if not isinstance(source.shape, relax.ShapeExpr) or not isinstance(ty.shape, relax.ShapeExpr):
        return False
    return tvm_ffi.structural_equal(source.shape.values[-1], ty.shape.values[-1])


def _viewed(a: relax.Expr, dims: list[Any], constant: ir.Constant | None) -> relax.Expr:
    """`a` viewed as `dims` (the same elements in the same order): `constant`, its value,
    reshaped at compile time where the dims are static, else a reshape."""
    if constant is not None and all(isinstance(d, int) for d in dims):
        return relax.const(constant.value.numpy().reshape(dims), str(a.ty.dtype))
    return relax.op.reshape(a, dims)


def _row_operand(
    a: relax.Expr, rows: dict[relax.Var, relax.Expr], shape: relax.ShapeExpr
) -> relax.Expr | None:
    """Operand `a` of an element-wise op whose result is [N, H, W, C] (`shape`), for the same
    op on [N, P, C] rows: the rows of a value of that shape that has them, a scalar or a
    tensor that varies along C only as it is ([C], [1, C], [1, 1, C]) or viewed so
    ([1, 1, 1, C]), else None."""
    if not isinstance(a.ty, relax.TensorType):
        return a
    if a in rows:
        return rows[a] if tvm_ffi.structural_equal(a.ty.shape, shape) else None
    ty = a.ty
    if ty.ndim == 0:
        return a
    if not 0 < ty.ndim <= 4 or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = _ints(ty.shape.values)
    if any(d != 1 for d in dims[:-1]) or not isinstance(dims[-1], int):
        return None
    if ty.ndim < 4:
        return a  # broadcasts along the rows as it did along the image
    return _viewed(a, dims[1:], a if isinstance(a, ir.Constant) else None)


def _ints(shape: Any) -> list[Any]:
    return [int(d) if isinstance(d, tirx.IntImm) else d for d in shape]


class _Rewrite:
    """One dataflow block: `twins` maps an NCHW var to its channels-last twin."""

    def __init__(self) -> None:
        self.twins: dict[relax.Var, relax.Expr] = {}
        self.constants: dict[relax.Var, ir.Constant] = {}
        self.bindings: list[relax.Binding] = []
        self.bb = relax.BlockBuilder()
        self.sources: set[relax.Var] = set()  # bound as the transpose of their twin
        self.sunk = False  # a transpose back to channels-last replaced by a twin

    def block(self, block: relax.DataflowBlock) -> relax.DataflowBlock:
        if not any(self._is_permute(b, TO_NCHW) for b in block.bindings):
            return block
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding):
                self._binding(binding)
            else:
                self.bindings.append(binding)
        return relax.DataflowBlock(self._rows(self._transpose_twins()), block.span)

    def _transpose_twins(self) -> list[relax.Binding]:
        """The bindings, with every value that has a twin and is read NCHW a transpose of its
        twin instead of a computation of its own (of a pool, say, or of a sum of two
        transposed inputs)."""
        live: set[relax.Var] = set()
        for b in reversed(self.bindings):
            if b.var in live or not isinstance(b.var, relax.DataflowVar):
                live.add(b.var)
                live.update(relax.analysis.free_vars(b.value))
        origin = {
            twin: var for var, twin in self.twins.items() if var in live and var not in self.sources
        }
        moved = set(origin.values())
        out: list[relax.Binding] = []
        for b in self.bindings:
            if b.var in moved:
                continue
            out.append(b)
            if b.var in origin:
                back = self.bb.normalize(relax.op.permute_dims(b.var, TO_NCHW))
                out.append(relax.VarBinding(origin[b.var], back))
        return out

    def _rows(self, bindings: list[relax.Binding]) -> list[relax.Binding]:
        """The bindings, with the element-wise work on a product's pixels computed on the
        product's [N, pixels, channels] rows before it is viewed [N, H, W, C] (module doc)."""
        products = {self.twins[v] for v in self.sources}
        rows: dict[relax.Var, relax.Expr] = {}  # a [N, H, W, C] var -> the same [N, P, C]
        out: list[relax.Binding] = []
        for b in bindings:
            value = getattr(b, "value", None)
            if isinstance(value, relax.Var) and value in rows:
                rows[b.var] = rows[value]  # an alias (a transpose back to a twin, say)
            name = op_name(value)
            if name == "relax.reshape" and b.var in products and _is_rows_of(value):
                rows[b.var] = value.args[0]
            elif name == "relax.reshape" and value.args[0] in rows:
                flat = rows[value.args[0]]
                if tvm_ffi.structural_equal(value.ty.shape, flat.ty.shape):
                    out.append(relax.VarBinding(b.var, flat))  # the rows themselves
                    continue
            elif name in ELEMENTWISE and value.ty.ndim == 4 and any(a in rows for a in value.args):
                args = [_row_operand(a, rows, value.ty.shape) for a in value.args]
                if all(a is not None for a in args):
                    for i, a in enumerate(args):
                        if isinstance(a, relax.Call):  # a view of a per-channel operand
                            view = self.bb.normalize(a)
                            args[i] = relax.DataflowVar("channels", view.ty)
                            out.append(relax.VarBinding(args[i], view))
                    call = self.bb.normalize(relax.Call(value.op, args, value.attrs, value.ty_args))
                    flat = relax.DataflowVar(str(b.var.name) + "_rows", call.ty)
                    out.append(relax.VarBinding(flat, call))
                    rows[b.var] = flat
                    view = self.bb.normalize(relax.op.reshape(flat, value.ty.shape))
                    out.append(relax.VarBinding(b.var, view))
                    continue
            out.append(b)
        return out

    @staticmethod
    def _is_permute(binding: relax.Binding, axes: tuple[int, ...]) -> bool:
        value = getattr(binding, "value", None)
        return (
            op_name(value) == "relax.permute_dims" and value.ty.ndim == 4 and _axes(value) == axes
        )

    def _binding(self, binding: relax.VarBinding) -> None:
        var, value = binding.var, binding.value
        if isinstance(value, ir.Constant):
            self.constants[var] = value
        if self._is_permute(binding, TO_NHWC) and value.args[0] in self.twins:
            # the channels-last value exists already: bind it (CanonicalizeBindings folds this)
            self.bindings.append(relax.VarBinding(var, self.twins[value.args[0]]))
            self.sunk = True
            return
        if self._is_reshape_of_pixel(value):
            # [N, C, 1, 1] and [N, 1, 1, C] hold the same elements in the same order
            twin = self.twins[value.args[0]]
            reshape = self.bb.normalize(relax.op.reshape(twin, value.args[1]))
            self.bindings.append(relax.VarBinding(var, reshape))
            self.sunk = True
            return
        self.bindings.append(binding)
        if self._is_permute(binding, TO_NCHW):
            self.twins[var] = value.args[0]
            self.sources.add(var)
            return
        if op_name(value) is None:
            return
        twin = self._twin(value)
        if twin is not None:
            self.twins[var] = self._emit(twin, str(var.name) + "_nhwc")

    def _is_reshape_of_pixel(self, value: relax.Expr) -> bool:
        """A reshape of a value with a twin and an image of one pixel."""
        if op_name(value) != "relax.reshape" or value.args[0] not in self.twins:
            return False
        shape = value.args[0].ty.shape
        return isinstance(shape, relax.ShapeExpr) and _ints(shape.values)[2:] == [1, 1]

    def _twin(self, call: relax.Call) -> relax.Expr | None:
        """`call` computed on the channels-last twins of its inputs, or None."""
        name = call.op.name
        ty = call.ty
        if not isinstance(ty, relax.TensorType) or ty.ndim != 4:
            return None
        if name in ELEMENTWISE:
            tensors = [a for a in call.args if isinstance(a.ty, relax.TensorType)]
            if not any(a in self.twins for a in tensors):
                return None
            args = []
            for a in call.args:
                b = self._operand(a) if isinstance(a.ty, relax.TensorType) else a
                if b is None:
                    return None
                args.append(b)
            return relax.Call(call.op, args, call.attrs, call.ty_args)
        x = call.args[0]
        if name == "relax.concat" and isinstance(x, relax.Tuple) and call.attrs.axis is not None:
            if not x.fields or not all(f in self.twins for f in x.fields):
                return None
            axis = _NHWC_AXIS[int(call.attrs.axis) % 4]
            return relax.op.concat([self.twins[f] for f in x.fields], axis=axis)
        if x not in self.twins:
            return None
        if name in POOLS:
            at = call.attrs
            if at.layout != "NCHW" or at.out_layout != "NCHW":
                return None
            make = relax.op.nn.max_pool2d if name.endswith("max_pool2d") else relax.op.nn.avg_pool2d
            return make(
                self.twins[x],
                pool_size=_ints(at.pool_size),
                strides=_ints(at.strides),
                padding=_ints(at.padding),
                dilation=_ints(at.dilation),
                ceil_mode=bool(at.ceil_mode),
                count_include_pad=bool(at.count_include_pad),
                layout="NHWC",
                out_layout="NHWC",
            )
        if name in REDUCTIONS and call.attrs.keepdims:
            axes = call.attrs.axis
            mapped = None if axes is None else [_NHWC_AXIS[int(a) % 4] for a in axes]
            reduce = getattr(relax.op, name.split(".")[-1])
            return reduce(self.twins[x], axis=mapped, keepdims=True)
        return None

    def _operand(self, a: relax.Expr) -> relax.Expr | None:
        """Operand `a` of an element-wise op whose result is 4-D, channels-last: its twin, or
        itself when a scalar, or a view when it varies along the channels only; else None."""
        if a in self.twins:
            return self.twins[a]
        ty = a.ty
        if ty.ndim == 0:
            return a
        if not 0 < ty.ndim <= 4 or not isinstance(ty.shape, relax.ShapeExpr):
            return None
        n, c, h, w = [1] * (4 - ty.ndim) + _ints(ty.shape.values)
        if c != 1 and (h != 1 or w != 1):
            return None  # varies along C and H or W: it would have to be transposed
        nhwc = [n, h, w, c]  # the same elements in the same order
        constant = a if isinstance(a, ir.Constant) else self.constants.get(a)
        view = _viewed(a, nhwc, constant)
        return view if isinstance(view, ir.Constant) else self._emit(view, "channels")

    def _emit(self, expr: relax.Expr, name: str) -> relax.Var:
        expr = self.bb.normalize(expr)
        var = relax.DataflowVar(name, expr.ty)
        self.bindings.append(relax.VarBinding(var, expr))
        return var
