"""How a run is started: in this process, through torchrun, or inside a container image."""
