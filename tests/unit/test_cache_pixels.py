"""The cache stage's decode workers do not outlive a killed stage (they would keep its output
pipes open, and print multiprocessing's tracebacks once it is gone)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from types import SimpleNamespace
    from runner.cache.pixels import pixel_batches
    from runner.data.transforms import plan_crop
    from runner.models.pixart_sigma import FAMILY

    folder = Path(sys.argv[1])
    plan = plan_crop(64, 64, resolution=64, resolution_type="pixel", crop=True, crop_style="center",
                     crop_aspect="square", seed_key="x")
    items = [SimpleNamespace(info=SimpleNamespace(path=p, rel=p.name), plan=plan) for p in sorted(folder.glob("*.png"))]
    stream = pixel_batches([items[i:i + 2] for i in range(0, len(items), 2)], FAMILY.image_to_tensor, workers=2, pin=False)
    next(stream)
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    print(" ".join(children), flush=True)
    time.sleep(60)
""")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_workers_die_with_a_killed_stage(tmp_path: Path) -> None:
    for i in range(8):
        Image.new("RGB", (64, 64), (i * 30, 0, 0)).save(tmp_path / f"{i}.png")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        workers = [int(p) for p in child.stdout.readline().split()]
        assert len(workers) == 2 and all(alive(p) for p in workers)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The DataLoader's own watchdog would notice only after its 5 s poll; the workers go at once.
    deadline = time.monotonic() + 2.0
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in workers if alive(p)], "decode workers outlived the killed stage"
