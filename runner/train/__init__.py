"""Training components: data from the cache, checkpoints, validation, optimizers. The loop
itself lives in runner/stages/train.py and only wires these together."""
