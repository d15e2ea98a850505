"""PPO controller with the algorithm and defaults of stable-baselines PPO2, in plain PyTorch.

Pieces: the policy (``ActorCritic``, separate 32-32 actor and critic MLPs) and ``VecNormalizer``
(VecNormalize's observation and reward scaling) come from the alrs package, which a trained
controller runs with; here are ``NormalizedVecEnv`` (the wrapper that applies the normalizer to an
environment), ``collect_rollout``, ``RolloutBuffer`` with GAE and ``ppo_update`` (clipped surrogate, clipped value loss,
entropy bonus, gradient clipping). The controller it trains, and its checkpoint, are
alrs/controller.py's.
"""
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import nn

from alrs.policy import DEFAULT_CLIP

GAE_LAMBDA = 0.95
VALUE_COEF = 0.5
MAX_GRAD_NORM = 0.5
ADVANTAGE_EPSILON = 1e-8  # PPO2's, under the minibatch's advantage std
ADAM_EPSILON = 1e-5  # PPO2's Adam epsilon


class NormalizedVecEnv:
    """A vectorized environment seen through a VecNormalizer, as SB3's VecNormalize wraps one:
    ``reset`` and ``step`` return normalized observations and rewards (updating the statistics while
    ``normalizer.training``); infos, flags and ``final_observation`` stay raw."""

    def __init__(self, venv, normalizer):
        self.venv, self.normalizer = venv, normalizer
        self.num_envs = venv.num_envs

    def reset(self, **kwargs):
        obs, infos = self.venv.reset(**kwargs)
        return self.normalizer.observation(obs), infos

    def step(self, actions):
        obs, reward, terminated, truncated, infos = self.venv.step(actions)
        return (self.normalizer.observation(obs), self.normalizer.reward(reward, terminated | truncated),
                terminated, truncated, infos)


def collect_rollout(envs, agent, buffer, obs, done, on_step=None):
    """Fill ``buffer`` with one rollout of the current policy in ``envs`` (a NormalizedVecEnv).

    ``obs`` are normalized, ``done[i]`` says whether ``obs[i]`` starts an episode. Returns the next
    (obs, done) and (step, env, info) of every episode that ended; ``on_step(infos)`` is called
    after each step with the final infos of the episodes that ended in it.
    """
    ended = []
    for step in range(buffer.num_steps):
        action, log_prob, value = agent.act(torch.as_tensor(obs))
        next_obs, reward, terminated, truncated, infos = envs.step(action.numpy())
        buffer.add(obs, action, log_prob, value, reward, done)
        obs, done = next_obs, terminated | truncated
        ended_now = [(step, int(i), infos[i]) for i in np.flatnonzero(done)]
        ended += ended_now
        if on_step:
            on_step([info for _, _, info in ended_now])
    return obs, done, ended


def compute_gae(rewards, values, dones, last_value, last_done, gamma, lam=GAE_LAMBDA):
    """Generalized advantage estimates and returns for (T, E) rollouts.

    ``dones[t]`` marks that the observation at t starts a new episode (PPO2's convention): the
    bootstrap from t+1 is cut when ``dones[t+1]`` (or ``last_done`` after the last step) is set.
    """
    num_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(last_value)
    for t in reversed(range(num_steps)):
        next_nonterminal = 1.0 - (last_done if t == num_steps - 1 else dones[t + 1])
        next_value = last_value if t == num_steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_value * next_nonterminal - values[t]
        last_gae = delta + gamma * lam * next_nonterminal * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


