"""The GPU fast path for a loaded diffusers pipeline.

A worker loads its pinned model once, calls :func:`optimize_pipeline` with the options its
settings give, then :func:`warm_up` at every shape it serves, so that compilation, cuDNN
algorithm search and allocator growth are paid at boot and not by the first job.

Measured on one H200 (bench/results/h200-2026-11-28.txt; SD1.5 img2img 512², 20 steps,
strength 0.75, CFG 7.5): plain diffusers fp32 batch 1 renders 1.47 images/s; bf16 eager at
batch 8, 7.7; compiling the UNet, 9.8; the VAE too, 11.0; the same at batch 16, 11.9
(8.1x, 330 TFLOP/s). Field comments below give each step's share. On the CPU every
CUDA-only step is skipped, so tests and the offline demo run the same code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
# Which scaled-dot-product-attention kernel torch tries first (AccelOptions.attention), and
# torch's own order as this module found it ("default" puts it back).
ATTENTION_FIRST = ("default", "cudnn")
_TORCH_ATTENTION_ORDER: list[int] = list(torch._C._get_sdp_priority_order())
# Set for the compile of the UNet and VAE when ``AccelOptions.inductor_tuning`` is on: 1x1
# convolutions as matmuls (set process-wide anyway, see _compile), coordinate descent over
# each generated kernel's block sizes (in every direction), and no fusion of pointwise
# epilogues into matmul templates.
INDUCTOR_TUNING: dict[str, bool] = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "coordinate_descent_check_all_directions": True,
    "epilogue_fusion": False,
}


@dataclass(frozen=True)
class AccelOptions:
    """How to run a pipeline: where, in which precision, and which speedups to apply."""

    device: str = "auto"
    # bf16 rather than fp16: same tensor-core rate, but fp32's exponent range, so no
    # overflow to inf/NaN in the VAE or in fine-tunes that were never checked in fp16.
    # With batching, the bulk of the gain: 1.47 -> 7.7 images/s (batch 8, eager).
    dtype: str = "bfloat16"
    # NHWC lets cuDNN and inductor pick tensor-core convolutions without transposes. Eager
    # on the H200 it made no difference beyond the ±5% run-to-run spread; it was not
    # measured apart under compile, where it is the layout inductor prefers for convs.
    channels_last: bool = True
    # torch.compile of the UNet: fuses GroupNorm/SiLU/residual adds and cuts launches.
    # +34% at batch 8 (7.3 -> 9.8 images/s); costs ~45 s at boot per served batch size.
    compile: bool = False
    vae_tiling: bool = False
    # Scaled-dot-product attention (flash / memory-efficient kernels).
    sdpa: bool = True
    # One GEMM for q,k,v (self-attention) and k,v (cross-attention) instead of three / two.
    # Eager on the H200: no difference beyond noise; harmless, and fewer launches.
    fuse_qkv: bool = True
    # Also compile the VAE encoder and decoder: they are 13% of an SD1.5 img2img image's
    # FLOPs and 69% of a 2-step (turbo) image's. +13% on SD1.5 (9.8 -> 11.0 images/s at
    # batch 8) and +46% on turbo (26.3 -> 38.3 at batch 16); ~25-40 s more at boot.
    compile_vae: bool = False
    # "default" is the one measured (max-autotune's per-shape tuning did not fit the
    # benchmark's device time); the others are accepted for experiments.
    compile_mode: str = "default"
    fullgraph: bool = True
    # Inductor's tuning flags from diffusers' "Accelerate inference of text-to-image diffusion
    # models" tutorial (INDUCTOR_TUNING), CUDA only. Off until measured on our GPU: the
    # tutorial (SDXL, A100, batch 1) reports 3.31 -> 2.54 s for compiling UNet and VAE with
    # these flags, max-autotune and CUDA graphs together, never the flags' own share; and
    # coordinate descent benchmarks each kernel's block sizes, so warm-up takes longer.
    # bench/gpu_throughput.py --variants inductor measures it on against off.
    inductor_tuning: bool = False
    # The SDPA kernel tried first, CUDA only. torch's own order is flash, memory-efficient,
    # math, cuDNN, so cuDNN's attention is never picked unless asked for; "cudnn" puts it
    # first and keeps the others behind it for what it does not support. ONNX Runtime
    # prefers cuDNN's kernel on Hopper (SM90) for fp16/bf16; SD1.5's attention has 40-wide
    # heads at 4,096 tokens, a shape FlashAttention-2 pads. Off until measured on our GPU:
    # bench/gpu_throughput.py --variants cudnn_attention.
    attention: str = "default"
    # Process-wide backend flags (one worker process serves one model, so global is fine).
    # TF32 matters only to fp32 pipelines; cudnn.benchmark showed no eager gain beyond
    # noise in bf16 on the H200, but served shapes are fixed, so its search is paid once.
    tf32: bool = True
    cudnn_benchmark: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.attention not in ATTENTION_FIRST:
            raise ValueError(f"attention must be one of {ATTENTION_FIRST}, got {self.attention!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}"
            )

    @classmethod
    def best_for(cls, device: str) -> AccelOptions:
        """The measured-best settings for ``device``: full fast path on CUDA, plain fp32 on CPU.

        On CUDA, serve batches: 16 for SD1.5 at 512² (11.9 images/s against 11.0 at 8 and
        1.7 eager at 1), 32 for 2-step turbo (42.6 images/s).
        """
        resolved = resolve_device(device)
        if resolved.startswith("cuda"):
            return cls(device=resolved, compile=True, compile_vae=True)
        # CPU: bf16 matmuls are slow on most CPUs and torch.compile needs a C++ toolchain;
        # the CPU path exists for tests and the demo, so keep it plain and dependable.
        # Fused QKV weights cost oneDNN seconds of first-call setup per shape on the CPU.
        return cls(
            device=resolved, dtype="float32", channels_last=False, compile=False, fuse_qkv=False
        )


def resolve_device(name: str) -> str:
    """Map ``"auto"`` to ``"cuda"`` when a GPU is visible, else ``"cpu"``; check explicit names."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA device")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {name!r}")
    return name


