"""LoRA training layers with one autograd function per projection, for the same arithmetic as peft's.

Training the 7B in NF4 is bound by Python on the host, not by the GPU (bench/NOTES.md, v3): peft's LoRA
forward for a bitsandbytes layer runs about twenty Python-level steps per call (argument checks, adapter
loops, a defensive ``clone``, three sub-module calls, the 4-bit layer's own checks, an autograd function and
two custom ops), and gradient checkpointing runs every one of them again in the recomputation. Here one
``torch.autograd.Function`` does a projection's whole job: base matmul (dequantizing the 4-bit weight into
the compute dtype, as bitsandbytes' own path does for more than a few rows), LoRA dropout, ``A``, ``B``,
scaling, the add, and the matching backward, which dequantizes again instead of keeping the dense weight.

The arithmetic is peft's, operation for operation and in the same dtypes, so results are the same up to
float rounding (the tests compare gradients and whole training runs):

* the LoRA branch runs in the adapter's dtype (peft keeps adapters in float32) on the input cast to it;
* dropout draws its mask through ``torch.native_dropout``, the kernel ``F.dropout`` itself uses, so the
  random stream and the masks are peft's (checkpointing's recomputation replays them);
* peft's 4-bit layer rounds the LoRA output to the base's dtype before adding; its plain linear layer adds
  in float32 and rounds once; each is kept.

Only the plain case takes the fast path: training mode, one active adapter, vanilla LoRA (no DoRA or other
variant, no LoRA bias), not merged, adapters enabled, no autocast, no extra call arguments. Everything else
(scoring in eval mode, mixed adapter batches, ``disable_adapter()``) goes to peft's own forward, unchanged.
:func:`use_fused_lora` switches a model's layers either way; :func:`lib.train.train` switches them on for the
run and off again at its end.

For the 7B in NF4 the seed's recipe runs faster than with peft's layers and in less memory (BENCHMARKS.md, v4),
because the block scales of the 4-bit weights are decoded once instead of on every call and no float32 copy of
each projection's input is kept.
"""
from __future__ import annotations

import contextlib
import functools
import types
from typing import Any

from .kernels import fused_norms

LORA_KERNELS = ("fused", "peft")


def lora_kernel(value: str | None) -> str:
    """``lora_kernel`` checked: ``fused`` (this module's layers) or ``peft`` (peft's own forward)."""
    mode = "fused" if value is None else str(value)
    if mode not in LORA_KERNELS:
        raise ValueError(f"lora_kernel {value!r} unknown; valid: {', '.join(LORA_KERNELS)}")
    return mode


def _is_4bit(layer) -> bool:
    return hasattr(getattr(layer, "weight", None), "quant_state")


ABSMAX_CACHE = "_fast_lora_absmax"  # the attribute that holds a 4-bit layer's float32 block scales


def _float_absmax(layer):
    """The 4-bit weight's block scales in float32. With double quantization they are themselves stored in 8
    bits and bitsandbytes decodes them on every call (one more custom op); :func:`use_fused_lora` keeps them
    decoded instead: 4 bytes per 64 weights (about 0.4 GiB for the 7B's language model)."""
    cached = getattr(layer, ABSMAX_CACHE, None)
    if cached is not None:
        return cached
    import bitsandbytes.functional as bnbF

    qs = layer.weight.quant_state
    if not qs.nested:
        return qs.absmax
    return (bnbF.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset).float()


def _dense_weight(layer, dtype):
    """The base layer's weight as a dense matrix in ``dtype``: 4-bit weights are dequantized (a new tensor each
    call, never kept), others are returned as they are."""
    if _is_4bit(layer):
        import torch

        qs = layer.weight.quant_state
        return torch.ops.bitsandbytes.dequantize_4bit.default(layer.weight.data, _float_absmax(layer), qs.blocksize,
                                                              qs.quant_type, qs.shape, dtype)
    return layer.weight if layer.weight.dtype == dtype else layer.weight.to(dtype)


def _compute_dtype(layer, x):
    """The dtype the base matmul runs in: bitsandbytes casts the input to its compute dtype, nn.Linear to
    nothing (its weight's dtype must match)."""
    if _is_4bit(layer):
        return layer.compute_dtype if getattr(layer, "compute_dtype", None) is not None else x.dtype
    return layer.weight.dtype


