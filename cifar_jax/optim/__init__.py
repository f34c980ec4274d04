"""Optimisers, learning-rate schedules and lookahead, built from Optax, one file each and
reusable by any model (the recipes in `cifar_jax/recipes/` register them by name):
`tutorial` (Keras's SGD and Adam), `nesterov` (airbench94's SGD and its parameter groups),
`muon` (airbench94_muon's Muon), `sgd` (PyTorch's SGD step they share), `lookahead`,
`schedules` (the run's `--schedule`).

Lower modules take plain values, not the config: `train_state.py` reads the recipe and passes
them.
"""

from cifar_jax.optim.lookahead import lookahead_step
from cifar_jax.optim.schedules import SCHEDULES, scheduled

__all__ = ["SCHEDULES", "lookahead_step", "scheduled"]