def set_backend_flags(opts: AccelOptions) -> None:
    """Set the process-wide CUDA math flags from ``opts`` (no-op without CUDA)."""
    if not torch.cuda.is_available():
        return
    # TF32 only touches the few ops still in fp32 when running bf16; for a pipeline kept
    # in fp32 it lets matmuls use the tensor cores (plain fp32 reached 40 TFLOP/s here).
    torch.backends.cuda.matmul.allow_tf32 = opts.tf32
    torch.backends.cudnn.allow_tf32 = opts.tf32
    # The served shapes are fixed per worker, so cuDNN's one-time search per shape pays back.
    torch.backends.cudnn.benchmark = opts.cudnn_benchmark
    set_attention_first(opts.attention)


def set_attention_first(first: str) -> None:
    """Put ``first``'s SDPA kernel ahead of the others ("default": torch's own order).

    Process-wide, and read when attention is traced: set it before compiling. Uses the
    setter behind ``torch.nn.attention.sdpa_kernel(..., set_priority=True)``, which only
    exists as a context manager; a worker wants it for its whole life.
    """
    from torch.nn.attention import SDPBackend

    order = list(_TORCH_ATTENTION_ORDER)
    if first == "cudnn":
        cudnn = SDPBackend.CUDNN_ATTENTION.value
        order = [cudnn, *(b for b in order if b != cudnn)]
    torch._C._set_sdp_priority_order(order)


def optimize_pipeline(pipe: Any, opts: AccelOptions) -> Any:
    """Apply ``opts`` to ``pipe`` in place and return it.

    Calling it again with other options moves the pipeline to the new state (the benchmark
    relies on this to measure each step on its own).
    """
    device = resolve_device(opts.device)
    on_cuda = device.startswith("cuda")
    # 1. math flags and placement
    if on_cuda:
        set_backend_flags(opts)
    dtype = DTYPES[opts.dtype]
    if all(m.dtype == dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder)):
        # Already there: diffusers warns on every dtype cast, so only cast when needed.
        pipe.to(device)
    else:
        pipe.to(device=device, dtype=dtype)
    # 2. attention kernels; fusing must come after the dtype move, since it copies weights
    if opts.sdpa:
        _set_sdpa(pipe)
        if opts.fuse_qkv:
            pipe.fuse_qkv_projections(unet=True, vae=True)
    # 3. memory layout
    layout = torch.channels_last if opts.channels_last else torch.contiguous_format
    for module in (pipe.unet, pipe.vae):
        module.to(memory_format=layout)
    # 4. VAE tiling: bounds memory for large images, at some cost in speed
    if opts.vae_tiling:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    # 5. compilation (lazy: the cost lands on the first call, i.e. in warm_up)
    uncompile(pipe)
    if opts.compile:
        _compile(pipe, opts, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _set_sdpa(pipe: Any) -> None:
    # AttnProcessor2_0 is diffusers' default on torch 2, but a pipeline loaded with
    # another processor (xformers, sliced, a LoRA's) keeps it; set it explicitly.
    from diffusers.models.attention_processor import AttnProcessor2_0

    for module in (pipe.unet, pipe.vae):
        module.set_attn_processor(AttnProcessor2_0())


def compile_kwargs(opts: AccelOptions, device: str) -> dict[str, Any]:
    """The ``Module.compile()`` arguments for ``opts`` on ``device``.

    The tuning flags go in as this compile's inductor options rather than process-wide
    config: they then apply to these modules only, belong to the compiled graphs' cache key,
    and a benchmark can compile with and without them in one process.
    """
    kwargs: dict[str, Any] = {"fullgraph": opts.fullgraph, "dynamic": False}
    if opts.inductor_tuning and device.startswith("cuda"):
        from torch._inductor import list_mode_options

        # torch.compile takes a mode or options, not both: spell the mode out as options.
        kwargs["options"] = {**list_mode_options(opts.compile_mode), **INDUCTOR_TUNING}
    else:
        kwargs["mode"] = opts.compile_mode
    return kwargs


def _compile(pipe: Any, opts: AccelOptions, device: str) -> None:
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    # 1x1 convolutions as matmuls: inductor can fuse their epilogues (diffusers' advice).
    inductor_config.conv_1x1_as_mm = True
    # Module.compile() compiles Module._call_impl, one code object that every compiled
    # module shares: each (module, served shape) is one cache entry there, and past the
    # limit (8) dynamo silently runs eager. Leave room for three modules at several shapes.
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), 64))
    kwargs = compile_kwargs(opts, device)
    # Module.compile() compiles in place: state-dict keys and `pipe.unet`'s type stay as
    # they were, unlike wrapping in torch.compile(), and uncompile() can undo it.
    pipe.unet.compile(**kwargs)
    if opts.compile_vae:
        # The pipeline calls vae.encode()/vae.decode(), not vae(): compile their bodies.
        pipe.vae.encoder.compile(**kwargs)
        pipe.vae.decoder.compile(**kwargs)