def _bias(layer, dtype):
    """The base layer's bias in the compute dtype (bitsandbytes casts it so), or None."""
    bias = layer.bias
    return bias if bias is None or bias.dtype == dtype else bias.to(dtype)


@functools.cache
def _functions() -> dict[str, Any]:
    """The autograd functions, built on first use so that importing this module does not import torch."""
    import torch

    F = torch.nn.functional

    class LoRAProjection(torch.autograd.Function):
        """``base(x) + B(A(dropout(x))) * scaling`` with a frozen (maybe 4-bit) base. Saves the input as it came
        (q, k and v share one), the dropout mask and ``A``'s output, and never the dense base weight; peft's graph
        keeps a float32 copy of the dropped-out input per projection instead, which backward here rebuilds with
        dropout's own masked-scale kernel."""

        @staticmethod
        def forward(ctx, x, weight_a, weight_b, base, scaling: float, p: float, round_lora_first: bool):
            in_dtype = x.dtype
            x2 = x.reshape(-1, x.shape[-1])
            cdtype = _compute_dtype(base, x)
            y = F.linear(x2.to(cdtype), _dense_weight(base, cdtype), _bias(base, cdtype))
            if _is_4bit(base):
                y = y.to(in_dtype)  # bitsandbytes returns the input's dtype
            xl = x2.to(weight_a.dtype)
            if p > 0.0:
                xd, mask = torch.native_dropout(xl, p, True)
            else:
                xd, mask = xl, None
            xa = F.linear(xd, weight_a)
            lora = F.linear(xa, weight_b) * scaling
            out = y + lora.to(y.dtype) if round_lora_first else (y + lora).to(y.dtype)
            ctx.base, ctx.scaling, ctx.p, ctx.in_dtype, ctx.cdtype = base, scaling, p, in_dtype, cdtype
            ctx.save_for_backward(x2, xa, mask, weight_a, weight_b)
            return out.view(*x.shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx, grad_out):
            x2, xa, mask, weight_a, weight_b = ctx.saved_tensors
            xd = x2.to(weight_a.dtype)
            if mask is not None:
                xd = torch.ops.aten.native_dropout_backward(xd, mask, 1.0 / (1.0 - ctx.p))
            g2 = grad_out.reshape(-1, grad_out.shape[-1])
            # LoRA branch (in the adapter's dtype); the casts around it are exact for the gradient
            gl = g2.to(weight_a.dtype) * ctx.scaling
            grad_b = gl.t().mm(xa) if ctx.needs_input_grad[2] else None
            g_xa = gl.mm(weight_b)
            grad_a = g_xa.t().mm(xd) if ctx.needs_input_grad[1] else None
            grad_x = None
            if ctx.needs_input_grad[0]:
                g_xd = g_xa.mm(weight_a)
                if mask is not None:
                    g_xd = torch.ops.aten.native_dropout_backward(g_xd, mask, 1.0 / (1.0 - ctx.p))
                base = ctx.base
                grad_base = g2.to(ctx.cdtype).mm(_dense_weight(base, ctx.cdtype)).to(ctx.in_dtype)
                grad_x = (grad_base + g_xd.to(ctx.in_dtype)).view(*grad_out.shape[:-1], grad_base.shape[-1])
            return grad_x, grad_a, grad_b, None, None, None, None

    class FrozenLinear4bit(torch.autograd.Function):
        """A frozen 4-bit linear layer: dequantize and multiply forward, dequantize again for backward."""

        @staticmethod
        def forward(ctx, x, layer):
            in_dtype = x.dtype
            cdtype = _compute_dtype(layer, x)
            y = F.linear(x.to(cdtype), _dense_weight(layer, cdtype), _bias(layer, cdtype)).to(in_dtype)
            ctx.layer, ctx.in_dtype, ctx.cdtype = layer, in_dtype, cdtype
            return y

        @staticmethod
        def backward(ctx, grad_out):
            w = _dense_weight(ctx.layer, ctx.cdtype)
            return torch.matmul(grad_out.to(ctx.cdtype), w).to(ctx.in_dtype), None

    return {"lora": LoRAProjection, "frozen4bit": FrozenLinear4bit}


