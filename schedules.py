"""Learning-rate schedules that drive one child through an episode, all behind one interface.

A schedule has ``initial_lr`` and ``next_lr(obs, lr, step)``: the rate of the block that starts at
child step ``step``, given that child's raw observation and current rate. ``environment.run_synced``
runs a list of them, one child each; ``controller.Controller`` is the learned one.
"""
import math

import numpy as np


BASELINE_KINDS = ("step_decay", "constant", "cosine")  # the fixed schedules baselines.py sweeps


class StepDecay:
    """lr0 * factor ** floor(step / every): a baseline-grid run (a constant rate has factor 1)."""

    def __init__(self, initial_lr, every=1, factor=1.0):
        self.initial_lr, self.every, self.factor = initial_lr, every, factor

    def next_lr(self, obs, lr, step):
        return self.initial_lr * self.factor ** (step // self.every)


class Cosine:
    """Cosine annealing from lr0 to 0 over ``total_steps`` child steps, torch.optim.lr_scheduler.
    CosineAnnealingLR's closed form (eta_min 0): lr0 * (1 + cos(pi * step / total_steps)) / 2, taken
    at the first step of each block (the environment clips the last blocks' rates at LR_MIN)."""

    def __init__(self, initial_lr, total_steps):
        self.initial_lr, self.total_steps = initial_lr, total_steps

    def next_lr(self, obs, lr, step):
        return self.initial_lr * (1 + math.cos(math.pi * step / self.total_steps)) / 2


class Replay:
    """Fixed rates, one per block of ``update_freq`` steps: a controller's schedule replayed open loop,
    the control that tells whether its feedback (what it observes) matters."""

    def __init__(self, initial_lr, block_rates, update_freq):
        self.initial_lr, self.block_rates, self.update_freq = initial_lr, np.asarray(block_rates), update_freq

    def next_lr(self, obs, lr, step):
        return float(self.block_rates[min(step // self.update_freq, len(self.block_rates) - 1)])


def replay_schedules(initial_lr, lr_curves, update_freq):
    """For each seed j, a Replay of the geometric mean over the other seeds of the rates of each block.

    ``lr_curves``: (seeds, T) rates as run_episode records them (entry 0 the initial rate, entry t the
    rate of the block that ended at observation t; NaN after a divergence, skipped; a block no other
    seed reached keeps the last rate)."""
    log_rates = np.log(np.asarray(lr_curves, dtype=float)[:, 1:])
    return [geometric_mean_replay(initial_lr, np.delete(log_rates, j, axis=0), update_freq)
            for j in range(len(log_rates))]


def pooled_replay(initial_lr, lr_curves, num_blocks, update_freq):
    """A Replay of ``num_blocks`` blocks: at each, the geometric mean of the rates that runs of other
    lengths chose at the same fraction of their run (the block whose middle falls there).

    ``lr_curves``: rate curves as run_episode records them (entry 0 the initial rate, then one rate per
    block; NaN after a divergence, skipped), of any lengths. A block where no run has a rate keeps the
    one before. One schedule for runs it cannot tell apart: the open-loop control of a controller's
    adaptation across tasks."""
    fractions = (np.arange(num_blocks) + 0.5) / num_blocks
    log_rates = []
    for curve in lr_curves:
        blocks = np.log(np.asarray(curve, dtype=float)[1:])  # None (after a divergence): NaN
        log_rates.append(blocks[np.minimum((fractions * len(blocks)).astype(int), len(blocks) - 1)])
    return geometric_mean_replay(initial_lr, np.array(log_rates), update_freq)


def geometric_mean_replay(initial_lr, log_rates, update_freq):
    """A Replay of the geometric mean over the runs of ``log_rates`` (runs, blocks), NaN skipped; a
    block that no run reached keeps the rate of the block before (the first, ``initial_lr``)."""
    finite = np.isfinite(log_rates)
    count = finite.sum(0)
    mean = np.where(finite, log_rates, 0).sum(0) / np.maximum(count, 1)
    for k in np.flatnonzero(count == 0):
        mean[k] = mean[k - 1] if k else math.log(initial_lr)
    return Replay(initial_lr, np.exp(mean), update_freq)


def baseline_schedule(run, num_train_steps):
    """The schedule of a baselines.py run record (its ``kind`` is one of BASELINE_KINDS)."""
    if run["kind"] == "constant":
        return StepDecay(run["initial_lr"])
    if run["kind"] == "cosine":
        return Cosine(run["initial_lr"], num_train_steps)
    return StepDecay(run["initial_lr"], run["discount_step"], run["discount_factor"])
