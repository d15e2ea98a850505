"""The learning-rate environment: every step trains a child network for ``update_freq`` steps.

``VecALRSEnv`` steps ``num_envs`` environments together (Gymnasium vector-env style, same-step
auto-reset); a single environment is the case ``num_envs=1``. Children are trained either all at
once with torch.func.vmap over stacked parameters (MLP, LeNet-5) or one nn.Module each (ResNet-18,
whose BatchNorm statistics cannot live under vmap). Both give the same numbers for the same seeds.
"""
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from models import build_model, has_buffers, output_layer_name

LR_MIN, LR_MAX = 1e-5, 1e-1
RANDOM_INITIAL_LRS = (1e-2, 1e-3, 1e-4)  # drawn from when --initial-lr is 0
ACTION_NOISE_STD = 1e-5
EVAL_CHUNK = 1000  # samples per forward pass in validation and test passes (cache-sized on a CPU)
OBS_DIM = 7
EPISODE_METRICS = ("final_val_loss", "best_val_loss", "test_loss", "test_accuracy")  # what run_episode reports
ACTION_PARAMS = ("clip", "log")  # how a continuous action becomes a factor (see apply_action)
REWARDS = ("val-loss", "log-improvement")  # what a step pays (see VecALRSEnv.step_lr)


@dataclass(frozen=True)
class Box:
    """Gymnasium's Box: real vectors of ``shape`` between ``low`` and ``high``."""
    low: float
    high: float
    shape: tuple


@dataclass(frozen=True)
class Discrete:
    """Gymnasium's Discrete: integer actions 0 .. n-1."""
    n: int


@dataclass(frozen=True)
class EnvConfig:
    architecture: str = "cnn"
    batch_size: int = 1000
    update_freq: int = 10
    num_train_steps: int = 1000
    initial_lr: float = 1e-3
    discrete: bool = False
    action_range: float = 1.05
    lr_noise: bool = True  # controller training only; off in tests of a schedule and in baselines
    action_param: str = "clip"  # the reference's clip(a, 1/range, range); "log" is a departure
    reward: str = "val-loss"  # the reference's -L(t); "log-improvement" is a departure

    @classmethod
    def from_args(cls, args, lr_noise):
        return cls(architecture=args.architecture, batch_size=args.batch_size, update_freq=args.update_freq,
                   num_train_steps=args.num_train_steps, initial_lr=args.initial_lr,
                   discrete=bool(args.discrete), action_range=args.action_range, lr_noise=lr_noise,
                   action_param=args.action_param, reward=args.reward)

    @property
    def num_actions(self):
        """Actions per episode: one before each block of ``update_freq`` child steps."""
        return self.num_train_steps // self.update_freq


# ----------------------------------------------------------------------------- observation

def observation_features(train_loss, val_loss, val_logits, prev_val_logits, output_weight, lr):
    """The 7 features the controller sees, for a batch of E children (leading dimension E).

    train_loss, val_loss, lr: (E,); val_logits: (E, N, C); prev_val_logits: the logits at the
    previous observation, or None at the first; output_weight: (E, out, in). Variances are
    population variances over all elements (numpy's np.var).
    """
    change = val_logits if prev_val_logits is None else val_logits - prev_val_logits
    flat = lambda t: t.reshape(t.shape[0], -1)
    return torch.stack([
        train_loss,
        val_loss,
        flat(val_logits).var(1, correction=0),
        flat(change).var(1, correction=0),
        flat(output_weight).mean(1),
        flat(output_weight).var(1, correction=0),
        lr,
    ], dim=1)


def apply_action(lr, action, discrete, action_range, action_param="clip"):
    """New learning rate(s) after an action: discrete 0 multiplies, 1 divides, 2 keeps.

    A continuous action ``a`` is, with ``action_param="clip"`` (the reference), the factor itself
    clipped to [1/range, range]: a policy at its initial mean 0 always divides. With ``"log"``
    the factor is range ** clip(a, -1, 1): a = 0 keeps the rate, and the factor is symmetric in a.
    """
    action = np.asarray(action).reshape(np.shape(lr))  # one action per learning rate, (E,) or (E, 1)
    if discrete:
        factor = np.choose(action.astype(int), [action_range, 1 / action_range, 1.0])
    elif action_param == "log":
        factor = action_range ** np.clip(action, -1.0, 1.0)
    else:
        factor = np.clip(action, 1 / action_range, action_range)
    return np.clip(lr * factor, LR_MIN, LR_MAX)


