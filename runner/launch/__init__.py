"""How a run starts: run.py (stage order, devices, what each exit code means), context.py
(the RunContext every stage takes), torchrun.py, agent.py and nodes.py (workers on one or
several nodes; agent.py is torchrun's agent, restarting them after crashes only), container.py
(`run --container`), images.py (the image list; stdlib only, for make)."""
