"""The learning-rate environment: every step trains a child network for ``update_freq`` steps.

``VecALRSEnv`` steps ``num_envs`` environments together (Gymnasium vector-env style, same-step
auto-reset); a single environment is the case ``num_envs=1``; ``TaskMixVecEnv`` composes one per
task; ``FamilyVecEnv``'s environments draw a new task from the family of random classifiers every
episode. ``run_episode`` drives one episode of every environment with a given schedule (fixed, or a
controller's) and ``run_synced`` one child per schedule on the same seed: the two episode runners.
What a controller observes and how its actions set the rate are controller.py's; the children,
and the batches they train on, are children.py's.

A diverged child is marked by ``info["diverged"]`` and NaN losses (None in JSON files).
"""
import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from children import BatchSampler, make_children, to_device
from alrs.controller import (ANCHORS, DEFAULT_ANCHOR_RANGE, FEATURES, RANDOM_INITIAL_LRS, REFERENCE_FEATURES, VAL_LOSS,
                        action_bounds, anchor_factor, apply_action, bound_to_anchor, clip_lr, observation_features,
                        select_features)
from models import build_model
from optimizers import OptimizerSpec
from tasks import OPTIMIZER_KEYS

ACTION_NOISE_STD = 1e-5  # std of the Gaussian noise on the rate after each action (the reference's)
INITIAL_LR_NOISE = 0.1  # std of the initial rate's Gaussian noise, as a fraction of it (the reference's lr/10)
EPISODE_METRICS = ("final_val_loss", "best_val_loss", "test_loss", "test_accuracy")  # what run_episode reports
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
    precision: str = "fp32"  # "bf16": autocast of the children's forward passes (opt-in, faster on GPUs)
    compile: bool = False  # torch.compile the module children (CUDA graphs on a GPU; opt-in)
    features: str = "reference"  # what the controller observes: a key of FEATURES ("relative*" are departures)
    hidden_lr_scale: float = 1.0  # > 1: the child's rate is the chosen one times an unobserved factor (a departure)
    anchor: str = "none"  # the reference's; "cosine"/"constant": actions correct a base schedule (a departure)
    anchor_range: float = DEFAULT_ANCHOR_RANGE  # an anchored rate stays within this factor of the start
    optimizer: str = "adam"  # the child's optimizer and its settings (optimizers.OptimizerSpec)
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999

    @classmethod
    def from_args(cls, args, **overrides):
        """The config of the flags in ``args`` named like its fields (the others keep their defaults)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values.update(overrides)
        return cls(**values | {key: bool(values.get(key, False)) for key in ("discrete", "compile")})

    def for_task(self, task):
        """This config for a tasks.Task: its child, batch size, horizon and optimizer."""
        return replace(self, architecture=task.architecture, batch_size=task.batch_size,
                       num_train_steps=task.num_train_steps, **{key: getattr(task, key) for key in OPTIMIZER_KEYS})

    @property
    def spaces(self):
        """The observation and action spaces of an environment with this config."""
        if self.features not in FEATURES:
            raise ValueError(f"unknown features {self.features!r}; choose from {', '.join(FEATURES)}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"unknown anchor {self.anchor!r}; choose from {', '.join(ANCHORS)}")
        action_space = (Discrete(3) if self.discrete
                        else Box(*action_bounds(self.action_param, self.action_range), (1,)))
        return Box(-np.inf, np.inf, (len(FEATURES[self.features]),)), action_space


class VecALRSEnv:
    """``num_envs`` learning-rate environments stepped together.

    Each environment trains a fresh child for ``num_train_steps`` steps per episode. ``reset``
    observes the fresh child (it trains nothing), and each ``step`` applies an action and trains
    ``update_freq`` steps, so an episode is ``num_train_steps / update_freq`` actions (100 by
    default, as in the reference) and every child step runs at a rate the controller chose. With
    ``autoreset`` a finished environment starts its next episode in the same call and its last
    observation is in ``info["final_observation"]``; without it, a finished environment stops
    training and its later outputs repeat its final ones.

    With an anchor (``config.anchor``, or one per environment in ``anchors``) the rate the actions set
    is the controlled rate ``lr``: a child trains at it times the base schedule at the block's start
    (``block_lr``), and that rate is what is observed and recorded.
    """

    def __init__(self, config, splits, seeds, device="cpu", autoreset=True, backend="auto", anchors=None):
        self.config, self.splits, self.device, self.autoreset = config, splits, torch.device(device), autoreset
        self.num_envs = len(seeds)
        self.observation_space, self.action_space = config.spaces
        self.anchors = list(anchors or [config.anchor] * self.num_envs)
        self.children = make_children(config.architecture, splits, self.num_envs, self.device, backend,
                                      config.precision, config.compile, OptimizerSpec.of(config),
                                      config.num_train_steps)
        self.chance_loss = math.log(splits.num_classes)
        self._seed(seeds)
        self.lr = np.zeros(self.num_envs)  # the controlled rate: what the actions set
        self.block_lr = np.zeros(self.num_envs)  # the rate of the last block trained (the start rate at first)
        self.step_count = np.zeros(self.num_envs, dtype=np.int64)
        self.finished = np.zeros(self.num_envs, dtype=bool)
        self.reference = np.zeros((self.num_envs, len(REFERENCE_FEATURES)))  # losses, info and reward read these
        self.obs = np.zeros((self.num_envs, self.observation_space.shape[0]))  # what the controller sees
        self.first_val_loss = np.ones(self.num_envs)  # of the episode's fresh child
        self.prev_logits = torch.zeros(self.num_envs, len(splits.val_y), splits.num_classes, device=self.device)
        self.episode_return = np.zeros(self.num_envs)
        self.lr_range = np.zeros((self.num_envs, 2))
        self.initial_lr = np.zeros(self.num_envs)
        self.lr_scale = np.ones(self.num_envs)  # the episode's hidden factor (hidden_lr_scale)
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
        lr = bound_to_anchor(lr, self.initial_lr, self.config.anchor, self.config.anchor_range)
        if self.config.lr_noise:
            lr = lr + ACTION_NOISE_STD * np.array([torch.randn(1, generator=g).item() for g in self.env_generators])
        return self.step_lr(lr)

    def step_lr(self, lr):
        """Like ``step`` but sets each child's learning rate directly (used to run fixed schedules)."""
        active = ~self.finished
        previous_obs, previous_reference = self.obs.copy(), self.reference.copy()
        self._train_and_observe(active, lr)
        diverged = active & ~(np.isfinite(self.obs).all(1) & np.isfinite(self.reference).all(1))
        reward = self._step_reward(active, diverged, previous_reference[:, VAL_LOSS])
        self.obs[diverged] = previous_obs[diverged]  # nothing non-finite leaves the environment
        self.reference[diverged] = previous_reference[diverged]
        self.episode_return += reward
        terminated = diverged
        truncated = active & ~diverged & (self.step_count >= self.config.num_train_steps)
        infos = self._end_episodes(terminated | truncated, diverged)
        return self.obs.astype(np.float32), reward, terminated, truncated, infos

    def _train_and_observe(self, active, lr):
        """One block of the active children at rates ``lr`` (clipped), then their observation."""
        self.lr = np.where(active, clip_lr(lr), self.lr)
        progress = self.step_count / self.config.num_train_steps
        base = np.array([anchor_factor(anchor, p) for anchor, p in zip(self.anchors, progress)])
        self.block_lr = np.where(active, clip_lr(self.lr * base), self.block_lr)
        train_loss = self._train_block(active)
        self.step_count[active] += self.config.update_freq
        self._observe(active, train_loss)
        self.log_lr_sum[active] += np.log(self.block_lr[active])
        self.lr_range[active] = np.stack([np.minimum(self.lr_range[:, 0], self.block_lr),
                                          np.maximum(self.lr_range[:, 1], self.block_lr)], 1)[active]

    def _step_reward(self, active, diverged, previous_val_loss):
        """The reward of every environment: 0 when inactive, the divergence penalty when diverged."""
        with np.errstate(invalid="ignore", divide="ignore"):  # a diverged child's loss is not finite
            reward = np.where(active, self._reward(previous_val_loss, self.reference[:, VAL_LOSS]), 0.0)
        return np.where(diverged, self._divergence_penalty(previous_val_loss), reward)

    def _end_episodes(self, done, diverged):
        """Infos of every environment; ended episodes carry their summary and are reset (autoreset)
        or stop training."""
        infos = [self._info(i, final=done[i], diverged=diverged[i]) for i in range(self.num_envs)]
        if done.any():
            if self.autoreset:
                for i in np.flatnonzero(done):
                    infos[i]["final_observation"] = self.obs[i].astype(np.float32)
                self._reset_envs(done)
            else:
                self.finished |= done
        return infos

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
                "block_lr": torch.as_tensor(self.block_lr),
                "step_count": torch.as_tensor(self.step_count), "finished": torch.as_tensor(self.finished),
                "obs": torch.as_tensor(self.obs), "reference": torch.as_tensor(self.reference),
                "first_val_loss": torch.as_tensor(self.first_val_loss), "prev_logits": self.prev_logits,
                "episode_return": torch.as_tensor(self.episode_return), "lr_range": torch.as_tensor(self.lr_range),
                "initial_lr": torch.as_tensor(self.initial_lr), "log_lr_sum": torch.as_tensor(self.log_lr_sum),
                "lr_scale": torch.as_tensor(self.lr_scale),
                "seeds": self.seeds, "env_generators": [g.get_state() for g in self.env_generators],
                "data_generators": [g.get_state() for g in self.data_generators], "orders": self.sampler.orders}

    def load_state_dict(self, state):
        self._seed(state["seeds"])
        self.children.load_state_dict(state["children"])
        if "reference" not in state:  # saved before the feature sets: the observation was the reference's
            state = state | {"reference": state["obs"], "first_val_loss": state["obs"][:, VAL_LOSS]}
        state = {"lr_scale": torch.ones(self.num_envs, dtype=torch.float64)} | state  # saved before the hidden scale
        state = {"block_lr": state["lr"]} | state  # saved before anchors: the rate trained at was the one set
        for name in ("lr", "block_lr", "step_count", "finished", "obs", "reference", "first_val_loss",
                     "episode_return", "lr_range", "initial_lr", "log_lr_sum", "lr_scale"):
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
                lr += INITIAL_LR_NOISE * lr * torch.randn(1, generator=generator).item()
            self.lr[i] = self.block_lr[i] = self.initial_lr[i] = clip_lr(lr)
            self.lr_scale[i] = self._draw_lr_scale(generator)
            self.step_count[i] = 0
            self.episode_return[i] = 0
            self.log_lr_sum[i] = 0
            self.lr_range[i] = (np.inf, -np.inf)  # over the rates of the blocks trained
        self._observe(mask)

    def _draw_lr_scale(self, generator):
        """The episode's hidden factor on the child's rate, log-uniform in [1/s, s] for s =
        ``hidden_lr_scale`` (1, and no draw, by default). The controller observes the rate it chose, not
        the product, so whether a rate is too high or too low shows only in how the losses respond."""
        scale = self.config.hidden_lr_scale
        if scale == 1:
            return 1.0
        return scale ** (2 * torch.rand(1, generator=generator).item() - 1)

    def _train_block(self, active):
        """``update_freq`` Adam steps for the active children; returns their mean training loss (E,)."""
        steps = to_device(self.sampler.block(self.config.update_freq, active), self.device)
        child_lr = clip_lr(self.block_lr * self.lr_scale)
        return self.children.train_block(self.splits.train_x, self.splits.train_y, steps, child_lr, active)

    def _evaluate(self, x, y):
        logits = self.children.logits(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(self.num_envs), reduction="none")
        return loss.view(self.num_envs, -1).mean(1), logits

    def _observe(self, active, train_loss=None):
        """Validation pass and the features of the active environments (the block's one host sync).

        ``train_loss=None`` observes fresh children: no block has been trained, so the training-loss
        feature is their validation loss (a fresh child's expected training loss), the change of
        the predictions is the predictions, and the validation loss is the episode's first.
        """
        fresh = train_loss is None
        val_loss, logits = self._evaluate(self.splits.val_x, self.splits.val_y)
        mask = to_device(active, self.device).view(-1, 1, 1)  # masked with torch.where: no host sync
        if fresh:
            train_loss = val_loss
            self.prev_logits.masked_fill_(mask, 0)
        lr = to_device(self.block_lr.astype(np.float32), self.device)
        features = observation_features(train_loss, val_loss, logits, self.prev_logits,
                                        self.children.output_weights(), lr)
        self.prev_logits.copy_(torch.where(mask, logits, self.prev_logits))
        reference = features.double().cpu().numpy()  # the block's one wait for the GPU
        previous_val_loss = reference[:, VAL_LOSS] if fresh else self.reference[:, VAL_LOSS]
        if fresh:
            self.first_val_loss[active] = reference[active, VAL_LOSS]
        observation = select_features(self.config.features, reference, self.first_val_loss, previous_val_loss,
                                      self.initial_lr, self.chance_loss,
                                      self.step_count / self.config.num_train_steps)
        self.reference[active], self.obs[active] = reference[active], observation[active]

    def _info(self, i, final=False, diverged=False):
        info = {"train_loss": float(self.reference[i, 0]), "val_loss": float(self.reference[i, VAL_LOSS]),
                "lr": float(self.block_lr[i]), "step": int(self.step_count[i])}
        if final:
            info.update(final_val_loss=float(self.reference[i, VAL_LOSS]) if not diverged else math.nan,
                        diverged=bool(diverged), episode_return=float(self.episode_return[i]),
                        lr_min=float(self.lr_range[i, 0]), lr_max=float(self.lr_range[i, 1]),
                        initial_lr=float(self.initial_lr[i]), final_lr=float(self.block_lr[i]),
                        lr_scale=float(self.lr_scale[i]),
                        lr_geomean=float(np.exp(self.log_lr_sum[i] * self.config.update_freq / self.step_count[i])))
        return info