def _compilable_modules(pipe: Any) -> list[torch.nn.Module]:
    return [pipe.unet, pipe.vae.encoder, pipe.vae.decoder]


def is_compiled(pipe: Any) -> bool:
    """True when any of the UNet or VAE halves runs through torch.compile."""
    return any(
        getattr(m, "_compiled_call_impl", None) is not None for m in _compilable_modules(pipe)
    )


def uncompile(pipe: Any) -> None:
    """Return the UNet and VAE to eager execution (undoes ``Module.compile()``)."""
    for module in _compilable_modules(pipe):
        # Module.compile() stores its wrapper here; None is the eager default.
        module._compiled_call_impl = None


@dataclass(frozen=True)
class WarmUpResult:
    """How long warming up took, and whether compilation survived it."""

    seconds: float
    compiled: bool
    compile_error: str | None = None


def warm_up(
    pipe: Any,
    *,
    width: int,
    height: int,
    steps: int,
    batch_size: int,
    strength: float,
    guidance_scale: float,
    runs: int = 2,
    fallback_to_eager: bool = True,
    extra_inputs: dict[str, Any] | None = None,
) -> WarmUpResult:
    """Render dummy inputs at one served shape so compile and autotune happen now.

    The first run compiles (and lets cuDNN search); the second confirms no recompilation
    is left. If compilation fails and ``fallback_to_eager`` is set, the pipeline is put back
    to eager mode and warmed again: a slower worker beats one that cannot start.
    ``extra_inputs`` are further pipeline arguments (an inpaint mask, a ControlNet image).
    """
    start = time.perf_counter()
    compiled = is_compiled(pipe)
    extra = extra_inputs or {}
    try:
        _dummy_runs(pipe, width, height, steps, batch_size, strength, guidance_scale, runs, extra)
    except Exception as exc:  # any compiler failure; must not keep the worker from starting
        if not (compiled and fallback_to_eager):
            raise
        logger.warning("torch.compile failed during warm-up, falling back to eager: %r", exc)
        uncompile(pipe)
        _dummy_runs(pipe, width, height, steps, batch_size, strength, guidance_scale, runs, extra)
        return WarmUpResult(time.perf_counter() - start, compiled=False, compile_error=repr(exc))
    return WarmUpResult(time.perf_counter() - start, compiled=compiled)


def _dummy_runs(
    pipe: Any,
    width: int,
    height: int,
    steps: int,
    batch_size: int,
    strength: float,
    guidance_scale: float,
    runs: int,
    extra: dict[str, Any],
) -> None:
    from PIL import Image

    # Mid-gray: any pixels will do, the shapes are what compilation keys on.
    image = Image.new("RGB", (width, height), (128, 128, 128))
    for _ in range(runs):
        pipe(
            prompt=["warm-up"] * batch_size,
            image=[image] * batch_size,
            num_inference_steps=steps,
            strength=strength,
            guidance_scale=guidance_scale,
            # One generator per item, as every real call (worker/render.py): the latents
            # are prepared down that path, so the graphs compiled here are the ones used.
            generator=[torch.Generator(device="cpu").manual_seed(i) for i in range(batch_size)],
            output_type="pil",
            **extra,
        )
    synchronize(pipe.device)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so host clocks measure it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