def action_bounds(action_param, action_range):
    """The interval outside which a continuous action is clipped, (low, high)."""
    return (-1.0, 1.0) if action_param == "log" else (1 / action_range, action_range)


# ----------------------------------------------------------------------------- children

def to_float(images):
    """uint8 images to floats in [0, 1] (ToTensor's scaling), done per batch on the device."""
    return images.float().div_(255)


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

    def __init__(self, template, num, device):
        self.base = template.to("meta")
        self.params = {k: torch.zeros((num,) + p.shape, device=device) for k, p in template.named_parameters()}
        self.weight_key = output_layer_name(template) + ".weight"
        self.adam = BatchedAdam(self.params)

        def loss(params, x, y):
            return F.cross_entropy(functional_call(self.base, params, (x,)), y)

        self._grad_and_loss = vmap(grad_and_value(loss))
        self._logits = vmap(lambda params, x: functional_call(self.base, params, (x,)), in_dims=(0, None))

    def load_child(self, index, model):
        with torch.no_grad():
            for key, param in model.named_parameters():
                self.params[key][index] = param
        self.adam.reset(index)

    def train_step(self, x, y, lrs, active):
        grads, losses = self._grad_and_loss(self.params, x, y)
        self.adam.step(self.params, grads, torch.as_tensor(lrs, device=x.device), torch.as_tensor(active, device=x.device))
        return losses.detach()

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
    """E children as separate nn.Modules, each with its own torch.optim.Adam (any architecture)."""

    def __init__(self, template, num, device):
        self.models = [copy.deepcopy(template).to(device) for _ in range(num)]
        self.optimizers = [torch.optim.Adam(m.parameters()) for m in self.models]
        self.weight_key = output_layer_name(template) + ".weight"

    def load_child(self, index, model):
        self.models[index].load_state_dict(model.state_dict())
        self.optimizers[index] = torch.optim.Adam(self.models[index].parameters())

    def train_step(self, x, y, lrs, active):
        losses = torch.zeros(len(self.models), device=x.device)
        for i in np.flatnonzero(active):
            model, optimizer = self.models[i], self.optimizers[i]
            model.train()
            optimizer.param_groups[0]["lr"] = float(lrs[i])
            loss = F.cross_entropy(model(x[i]), y[i])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[i] = loss.detach()
        return losses

    @torch.no_grad()
    def logits(self, images):
        outputs = []
        for model in self.models:
            model.eval()
            outputs.append(torch.cat([model(to_float(chunk)) for chunk in images.split(EVAL_CHUNK)]))
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


def make_children(architecture, splits, num, device, backend="auto"):
    """Children for ``num`` environments. ``auto``: vmap on a GPU for models without BatchNorm
    buffers (one launch sequence for all children); otherwise one module each, which is as fast
    or faster on a CPU, where vmap of a convolution gains nothing."""
    template = build_model(architecture, splits.in_channels, splits.image_size, splits.num_classes)
    if backend == "auto":
        backend = "vmap" if torch.device(device).type == "cuda" and not has_buffers(template) else "module"
    if backend == "vmap" and has_buffers(template):
        raise ValueError(f"{architecture} has BatchNorm buffers and cannot be trained under vmap")
    return (VmapChildren if backend == "vmap" else ModuleChildren)(template, num, device)


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