class TaskMixVecEnv:
    """Environments of several tasks stepped as one vector environment, Gymnasium's API: one
    VecALRSEnv per task (each with its own children, data and episode length), task 0's environments
    first. Every environment runs its task in every episode; each info names it in ``"task"``."""

    def __init__(self, envs, task_names):
        self.envs, self.task_names = list(envs), list(task_names)
        spaces = {(env.observation_space, env.action_space) for env in self.envs}
        if len(spaces) != 1:
            raise ValueError("every task's environment must have the same observation and action spaces")
        self.observation_space, self.action_space = self.envs[0].observation_space, self.envs[0].action_space
        self.num_envs = sum(env.num_envs for env in self.envs)
        self.bounds = np.cumsum([0] + [env.num_envs for env in self.envs])

    def _split(self, array):
        return [array[start:end] for start, end in zip(self.bounds[:-1], self.bounds[1:])]

    def _join(self, results):
        """Concatenate the tasks' outputs, each (arrays..., infos), naming the task in every info."""
        *arrays, infos = zip(*results)
        for task, task_infos in enumerate(infos):
            for info in task_infos:
                info["task"] = self.task_names[task]
        return (*(np.concatenate(parts) for parts in arrays), [info for part in infos for info in part])

    @property
    def lr(self):
        return np.concatenate([env.lr for env in self.envs])

    def reset(self, seed=None, options=None):
        """Reset every task's environments; an int ``seed`` gives environment i the seed ``seed + i``, a
        list one seed per environment, as do ``options={"initial_lr": [...]}``'s rates."""
        rates = (options or {}).get("initial_lr")
        results = []
        for env, start, end in zip(self.envs, self.bounds[:-1], self.bounds[1:]):
            env_seed = None if seed is None else seed + start if np.isscalar(seed) else seed[start:end]
            env_options = None if rates is None else {"initial_lr": rates[start:end]}
            results.append(env.reset(seed=env_seed, options=env_options))
        return self._join(results)

    def step(self, actions):
        return self._join([env.step(part) for env, part in zip(self.envs, self._split(np.asarray(actions)))])

    def state_dict(self):
        return {"tasks": [env.state_dict() for env in self.envs]}

    def load_state_dict(self, state):
        for env, env_state in zip(self.envs, state.get("tasks", [state])):  # one VecALRSEnv's, before task mixes
            env.load_state_dict(env_state)


