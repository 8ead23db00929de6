"""How a run starts: run.py (stage order, devices, what each exit code means), context.py
(the RunContext every stage takes), torchrun.py and nodes.py (workers on one or several
nodes), container.py (`run --container`), images.py (the image list; stdlib only, for make)."""