class VecALRSEnv:
    """``num_envs`` learning-rate environments stepped together.

    Each environment trains a fresh child for ``num_train_steps`` steps per episode. ``reset``
    observes the fresh child (it trains nothing), and each ``step`` applies an action and trains
    ``update_freq`` steps, so an episode is ``num_train_steps / update_freq`` actions (100 by
    default, as in the reference) and every child step runs at a rate the controller chose. With ``autoreset`` a finished environment starts its next episode in
    the same call and its last observation is in ``info["final_observation"]``; without it, a
    finished environment stops training and its later outputs repeat its final ones.
    """

    def __init__(self, config, splits, seeds, device="cpu", autoreset=True, backend="auto"):
        self.config, self.splits, self.device, self.autoreset = config, splits, torch.device(device), autoreset
        self.num_envs = len(seeds)
        self.observation_space = Box(-np.inf, np.inf, (OBS_DIM,))
        self.action_space = (Discrete(3) if config.discrete
                             else Box(*action_bounds(config.action_param, config.action_range), (1,)))
        self.children = make_children(config.architecture, splits, self.num_envs, self.device, backend)
        self.chance_loss = math.log(splits.num_classes)
        self._seed(seeds)
        self.lr = np.zeros(self.num_envs)
        self.step_count = np.zeros(self.num_envs, dtype=np.int64)
        self.finished = np.zeros(self.num_envs, dtype=bool)
        self.obs = np.zeros((self.num_envs, OBS_DIM))
        self.prev_logits = torch.zeros(self.num_envs, len(splits.val_y), splits.num_classes, device=self.device)
        self.episode_return = np.zeros(self.num_envs)
        self.lr_range = np.zeros((self.num_envs, 2))
        self.initial_lr = np.zeros(self.num_envs)
        self.log_lr_sum = np.zeros(self.num_envs)  # over the blocks trained so far: their geometric mean

    def _seed(self, seeds):
        """Two generators per environment: one for child init, initial lr and noise; one for batches."""
        self.seeds = [int(s) for s in seeds]
        self.env_generators = [torch.Generator().manual_seed(2 * s) for s in self.seeds]
        self.data_generators = [torch.Generator().manual_seed(2 * s + 1) for s in self.seeds]
        self.sampler = BatchSampler(len(self.splits.train_x), self.config.batch_size, self.data_generators)

    # --------------------------------------------------------------------- Gymnasium-style API

    def reset(self, seed=None, options=None):
        """Start a new episode in every environment. ``seed``: an int (env i gets seed + i) or a list;
        ``options={"initial_lr": [...]}`` sets each environment's initial learning rate (0: as configured)."""
        if seed is not None:
            self._seed([seed + i for i in range(self.num_envs)] if np.isscalar(seed) else seed)
        self.finished[:] = False
        self._reset_envs(np.ones(self.num_envs, dtype=bool), (options or {}).get("initial_lr"))
        return self.obs.astype(np.float32), [self._info(i) for i in range(self.num_envs)]

    def step(self, actions):
        """Apply one action per environment, train ``update_freq`` steps; Gymnasium's 5-tuple of arrays."""
        lr = apply_action(self.lr, actions, self.config.discrete, self.config.action_range, self.config.action_param)
        if self.config.lr_noise:
            lr = lr + ACTION_NOISE_STD * np.array([torch.randn(1, generator=g).item() for g in self.env_generators])
        return self.step_lr(lr)

    def step_lr(self, lr):
        """Like ``step`` but sets each child's learning rate directly (used to run fixed schedules)."""
        active = ~self.finished
        self.lr = np.where(active, np.clip(lr, LR_MIN, LR_MAX), self.lr)
        previous_obs = self.obs.copy()
        self._observe(active, self._train_block(active))
        self.step_count[active] += self.config.update_freq
        self.log_lr_sum[active] += np.log(self.lr[active])
        diverged = active & ~np.isfinite(self.obs).all(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            reward = np.where(active, self._reward(previous_obs[:, 1], self.obs[:, 1]), 0.0)
        if diverged.any():
            reward = np.where(diverged, self._divergence_penalty(previous_obs[:, 1]), reward)
            self.obs[diverged] = previous_obs[diverged]
        truncated = active & ~diverged & (self.step_count >= self.config.num_train_steps)
        terminated = diverged
        self.episode_return += reward
        self.lr_range = np.stack([np.minimum(self.lr_range[:, 0], self.lr), np.maximum(self.lr_range[:, 1], self.lr)], 1)
        done = terminated | truncated
        infos = [self._info(i, final=done[i], diverged=diverged[i]) for i in range(self.num_envs)]
        if done.any():
            if self.autoreset:
                for i in np.flatnonzero(done):
                    infos[i]["final_observation"] = self.obs[i].astype(np.float32)
                self._reset_envs(done)
            else:
                self.finished |= done
        return self.obs.astype(np.float32), reward, terminated, truncated, infos

    def _reward(self, previous_val_loss, val_loss):
        """-L(t) (the reference), or log L(t-1) - log L(t), whose sum over an episode is
        log L(0) - log L(T): the final loss, relative to the fresh child's, on any task's scale."""
        if self.config.reward == "log-improvement":
            return np.log(previous_val_loss) - np.log(val_loss)
        return -val_loss

    def _divergence_penalty(self, previous_val_loss):
        """Reward of the step where a child diverged: the episode ends, and the rest of it counts as
        if the validation loss stayed at max(chance level, its last finite value)."""
        worst = np.maximum(self.chance_loss, previous_val_loss)
        if self.config.reward == "log-improvement":
            return np.log(previous_val_loss) - np.log(worst)
        remaining = (self.config.num_train_steps - self.step_count) // self.config.update_freq + 1
        return -worst * remaining

    @torch.no_grad()
    def evaluate_test(self):
        """Test loss and accuracy of each current child, arrays of shape (num_envs,)."""
        loss, logits = self._evaluate(self.splits.test_x, self.splits.test_y)
        accuracy = (logits.argmax(-1) == self.splits.test_y).float().mean(1)
        return loss.cpu().numpy(), accuracy.cpu().numpy()

    def state_dict(self):
        """Everything needed to continue these episodes exactly: children, optimizer moments,
        learning rates, counters and random generators (tensors and plain values only)."""
        return {"children": self.children.state_dict(), "lr": torch.as_tensor(self.lr),
                "step_count": torch.as_tensor(self.step_count), "finished": torch.as_tensor(self.finished),
                "obs": torch.as_tensor(self.obs), "prev_logits": self.prev_logits,
                "episode_return": torch.as_tensor(self.episode_return), "lr_range": torch.as_tensor(self.lr_range),
                "initial_lr": torch.as_tensor(self.initial_lr), "log_lr_sum": torch.as_tensor(self.log_lr_sum),
                "seeds": self.seeds, "env_generators": [g.get_state() for g in self.env_generators],
                "data_generators": [g.get_state() for g in self.data_generators], "orders": self.sampler.orders}

    def load_state_dict(self, state):
        self._seed(state["seeds"])
        self.children.load_state_dict(state["children"])
        for name in ("lr", "step_count", "finished", "obs", "episode_return", "lr_range", "initial_lr", "log_lr_sum"):
            setattr(self, name, state[name].numpy().copy())
        self.prev_logits.copy_(state["prev_logits"])
        for generators, states in ((self.env_generators, state["env_generators"]),
                                   (self.data_generators, state["data_generators"])):
            for generator, generator_state in zip(generators, states):
                generator.set_state(generator_state)
        self.sampler.orders = list(state["orders"])

    # --------------------------------------------------------------------- internals

    def _reset_envs(self, mask, initial_lr=None):
        for i in np.flatnonzero(mask):
            generator = self.env_generators[i]
            child_seed = int(torch.randint(2 ** 62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(child_seed)
                child = build_model(self.config.architecture, self.splits.in_channels,
                                    self.splits.image_size, self.splits.num_classes)
            self.children.load_child(i, child)
            lr = initial_lr[i] if initial_lr is not None and initial_lr[i] > 0 else self.config.initial_lr
            if lr == 0:
                lr = RANDOM_INITIAL_LRS[int(torch.randint(len(RANDOM_INITIAL_LRS), (1,), generator=generator))]
            if self.config.lr_noise:
                lr += lr / 10 * torch.randn(1, generator=generator).item()
            self.lr[i] = self.initial_lr[i] = np.clip(lr, LR_MIN, LR_MAX)
            self.step_count[i] = 0
            self.episode_return[i] = 0
            self.log_lr_sum[i] = 0
            self.lr_range[i] = (np.inf, -np.inf)  # over the rates of the blocks trained
        self._observe(mask)

    def _train_block(self, active):
        """``update_freq`` Adam steps for the active children; returns their mean training loss (E,)."""
        steps = self.sampler.block(self.config.update_freq, active).to(self.device, non_blocking=True)
        x_all, y_all = self.splits.train_x, self.splits.train_y
        total = torch.zeros(self.num_envs, device=self.device)
        for indices in steps:
            total += self.children.train_step(to_float(x_all[indices]), y_all[indices], self.lr, active)
        return total / self.config.update_freq

    def _evaluate(self, x, y):
        logits = self.children.logits(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(self.num_envs), reduction="none")
        return loss.view(self.num_envs, -1).mean(1), logits

    def _observe(self, active, train_loss=None):
        """Validation pass and the 7 features of the active environments (one host sync).

        ``train_loss=None`` observes fresh children: no block has been trained, so the training-loss
        feature is their validation loss (a fresh child's expected training loss), and the change of
        the predictions is the predictions.
        """
        val_loss, logits = self._evaluate(self.splits.val_x, self.splits.val_y)
        mask = torch.as_tensor(active, device=self.device)
        if train_loss is None:
            train_loss = val_loss
            self.prev_logits[mask] = 0
        lr = torch.as_tensor(self.lr, dtype=torch.float32, device=self.device)
        features = observation_features(train_loss, val_loss, logits, self.prev_logits,
                                        self.children.output_weights(), lr)
        self.obs[active] = features.double().cpu().numpy()[active]
        self.prev_logits[mask] = logits[mask]

    def _info(self, i, final=False, diverged=False):
        info = {"train_loss": float(self.obs[i, 0]), "val_loss": float(self.obs[i, 1]),
                "lr": float(self.lr[i]), "step": int(self.step_count[i])}
        if final:
            info.update(final_val_loss=float(self.obs[i, 1]) if not diverged else math.inf,
                        diverged=bool(diverged), episode_return=float(self.episode_return[i]),
                        lr_min=float(self.lr_range[i, 0]), lr_max=float(self.lr_range[i, 1]),
                        initial_lr=float(self.initial_lr[i]), final_lr=float(self.lr[i]),
                        lr_geomean=float(np.exp(self.log_lr_sum[i] * self.config.update_freq / self.step_count[i])))
        return info


def run_episode(envs, next_lr, seeds, initial_lr=None):
    """Run one episode in every environment of ``envs`` (built with ``autoreset=False``).

    ``next_lr(obs, lr, step)`` returns the learning rates of the block that starts at child step
    ``step`` from the observations (E, 7) and the current rates (E,). Returns the curves recorded at each observation, arrays
    ``step`` (T,) and ``train_loss``, ``val_loss``, ``lr`` (E, T), NaN after a divergence, and per
    environment (E,) ``diverged`` and the episode's metrics ``final_val_loss``, ``best_val_loss``,
    ``test_loss``, ``test_accuracy`` of the final children, NaN for a diverged one.
    """
    obs, infos = envs.reset(seed=seeds, options={"initial_lr": initial_lr})
    curves = {key: [] for key in ("train_loss", "val_loss", "lr")}
    steps = []
    diverged = np.zeros(envs.num_envs, dtype=bool)
    while True:
        alive = ~diverged
        for key in curves:
            curves[key].append(np.where(alive, [info[key] for info in infos], np.nan))
        steps.append(max(info["step"] for info in infos))
        if steps[-1] >= envs.config.num_train_steps:
            break
        obs, _, terminated, _, infos = envs.step_lr(next_lr(obs, envs.lr.copy(), steps[-1]))
        diverged |= terminated
    test_loss, test_accuracy = envs.evaluate_test()
    result = {key: np.stack(values, axis=1) for key, values in curves.items()}
    val = np.where(diverged[:, None], np.inf, result["val_loss"])
    metrics = dict(zip(EPISODE_METRICS, (val[:, -1], val.min(1), test_loss, test_accuracy)))
    result.update({key: np.where(diverged, np.nan, value) for key, value in metrics.items()})
    result.update(step=np.array(steps), diverged=diverged)
    return result
