"""A trained controller as a learning-rate scheduler for your own PyTorch training loop.

    from scheduler import ALRSScheduler

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = ALRSScheduler.from_pretrained("fa-mnist_mlp_stable", optimizer, model, (val_images, val_labels))
    for images, labels in loader:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step(loss)

Every ``update_freq`` steps the scheduler runs a validation pass, builds the controller's features
with the environment's own functions (the reference's 7, or the scale-free ones it was trained on), normalizes them with the controller's frozen
statistics and scales the learning rate by the factor the controller chooses. The first rate is
chosen when the scheduler is built (as the environment's first action is taken on the fresh child),
so the loop above trains at exactly the rates, and to exactly the losses, of test.py's learned row
for the same child, batches and validation set.

Cost: one forward pass over the validation data every ``update_freq`` steps (and one when the
scheduler is built), so you choose it with the validation data's size. The pretrained controller saw
2000 images; with them, a small MLP at batch 128 trained about 40 % longer than without the scheduler.
"""
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from children import EVAL_CHUNK
from controller import (FEATURES, LR_MAX, LR_MIN, Controller, clip_lr, load_controller, observation_features,
                        read_controller_checkpoint, select_features)
from models import output_layer_name

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
OUT_OF_RANGE_ACTIONS = 5  # actions in a row with a feature beyond the normalizer's clip before the scheduler warns


