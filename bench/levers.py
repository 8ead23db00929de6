"""Speed levers, one section at a time, on the real PixArt-Sigma-XL architecture (random weights).

    python bench/levers.py SECTION[,SECTION...] [--tiny] [--out DIR]

Sections:
  step     train step (fwd + eps-MSE + bwd + clip + AdamW, fp32 master, bf16 autocast) at 1024 px
           batch 8, per variant in VARIANTS (attention kernel x compile x FP8), plus a kernel
           profile of each variant named in --profile
  attn     self- (4096 tokens) and cross-attention (<=320 padded keys) fwd+bwd per kernel, with
           the max error against SDPA
  vae      SDXL VAE encoder at 1024 px: bf16, channels_last, compile, batch 8/16, and where its
           time goes
  t5       real-size T5-XXL encoder: captions/s padded to 300 vs padded to the longest of
           length-sorted batches
--tiny runs tiny models on the CPU (a correctness smoke test). Rows go to DIR/levers.jsonl.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from timing import Rows, median_ms  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("sections")
p.add_argument("--tiny", action="store_true")
p.add_argument("--out", default=os.environ.get("OUT", "/tmp/levers"))
p.add_argument("--variants", default="sdpa_compile,fa4_compile,fa4_compile_fp8")
p.add_argument("--profile", default="")
p.add_argument("--trace", default="", help="variants whose GPU idle gaps are traced (CPU + CUDA) and summarised")
p.add_argument("--res", type=int, default=1024)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--iters", type=int, default=8)
args = p.parse_args()
os.makedirs(args.out, exist_ok=True)
DEV = torch.device("cpu" if args.tiny else "cuda")
BF16 = torch.bfloat16
emit = Rows(args.out, "levers.jsonl")
log = emit.log


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, warm=2, iters=8):
    return median_ms(fn, cuda=DEV.type == "cuda", warm=warm, iters=iters)

def free():
    gc.collect()
    if DEV.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib():
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if DEV.type == "cuda" else None


def profile(fn, name, steps=2):
    """Kernel time by category for `steps` calls of fn (already warm)."""
    from torch.profiler import ProfilerActivity, profile as prof

    with prof(activities=[ProfilerActivity.CUDA]) as pr:
        for _ in range(steps):
            fn()
        sync()
    cats: dict[str, float] = {}
    kernels = []
    for ev in pr.key_averages():
        us = getattr(ev, "self_device_time_total", 0) or getattr(ev, "self_cuda_time_total", 0)
        if not us:
            continue
        n = ev.key.lower()
        if any(s in n for s in ("flash", "fmha", "attn", "attention", "cudnn", "sdpa", "kernel_cutlass")):
            c = "attention"
        elif any(s in n for s in ("gemm", "xmma", "nvjet", "cublas", "wgmma", "sm90_", "scaled_mm", "cutlass")):
            c = "gemm"
        elif "adam" in n or "multi_tensor" in n or "foreach" in n:
            c = "optimizer"
        elif "triton" in n:
            c = "fused_elementwise"
        else:
            c = "other"
        cats[c] = cats.get(c, 0) + us / 1e3 / steps
        kernels.append((us / 1e3 / steps, ev.count // steps, ev.key[:110], c))
    kernels.sort(reverse=True)
    emit(kind="profile", name=name, ms_per_call_by_category={k: round(v, 2) for k, v in cats.items()},
         top=[dict(ms=round(a, 2), n=b, kernel=c, cat=d) for a, b, c, d in kernels[:25]])


def gaps(fn, name, steps=1):
    """Where the GPU idles within `steps` calls of fn: kernel-to-kernel gaps over 5 us, summed by
    the kernels on either side, and the CPU ops running at the time. Writes the trace too."""
    import gzip

    from torch.profiler import ProfilerActivity, profile as prof

    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as pr:
        for _ in range(steps):
            fn()
        sync()
    path = os.path.join(args.out, f"trace-{name}.json")
    pr.export_chrome_trace(path)
    events = json.load(open(path))["traceEvents"]
    with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
        g.write(f.read())
    os.remove(path)
    emit(kind="gaps", name=name, **summarize_gaps(events, steps))


def summarize_gaps(events, steps, kernel_cats=("kernel", "gpu_memcpy", "gpu_memset")):
    import bisect

    kernels = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                     if e.get("ph") == "X" and e.get("cat") in kernel_cats)
    cpu = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                 if e.get("ph") == "X" and e.get("cat") == "cpu_op")
    starts = [c[0] for c in cpu]
    busy, by_pair, end = 0.0, {}, kernels[0][0]
    for i, (s, e, n) in enumerate(kernels):
        gap = s - end
        busy += max(0.0, e - max(s, end))
        if i and gap > 5:
            lo = bisect.bisect_left(starts, s - gap - 2000)
            hi = bisect.bisect_right(starts, s)
            ops = sorted({c[2][:40] for c in cpu[lo:hi] if c[1] >= s - gap})[:6]
            key = f"{kernels[i - 1][2][:60]} -> {n[:60]} | cpu: {', '.join(ops)}"
            by_pair.setdefault(key, []).append(gap)
        end = max(end, e)
    span = end - kernels[0][0]
    top = sorted(by_pair.items(), key=lambda kv: -sum(kv[1]))[:25]
    return dict(span_ms=round(span / 1e3 / steps, 2), busy_ms=round(busy / 1e3 / steps, 2),
                idle_ms=round((span - busy) / 1e3 / steps, 2),
                top=[dict(ms=round(sum(v) / 1e3 / steps, 2), n=len(v) // steps, where=k) for k, v in top])


# ----------------------------------------------------------------------------- step

def build_transformer():
    from diffusers import PixArtTransformer2DModel

    from make_random_pixart import XL_TRANSFORMER

    cfg = dict(XL_TRANSFORMER)
    if args.tiny:
        cfg.update(num_layers=2, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
                   caption_channels=64, sample_size=16)
    torch.manual_seed(0)
    with torch.device(DEV):
        model = PixArtTransformer2DModel(**cfg)
    return model.train(), cfg


def make_batch(cfg, res, bs):
    g = torch.Generator(device=DEV).manual_seed(res + bs)
    h = res // 8 if not args.tiny else res // 64
    t = 320 if not args.tiny else 12
    lat = torch.randn(bs, 4, h, h, device=DEV, generator=g)
    emb = torch.randn(bs, t, cfg["caption_channels"], device=DEV, generator=g).to(BF16)
    lens = torch.randint(t // 4, t - t // 16, (bs,), device=DEV, generator=g)
    mask = (torch.arange(t, device=DEV)[None] < lens[:, None]).long()
    return lat, emb, mask


# variant suffix -> inductor option it turns on: Triton block-size tuning (compile time for
# speed), horizontal fusion of independent kernels, fusing more aggressively, both a persistent
# and a looped variant of each reduction with the faster one picked at run time (a block's
# LayerNorms reduce over 1152 > inductor's 1024 persistent limit, so they loop), more Triton
# configs tried for pointwise and reduction kernels
INDUCTOR_FLAGS = {"_cdt": "coordinate_descent_tuning", "_combo": "combo_kernels", "_aggr": "aggressive_fusion",
                  "_mk": "triton.multi_kernel", "_pw": "max_autotune_pointwise"}


def quack_linears(model) -> int:
    """Route every Linear inside the blocks but the feed-forward's through quack.linear.linear_func
    (bf16 under autocast, as F.linear would run)."""
    import types

    from quack.linear import linear_func

    def forward(self, x):
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        if not x.is_cuda or dtype != BF16:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        with torch.autocast("cuda", enabled=False):
            return linear_func(x.to(dtype).contiguous(), self.weight.to(dtype),
                               None if self.bias is None else self.bias.to(dtype))
    count = 0
    for name, module in model.transformer_blocks.named_modules():
        if isinstance(module, torch.nn.Linear) and ".ff." not in f".{name}.":
            module.forward = types.MethodType(forward, module)
            count += 1
    return count


def section_step():
    from diffusers import DDPMScheduler

    from runner.models import attention as attn
    from runner.models.pixart_sigma import FAMILY, Objective
    from runner.train.optim import make_optimizer

    training = dict(optimizer="adamw", learningRate=1e-5, adamBeta1=0.9, adamBeta2=0.999, adamEpsilon=1e-8,
                    weightDecay=0.0)
    for variant in [v for v in args.variants.split(",") if v]:
        free()
        torch._dynamo.reset()
        rec = dict(kind="step", variant=variant, res=args.res, batch=args.batch)
        restore: list[tuple[object, str, object]] = []  # (module, attribute, original) a variant patched
        try:
            model, cfg = build_transformer()
            kernel = "fa4" if "fa4" in variant else "sdpa"
            used, why = attn.set_attention(model, kernel, DEV)
            rec["attention"], rec["attention_note"] = used, why
            if "_noqkv" in variant and kernel == "fa4":  # q/k/v in three GEMMs, as before the fused default
                rec["unfused_qkv"] = attn.install_processor(model, fuse_qkv=False)
            if "_nopack" in variant and attn.ops.active() is not None:  # fused q|k|v, gradients concatenated
                attn.use_kernels(dataclasses.replace(attn.ops.active(), packed=False))
                rec["packed_qkv_grad"] = False
            if "_lt" in variant and DEV.type == "cuda":  # cuBLASLt for the GEMMs cuBLAS runs
                restore.append((None, "preferred_blas_library", torch.backends.cuda.preferred_blas_library()))
                torch.backends.cuda.preferred_blas_library("cublaslt")
            if "bf16res" in variant:  # spec.training.residualStream: bfloat16
                rec["bf16_residual_blocks"] = FAMILY.bf16_residual(model)
            if "_qmlp" in variant:  # spec.model.feedForward: fused (the GELU in quack's GEMM epilogues)
                from runner.models import feedforward

                kernel = None  # quack's, as the runner takes it
                if "_qmlpt" in variant:  # quack's autotuner instead of its heuristic tiles
                    from quack.mlp import mlp_func

                    kernel = dataclasses.replace(feedforward.quack_kernel(), name="quack autotuned", mlp=lambda x, w1, w2, b1, b2: mlp_func(
                        x, w1, w2, activation="gelu_tanh_approx", bias1=b1, bias2=b2, tuned=True))
                rec["feed_forward"] = " ".join(str(x) for x in feedforward.set_feed_forward(
                    model, "fused", DEV, kernel=kernel) if x)
            if "_qlin" in variant:  # the blocks' other Linears through quack's GEMM instead of cuBLAS
                rec["quack_linears"] = quack_linears(model)
            if "purebf16" in variant:  # bound only: bf16 weights, no fp32 master
                model.to(BF16)
            if "_m128" in variant:  # FA4 SM90 backward at 128 x 128 tiles (bench/fa4_tiles.py "m128"), this variant only
                from dataclasses import replace

                from flash_attn.cute import interface as fa

                tiles = fa._tile_size_bwd_sm90
                restore.append((fa, "_tile_size_bwd_sm90", tiles))

                def m128(hd, hdv, causal, local, sparse_block_size_q=None):
                    cfg = tiles(hd, hdv, causal, local, sparse_block_size_q=sparse_block_size_q)
                    return replace(cfg, m_block_size=128, AtomLayoutMdQ=2, dQ_single_wg=False) \
                        if 64 < hd <= 96 and not causal and not local else cfg
                fa._tile_size_bwd_sm90 = m128
            if "fp8" in variant:
                recipe = {"fp8tw": "tensorwise", "fp8rw": "rowwise", "fp8gw": "rowwise_with_gw_hp"}.get(
                    next((t for t in variant.split("_") if t.startswith("fp8")), ""), None)
                if recipe is None:
                    from runner.train.precision import apply_fp8

                    rec["fp8"] = apply_fp8(model, DEV, "auto")
                else:
                    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

                    from runner.train.precision import fp8_filter

                    ff_only = "ffonly" in variant
                    keep = (lambda m, fqn: fp8_filter(m, fqn) and ".ff." in fqn) if ff_only else fp8_filter
                    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(recipe),
                                               module_filter_fn=keep)
                    rec["fp8"] = f"{recipe}{' ff only' if ff_only else ''}: " + str(
                        sum(1 for m in model.modules() if type(m).__name__ == "Float8Linear"))
            for flag, option in INDUCTOR_FLAGS.items():
                if flag in variant:
                    import torch._inductor.config as inductor_config

                    *outer, name = option.split(".")
                    owner = functools.reduce(getattr, outer, inductor_config)
                    restore.append((owner, name, getattr(owner, name)))
                    setattr(owner, name, True)
            if "compile" in variant and DEV.type == "cuda":
                FAMILY.compile(model)
                if "_cg" in variant:  # CUDA graphs per block (reduce-overhead), to see what the gaps cost
                    for block in model.transformer_blocks:
                        block.compile(mode="reduce-overhead")
            objective = Objective(scheduler=DDPMScheduler(num_train_timesteps=1000), use_additional_conditions=False)
            opt = make_optimizer(training, model.parameters(), DEV)
            params = [q for q in model.parameters() if q.requires_grad]
            lat, emb, mask = make_batch(cfg, args.res, args.batch)
            if "purebf16" in variant:
                lat = lat.to(BF16)

            def step():
                if "_cg" in variant:
                    torch.compiler.cudagraph_mark_step_begin()
                with torch.autocast(DEV.type, dtype=BF16, enabled="purebf16" not in variant):
                    loss = objective(model, lat, emb, mask)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss

            tw = time.time()
            for _ in range(3):
                loss = step()
            sync()
            rec["warm_s"] = round(time.time() - tw, 1)
            ms = timed(step, warm=0, iters=args.iters)
            rec.update(step_ms=round(ms, 1), samples_per_s=round(args.batch / ms * 1e3, 2), loss=float(loss),
                       peak_gib=peak_gib())
            emit(**rec)
            if variant in args.profile.split(",") and DEV.type == "cuda":
                profile(step, variant)
            if variant in args.trace.split(",") and DEV.type == "cuda":
                gaps(step, variant)
            del model, opt, objective
        except Exception as e:  # noqa: BLE001 - record and go on to the next variant
            traceback.print_exc()
            rec["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            emit(**rec)
        finally:
            for module, name, original in restore:
                if name == "preferred_blas_library":
                    torch.backends.cuda.preferred_blas_library(original)
                else:
                    setattr(module, name, original)


def section_buckets():
    """Five aspect buckets of about 1 MP, captions padded to 128-320 tokens, through the
    compiled blocks as spec.training.compileDynamic sets them: compile seconds per new
    shape, and the steady step time in each bucket afterwards."""
    from diffusers import DDPMScheduler

    from runner.models import attention as attn
    from runner.models.pixart_sigma import FAMILY, Objective
    from runner.train.optim import make_optimizer

    dynamic = os.environ.get("BUCKETS_DYNAMIC", "1") == "1"
    if os.environ.get("BUCKETS_SETTLE", "1") == "0":  # without pixart_block.settle_block_input, to see what it saves
        import runner.models.pixart_block as pixart_block

        pixart_block.settle_block_input = lambda transformer: False
    free()
    torch._dynamo.reset()
    model, cfg = build_transformer()
    used, _ = attn.set_attention(model, "auto", DEV)
    FAMILY.set_feed_forward(model, os.environ.get("BUCKETS_FEED_FORWARD", "auto"), DEV)  # the spec's default
    FAMILY.bf16_residual(model)  # spec.training.residualStream's default, as `trainingjob run` trains
    if DEV.type == "cuda":
        FAMILY.compile(model, dynamic)
    training = dict(optimizer="adamw", learningRate=1e-5, adamBeta1=0.9, adamBeta2=0.999, adamEpsilon=1e-8,
                    weightDecay=0.0)
    objective = Objective(scheduler=DDPMScheduler(num_train_timesteps=1000), use_additional_conditions=False)
    opt = make_optimizer(training, model.parameters(), DEV)
    shapes = [(128, 128), (112, 144), (144, 112), (104, 152), (152, 104)]
    if args.tiny:
        shapes = [(16, 16), (12, 20), (20, 12), (8, 24), (24, 8)]
    texts = [128, 192, 256, 320] if not args.tiny else [4, 8, 12]
    g = torch.Generator(device=DEV).manual_seed(0)
    bs = args.batch

    def step(h, w, t):
        lat = torch.randn(bs, 4, h, w, device=DEV, generator=g)
        emb = torch.randn(bs, t, cfg["caption_channels"], device=DEV, generator=g).to(BF16)
        mask = (torch.arange(t, device=DEV)[None] < torch.full((bs, 1), t - 5, device=DEV)).long()
        with torch.autocast(DEV.type, dtype=BF16):
            loss = objective(model, lat, emb, mask)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    compile_s, steady = 0.0, {}
    for i, (h, w) in enumerate(shapes):
        for j, t in enumerate(texts):
            sync()
            t0 = time.time()
            step(h, w, t)
            sync()
            first = time.time() - t0
            ms = timed(lambda: step(h, w, t), warm=0, iters=3)
            compile_s += max(0.0, first - ms / 1e3)
            steady.setdefault(f"{h * 8}x{w * 8}", []).append(ms)
    per_bucket = {k: round(statistics.mean(v), 1) for k, v in steady.items()}
    mean_ms = statistics.mean(per_bucket.values())
    emit(kind="buckets", dynamic=dynamic, settle=os.environ.get("BUCKETS_SETTLE", "1") != "0", attention=used, batch=bs, buckets=len(shapes), text_lengths=len(texts),
         distinct_shapes=len(shapes) * len(texts), compile_s=round(compile_s, 1), step_ms_by_bucket=per_bucket,
         samples_per_s=round(bs / mean_ms * 1e3, 2), peak_gib=peak_gib())


# ----------------------------------------------------------------------------- attention

def section_attn():
    import torch.nn.functional as F

    from runner.models import attention as attn

    if DEV.type == "cuda":
        problem = attn.fa4_problem(DEV)
        emit(kind="fa4_import", problem=problem)
        if problem:
            return
        attn.use_kernels(attn.fa4_kernels())
    else:
        attn.use_kernels(attn.reference_kernels())
    b, h, d = (8, 16, 72) if not args.tiny else (2, 2, 8)
    shapes = [("self", 4096, None), ("cross", 320, 300)] if not args.tiny else [("self", 32, None), ("cross", 12, 9)]
    n = 4096 if not args.tiny else 32
    for name, t, used_max in shapes:
        g = torch.Generator(device=DEV).manual_seed(0)
        dt = BF16 if DEV.type == "cuda" else torch.float32
        q = torch.randn(b, n, h, d, device=DEV, generator=g, dtype=dt).requires_grad_()
        k = torch.randn(b, t, h, d, device=DEV, generator=g, dtype=dt).requires_grad_()
        v = torch.randn(b, t, h, d, device=DEV, generator=g, dtype=dt).requires_grad_()
        go = torch.randn(b, n, h, d, device=DEV, generator=g, dtype=dt)
        used = None
        mask = None
        if used_max:
            used = torch.randint(8, used_max, (b,), device=DEV, generator=g).to(torch.int32)
            keep = torch.arange(t, device=DEV)[None] < used[:, None].long()
            mask = torch.where(keep, 0.0, -10000.0).to(dt)[:, None, None, :].expand(b, h, 1, t)
        scale = d ** -0.5

        def ours():
            return attn.attention(q, k, v, used, scale)

        def sdpa():
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  attn_mask=mask, scale=scale).transpose(1, 2)

        res = {}
        for label, fn in (("sdpa", sdpa), ("fa4", ours)):
            out = fn()
            grads = torch.autograd.grad(out, (q, k, v), go)
            res[label] = (out.detach().float(), [x.float() for x in grads])

            def fb():
                o = fn()
                o.backward(go)

            fwd_ms = timed(lambda: fn(), warm=2, iters=10)
            fb_ms = timed(fb, warm=2, iters=10)
            flops = 4 * b * h * n * t * d
            emit(kind="attn", shape=name, kernel=label, fwd_ms=round(fwd_ms, 3), fwd_bwd_ms=round(fb_ms, 3),
                 fwd_tflops=round(flops / fwd_ms / 1e9, 1), fwd_bwd_tflops=round(3.5 * flops / fb_ms / 1e9, 1))
        (o1, g1), (o2, g2) = res["sdpa"], res["fa4"]
        rel = lambda a, r: float((a - r).norm() / r.norm().clamp_min(1e-30))  # noqa: E731
        emit(kind="attn_check", shape=name, out_rel=rel(o2, o1), dq_rel=rel(g2[0], g1[0]), dk_rel=rel(g2[1], g1[1]),
             dv_rel=rel(g2[2], g1[2]))


# ----------------------------------------------------------------------------- VAE

def section_vae():
    from diffusers import AutoencoderKL

    from make_random_pixart import SDXL_VAE

    cfg = dict(SDXL_VAE)
    res = 1024 if not args.tiny else 64
    if args.tiny:
        cfg.update(block_out_channels=(32, 32, 32, 32))
    torch.backends.cudnn.benchmark = True
    with torch.device(DEV):
        vae = AutoencoderKL(**cfg)
    vae = vae.to(DEV, BF16 if DEV.type == "cuda" else torch.float32).eval().requires_grad_(False)
    dt = next(vae.parameters()).dtype
    plan = [("eager", 8, False, False), ("eager", 16, False, False), ("channels_last", 8, True, False),
            ("channels_last", 16, True, False), ("channels_last_compile", 8, True, True),
            ("channels_last_compile", 16, True, True)]
    if args.tiny:  # compiling the VAE on 2 CPU cores takes minutes
        plan = plan[:3]
    encode = vae.encoder
    compiled = None
    for name, bs, cl, comp in plan:
        free()
        rec = dict(kind="vae", variant=name, res=res, batch=bs, dtype=str(dt))
        try:
            vae.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            x = torch.rand(bs, 3, res, res, device=DEV, dtype=dt) * 2 - 1
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            if comp and compiled is None:
                compiled = torch.compile(vae.encoder)
            fn = compiled if comp else encode

            def run():
                with torch.inference_mode():
                    return vae.quant_conv(fn(x))

            tw = time.time()
            run(); sync()
            rec["first_s"] = round(time.time() - tw, 1)
            ms = timed(run, warm=1, iters=4)
            rec.update(ms=round(ms, 1), images_per_s=round(bs / ms * 1e3, 1), peak_gib=peak_gib())
            emit(**rec)
            if name == "channels_last" and bs == 8 and DEV.type == "cuda":
                profile(run, "vae_channels_last_b8", steps=1)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            emit(**rec)


# ----------------------------------------------------------------------------- T5

def section_t5():
    from transformers import T5Config, T5EncoderModel

    cfg = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False)
    if args.tiny:
        cfg.update(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, vocab_size=100)
    old = torch.get_default_dtype()
    torch.set_default_dtype(BF16 if DEV.type == "cuda" else torch.float32)
    try:
        with torch.device(DEV):
            model = T5EncoderModel(T5Config(**cfg)).eval()
    finally:
        torch.set_default_dtype(old)
    emit(kind="t5_info", params=sum(q.numel() for q in model.parameters()),
         attn_impl=getattr(model.config, "_attn_implementation", None))
    g = torch.Generator().manual_seed(0)
    n = 512 if not args.tiny else 8
    lens = torch.randint(20, 201, (n,), generator=g)  # ~120 tokens on average, as real captions
    ids = torch.randint(3, cfg["vocab_size"], (n, 300), generator=g)
    for mode, bs in (("pad300", 64), ("pad300", 128), ("longest_sorted", 64), ("longest_sorted", 128)):
        if args.tiny:
            bs = 4
        free()
        order = torch.argsort(lens) if mode == "longest_sorted" else torch.arange(n)
        batches = []
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            width = int(lens[idx].max()) if mode == "longest_sorted" else 300
            am = (torch.arange(width)[None] < lens[idx][:, None]).long()
            batches.append((ids[idx, :width].to(DEV), am.to(DEV)))

        def run():
            with torch.inference_mode():
                for i, a in batches:
                    model(input_ids=i, attention_mask=a)

        ms = timed(run, warm=1, iters=2)
        emit(kind="t5", mode=mode, batch=bs, captions=n, captions_per_s=round(n / ms * 1e3, 1), peak_gib=peak_gib())


if __name__ == "__main__":
    info = dict(kind="info", torch=torch.__version__, device=str(DEV))
    if DEV.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version())
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    emit(**info)
    for section in args.sections.split(","):
        log(f"== {section}")
        try:
            globals()[f"section_{section}"]()
        except Exception:  # noqa: BLE001 - the next section still runs
            traceback.print_exc()
    log("done")
