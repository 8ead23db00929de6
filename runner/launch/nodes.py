"""Which node of a multi-node cache stage writes the manifest: the last one to finish.

The pods of an Indexed cache Job encode independent shards and never talk to each other. Each
leaves a marker on the shared cache volume when its shards are done, then checks for the
others' markers. A node writes its own marker before it looks, so the last one to finish sees
all of them. Two nodes finishing together may both see them and both make the final pass;
that pass is idempotent (it encodes whatever is missing and writes the manifest atomically), so
correctness never rests on the markers, only who spends the time. Markers are kept per run
(the cache Job's uid in a pod), so a marker from an earlier run is never counted.
"""
from __future__ import annotations

import os
from pathlib import Path

from runner.launch.torchrun import node_rank, run_id

MARKER_DIR = ".nodes"


def node_shards_done(cache_dir: Path, job_name: str, nodes: int, env: dict[str, str] | None = None) -> bool:
    """Mark this node's shards done; True when every node of this run has done its own."""
    env = dict(os.environ) if env is None else env
    folder = Path(cache_dir) / MARKER_DIR / run_id(env, job_name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{node_rank(env)}-of-{nodes}.done").touch()
    return all((folder / f"{i}-of-{nodes}.done").exists() for i in range(nodes))
