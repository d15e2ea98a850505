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

Every ``update_freq`` steps the scheduler runs a validation pass, builds the controller's 7 features
with the environment's own ``observation_features``, normalizes them with the controller's frozen
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
from environment import LR_MAX, LR_MIN, observation_features
from models import output_layer_name
from ppo import load_controller, read_controller_checkpoint
from schedules import Controller

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


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
    """

    def __init__(self, optimizer, model, controller, val_data, update_freq=10, output_layer=None,
                 deterministic=True):
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
        self.last_epoch = 0
        self.lr = float(np.clip(self.base_lrs[0], LR_MIN, LR_MAX))  # the reference rate since the last action
        self.loss_sum, self.loss_count, self.prev_logits, self.val_loss = None, 0, None, math.nan
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
                "loss_count": self.loss_count, "prev_logits": self.prev_logits, "val_loss": self.val_loss}

    def load_state_dict(self, state):
        self.last_epoch, self.base_lrs, self.lr = state["last_epoch"], list(state["base_lrs"]), state["lr"]
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
        self.prev_logits, self.val_loss = state["prev_logits"], state["val_loss"]
        self._set_lr(self.lr)

    def _act(self, train_loss):
        """Observe the model and apply the controller's action to the reference rate (a model whose
        validation loss is not finite keeps its rates, with a warning)."""
        features = self._observe(train_loss)
        if features is None:
            warnings.warn("the validation loss is not finite (the model diverged); the learning rate is kept")
            return
        self.lr = float(np.clip(self.controller.next_lr(features, self.lr, self.last_epoch), LR_MIN, LR_MAX))
        self._set_lr(self.lr)

    def _observe(self, train_loss):
        """The controller's raw observation (7,) of the model now, or None if its validation loss is not
        finite. ``train_loss=None``: the validation loss stands in (as at the environment's reset)."""
        val_loss, logits = self._validate()
        self.val_loss = float(val_loss)
        if not math.isfinite(self.val_loss):
            return None
        device = logits.device
        features = observation_features(
            (val_loss if train_loss is None else train_loss.to(device)).view(1), val_loss.view(1), logits[None],
            None if self.prev_logits is None else self.prev_logits[None], self.output_weight.detach()[None],
            torch.tensor([self.lr], dtype=torch.float32, device=device))
        self.prev_logits = logits
        return features[0].cpu().numpy()

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
    agent, normalizer, action_range, action_param = load_controller(read_controller_checkpoint(path))
    return Controller(agent, normalizer, action_range, action_param, None, deterministic)