class RolloutBuffer:
    """``num_steps`` x ``num_envs`` transitions: observations, actions, log-probs, values, rewards,
    and whether each observation started an episode."""

    def __init__(self, num_steps, num_envs, obs_dim, action_shape):
        self.obs = torch.zeros(num_steps, num_envs, obs_dim)
        self.actions = torch.zeros((num_steps, num_envs) + action_shape)
        self.log_probs = torch.zeros(num_steps, num_envs)
        self.values = torch.zeros(num_steps, num_envs)
        self.rewards = torch.zeros(num_steps, num_envs)
        self.dones = torch.zeros(num_steps, num_envs)
        self.num_steps, self.step = num_steps, 0

    def add(self, obs, action, log_prob, value, reward, done):
        for store, item in ((self.obs, obs), (self.actions, action), (self.log_probs, log_prob),
                            (self.values, value), (self.rewards, reward), (self.dones, done)):
            store[self.step] = torch.as_tensor(item, dtype=torch.float32)
        self.step += 1

    def batch(self, last_value, last_done, gamma):
        """The flattened rollout with GAE advantages and returns, ready for ``ppo_update``."""
        advantages, returns = compute_gae(self.rewards, self.values, self.dones,
                                          last_value, torch.as_tensor(last_done, dtype=torch.float32), gamma)
        self.step = 0
        flat = lambda t: t.flatten(0, 1)
        return {"obs": flat(self.obs), "actions": flat(self.actions), "log_probs": flat(self.log_probs),
                "values": flat(self.values), "advantages": flat(advantages), "returns": flat(returns)}


def setting(default, flag=None, help=""):
    """A PPOConfig field: its default, the train.py flag that sets it (its argparse dest, the
    reference's name; None: not a flag) and what it means (the flag's help)."""
    return field(default=default, metadata={"flag": flag, "help": help})


@dataclass(frozen=True)
class PPOConfig:
    """PPO2's hyperparameters with the reference's defaults, each default here only: flags.py builds
    train.py's PPO flags from these fields (``--ppo2-noptepochs`` sets ``num_epochs``), and
    ``from_args`` reads them back."""
    gamma: float = setting(1.0, "ppo2_gamma", "discount factor")
    rollout_steps: int = setting(100, "ppo2_update_freq", "rollout length per environment")
    ent_coef: float = setting(0.1, "ppo2_ent_coef", "entropy coefficient")
    learning_rate: float = setting(3e-3, "ppo2_lr", "controller Adam learning rate")
    total_timesteps: int = setting(50000, "ppo2_total_timesteps", "controller steps over all envs")
    num_minibatches: int = setting(4, "ppo2_nminibatches", "minibatches per PPO epoch")
    num_epochs: int = setting(4, "ppo2_noptepochs", "PPO epochs per rollout")
    clip_range: float = setting(10.0, "ppo2_cliprange", "PPO clip range (<= 0: no clipping), also the "
                                "observation/reward clip unless --norm-clip")
    norm_obs: bool = setting(True, "ppo2_norm_obs", "normalize observations")
    norm_reward: bool = setting(True, "ppo2_norm_reward", "normalize rewards")
    norm_clip: float | None = setting(None, "norm_clip", "clip of normalized observations and rewards "
                                      "(default: --ppo2-cliprange if > 0, else 10)")
    vf_coef: float = setting(VALUE_COEF, help="value loss coefficient")
    max_grad_norm: float = setting(MAX_GRAD_NORM, help="gradient norm clip")

    @classmethod
    def from_args(cls, args):
        """The config of train.py's parsed flags (fields without a flag keep their defaults)."""
        flagged = [f for f in fields(cls) if f.metadata["flag"]]
        return cls(**{f.name: f.type(getattr(args, f.metadata["flag"])) if f.type in (bool, int, float)
                      else getattr(args, f.metadata["flag"]) for f in flagged})

    @property
    def normalizer_clip(self):
        """Where normalized observations and rewards are clipped: --norm-clip, else the PPO clip range
        (the reference's one ``cliprange`` for both), else DEFAULT_CLIP when PPO does not clip."""
        return self.norm_clip or (self.clip_range if self.clip_range > 0 else DEFAULT_CLIP)


