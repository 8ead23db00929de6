"""Images in, latents out, for the cache stage's VAE pass.

Pixels: each batch of cropped images is decoded in a worker process of a torch DataLoader, as
uint8 (a quarter of float32's bytes; the family normalises on the device), and pinned on CUDA
so the copy to the GPU does not wait for the GPU's queue. Processes rather than threads: JPEG
parsing and PIL's loading loop run Python code under the GIL, which the stage's own thread, the
one feeding the GPU, needs between its CUDA calls. (Measured on an H200 at 1024 px, the whole
change, bench/RESULTS.md: the VAE ran 65.7 images/s alone, 45.7 fed by 16 decode threads with
pageable copies, 56.2 fed as here; at 512 px 66 before, ~270 now.)

Latents: each batch is copied back into pinned memory without blocking, and handed to the
writers only after the next batch has been queued on the GPU, so the GPU never idles while
the host waits for a copy.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Iterator, Sequence

import torch


def load_pixels(item, to_tensor: Callable[[Any], Any]) -> Any:
    """The cropped image as the family's tensor (`to_tensor`), or the reason it cannot be decoded
    (the plan's probe skips files cut short, from their ends; a file damaged in the middle surfaces here)."""
    from PIL import Image

    from runner.data.transforms import apply_crop

    try:
        with Image.open(item.info.path) as im:
            return to_tensor(apply_crop(im, item.plan))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL raises these for broken files
        return f"cannot decode ({e})"


def verify_images(batches: Sequence[Sequence[Any]], to_tensor: Callable[[Any], Any], workers: int) -> list[tuple[Any, str]]:
    """Decode every image of `batches` (each of one size) once, as the VAE pass would (used with
    vaeCacheDisable, where nothing else would before training): (item, reason) for each that
    does not decode."""
    return [(batches[i][j], reason) for i, _, failed in pixel_batches(batches, to_tensor, workers=workers, pin=False)
            for j, reason in failed.items()]


class PixelBatches(torch.utils.data.Dataset):
    """Item i: (i, the decodable images of batch i stacked, or None, {position: reason} for the rest)."""

    def __init__(self, batches: Sequence[Sequence[Any]], to_tensor: Callable[[Any], torch.Tensor]):
        self.batches, self.to_tensor = batches, to_tensor

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, dict[int, str]]:
        loaded = [load_pixels(item, self.to_tensor) for item in self.batches[i]]
        failed = {j: px for j, px in enumerate(loaded) if isinstance(px, str)}
        good = [px for px in loaded if not isinstance(px, str)]
        return i, torch.stack(good) if good else None, failed


def die_with_parent(parent: int, _worker_id: int) -> None:
    """DataLoader worker set-up: exit when the stage's process dies (a SIGKILLed stage then
    leaves no decoders behind holding its output pipes), and print nothing after it has: the
    only tracebacks left to a worker then are multiprocessing's fd-sharing thread losing its peer
    (errors while decoding are sent to the stage and raised there, not printed here)."""
    import ctypes
    import signal
    import sys
    import time

    try:  # Linux: SIGKILL this worker when its parent exits (PR_SET_PDEATHSIG = 1)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)
    report = sys.excepthook

    def report_unless_orphaned(*exc) -> None:
        time.sleep(0.2)  # a dying process's sockets close a moment before its children are told
        if os.getppid() == parent:
            report(*exc)

    sys.excepthook = report_unless_orphaned


def pixel_batches(batches: Sequence[Sequence[Any]], to_tensor: Callable[[Any], torch.Tensor], *, workers: int,
                  pin: bool) -> Iterator[tuple[int, torch.Tensor | None, dict[int, str]]]:
    """Yield (index of the batch, stacked pixels of its decodable items or None, {position in the
    batch: reason}), in order, with `workers` processes decoding the next batches (0: in this process)."""
    loader = torch.utils.data.DataLoader(PixelBatches(batches, to_tensor), batch_size=None, shuffle=False,
                                         num_workers=workers, pin_memory=pin,
                                         prefetch_factor=2 if workers else None,
                                         worker_init_fn=functools.partial(die_with_parent, os.getpid()) if workers else None)
    yield from loader


class HostCopy:
    """A device tensor on its way to host memory: on CUDA a non-blocking copy into pinned
    memory, finished by `wait()`; elsewhere the tensor itself."""

    def __init__(self, tensor: torch.Tensor, dtype: torch.dtype):
        tensor = tensor.to(dtype)
        self.event = None
        if tensor.is_cuda:
            # on the tensor's own GPU: the event must follow the copy on that GPU's stream, and a
            # cache worker's current device need not be the one it encodes on
            with torch.cuda.device(tensor.device):
                self.host = torch.empty(tensor.shape, dtype=dtype, pin_memory=True)
                self.host.copy_(tensor, non_blocking=True)
                self.event = torch.cuda.Event()
                self.event.record()
        else:
            self.host = tensor

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.host