class ALRSScheduler(LRScheduler):
    """Sets ``optimizer``'s learning rates with a trained ALRS controller; a torch.optim.lr_scheduler
    scheduler built like torch's ReduceLROnPlateau: ``step(loss)`` once per training step,
    ``get_last_lr()``, ``last_epoch`` (the training steps counted), ``base_lrs``, ``state_dict()`` and
    ``load_state_dict()``.

    optimizer: any torch optimizer; the controller was trained with Adam (others get a warning). The
        controller acts on the first parameter group's rate (clipped to [1e-5, 0.1], the range it was
        trained in); every other group keeps its initial ratio to it.
    model: the network being trained; its output layer's weights are part of the observation.
    controller: a checkpoint path (train.py's checkpoints, pretrained/*.pt) or a loaded ``Controller``;
        ``ALRSScheduler.from_pretrained(name, ...)`` finds the shipped ones.
    val_data: an (images, labels) pair of tensors, or an iterable of (images, labels) batches such as
        a DataLoader; classification with cross-entropy, as the controller was trained on. It is run
        through the model every ``update_freq`` steps: its size is the scheduler's cost.
    update_freq: training steps between actions (the controller's was 10).
    output_layer: the name of the output layer in ``model`` (default: the last nn.Linear).
    deterministic: act with the policy's mode (default), or sample actions from it (torch's global RNG).
    total_steps: the training steps of the run, for a controller that observes the fraction done
        (``--features relative-progress``; required for it, as cosine annealing needs ``T_max``).
    max_lr: an upper bound on the first group's rate (default: 0.1, the top of the controller's range).

    The scheduler warns once when a feature of its observations sits beyond the range the controller's
    normalizer saw in training (past its clip) for several actions in a row: the model, data or
    optimizer differ from what the controller was trained on, and its choices are extrapolations.
    """

    def __init__(self, optimizer, model, controller, val_data, update_freq=10, output_layer=None,
                 deterministic=True, total_steps=None, max_lr=LR_MAX):
        if update_freq <= 0:
            raise ValueError(f"update_freq must be positive, got {update_freq}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        if not isinstance(optimizer, torch.optim.Adam):
            warnings.warn(f"the controller was trained to set Adam's learning rate; with "
                          f"{type(optimizer).__name__} its choices are untested", stacklevel=2)
        self.optimizer, self.model, self.val_data, self.update_freq = optimizer, model, val_data, update_freq
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        if not self.base_lrs[0] > 0:
            raise ValueError(f"optimizer: the first parameter group's learning rate must be positive (the "
                             f"controller scales it), got {self.base_lrs[0]}")
        self.output_weight = output_weight(model, output_layer)
        self.controller = (controller if isinstance(controller, Controller)
                           else load_scheduler_controller(controller, deterministic))
        if self.controller.features == "relative-progress" and not (total_steps or 0) > 0:
            raise ValueError("total_steps: this controller observes the fraction of the run done; pass the "
                             "run's number of training steps")
        if not LR_MIN < max_lr <= LR_MAX:
            raise ValueError(f"max_lr must be in ({LR_MIN:g}, {LR_MAX:g}], got {max_lr}")
        self.total_steps, self.max_lr = total_steps, max_lr
        self.last_epoch = 0
        self.lr = float(clip_lr(self.base_lrs[0], max_lr))  # the reference rate since the last action
        self.initial_lr = self.lr
        self.loss_sum, self.loss_count, self.prev_logits, self.val_loss = None, 0, None, math.nan
        self.first_val_loss = math.nan  # at the first observation
        self.out_of_range = np.zeros(len(FEATURES[self.controller.features]), dtype=int)  # actions in a row
        self.warned = False  # about observations out of the trained range (once)
        self._act(train_loss=None)

    @classmethod
    def from_pretrained(cls, name, optimizer, model, val_data, **kwargs):
        """A scheduler driven by the controller shipped as pretrained/<name>.pt (found next to this file,
        from any working directory); ``kwargs`` as for the constructor."""
        available = sorted(path.stem for path in PRETRAINED_DIR.glob("*.pt"))
        if name not in available:
            raise ValueError(f"no pretrained controller {name!r}; available: {', '.join(available) or 'none'}")
        return cls(optimizer, model, PRETRAINED_DIR / f"{name}.pt", val_data, **kwargs)

    def step(self, metrics=None):
        """Count one training step with its training loss (``metrics``: the batch's mean cross-entropy);
        every ``update_freq`` steps, observe and set the next learning rates.

        The block's training-loss feature is the mean of the losses given. A block stepped without
        any (``step()``) uses the validation loss measured at its end instead, as the controller's
        first observation of a fresh model does.
        """
        if metrics is not None:
            loss = torch.as_tensor(metrics).detach().float()
            self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
            self.loss_count += 1
        self.last_epoch += 1
        if self.last_epoch % self.update_freq == 0:
            self._act(train_loss=None if self.loss_sum is None else self.loss_sum / self.loss_count)
            self.loss_sum, self.loss_count = None, 0

    def state_dict(self):
        """Everything to continue exactly: counters, rates, the block's losses, the previous predictions."""
        return {"last_epoch": self.last_epoch, "base_lrs": self.base_lrs, "lr": self.lr, "loss_sum": self.loss_sum,
                "loss_count": self.loss_count, "prev_logits": self.prev_logits, "val_loss": self.val_loss,
                "initial_lr": self.initial_lr, "first_val_loss": self.first_val_loss,
                "out_of_range": self.out_of_range.tolist(), "warned": self.warned}

    def load_state_dict(self, state):
        self.last_epoch, self.base_lrs, self.lr = state["last_epoch"], list(state["base_lrs"]), state["lr"]
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
        self.prev_logits, self.val_loss = state["prev_logits"], state["val_loss"]
        self.initial_lr, self.first_val_loss = state["initial_lr"], state["first_val_loss"]
        self.out_of_range, self.warned = np.array(state["out_of_range"], dtype=int), state["warned"]
        self._set_lr(self.lr)

    def _act(self, train_loss):
        """Observe the model and apply the controller's action to the reference rate (a model whose
        validation loss is not finite keeps its rates, with a warning)."""
        features = self._observe(train_loss)
        if features is None:
            warnings.warn("the validation loss is not finite (the model diverged); the learning rate is kept")
            return
        self._check_range(features)
        self.lr = float(clip_lr(self.controller.next_lr(features, self.lr, self.last_epoch), self.max_lr))
        self._set_lr(self.lr)

    def _check_range(self, features):
        """Warn once when a feature has been beyond the normalizer's clip for OUT_OF_RANGE_ACTIONS actions
        in a row, naming it: the controller never saw such values in training."""
        beyond = np.abs(self.controller.normalizer.standardize(features[None])[0]) > self.controller.normalizer.clip
        self.out_of_range = np.where(beyond, self.out_of_range + 1, 0)
        if not self.warned and (self.out_of_range >= OUT_OF_RANGE_ACTIONS).any():
            self.warned = True
            names = [FEATURES[self.controller.features][i] for i in np.flatnonzero(self.out_of_range >= OUT_OF_RANGE_ACTIONS)]
            warnings.warn(f"the controller's observation {', '.join(names)} has been outside the range it was "
                          f"trained on for {OUT_OF_RANGE_ACTIONS} actions in a row: this model, data or optimizer "
                          "differ from its training tasks, and its choices are untested here", stacklevel=3)

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
            None if self.prev_logits is None else self.prev_logits[None], self.output_weight.detach()[None],
            torch.tensor([self.lr], dtype=torch.float32, device=device))
        self.prev_logits = logits
        previous_val_loss = self.val_loss if math.isfinite(self.first_val_loss) else float(val_loss)
        if not math.isfinite(self.first_val_loss):
            self.first_val_loss = float(val_loss)
        self.val_loss = float(val_loss)
        progress = self.last_epoch / self.total_steps if self.total_steps else 0.0
        return select_features(self.controller.features, features.double().cpu().numpy(), [self.first_val_loss],
                               [previous_val_loss], [self.initial_lr], math.log(logits.shape[1]), [progress])[0]

    def _set_lr(self, lr):
        """``lr`` on the first parameter group; every other group keeps its initial ratio to it."""
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * (base_lr / self.base_lrs[0])
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    @torch.no_grad()
    def _validate(self):
        """Mean cross-entropy over the validation data and the logits (N, classes), in eval mode."""
        was_training = self.model.training
        self.model.eval()
        device = self.output_weight.device
        if isinstance(self.val_data, (tuple, list)) and len(self.val_data) == 2 and torch.is_tensor(self.val_data[0]):
            images, labels = self.val_data
            batches = zip(images.split(EVAL_CHUNK), labels.split(EVAL_CHUNK))
        else:
            batches = self.val_data
        try:
            outputs = [(self.model(x.to(device)), y.to(device)) for x, y in batches]
        finally:
            self.model.train(was_training)
        if sum(len(y) for _, y in outputs) == 0:
            raise ValueError("val_data holds no samples; pass (images, labels) tensors or a DataLoader with at "
                             "least one batch")
        logits, targets = torch.cat([x for x, _ in outputs]).float(), torch.cat([y for _, y in outputs])
        return F.cross_entropy(logits, targets, reduction="none").mean(), logits


def output_weight(model, output_layer=None):
    """The weight of ``model``'s output layer: the layer named ``output_layer``, or the last nn.Linear."""
    if output_layer is None:
        if not any(isinstance(module, nn.Linear) for module in model.modules()):
            raise ValueError("model has no nn.Linear output layer; name the layer whose weights the controller "
                             "watches with output_layer=")
        output_layer = output_layer_name(model)
    try:
        return model.get_parameter(f"{output_layer}.weight")
    except AttributeError:
        raise ValueError(f"output_layer {output_layer!r} is not a layer with a weight in model") from None


def load_scheduler_controller(path, deterministic=True):
    """The ``Controller`` of a checkpoint file (its initial rate is the optimizer's, not stored)."""
    return load_controller(read_controller_checkpoint(path), deterministic)