class FamilyVecEnv:
    """Environments that draw a new task from the family of random classifiers every episode
    (tasks.FamilyDraws, one per environment), Gymnasium's vector API with same-step auto-reset.

    Each environment is a one-child VecALRSEnv rebuilt at the start of every episode for its task
    (child, batch size, horizon, optimizer, data), seeded by the task's family seed; ``load_splits``
    (task -> Splits) provides the data. Infos name the instance in ``"instance"`` and its seed in
    ``"family_seed"``.
    """

    def __init__(self, config, draws, load_splits, device="cpu"):
        self.config, self.draws, self.load_splits, self.device = config, list(draws), load_splits, device
        self.num_envs = len(self.draws)
        self.observation_space, self.action_space = config.spaces
        self.envs, self.tasks, self.family_seeds = [None] * self.num_envs, [None] * self.num_envs, [0] * self.num_envs

    @property
    def lr(self):
        return np.concatenate([env.lr for env in self.envs])

    def _build(self, i, task, family_seed):
        self.tasks[i], self.family_seeds[i] = task, family_seed
        self.envs[i] = VecALRSEnv(self.config.for_task(task), self.load_splits(task), [family_seed], self.device,
                                  autoreset=False)

    def _start(self, i, initial_lr=None):
        """Environment i's next episode: a newly drawn task, reset; its (obs, info)."""
        task, family_seed = self.draws[i].next()
        self._build(i, task, family_seed)
        obs, infos = self.envs[i].reset(options={"initial_lr": None if initial_lr is None else [initial_lr]})
        return obs[0], self._named(i, infos[0])

    def _named(self, i, info):
        return info | {"instance": self.tasks[i].name, "family_seed": self.family_seeds[i]}

    def reset(self, seed=None, options=None):
        """A new task in every environment (``seed``: ignored, the draws are seeded when built);
        ``options={"initial_lr": [...]}`` as VecALRSEnv's."""
        rates = (options or {}).get("initial_lr")
        results = [self._start(i, None if rates is None else rates[i]) for i in range(self.num_envs)]
        return np.stack([obs for obs, _ in results]), [info for _, info in results]

    def step(self, actions):
        actions = np.asarray(actions)
        results = []
        for i, env in enumerate(self.envs):
            obs, reward, terminated, truncated, infos = (part[0] for part in env.step(actions[i:i + 1]))
            info = self._named(i, infos)
            if terminated or truncated:  # same-step auto-reset: the next episode, on a newly drawn task
                info["final_observation"] = obs
                obs, _ = self._start(i)
            results.append((obs, reward, terminated, truncated, info))
        obs, rewards, terminated, truncated, infos = zip(*results)
        return np.stack(obs), np.array(rewards), np.array(terminated), np.array(truncated), list(infos)

    def state_dict(self):
        return {"family_seeds": list(self.family_seeds), "draws": [d.state_dict() for d in self.draws],
                "envs": [env.state_dict() for env in self.envs]}

    def load_state_dict(self, state):
        for i, (draws, family_seed, env_state) in enumerate(zip(self.draws, state["family_seeds"], state["envs"])):
            draws.load_state_dict(state["draws"][i])
            self._build(i, draws.task(family_seed), family_seed)
            self.envs[i].load_state_dict(env_state)


