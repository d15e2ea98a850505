"""A trained controller as a learning-rate scheduler for your own PyTorch training loop.

    from alrs import ALRSScheduler

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = ALRSScheduler.from_pretrained("generalist_mlp_progress", optimizer, model, (val_images, val_labels),
                                              total_steps=num_steps)
    for images, labels in loader:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step(loss)

Every ``update_freq`` steps the scheduler runs a validation pass over a fixed subset of the
validation data (``val_size`` samples), builds the controller's features with the environment's own
functions, normalizes them with the controller's frozen statistics and scales the learning rate by
the factor the controller chooses. The first rate is chosen when the controller's episode starts
(when the scheduler is built, or after its warm-up), as the environment's first action is taken on
the fresh child: with ``val_size=None`` (all of it) the loop above trains at exactly the rates, and to
exactly the losses, of test.py's learned row for the same child, batches and validation set.

Cost: one forward pass over ``val_size`` samples every ``update_freq`` steps. docs/performance.md
measures the trade-off behind the default.
"""
import math
import numbers
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import ChainedScheduler, LRScheduler

from alrs.controller import (FEATURES, LR_MAX, LR_MIN, Controller, ControllerEnsemble, anchor_factor, clip_lr,
                             load_controller, observation_features, read_controller_checkpoint, select_features)
from alrs.validation import EVAL_CHUNK, evaluation_mode, predict

PACKAGE_DIR = str(Path(__file__).resolve().parent)
PRETRAINED_DIR = Path(PACKAGE_DIR) / "pretrained"
OUT_OF_RANGE_ACTIONS = 5  # actions in a row with a feature beyond the normalizer's clip before the scheduler warns
DEFAULT_VAL_SIZE = 256  # validation samples watched (docs/performance.md: the overhead against the final loss)
SUBSET_SEED = 0  # which val_size samples are watched: a fixed random subset, the same in every run
STATE_KEYS = ("last_epoch", "_step_count", "base_lrs", "_last_lr", "episode_start", "lr", "initial_lr", "block_lr",
              "group_lr", "block_losses", "prev_logits", "val_loss", "first_val_loss", "checked")  # with out_of_range and warned: what state_dict() saves


def warn(message):
    """warnings.warn pointing at the user's line: the first frame outside this package."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def check_count(name, value, minimum=1, optional=False):
    """``value`` if it is an integer >= ``minimum`` (or None when ``optional``), else a one-line error."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def optimizer_kind(optimizer):
    """The optimizer a controller's training would have called it: adam, adamw, sgd, schedulefree or
    its class name (Adam with weight decay is adamw: what matters to the rate is the decay)."""
    name, group = type(optimizer).__name__, optimizer.param_groups[0]
    if "ScheduleFree" in name:
        return "schedulefree"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    if isinstance(optimizer, torch.optim.AdamW):
        return "adamw"
    if isinstance(optimizer, torch.optim.Adam):
        return "adam with L2 weight decay" if group.get("weight_decay", 0) else "adam"
    return name