def ppo_loss(agent, minibatch, config):
    """PPO2's loss on one minibatch: clipped surrogate + vf_coef * clipped value loss - ent_coef *
    entropy, with advantages normalized within the minibatch. Returns (loss, statistics).

    A clip range <= 0 means no clipping (as the reference documents it): the plain policy-gradient
    surrogate and an unclipped value loss."""
    dist = agent.distribution(minibatch["obs"])
    log_prob, entropy = agent.log_prob_entropy(dist, minibatch["actions"])
    advantages = minibatch["advantages"]
    advantages = (advantages - advantages.mean()) / (advantages.std(correction=0) + ADVANTAGE_EPSILON)  # numpy std
    log_ratio = log_prob - minibatch["log_probs"]
    ratio = log_ratio.exp()
    clip = config.clip_range if config.clip_range > 0 else float("inf")
    policy_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)).mean()

    value = agent.value(minibatch["obs"])
    old_value = minibatch["values"]
    value_clipped = old_value + (value - old_value).clamp(-clip, clip)
    value_loss = 0.5 * torch.max((value - minibatch["returns"]) ** 2,
                                 (value_clipped - minibatch["returns"]) ** 2).mean()
    entropy = entropy.mean()
    loss = policy_loss - config.ent_coef * entropy + config.vf_coef * value_loss
    with torch.no_grad():
        stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item(),
                 "approx_kl": ((ratio - 1) - log_ratio).mean().item(),
                 "clip_fraction": ((ratio - 1).abs() > clip).float().mean().item()}
    return loss, stats


@torch.no_grad()
def policy_statistics(agent, obs, actions, action_low=None, action_high=None):
    """What the policy did in a rollout: for a Gaussian policy the mean (over the rollout's
    observations) of its mean, its std, and the fractions of sampled actions below ``action_low``,
    above ``action_high`` and inside (where the environment's clipping does not flatten them);
    for a categorical one the frequency of each action."""
    if agent.discrete:
        counts = torch.bincount(actions.long().flatten(), minlength=agent.actor[-1].out_features)
        return {f"action_{a}_frequency": (c / counts.sum()).item() for a, c in enumerate(counts)}
    below, above = (actions < action_low).float().mean().item(), (actions > action_high).float().mean().item()
    return {"policy_mean": agent.actor(obs).mean().item(), "policy_std": agent.log_std.exp().mean().item(),
            "action_below": below, "action_above": above, "action_inside": 1 - below - above}


def gradient_step(agent, optimizer, loss, max_grad_norm, reduce_gradients=None):
    """One optimizer step with the gradient norm clipped; ``reduce_gradients(parameters)`` first (under
    torchrun, train.py's average over the ranks: DD-PPO), so every rank's controller stays the same."""
    optimizer.zero_grad()
    loss.backward()
    if reduce_gradients is not None:
        reduce_gradients(agent.parameters())
    nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
    optimizer.step()


def explained_variance(predicted, target):
    """1 - Var[target - predicted] / Var[target]: 1 is a perfect critic, 0 no better than a constant."""
    var = target.var()
    return float("nan") if var == 0 else (1 - (target - predicted).var() / var).item()


def ppo_update(agent, optimizer, batch, config, generator=None, reduce_gradients=None):
    """``num_epochs`` passes of shuffled minibatches over a rollout batch; mean statistics.
    ``reduce_gradients``: gradient_step's."""
    size = batch["obs"].shape[0]
    minibatch_size = size // config.num_minibatches
    history = []
    for _ in range(config.num_epochs):
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, minibatch_size):
            index = order[start:start + minibatch_size]
            loss, stats = ppo_loss(agent, {k: v[index] for k, v in batch.items()}, config)
            gradient_step(agent, optimizer, loss, config.max_grad_norm, reduce_gradients)
            history.append(stats)
    means = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
    means["explained_variance"] = explained_variance(batch["values"], batch["returns"])
    return means
