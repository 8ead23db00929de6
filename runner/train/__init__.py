"""The train stage: the loop (loop.py) and its parts: batches from the cache (data.py),
checkpoints, validation images, optimizers, the divergence and stop guard, completion, the
Hub push."""