def run_episode(envs, next_lr, seeds, initial_lr=None, on_block=None):
    """Run one episode in every environment of ``envs`` (built with ``autoreset=False``).

    ``next_lr(obs, lr, step)`` returns the learning rates of the block that starts at child step
    ``step`` from the raw observations (E, features) and the current rates (E,). Returns the curves
    recorded at each observation, arrays ``step`` (T,) and ``train_loss``, ``val_loss``, ``lr`` (E, T),
    NaN after a divergence, and per environment (E,) ``diverged`` and the episode's metrics
    ``final_val_loss``, ``best_val_loss``, ``test_loss``, ``test_accuracy`` of the final children, NaN
    for a diverged one. ``on_block(steps)``, if given, is called after each block with the child steps
    it trained (for a progress bar).
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
        if on_block:
            on_block(envs.config.update_freq)
    test_loss, test_accuracy = envs.evaluate_test()
    result = {key: np.stack(values, axis=1) for key, values in curves.items()}
    val = np.where(diverged[:, None], np.inf, result["val_loss"])
    metrics = dict(zip(EPISODE_METRICS, (val[:, -1], val.min(1), test_loss, test_accuracy)))
    result.update({key: np.where(diverged, np.nan, value) for key, value in metrics.items()})
    result.update(step=np.array(steps), diverged=diverged)
    return result


def stack(schedules):
    """``next_lr`` for run_episode: child i follows ``schedules[i]``."""
    def next_lr(obs, lr, step):
        return np.array([s.next_lr(obs[i], lr[i], step) for i, s in enumerate(schedules)])
    return next_lr


def run_synced(schedules, config, splits, seed, device, on_block=None):
    """One episode of one child per schedule, every child from the same initialization and batches of
    ``seed`` (torch's global RNG seeded too, so a controller's sampled actions are reproducible), an
anchored controller's child on its base schedule;
    run_episode's results, child i following ``schedules[i]`` (``on_block``: run_episode's)."""
    torch.manual_seed(seed)
    envs = VecALRSEnv(config, splits, [seed] * len(schedules), device, autoreset=False,
                      anchors=[getattr(s, "anchor", "none") for s in schedules])
    return run_episode(envs, stack(schedules), [seed] * len(schedules), [s.initial_lr for s in schedules], on_block)