# ----------------------------------------------------------------------------------------- the forwards
def _plain_case(layer, args, kwargs) -> str | None:
    """The adapter name when ``layer`` may take the fused path for this call, else None. Training mode decides,
    not autograd, so that a training forward does the same arithmetic with or without autograd (torch's
    reentrant checkpointing runs its first forward without, then recomputes with it)."""
    import torch

    if args or kwargs or not layer.training or layer.disable_adapters or layer.merged:
        return None
    if torch.is_autocast_enabled():
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or layer.lora_B[name].bias is not None:
        return None
    if not getattr(layer, "cast_input_dtype_enabled", True):
        return None
    return name


def _fused_lora_forward(self, x, *args, **kwargs):
    import torch

    name = _plain_case(self, args, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    dropout = self.lora_dropout[name]
    p = float(dropout.p) if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    return _functions()["lora"].apply(x, self.lora_A[name].weight, self.lora_B[name].weight, self.base_layer,
                                        float(self.scaling[name]), p, _is_4bit(self.base_layer))


def _fused_frozen4bit_forward(self, x, *args, **kwargs):
    if args or kwargs or not self.training or self.weight.requires_grad or not _is_4bit(self) \
            or (self.bias is not None and self.bias.requires_grad):
        return type(self).forward(self, x, *args, **kwargs)
    return _functions()["frozen4bit"].apply(x, self)


def use_fused_lora(model, kernel: str = "fused", cache_absmax: bool = True) -> int:
    """Give every peft LoRA linear layer in ``model`` (plain or bitsandbytes 4-bit), and every frozen 4-bit
    linear layer, the fused training forward (``kernel="fused"``), or take it away again (``"peft"``, which
    also drops the cached block scales). The fused forward applies in training mode only (``model.train()``);
    in eval mode (scoring) peft's own forward runs.

    ``cache_absmax``: keep the 4-bit weights' block scales decoded in float32 while the fused forward is on
    (:func:`_float_absmax`). Returns the number of layers switched on. The forward is set on the instances, so
    the modules, their state dicts and saved adapters are exactly peft's."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora import Linear as LoraLinear

    kernel = lora_kernel(kernel)
    lora_types: tuple[type, ...] = (LoraLinear,)
    try:
        from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

        lora_types += (LoraLinear4bit,)
    except ImportError:  # peft without bitsandbytes support
        pass
    try:
        import bitsandbytes as bnb

        frozen_types: tuple[type, ...] = (bnb.nn.Linear4bit,)
    except ImportError:
        frozen_types = ()
    count = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and type(module) in lora_types:
            fn = _fused_lora_forward
        elif frozen_types and type(module) in frozen_types:
            fn = _fused_frozen4bit_forward
        else:
            continue
        if ABSMAX_CACHE in vars(module):
            delattr(module, ABSMAX_CACHE)
        if kernel == "fused":
            module.forward = types.MethodType(fn, module)  # a bound method: deepcopy rebinds it to the copy
            if cache_absmax and fn is _fused_frozen4bit_forward and _is_4bit(module):
                setattr(module, ABSMAX_CACHE, _float_absmax(module))
            count += 1
        elif "forward" in vars(module):
            del module.forward
    return count


@contextlib.contextmanager
def fused_training(model, kernel: str = "fused", norms: bool | None = None, cache_absmax: bool = True):
    """Within the block ``model`` trains with ``kernel``'s layers: for ``fused``, :func:`use_fused_lora` and
    one-kernel RMSNorm (:func:`lib.model.fast.kernels.fused_norms`; ``norms=None``: on a GPU only). On exit it is as peft made
    it again (peft's forward, no cached block scales, HF's norms)."""
    kernel = lora_kernel(kernel)
    use_fused_lora(model, kernel, cache_absmax=cache_absmax)
    try:
        with fused_norms(model, enabled=norms) if kernel == "fused" else contextlib.nullcontext():
            yield model
    finally:
        use_fused_lora(model, "peft")


def fused_layers(model) -> int:
    """How many of ``model``'s layers have the fused forward."""
    fns = (_fused_lora_forward, _fused_frozen4bit_forward)
    return sum(1 for m in model.modules() if getattr(vars(m).get("forward"), "__func__", None) in fns)
