"""All-reduce bandwidth between the local GPUs, at the size of PixArt-Sigma-XL's fp32 gradients
(610.9M x 4 bytes), to tell communication cost apart from compute in data-parallel runs.
Usage: python bench/allreduce.py [--numel 610856000] [--iters 5]"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank: int, world: int, numel: int, iters: int, dtype: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    x = torch.ones(numel, device="cuda", dtype=getattr(torch, dtype))
    for _ in range(2):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(iters):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    dt = (time.time() - t0) / iters
    size = numel * x.element_size()
    bus = size * 2 * (world - 1) / world / dt
    if rank == 0:
        print(f"all_reduce {size / 1e9:.2f} GB {dtype} over {world} GPUs: {dt * 1000:.1f} ms, bus bandwidth {bus / 1e9:.0f} GB/s")
    dist.destroy_process_group()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--numel", type=int, default=610_856_000)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--dtype", default="float32")
    a = p.parse_args()
    n = torch.cuda.device_count()
    mp.spawn(worker, args=(n, a.numel, a.iters, a.dtype), nprocs=n)