class ALRSScheduler(LRScheduler):
    """Sets ``optimizer``'s learning rates with a trained ALRS controller; a torch.optim.lr_scheduler
    scheduler stepped like ReduceLROnPlateau: ``step(loss)`` once per training step, after
    ``optimizer.step()``. It has torch's ``get_last_lr()``, ``get_lr()``, ``last_epoch`` (training
    steps counted), ``_step_count``, ``base_lrs``, ``print_lr``, ``state_dict()`` / ``load_state_dict()``
    (an exact round trip), and works as the last scheduler of ``SequentialLR`` (e.g. after a LinearLR
    warm-up: its episode starts at the milestone). ``ChainedScheduler`` is refused: it would step it
    without losses and multiply its rates by another schedule's.

    optimizer: any torch optimizer; the controller acts on the first parameter group's rate (clipped to
        [1e-5, max_lr], with a warning), every other group keeps its initial ratio to it. A warning says
        when the controller was not trained with this kind of optimizer. Schedule-free optimizers are
        validated at their evaluation weights.
    model: the network being trained; its output layer's weights are part of the observation.
    controller: a checkpoint path (train.py's checkpoints, or ensemble.py's of several controllers)
        or a loaded ``Controller`` or ``ControllerEnsemble``; ``ALRSScheduler.from_pretrained(name,
        ...)`` finds the shipped ones.
    val_data: classification data (integer class labels; the controller observes a cross-entropy):
        (images, labels) tensors, a map-style Dataset of (image, label) pairs, or a re-iterable of
        (images, labels) batches such as a DataLoader. It is read once, when the scheduler is built.
    val_size: how many of its samples each validation pass uses (a fixed random subset; None: all).
        It is the scheduler's cost; docs/performance.md measures what smaller subsets cost in final loss.
    update_freq: training steps between actions (the controllers' was 10).
    output_layer: the name of the output layer in ``model`` (an nn.Linear; default: the last
        nn.Linear that the model's forward pass calls).
    deterministic: act with the policy's mode (default), or sample actions from it (torch's global RNG).
    total_steps: the training steps of the run (warm-up included), for a controller that observes
        the fraction done or follows a cosine anchor (required for them, as cosine needs ``T_max``).
    max_lr: an upper bound on the first group's rate (default: 0.1, the top of the controller's range).
    warmup_steps: a linear warm-up to the optimizer's rate over this many steps before the
        controller's episode starts (0: none).

    The scheduler warns once when a feature of its observations sits beyond the range the controller's
    normalizer saw in training (past its clip) for several actions in a row, once when ``step`` gets
    non-finite losses (they are left out of the block's mean, as GradScaler skips such steps), and once
    when it runs past ``total_steps``.
    """

    def __init__(self, optimizer, model, controller, val_data, update_freq=10, output_layer=None,
                 deterministic=True, total_steps=None, max_lr=LR_MAX, val_size=DEFAULT_VAL_SIZE, warmup_steps=0):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: {type(optimizer).__name__} is not a torch.optim.Optimizer")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: {type(model).__name__} is not a torch.nn.Module")
        self.update_freq = check_count("update_freq", update_freq)
        self.total_steps = check_count("total_steps", total_steps, optional=True)
        self.warmup_steps = check_count("warmup_steps", warmup_steps, minimum=0)
        val_size = check_count("val_size", val_size, optional=True)
        if self.total_steps is not None and self.warmup_steps >= self.total_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be less than total_steps ({total_steps})")
        if not LR_MIN < max_lr <= LR_MAX:
            raise ValueError(f"max_lr must be in ({LR_MIN:g}, {LR_MAX:g}], got {max_lr}")
        if not optimizer.param_groups[0]["lr"] > 0:
            raise ValueError(f"optimizer: the first parameter group's learning rate must be positive (the "
                             f"controller scales it), got {optimizer.param_groups[0]['lr']}")
        self.controller = (controller if isinstance(controller, (Controller, ControllerEnsemble))
                           else load_scheduler_controller(controller, deterministic))
        needs_total = "progress" in FEATURES[self.controller.features] or self.controller.anchor == "cosine"
        if needs_total and self.total_steps is None:
            raise ValueError("total_steps: this controller observes the fraction of the run done (or follows a "
                             "cosine schedule); pass the run's number of training steps")
        self.model, self.max_lr = model, max_lr
        self.output_layer = output_layer_module(model, output_layer) if output_layer is not None else None
        self.val_images, self.val_labels = validation_set(val_data, val_size, first_device(model))
        kind = optimizer_kind(optimizer)
        if kind not in self.controller.optimizers:
            warn(f"optimizer: the controller was trained to set the rate of {', '.join(self.controller.optimizers)}; "
                 f"it was not trained with {kind} (its card says how it did on held-out children)")
        self.out_of_range = np.zeros(len(FEATURES[self.controller.features]), dtype=int)  # actions in a row
        self.warned = set()  # the one-time warnings given
        self.checked = False  # whether a validation pass has checked the data and found the output layer
        super().__init__(optimizer)  # base_lrs, _step_count, optimizer.step's tracking; calls _initial_step

    # ----------------------------------------------------------------------------- torch's scheduler interface

    def _initial_step(self):
        """At construction: the first rate, the warm-up's or the controller's first action."""
        self._step_count, self.last_epoch = 1, 0
        base = self.base_lrs[0]
        if not LR_MIN <= base <= self.max_lr:
            warn(f"optimizer: its learning rate {base:g} is outside the controller's range [{LR_MIN:g}, "
                 f"{self.max_lr:g}]; the scheduler starts from {float(clip_lr(base, self.max_lr)):g}")
        if self.warmup_steps:
            self._validate()  # its checks, now rather than after the warm-up
            self._reset_episode(episode_start=self.warmup_steps)
            self._set_lr(self._warmup_lr(0))
        else:
            self._start_episode()

    def _warmup_lr(self, step):
        """The warm-up's rate at training step ``step``: linear, reaching the optimizer's rate at its end."""
        return float(clip_lr(self.base_lrs[0], self.max_lr)) * (step + 1) / self.warmup_steps

    def step(self, metrics=None):
        """Count one training step with its training loss (``metrics``: the batch's mean loss, a number
        or a one-element tensor); every ``update_freq`` steps, observe and set the next rates.

        The block's training-loss feature is the mean of its finite losses. A block stepped without
        any (``step()``) uses the validation loss measured at its end instead, as the controller's
        first observation of a fresh model does.
        """
        if metrics is None and isinstance(sys._getframe(1).f_locals.get("self"), ChainedScheduler):
            raise TypeError("ALRSScheduler cannot run inside ChainedScheduler (it needs the loss, and sets "
                            "rates, not factors); use its warmup_steps= or SequentialLR")
        if self._step_count == 1 and not getattr(self.optimizer, "_opt_called", False):
            warn("scheduler.step() was called before optimizer.step(); call it after, once per training step")
        self._step_count += 1
        if metrics is not None:
            self._add_loss(metrics)
        elif "no loss" not in self.warned:
            self.warned.add("no loss")
            warn("step() without the loss: the validation loss stands in for the training loss the controller "
                 "observes; pass step(loss) (with a warm-up, use warmup_steps= rather than SequentialLR)")
        self.last_epoch += 1
        if self.total_steps is not None and self.last_epoch > self.total_steps and "past" not in self.warned:
            self.warned.add("past")
            warn(f"step {self.last_epoch}: past total_steps={self.total_steps}; the controller's view of the run "
                 "stays at its end")
        if self.last_epoch < self.episode_start:
            self._set_lr(self._warmup_lr(self.last_epoch))
        elif self.last_epoch == self.episode_start:
            self._start_episode()
        elif (self.last_epoch - self.episode_start) % self.update_freq == 0:
            self._act(self._block_loss())

    def get_lr(self):
        """The rates of every parameter group now (what the scheduler last set)."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def _update_lr(self, epoch=None):
        """What SequentialLR calls at this scheduler's milestone (epoch 0): the controller's episode
        starts there, from the model as the schedule before left it, at the optimizer's base rate."""
        if epoch != 0:
            raise ValueError(f"ALRSScheduler steps one training step at a time; it cannot jump to epoch {epoch}")
        self.last_epoch, self.episode_start = 0, 0
        self._start_episode()

    def print_lr(self, is_verbose, group, lr, epoch=None):
        """Print the rate of a parameter group when ``is_verbose`` (the method older torch schedulers have)."""
        if is_verbose:
            print(f"Adjusting learning rate of group {group} to {lr:.4e}.")

    def state_dict(self):
        """Everything to continue exactly: counters, rates, the block's losses, the previous predictions
        (tensors and plain values only: loadable with torch.load(weights_only=True))."""
        return {**{key: getattr(self, key) for key in STATE_KEYS}, "out_of_range": self.out_of_range.tolist(),
                "warned": sorted(self.warned)}

    def load_state_dict(self, state):
        for key in STATE_KEYS:
            setattr(self, key, state[key])
        self.out_of_range, self.warned = np.array(state["out_of_range"], dtype=int), set(state["warned"])
        self.episode_controller = self.controller.starting_at(self.initial_lr)
        self._set_lr(self.group_lr)

    # ----------------------------------------------------------------------------- the controller's episode

    def _reset_episode(self, episode_start):
        """A controller's episode that starts at training step ``episode_start``, from the optimizer's rate."""
        self.lr = self.initial_lr = float(clip_lr(self.base_lrs[0], self.max_lr))  # the controlled rate
        self.block_lr = self.lr  # the rate of the last block (the start rate at first)
        self.episode_controller = self.controller.starting_at(self.initial_lr)
        self.block_losses = []  # the losses step() got since the last action
        self.prev_logits, self.val_loss, self.first_val_loss = None, math.nan, math.nan
        self.episode_start = episode_start

    def _start_episode(self):
        """The controller's episode starts on the model as it is: its first observation and action."""
        self._reset_episode(episode_start=self.last_epoch)
        self._act(train_loss=None)

    def _add_loss(self, metrics):
        """Keep a step's loss for the block's mean, where it is (no host sync per step)."""
        loss = torch.as_tensor(metrics).detach()
        if loss.numel() != 1:
            raise ValueError(f"step(metrics): one loss per step (the batch's mean), got a tensor of shape "
                             f"{tuple(loss.shape)}; pass loss.mean()")
        self.block_losses.append(loss.reshape(()))

    def _block_loss(self):
        """The mean finite training loss of the block (None when it had none), warning once about
        non-finite ones; the block's losses restart."""
        if not self.block_losses:
            return None
        losses = torch.stack(self.block_losses).float()
        finite = torch.isfinite(losses)
        count = int(finite.sum())
        if count < len(losses) and "nonfinite" not in self.warned:
            self.warned.add("nonfinite")
            warn(f"step(metrics): {len(losses) - count} of the last {len(losses)} losses were not finite; they are "
                 "left out of the controller's training-loss feature (the rate is not changed for them)")
        self.block_losses = []
        return losses[finite].mean() if count else None

    def _progress(self, step):
        """The fraction of the controller's episode done at training step ``step`` (0 without total_steps)."""
        if self.total_steps is None:
            return 0.0
        return min(1.0, (step - self.episode_start) / (self.total_steps - self.episode_start))

    def _act(self, train_loss):
        """Observe the model and apply the controller's action to the controlled rate (a model whose
        validation loss is not finite keeps its rates, with a warning)."""
        features = self._observe(train_loss)
        if features is None:
            warn("the validation loss is not finite (the model diverged); the learning rate is kept")
            return
        self._check_range(features)
        self.lr = float(clip_lr(self.episode_controller.next_lr(features, self.lr, self.last_epoch), self.max_lr))
        base = float(anchor_factor(self.controller.anchor, self._progress(self.last_epoch)))
        self.block_lr = float(clip_lr(self.lr * base, self.max_lr))
        self._set_lr(self.block_lr)

    def _check_range(self, features):
        """Warn once when a feature has been beyond the normalizer's clip for OUT_OF_RANGE_ACTIONS actions
        in a row, naming it: the controller never saw such values in training."""
        self.out_of_range = np.where(self.controller.beyond_range(features), self.out_of_range + 1, 0)
        if "range" not in self.warned and (self.out_of_range >= OUT_OF_RANGE_ACTIONS).any():
            self.warned.add("range")
            names = [FEATURES[self.controller.features][i] for i in np.flatnonzero(self.out_of_range >= OUT_OF_RANGE_ACTIONS)]
            warn(f"the controller's observation {', '.join(names)} has been outside the range it was trained on "
                 f"for {OUT_OF_RANGE_ACTIONS} actions in a row: this model, data or optimizer differ from its "
                 "training tasks, and its choices are untested here")

    def _observe(self, train_loss):
        """The controller's raw observation of the model now (the features it was trained with), or None
        if its validation loss is not finite. ``train_loss=None``: the validation loss stands in (as at
        the environment's reset)."""
        val_loss, logits = self._validate()
        if not math.isfinite(float(val_loss)):
            self.val_loss = float(val_loss)
            return None
        device = logits.device
        features = observation_features(
            (val_loss if train_loss is None else train_loss.to(device)).view(1), val_loss.view(1), logits[None],
            None if self.prev_logits is None else self.prev_logits[None], self.output_layer.weight.detach()[None],
            torch.tensor([self.block_lr], dtype=torch.float32, device=device))
        self.prev_logits = logits
        previous_val_loss = self.val_loss if math.isfinite(self.first_val_loss) else float(val_loss)
        if not math.isfinite(self.first_val_loss):
            self.first_val_loss = float(val_loss)
        self.val_loss = float(val_loss)
        return select_features(self.controller.features, features.double().cpu().numpy(), [self.first_val_loss],
                               [previous_val_loss], [self.initial_lr], math.log(logits.shape[1]),
                               [self._progress(self.last_epoch)])[0]

    def _set_lr(self, lr):
        """``lr`` on the first parameter group; every other group keeps its initial ratio to it."""
        self.group_lr = lr
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * (base_lr / self.base_lrs[0])
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _validate(self):
        """Mean cross-entropy over the validation subset and its logits (N, classes), in eval mode at the
        optimizer's evaluation weights. The first pass checks what the model makes of the data and finds
        the output layer."""
        with evaluation_mode(self.optimizer):
            logits = predict(self.model, self.val_images) if self.checked else self._first_pass()
        return F.cross_entropy(logits, self.val_labels, reduction="none").mean(), logits

    def _first_pass(self):
        """The first validation pass: errors in one line naming val_data, and the output layer (the last
        nn.Linear called) when it was not named."""
        called = []
        hooks = [module.register_forward_hook(lambda module, args, out: called.append(module))
                 for module in self.model.modules() if isinstance(module, nn.Linear)] if self.output_layer is None else []
        try:
            logits = predict(self.model, self.val_images)
        except (RuntimeError, ValueError, TypeError) as error:
            raise ValueError(f"val_data: the model cannot take its images, of shape {tuple(self.val_images.shape[1:])} "
                             f"({str(error).splitlines()[0]})") from error
        finally:
            for hook in hooks:
                hook.remove()
        if self.output_layer is None:
            if not called:
                raise ValueError("model: no nn.Linear is called in its forward pass; name the output layer whose "
                                 "weights the controller watches with output_layer=")
            self.output_layer = called[-1]
        if logits.dim() != 2:
            raise ValueError(f"model: its outputs on val_data have shape {tuple(logits.shape)}; the controller "
                             "needs class logits (N, classes)")
        if int(self.val_labels.max()) >= logits.shape[1] or int(self.val_labels.min()) < 0:
            raise ValueError(f"val_data: labels run from {int(self.val_labels.min())} to {int(self.val_labels.max())}, "
                             f"but the model has {logits.shape[1]} outputs")
        self.checked = True
        return logits

    @classmethod
    def from_pretrained(cls, name, optimizer, model, val_data, **kwargs):
        """A scheduler driven by the controller shipped as <name>.pt in the package (see
        ``pretrained_controllers()``); ``kwargs`` as for the constructor."""
        available = pretrained_controllers()
        if name not in available:
            raise ValueError(f"no pretrained controller {name!r}; available: {', '.join(available) or 'none'}")
        return cls(optimizer, model, PRETRAINED_DIR / f"{name}.pt", val_data, **kwargs)


