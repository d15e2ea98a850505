"""The controller's policy network and its observation normalizer, as stable-baselines PPO2 has them:
``ActorCritic`` (separate 32-32 actor and critic MLPs, orthogonal init), ``RunningMeanStd`` and
``VecNormalizer`` (VecNormalize's observation and reward scaling). Training them is ppo.py's.
"""
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Normal

HIDDEN = 32
NORM_EPSILON = 1e-8  # VecNormalize's, under the variance
REFERENCE_OBS_DIM = 7  # the reference's observation (controller.REFERENCE_FEATURES)
DEFAULT_CLIP = 10.0


def layer(in_features, out_features, gain):
    """A linear layer with orthogonal weights of the given gain and zero bias (as PPO2 initializes)."""
    linear = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear


def mlp(in_features, out_features, out_gain):
    return nn.Sequential(layer(in_features, HIDDEN, np.sqrt(2)), nn.ReLU(),
                         layer(HIDDEN, HIDDEN, np.sqrt(2)), nn.ReLU(),
                         layer(HIDDEN, out_features, out_gain))


class ActorCritic(nn.Module):
    """Separate actor and critic networks; a categorical policy over 3 actions, or a diagonal
    Gaussian with a state-independent log standard deviation for continuous actions."""

    def __init__(self, obs_dim=REFERENCE_OBS_DIM, discrete=False, num_actions=3, action_dim=1):
        super().__init__()
        self.discrete = discrete
        self.actor = mlp(obs_dim, num_actions if discrete else action_dim, 0.01)
        self.critic = mlp(obs_dim, 1, 1.0)
        if not discrete:
            self.log_std = nn.Parameter(torch.zeros(action_dim))

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    def distribution(self, obs):
        out = self.actor(obs)
        if self.discrete:
            return Categorical(logits=out)
        return Normal(out, self.log_std.exp().expand_as(out))

    def log_prob_entropy(self, dist, action):
        """Log-probability and entropy per sample (summed over action dimensions if continuous)."""
        if self.discrete:
            return dist.log_prob(action.long()), dist.entropy()
        return dist.log_prob(action).sum(-1), dist.entropy().sum(-1)

    def choose(self, dist, deterministic):
        """The distribution's mode, or a sample from it (torch's global RNG); continuous actions unclipped."""
        if deterministic:
            return dist.probs.argmax(-1) if self.discrete else dist.mean
        return dist.sample()

    @torch.no_grad()
    def act(self, obs, deterministic=False):
        """Action, its log-probability and the state value (what a rollout stores)."""
        dist = self.distribution(obs)
        action = self.choose(dist, deterministic)
        log_prob, _ = self.log_prob_entropy(dist, action)
        return action, log_prob, self.value(obs)

    @torch.no_grad()
    def action(self, obs, deterministic=False):
        """The action alone, as ``act`` chooses it (the same sample for the same RNG state): what a trained
        controller needs, without the critic's forward pass."""
        return self.choose(self.distribution(obs), deterministic)


def local_moments(mean, var, count):
    """A batch's moments as they are: one process's samples are all the samples."""
    return mean, var, count


class RunningMeanStd:
    """Running mean and variance over batches (Chan et al.'s parallel update), as in VecNormalize.

    ``merge(mean, var, count)`` turns one process's batch moments into those of every process's
    batches (train.py passes distributed.merge_moments under torchrun), so PPO knows no process group."""

    def __init__(self, shape=(), merge=local_moments):
        self.merge = merge
        self.mean = np.zeros(shape)
        self.var = np.ones(shape)
        self.count = 1e-4

    def update(self, batch):
        """Add a batch (with a merge over the ranks: every rank's batch, so every rank holds the same statistics)."""
        batch = np.asarray(batch, dtype=np.float64)
        batch_mean, batch_var, batch_count = self.merge(batch.mean(0), batch.var(0), batch.shape[0])
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta ** 2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self):
        return {"mean": torch.as_tensor(self.mean), "var": torch.as_tensor(self.var), "count": float(self.count)}

    def load_state_dict(self, state):
        self.mean, self.var, self.count = state["mean"].numpy(), state["var"].numpy(), state["count"]


class VecNormalizer:
    """VecNormalize: observations standardized by their running statistics, rewards divided by the
    running std of the discounted return; both clipped to +-clip. Frozen (``training=False``) at test."""

    def __init__(self, obs_dim, num_envs, norm_obs=True, norm_reward=True, gamma=1.0, clip=DEFAULT_CLIP,
                 merge=local_moments):
        self.obs_rms, self.ret_rms = RunningMeanStd((obs_dim,), merge), RunningMeanStd((), merge)
        self.norm_obs, self.norm_reward, self.gamma, self.clip = norm_obs, norm_reward, gamma, clip
        self.returns = np.zeros(num_envs)
        self.training = True

    def observation(self, obs):
        if not self.norm_obs:
            return np.asarray(obs, dtype=np.float32)
        if self.training:
            self.obs_rms.update(obs)
        return np.clip(self.standardize(obs), -self.clip, self.clip).astype(np.float32)

    def standardize(self, obs):
        """Observations in units of the running standard deviation from the running mean, unclipped
        (the raw observations when observations are not normalized)."""
        if not self.norm_obs:
            return np.asarray(obs, dtype=np.float64)
        return (obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + NORM_EPSILON)

    def reward(self, reward, done):
        if not self.norm_reward:
            return np.asarray(reward, dtype=np.float32)
        if self.training:
            self.returns = self.returns * self.gamma + reward
            self.ret_rms.update(self.returns)
            self.returns[np.asarray(done, dtype=bool)] = 0
        scaled = reward / np.sqrt(self.ret_rms.var + NORM_EPSILON)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self):
        return {"obs_rms": self.obs_rms.state_dict(), "ret_rms": self.ret_rms.state_dict(),
                "returns": torch.as_tensor(self.returns)}

    def load_state_dict(self, state):
        self.obs_rms.load_state_dict(state["obs_rms"])
        self.ret_rms.load_state_dict(state["ret_rms"])
        self.returns = state["returns"].numpy().copy()
