"""The child's optimizer, a key of every task: Adam (the reference's), AdamW, SGD with momentum, or
schedule-free AdamW (the ``schedulefree`` package, needed only by the tasks that use it).

Whichever it is, the controller sets its learning rate and observes nothing about which it is.
Schedule-free AdamW is validated and tested at its evaluation weights (alrs.validation.evaluation_mode).
"""
from dataclasses import dataclass

import torch

OPTIMIZERS = ("adam", "adamw", "sgd", "schedulefree")
SCHEDULEFREE_WARMUP = 0.05  # schedule-free AdamW's warm-up, as a fraction of the run's steps


@dataclass(frozen=True)
class OptimizerSpec:
    """Which optimizer a child trains with, and its settings (the learning rate is the controller's)."""
    name: str = "adam"
    weight_decay: float = 0.0  # decoupled (AdamW, schedule-free) or L2 (Adam, SGD), as torch defines it
    beta1: float = 0.9  # Adam's first-moment decay; SGD's momentum
    beta2: float = 0.999

    @classmethod
    def of(cls, task):
        """The optimizer of a task (tasks.Task or EnvConfig: its optimizer, weight_decay, beta1, beta2)."""
        return cls(task.optimizer, task.weight_decay, task.beta1, task.beta2)

    @property
    def plain_adam(self):
        """Adam with its default settings: what torch.func children (BatchedAdam) implement."""
        return self == OptimizerSpec()

    def build(self, params, lr, total_steps):
        """The optimizer over ``params`` at rate ``lr``, in training mode; ``total_steps``: the run's
        length (schedule-free AdamW warms up over SCHEDULEFREE_WARMUP of it)."""
        betas = (self.beta1, self.beta2)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=self.weight_decay)
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=self.weight_decay)
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.beta1, weight_decay=self.weight_decay)
        if self.name == "schedulefree":
            import schedulefree
            optimizer = schedulefree.AdamWScheduleFree(params, lr=lr, betas=betas, weight_decay=self.weight_decay,
                                                       warmup_steps=round(SCHEDULEFREE_WARMUP * total_steps))
            optimizer.train()
            return optimizer
        raise ValueError(f"unknown optimizer {self.name!r}; choose from {', '.join(OPTIMIZERS)}")


def check_optimizer(spec):
    """ValueError naming the key when a spec's values are out of range or its package is missing."""
    if spec.name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {spec.name!r}")
    if spec.weight_decay < 0:
        raise ValueError(f"weight_decay must be at least 0, got {spec.weight_decay}")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(spec, key) < 1:
            raise ValueError(f"{key} must be in [0, 1), got {getattr(spec, key)}")
