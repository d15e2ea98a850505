"""Children: E networks of one architecture trained side by side, and the batches they train on.

Two backends behind one small interface (``Children``): all children at once under torch.func.vmap
over stacked parameters with ``BatchedAdam`` (MLP, LeNet-5 on a GPU), or one nn.Module and
torch.optim.Adam each (ResNet-18, whose BatchNorm buffers cannot live under vmap, and every child on
a CPU). Both give the same numbers for the same seeds.

A block of steps waits on the GPU nowhere: learning rates, masks and batch indices go to the device
once per block (pinned, non-blocking), and nothing is read back. Options: ``precision="bf16"``
(autocast; opt-in), ``compile`` (torch.compile of each module child's forward, CUDA graphs on a GPU;
opt-in), and channels_last memory for convolutional module children on a GPU.
"""
import copy
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from alrs.controller import output_layer_name
from alrs.validation import EVAL_CHUNK, evaluation_mode, predict
from models import build_model, has_buffers
from optimizers import OptimizerSpec

PRECISIONS = ("fp32", "bf16")


class Children(Protocol):
    """What the environment needs of its children (E of them)."""

    def load_child(self, index: int, model: torch.nn.Module) -> None:
        """Child ``index`` becomes a copy of ``model``, with fresh optimizer state."""

    def train_block(self, x_all, y_all, steps, lrs, active) -> torch.Tensor:
        """Adam steps of the active children at rates ``lrs`` (host array, E): step t trains child i on
        the images ``x_all[steps[t, i]]`` (``steps``: device indices (T, E, B)). Their mean losses (E,)."""

    def logits(self, images) -> torch.Tensor:
        """Eval-mode outputs of every child on the same images, (E, N, classes)."""

    def output_weights(self) -> torch.Tensor:
        """The output layer's weight matrix of every child, (E, out, in)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def to_float(images):
    """uint8 images to floats in [0, 1] (ToTensor's scaling), done per batch on the device."""
    return images.float().div_(255)


def to_device(array, device):
    """A host array as a tensor on ``device`` without waiting for the GPU: on CUDA it is copied through
    pinned memory, non-blocking (a copy from pageable memory synchronizes the host with the device)."""
    tensor = torch.as_tensor(array)
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def autocast(device, precision):
    """bf16 autocast of the forward passes when ``precision`` is bf16 (weights and Adam stay fp32)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


class BatchedAdam:
    """Adam over stacked parameters (E, ...) with one learning rate and step count per child.

    Same arithmetic as torch.optim.Adam (default betas, eps, no weight decay); children marked
    inactive keep their parameters and moments unchanged.
    """

    def __init__(self, params, betas=(0.9, 0.999), eps=1e-8):
        self.betas, self.eps = betas, eps
        first = next(iter(params.values()))
        self.step_count = torch.zeros(first.shape[0], dtype=torch.float64, device=first.device)
        self.exp_avg = {k: torch.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in params.items()}

    def reset(self, index):
        self.step_count[index] = 0
        for state in (self.exp_avg, self.exp_avg_sq):
            for t in state.values():
                t[index] = 0

    @torch.no_grad()
    def step(self, params, grads, lrs, active):
        beta1, beta2 = self.betas
        self.step_count += active
        step = self.step_count.clamp(min=1)
        step_size = (lrs / (1 - beta1 ** step)).float()
        bias_correction2_sqrt = (1 - beta2 ** step).sqrt().float()
        keep = ~active
        for key, param in params.items():
            shape = (-1,) + (1,) * (param.dim() - 1)
            grad = grads[key]
            exp_avg, exp_avg_sq = self.exp_avg[key], self.exp_avg_sq[key]
            new_avg = exp_avg.lerp(grad, 1 - beta1)
            new_avg_sq = exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (new_avg_sq.sqrt() / bias_correction2_sqrt.view(shape)).add_(self.eps)
            update = new_avg / denom * step_size.view(shape)
            mask = keep.view(shape)
            exp_avg.copy_(torch.where(mask, exp_avg, new_avg))
            exp_avg_sq.copy_(torch.where(mask, exp_avg_sq, new_avg_sq))
            param.sub_(torch.where(mask, 0.0, update))

    def state_dict(self):
        return {"step": self.step_count, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state):
        self.step_count.copy_(state["step"])
        for key in self.exp_avg:
            self.exp_avg[key].copy_(state["exp_avg"][key])
            self.exp_avg_sq[key].copy_(state["exp_avg_sq"][key])


class VmapChildren:
    """E children of one architecture trained in one pass with torch.func.vmap."""

    def __init__(self, template, num, device, precision="fp32"):
        self.base, self.device, self.precision = template.to("meta"), torch.device(device), precision
        self.params = {k: torch.zeros((num,) + p.shape, device=device) for k, p in template.named_parameters()}
        self.weight_key = output_layer_name(template) + ".weight"
        self.adam = BatchedAdam(self.params)

        def loss(params, x, y):
            with autocast(device, precision):
                return F.cross_entropy(functional_call(self.base, params, (x,)).float(), y)

        def logits(params, x):
            with autocast(device, precision):
                return functional_call(self.base, params, (x,)).float()

        self._grad_and_loss = vmap(grad_and_value(loss))
        self._logits = vmap(logits, in_dims=(0, None))

    def load_child(self, index, model):
        with torch.no_grad():
            for key, param in model.named_parameters():
                self.params[key][index] = param
        self.adam.reset(index)

    def train_block(self, x_all, y_all, steps, lrs, active):
        lrs, active = to_device(lrs, self.device), to_device(active, self.device)
        total = torch.zeros(len(lrs), device=self.device)
        for indices in steps:
            grads, losses = self._grad_and_loss(self.params, to_float(x_all[indices]), y_all[indices])
            self.adam.step(self.params, grads, lrs, active)
            total += losses.detach()
        return total / len(steps)

    @torch.no_grad()
    def logits(self, images):
        return torch.cat([self._logits(self.params, to_float(chunk)) for chunk in images.split(EVAL_CHUNK)], dim=1)

    def output_weights(self):
        return self.params[self.weight_key]

    def state_dict(self):
        return {"params": self.params, "adam": self.adam.state_dict()}

    def load_state_dict(self, state):
        for key in self.params:
            self.params[key].copy_(state["params"][key])
        self.adam.load_state_dict(state["adam"])


class ModuleChildren:
    """E children as separate nn.Modules, each with its own optimizer (any architecture, any optimizer
    of optimizers.OptimizerSpec; ``total_steps``: the episode's length, for schedule-free's warm-up).

    ``channels_last``: convolutions in NHWC memory (faster on a GPU's tensor cores); ``compile``: each
    child's forward through torch.compile ("reduce-overhead", i.e. CUDA graphs, on a GPU)."""

    def __init__(self, template, num, device, precision="fp32", compile=False, channels_last=False,
                 optimizer=OptimizerSpec(), total_steps=1000):
        self.device, self.precision = torch.device(device), precision
        self.optimizer_spec, self.total_steps = optimizer, total_steps
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.models = [copy.deepcopy(template).to(device, memory_format=self.memory_format) for _ in range(num)]
        self.optimizers = [self._optimizer(m) for m in self.models]
        self.weight_key = output_layer_name(template) + ".weight"
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        self.forwards = [torch.compile(m, mode=mode) if compile else m for m in self.models]

    def load_child(self, index, model):
        self.models[index].load_state_dict(model.state_dict())
        self.optimizers[index] = self._optimizer(self.models[index])

    def _optimizer(self, model):
        return self.optimizer_spec.build(model.parameters(), 1e-3, self.total_steps)  # the rate is set per block

    def _input(self, images):
        return to_float(images).contiguous(memory_format=self.memory_format)  # images are (N, C, H, W)

    def train_block(self, x_all, y_all, steps, lrs, active):
        total = torch.zeros(len(self.models), device=self.device)
        for i in np.flatnonzero(active):
            model, forward, optimizer = self.models[i], self.forwards[i], self.optimizers[i]
            model.train()
            optimizer.param_groups[0]["lr"] = float(lrs[i])
            for indices in steps[:, i]:
                with autocast(self.device, self.precision):
                    loss = F.cross_entropy(forward(self._input(x_all[indices])).float(), y_all[indices])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total[i] += loss.detach()
        return total / len(steps)

    @torch.no_grad()
    def logits(self, images):
        outputs = []
        for forward, optimizer in zip(self.forwards, self.optimizers):
            with autocast(self.device, self.precision), evaluation_mode(optimizer):
                outputs.append(predict(forward, images, self._input))
        return torch.stack(outputs)

    def output_weights(self):
        return torch.stack([m.get_parameter(self.weight_key).detach() for m in self.models])

    def state_dict(self):
        return {"models": [m.state_dict() for m in self.models],
                "optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state):
        for model, optimizer, model_state, optimizer_state in zip(
                self.models, self.optimizers, state["models"], state["optimizers"]):
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optimizer_state)


def make_children(architecture, splits, num, device, backend="auto", precision="fp32", compile=False,
                  optimizer=OptimizerSpec(), total_steps=1000):
    """Children for ``num`` environments. ``auto``: vmap on a GPU for models without BatchNorm
    buffers that train with plain Adam (one launch sequence for all children); otherwise one module
    each, which is as fast or faster on a CPU, where vmap of a convolution gains nothing. Module
    children of a convolutional network use channels_last on a GPU; ``compile`` applies to module children."""
    template = build_model(architecture, splits.in_channels, splits.image_size, splits.num_classes)
    on_gpu = torch.device(device).type == "cuda"
    if backend == "auto":
        backend = "vmap" if on_gpu and not has_buffers(template) and optimizer.plain_adam else "module"
    if backend == "vmap" and has_buffers(template):
        raise ValueError(f"{architecture} has BatchNorm buffers and cannot be trained under vmap")
    if backend == "vmap" and not optimizer.plain_adam:
        raise ValueError(f"vmap children train with Adam's defaults only, not {optimizer}")
    if backend == "vmap":
        return VmapChildren(template, num, device, precision)
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in template.modules())
    return ModuleChildren(template, num, device, precision, compile, on_gpu and convolutional, optimizer,
                          total_steps)


class BatchSampler:
    """Shuffled epochs of training indices for each environment, from that environment's generator.

    Like a DataLoader with shuffle=True and drop_last=True, but it hands out the indices of a whole
    block of steps for all environments at once, so the batches are gathered on the device.
    """

    def __init__(self, num_samples, batch_size, generators):
        if batch_size > num_samples:
            raise ValueError(f"batch size {batch_size} exceeds the {num_samples} training samples")
        self.num_samples, self.batch_size, self.generators = num_samples, batch_size, generators
        self.orders = [torch.empty(0, dtype=torch.long) for _ in generators]

    def block(self, num_steps, active):
        """Indices (num_steps, E, batch_size); inactive environments draw nothing and get zeros."""
        out = torch.zeros(num_steps, len(self.generators), self.batch_size, dtype=torch.long)
        need = num_steps * self.batch_size
        for i in np.flatnonzero(active):
            while len(self.orders[i]) < need:
                epoch = torch.randperm(self.num_samples, generator=self.generators[i])
                usable = self.num_samples - self.num_samples % self.batch_size
                self.orders[i] = torch.cat([self.orders[i], epoch[:usable]])
            out[:, i] = self.orders[i][:need].view(num_steps, self.batch_size)
            self.orders[i] = self.orders[i][need:]
        return out
