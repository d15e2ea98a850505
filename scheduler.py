"""A trained controller as a learning-rate scheduler for your own PyTorch training loop.

    from scheduler import ALRSScheduler

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = ALRSScheduler(optimizer, model, "pretrained/fa-mnist_mlp_stable.pt", (val_images, val_labels))
    for images, labels in loader:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step(loss)

Every ``update_freq`` steps the scheduler runs a validation pass, builds the controller's 7 features
with the environment's own ``observation_features``, normalizes them with the controller's frozen
statistics and sets the rate the controller chooses on every parameter group. The first rate is
chosen when the scheduler is built (as the environment's first action is taken on the fresh child),
so the loop above trains at exactly the rates, and to exactly the losses, of test.py's learned row
for the same child, batches and validation set.
"""
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from children import EVAL_CHUNK
from environment import LR_MAX, LR_MIN, observation_features
from models import output_layer_name
from ppo import load_controller, read_controller_checkpoint
from schedules import Controller


class ALRSScheduler:
    """Sets ``optimizer``'s learning rate with a trained ALRS controller, in torch.optim.lr_scheduler's
    style: ``step(loss)`` once per training step, ``get_last_lr()``, ``state_dict()``/``load_state_dict()``.

    optimizer: any torch optimizer; the controller was trained with Adam (others get a warning).
    model: the network being trained; its output layer's weights are part of the observation.
    controller: a checkpoint path (train.py's checkpoints, pretrained/*.pt) or a loaded ``Controller``.
    val_data: an (images, labels) pair of tensors, or an iterable of (images, labels) batches such as
        a DataLoader; classification with cross-entropy, as the controller was trained on.
    update_freq: training steps between actions (the controller's was 10).
    output_layer: the name of the output nn.Linear in ``model`` (default: the last nn.Linear).
    deterministic: act with the policy's mode (default), or sample actions from it (torch's global RNG).
    """

    def __init__(self, optimizer, model, controller, val_data, update_freq=10, output_layer=None,
                 deterministic=True):
        if update_freq <= 0:
            raise ValueError(f"update_freq must be positive, got {update_freq}")
        if not isinstance(optimizer, torch.optim.Adam):
            warnings.warn(f"the controller was trained to set Adam's learning rate; with "
                          f"{type(optimizer).__name__} its choices are untested", stacklevel=2)
        self.optimizer, self.model, self.val_data, self.update_freq = optimizer, model, val_data, update_freq
        self.output_weight = model.get_parameter(f"{output_layer or output_layer_name(model)}.weight")
        self.controller = (controller if isinstance(controller, Controller)
                           else load_scheduler_controller(controller, deterministic))
        self.lr = float(np.clip(optimizer.param_groups[0]["lr"], LR_MIN, LR_MAX))  # in effect since the last action
        self.steps, self.loss_sum, self.prev_logits, self.val_loss = 0, None, None, math.nan
        self._act(train_loss=None)

    def step(self, loss):
        """Count one training step with its (mean, cross-entropy) training loss; every ``update_freq``
        steps, observe and set the next learning rate."""
        loss = torch.as_tensor(loss).detach().float()
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.steps += 1
        if self.steps % self.update_freq == 0:
            self._act(train_loss=self.loss_sum / self.update_freq)
            self.loss_sum = None

    def get_last_lr(self):
        """The learning rate of every parameter group, as torch's schedulers report it."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        """Everything to continue exactly: counters, the block's loss sum, the previous predictions."""
        return {"steps": self.steps, "lr": self.lr, "loss_sum": self.loss_sum, "prev_logits": self.prev_logits,
                "val_loss": self.val_loss}

    def load_state_dict(self, state):
        self.steps, self.lr, self.loss_sum = state["steps"], state["lr"], state["loss_sum"]
        self.prev_logits, self.val_loss = state["prev_logits"], state["val_loss"]
        self._set_lr(self.lr)

    def _act(self, train_loss):
        """Observe the model (``train_loss=None``: not trained yet, its validation loss stands in, as in
        the environment's reset) and apply the controller's action to the learning rate."""
        val_loss, logits = self._validate()
        self.val_loss = float(val_loss)
        if not math.isfinite(self.val_loss):
            warnings.warn("the validation loss is not finite (the model diverged); the learning rate is kept")
            return
        device = logits.device
        features = observation_features(
            (val_loss if train_loss is None else train_loss.to(device)).view(1), val_loss.view(1), logits[None],
            None if self.prev_logits is None else self.prev_logits[None], self.output_weight.detach()[None],
            torch.tensor([self.lr], dtype=torch.float32, device=device))
        self.prev_logits = logits
        self.lr = float(np.clip(self.controller.next_lr(features[0].cpu().numpy(), self.lr, self.steps),
                                LR_MIN, LR_MAX))
        self._set_lr(self.lr)

    def _set_lr(self, lr):
        for group in self.optimizer.param_groups:
            group["lr"] = lr

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
        logits, targets = zip(*((self.model(x.to(device)), y.to(device)) for x, y in batches))
        self.model.train(was_training)
        logits, targets = torch.cat(logits).float(), torch.cat(targets)
        return F.cross_entropy(logits, targets, reduction="none").mean(), logits


def load_scheduler_controller(path, deterministic=True):
    """The ``Controller`` of a checkpoint file (its initial rate is the optimizer's, not stored)."""
    agent, normalizer, action_range, action_param = load_controller(read_controller_checkpoint(path))
    return Controller(agent, normalizer, action_range, action_param, None, deterministic)
