"""The validation pass every part of ALRS runs: a model's eval-mode outputs on images, in chunks, at
the optimizer's evaluation weights."""
import contextlib

import torch

EVAL_CHUNK = 1000  # samples per forward pass in validation and test passes (cache-sized on a CPU)


@torch.no_grad()
def predict(model, images, prepare=None, chunk=EVAL_CHUNK):
    """``model``'s logits on ``images`` (N, ...) in eval mode (BatchNorm on its running statistics, no
    dropout), ``chunk`` samples per forward pass, each chunk through ``prepare`` first if given; (N,
    classes) in float32. The model's training mode is restored, even after an error."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(prepare(part) if prepare else part).float() for part in images.split(chunk)])
    finally:
        model.train(was_training)


@contextlib.contextmanager
def evaluation_mode(optimizer):
    """Inside, the parameters are the optimizer's evaluation weights: schedule-free optimizers swap in
    their averaged iterate (``eval()``) and back (``train()``); for any other optimizer nothing changes."""
    switch = callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None))
    if switch:
        optimizer.eval()
    try:
        yield
    finally:
        if switch:
            optimizer.train()