def pretrained_controllers():
    """The names of the controllers shipped with the package (their cards: pretrained/<name>.md)."""
    return sorted(path.stem for path in PRETRAINED_DIR.glob("*.pt"))


def first_device(model):
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def output_layer_module(model, name):
    """The nn.Linear named ``name`` in ``model``; anything else is a one-line ValueError."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"output_layer: model has no layer {name!r}") from None
    if not isinstance(module, nn.Linear):
        raise ValueError(f"output_layer: {name!r} is a {type(module).__name__}, not the nn.Linear whose weights "
                         "the controller watches")
    return module


def validation_set(val_data, val_size, device):
    """(images, labels) tensors on ``device``: a fixed random subset of ``val_size`` samples of
    ``val_data`` (all of them when None), checked to be classification data. Errors name val_data."""
    if isinstance(val_data, (tuple, list)) and len(val_data) == 2 and all(torch.is_tensor(t) for t in val_data):
        images, labels = val_data
    else:
        images, labels = gather_batches(val_data)
    if len(images) != len(labels):
        raise ValueError(f"val_data: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("val_data holds no samples")
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"val_data: labels must be integer class indices of shape (N,), got {labels.dtype} of shape "
                         f"{tuple(labels.shape)}; the controller was trained on classification (cross-entropy), "
                         "not regression")
    if val_size is not None and val_size < len(labels):
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SUBSET_SEED))[:val_size]
        images, labels = images[keep.to(images.device)], labels[keep.to(labels.device)]
    return images.to(device), labels.to(device).long()


def gather_batches(val_data):
    """The samples of a map-style Dataset of (image, label) pairs or a re-iterable of (images, labels)
    batches, concatenated; what is neither is a one-line error."""
    if isinstance(val_data, torch.utils.data.Dataset) and hasattr(val_data, "__len__"):
        val_data = torch.utils.data.DataLoader(val_data, batch_size=EVAL_CHUNK)
    if iter(val_data) is val_data:
        raise TypeError("val_data: a generator or iterator would be used up by the first pass; pass (images, labels) "
                        "tensors, a Dataset or a DataLoader")
    images, labels = [], []
    for batch in val_data:
        if isinstance(batch, dict):
            raise TypeError(f"val_data: batches must be (images, labels) pairs, got a dict with keys "
                            f"{', '.join(map(str, batch))}; pass (batch[...], batch[...]) tensors instead")
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(torch.is_tensor(t) for t in batch)):
            raise TypeError(f"val_data: batches must be (images, labels) pairs of tensors, got {type(batch).__name__}")
        images.append(batch[0])
        labels.append(batch[1].reshape(-1) if batch[1].dim() == 0 else batch[1])
    if not images:
        raise ValueError("val_data holds no samples")
    return torch.cat(images), torch.cat(labels)


def load_scheduler_controller(path, deterministic=True):
    """The ``Controller`` of a checkpoint file (its initial rate is the optimizer's, not stored)."""
    return load_controller(read_controller_checkpoint(path), deterministic)
