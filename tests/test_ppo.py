"""PPO controller (ppo.py) against hand-computed values and a synthetic task it must learn."""
import math
from dataclasses import fields

import numpy as np
import pytest
import torch
from torch import nn

import flags
import ppo
from alrs.policy import DEFAULT_CLIP, ActorCritic, RunningMeanStd, VecNormalizer
from ppo import NormalizedVecEnv, PPOConfig, RolloutBuffer, compute_gae, explained_variance, gradient_step, policy_statistics, ppo_loss, ppo_update

# ----------------------------------------------------------------------------- GAE

# T=3 steps, E=2 envs. dones[t][e] = 1: observation t of env e starts a new episode (PPO2).
# env 0 never ends (bootstraps from last_value 1.0); env 1's episode ends after t=0 (dones[1]) and
# after t=2 (last_done), so its last_value 5.0 must not be used. dones[0] only concerns the step before.
REWARDS = [[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]]
VALUES = [[0.5, 0.0], [0.5, 0.0], [0.5, 0.0]]
DONES = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
LAST_VALUE, LAST_DONE = [1.0, 5.0], [0.0, 1.0]
# by hand, delta_t = r_t + gamma * V_{t+1} * (1 - done_{t+1}) - V_t,
#          A_t = delta_t + gamma * lam * (1 - done_{t+1}) * A_{t+1}
# gamma 0.99, lam 0.95 (gamma * lam = 0.9405):
#   env 0: delta = (1 + 0.495 - 0.5, 2 + 0.495 - 0.5, 3 + 0.99 - 0.5) = (0.995, 1.995, 3.49)
#          A_2 = 3.49, A_1 = 1.995 + 0.9405 * 3.49 = 5.277345, A_0 = 0.995 + 0.9405 * 5.277345 = 5.958342973
#   env 1: A_2 = 1 (cut), A_1 = 1 + 0.9405 * 1 = 1.9405, A_0 = 1 (cut)
# gamma 1: env 0: delta = (1, 2, 3.5), A = (1 + 0.95 * 5.325, 2 + 0.95 * 3.5, 3.5) = (6.05875, 5.325, 3.5)
#          env 1: A = (1, 1.95, 1)
EXPECTED_ADVANTAGES = {
    0.99: [[5.958342973, 1.0], [5.277345, 1.9405], [3.49, 1.0]],
    1.0: [[6.05875, 1.0], [5.325, 1.95], [3.5, 1.0]],
}


def t(values):
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("gamma", [0.99, 1.0])
def test_compute_gae_by_hand(gamma):
    advantages, returns = compute_gae(t(REWARDS), t(VALUES), t(DONES), t(LAST_VALUE), t(LAST_DONE), gamma, 0.95)
    torch.testing.assert_close(advantages, t(EXPECTED_ADVANTAGES[gamma]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(returns, t(EXPECTED_ADVANTAGES[gamma]) + t(VALUES), rtol=1e-6, atol=1e-6)


def test_compute_gae_lambda_one_gamma_one_is_the_episode_return_minus_value():
    advantages, returns = compute_gae(t(REWARDS), t(VALUES), t(DONES), t(LAST_VALUE), t(LAST_DONE), 1.0, 1.0)
    # env 0: reward-to-go plus the bootstrap 1.0; env 1: one-step episodes [1] and [1, 1]
    torch.testing.assert_close(returns, t([[7.0, 1.0], [6.0, 2.0], [4.0, 1.0]]))


def test_rollout_buffer_flattens_time_major():
    buffer = RolloutBuffer(3, 2, 7, ())
    for step in range(3):
        buffer.add(torch.full((2, 7), float(step)), torch.tensor([step, 2 - step]), torch.zeros(2),
                   t(VALUES[step]), t(REWARDS[step]), np.array(DONES[step], dtype=bool))
    batch = buffer.batch(t(LAST_VALUE), np.array(LAST_DONE, dtype=bool), 0.99)
    assert buffer.step == 0
    torch.testing.assert_close(batch["advantages"], t(EXPECTED_ADVANTAGES[0.99]).flatten(), rtol=1e-6, atol=1e-6)
    assert batch["actions"].tolist() == [0, 2, 1, 1, 2, 0]
    assert batch["obs"][:, 0].tolist() == [0, 0, 1, 1, 2, 2] and batch["obs"].shape == (6, 7)


# ----------------------------------------------------------------------------- PPO loss

CLIP = 0.2


def minibatch(agent, discrete, n=12, seed=0):
    """Old log-probs and values offset from the agent's so that both clippings are exercised."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 7, generator=g)
    actions = torch.randint(0, 3, (n,), generator=g).float() if discrete else torch.randn(n, 1, generator=g)
    with torch.no_grad():
        log_prob, _ = agent.log_prob_entropy(agent.distribution(obs), actions)
        value = agent.value(obs)
    shift = torch.linspace(-0.5, 0.5, n)[torch.randperm(n, generator=g)]  # ratios exp(-0.5) .. exp(0.5)
    return {"obs": obs, "actions": actions, "log_probs": log_prob + shift,
            "values": value + torch.linspace(-0.6, 0.6, n), "returns": torch.randn(n, generator=g),
            "advantages": torch.randn(n, generator=g) * 2 + 0.3}


def manual_loss(agent, batch, clip, ent_coef, vf_coef):
    """PPO2's loss in numpy (advantages normalized with numpy's population std, as PPO2 does)."""
    with torch.no_grad():
        out = agent.actor(batch["obs"]).double().numpy()
        value = agent.critic(batch["obs"]).squeeze(-1).double().numpy()
    actions = batch["actions"].double().numpy()
    if agent.discrete:
        log_p = out - np.log(np.exp(out).sum(1, keepdims=True))
        new_log_prob = log_p[np.arange(len(out)), actions.astype(int)]
        entropy = -(np.exp(log_p) * log_p).sum(1)
    else:
        log_std = agent.log_std.detach().double().numpy()
        std = np.exp(log_std)
        new_log_prob = (-0.5 * ((actions - out) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(1)
        entropy = np.full(len(out), (0.5 + 0.5 * np.log(2 * np.pi) + log_std).sum())
    adv = batch["advantages"].double().numpy()
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ratio = np.exp(new_log_prob - batch["log_probs"].double().numpy())
    policy_loss = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - clip, 1 + clip)).mean()
    old_value, returns = batch["values"].double().numpy(), batch["returns"].double().numpy()
    clipped = old_value + np.clip(value - old_value, -clip, clip)
    value_loss = 0.5 * np.maximum((value - returns) ** 2, (clipped - returns) ** 2).mean()
    return {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy.mean(),
            "loss": policy_loss - ent_coef * entropy.mean() + vf_coef * value_loss,
            "clip_fraction": np.mean(np.abs(ratio - 1) > clip),
            "approx_kl": np.mean((ratio - 1) - np.log(ratio)), "ratio": ratio}


def agent_and_batch(discrete, seed=0):
    torch.manual_seed(seed)
    agent = ActorCritic(discrete=discrete)
    with torch.no_grad():  # away from the near-uniform initial policy
        for param in agent.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return agent, minibatch(agent, discrete, seed=seed)


@pytest.mark.parametrize("discrete", [True, False])
def test_ppo_loss_matches_a_numpy_computation(discrete):
    agent, batch = agent_and_batch(discrete)
    loss, stats = ppo_loss(agent, batch, PPOConfig(clip_range=CLIP, ent_coef=0.1, vf_coef=0.5))
    expected = manual_loss(agent, batch, CLIP, 0.1, 0.5)
    assert 0 < expected["clip_fraction"] < 1  # the example clips some ratios, not all
    for key in ("policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl"):
        # float32 against float64: the policy loss is a mean of terms ~1 that nearly cancel
        assert stats[key] == pytest.approx(expected[key], rel=1e-5, abs=2e-6), key
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-5, abs=2e-6)


@pytest.mark.parametrize("discrete", [True, False])
def test_value_loss_is_clipped(discrete):
    agent, batch = agent_and_batch(discrete)
    with torch.no_grad():
        value = agent.value(batch["obs"])
    unclipped = 0.5 * ((value - batch["returns"]) ** 2).mean().item()
    stats = ppo_loss(agent, batch, PPOConfig(clip_range=CLIP))[1]
    assert stats["value_loss"] > unclipped  # the old values sit up to 0.6 away, beyond the 0.2 clip
    assert ppo_loss(agent, batch, PPOConfig(clip_range=10.0))[1]["value_loss"] == pytest.approx(unclipped, rel=1e-6)


@pytest.mark.parametrize("clip_range", [0.0, -1.0])
def test_clip_range_zero_or_below_means_no_clipping(clip_range):
    agent, batch = agent_and_batch(False)
    loss, stats = ppo_loss(agent, batch, PPOConfig(clip_range=clip_range, ent_coef=0.1, vf_coef=0.5))
    expected = manual_loss(agent, batch, np.inf, 0.1, 0.5)  # the plain surrogate and value loss
    assert stats["clip_fraction"] == 0 and np.isfinite(loss.item())
    for key in ("policy_loss", "value_loss"):
        assert stats[key] == pytest.approx(expected[key], rel=1e-5, abs=2e-6), key
    assert stats["policy_loss"] != pytest.approx(manual_loss(agent, batch, CLIP, 0.1, 0.5)["policy_loss"], rel=1e-3)


def test_policy_statistics_of_a_rollout():
    agent = ActorCritic(discrete=False)
    with torch.no_grad():
        agent.log_std.fill_(math.log(0.5))
    obs = torch.randn(8, 7)
    actions = torch.tensor([[-2.0], [-1.0], [-0.5], [0.0], [0.5], [1.0], [1.5], [3.0]])
    stats = policy_statistics(agent, obs, actions, -1.0, 1.0)
    assert stats["action_below"] == 1 / 8 and stats["action_above"] == 2 / 8 and stats["action_inside"] == 5 / 8
    assert stats["policy_std"] == pytest.approx(0.5)
    assert stats["policy_mean"] == pytest.approx(agent.actor(obs).mean().item())
    discrete = policy_statistics(ActorCritic(discrete=True), obs, torch.tensor([0, 2, 2, 1, 2, 0, 2, 2.0]))
    assert discrete == pytest.approx({"action_0_frequency": 2 / 8, "action_1_frequency": 1 / 8,
                                      "action_2_frequency": 5 / 8})


class FixedPolicy(nn.Module):
    """Stand-in agent whose per-sample log-probabilities are free parameters (no entropy, value 0)."""

    def __init__(self, log_prob):
        super().__init__()
        self.log_prob = nn.Parameter(log_prob.clone())
        self.discrete = True

    def distribution(self, obs):
        return None

    def log_prob_entropy(self, dist, action):
        return self.log_prob, torch.zeros_like(self.log_prob)

    def value(self, obs):
        return torch.zeros(len(obs))


def test_clipped_surrogate_stops_the_gradient_only_where_ppo_clips():
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 0.9])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])  # mean 0: normalization keeps signs
    agent = FixedPolicy(ratios.log())
    batch = {"obs": torch.zeros(6, 7), "actions": torch.zeros(6), "log_probs": torch.zeros(6),
             "values": torch.zeros(6), "returns": torch.zeros(6), "advantages": advantages}
    loss, stats = ppo_loss(agent, batch, PPOConfig(clip_range=CLIP, ent_coef=0.0, vf_coef=0.0))
    loss.backward()
    grad = agent.log_prob.grad
    # clipped: ratio above 1 + clip with a positive advantage, below 1 - clip with a negative one
    assert grad[0] == 0 and grad[3] == 0
    # pessimistic bound keeps the gradient of the other samples: it pushes log-prob up where A > 0
    assert (grad[[2, 4]] < 0).all() and (grad[[1, 5]] > 0).all()
    assert stats["clip_fraction"] == pytest.approx(4 / 6)
    torch.testing.assert_close(grad[[1, 2, 4, 5]].abs() / ratios[[1, 2, 4, 5]],
                               torch.full((4,), grad[4].abs().item() / 1.1))


def test_gradient_step_clips_the_gradient_norm():
    torch.manual_seed(0)
    agent = ActorCritic(discrete=True)
    before = torch.cat([p.detach().flatten() for p in agent.parameters()])
    optimizer = torch.optim.SGD(agent.parameters(), lr=1.0)
    obs = torch.randn(16, 7)
    loss = 1000 * (agent.actor(obs).sum() + agent.value(obs).sum())
    gradient_step(agent, optimizer, loss, 0.5)
    after = torch.cat([p.detach().flatten() for p in agent.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.5, rel=1e-4)


def test_explained_variance():
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(target, target) == 1.0
    assert explained_variance(torch.full((4,), 2.5), target) == pytest.approx(0.0, abs=1e-7)
    # 1 - var([0, 0, 0, -1]) / var([1, 2, 3, 4]) = 1 - 0.1875 / 1.25
    assert explained_variance(torch.tensor([1.0, 2.0, 3.0, 5.0]), target) == pytest.approx(0.85, rel=1e-6)
    assert math.isnan(explained_variance(target, torch.ones(4)))


# ----------------------------------------------------------------------------- normalization


def batches(shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(loc, scale, (n,) + shape) for n, loc, scale in ((5, 3.0, 1.0), (17, -1.0, 4.0),
                                                                       (2, 10.0, 0.5), (40, 0.0, 2.0))]


@pytest.mark.parametrize("shape", [(), (3,)])
def test_running_mean_std_equals_numpy_over_all_batches(shape):
    rms = RunningMeanStd(shape)
    data = batches(shape)
    for batch in data:
        rms.update(batch)
    everything = np.concatenate(data)
    np.testing.assert_allclose(rms.mean, everything.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rms.var, everything.var(0), rtol=1e-4, atol=1e-4)
    assert rms.count == pytest.approx(len(everything) + 1e-4)
    restored = RunningMeanStd(shape)
    restored.load_state_dict(rms.state_dict())
    np.testing.assert_array_equal(restored.mean, rms.mean)
    np.testing.assert_array_equal(restored.var, rms.var)


def test_observation_normalization():
    normalizer = VecNormalizer(7, 4)
    rng = np.random.default_rng(1)
    seen = []
    for scale in (1.0, 5.0, 0.5, 2.0):
        obs = rng.normal(2.0, scale, (4, 7)) * np.arange(1, 8)
        seen.append(obs)
        everything = np.concatenate(seen)
        out = normalizer.observation(obs)
        expected = (obs - everything.mean(0)) / np.sqrt(everything.var(0) + 1e-8)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, np.clip(expected, -10, 10), rtol=1e-3, atol=1e-3)


def snapshot(normalizer):
    return [np.copy(x) for x in (normalizer.obs_rms.mean, normalizer.obs_rms.var, normalizer.obs_rms.count,
                                 normalizer.ret_rms.mean, normalizer.ret_rms.var, normalizer.ret_rms.count,
                                 normalizer.returns)]


def test_observation_clip_and_frozen_statistics():
    normalizer = VecNormalizer(7, 2, clip=1.5)
    rng = np.random.default_rng(2)
    for _ in range(3):
        normalizer.observation(rng.normal(0, 1, (2, 7)))
        normalizer.reward(rng.normal(0, 1, 2), np.array([False, True]))
    normalizer.training = False
    before = snapshot(normalizer)
    std = np.sqrt(normalizer.obs_rms.var + 1e-8)
    out = normalizer.observation(np.stack([normalizer.obs_rms.mean + 100 * std, normalizer.obs_rms.mean + 0.5 * std]))
    np.testing.assert_array_equal(out[0], np.full(7, 1.5, dtype=np.float32))
    np.testing.assert_allclose(out[1], 0.5, rtol=1e-5)
    reward = normalizer.reward(np.array([0.5, -1000.0]), np.array([True, True]))
    assert reward[0] == pytest.approx(0.5 / np.sqrt(normalizer.ret_rms.var + 1e-8), rel=1e-6)
    assert reward[1] == -1.5
    for frozen, now in zip(before, snapshot(normalizer)):
        np.testing.assert_array_equal(now, frozen)


def test_reward_scaling_by_the_discounted_return():
    gamma = 0.9
    normalizer = VecNormalizer(7, 2, gamma=gamma)
    rewards = np.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    dones = np.array([[False, False], [False, True], [True, False], [False, False], [False, True]])
    returns, history = np.zeros(2), []
    for reward, done in zip(rewards, dones):
        returns = returns * gamma + reward
        history.append(returns.copy())
        expected = np.clip(reward / np.sqrt(np.var(np.concatenate(history)) + 1e-8), -10, 10)
        np.testing.assert_allclose(normalizer.reward(reward, done), expected, rtol=1e-3)
        returns[done] = 0
        np.testing.assert_allclose(normalizer.returns, returns, rtol=1e-12)


def test_normalization_off_passes_values_through():
    normalizer = VecNormalizer(7, 2, norm_obs=False, norm_reward=False)
    obs, reward = np.arange(14.0).reshape(2, 7), np.array([5.0, -7.0])
    np.testing.assert_array_equal(normalizer.observation(obs), obs.astype(np.float32))
    np.testing.assert_array_equal(normalizer.reward(reward, np.array([True, False])), reward.astype(np.float32))
    assert normalizer.obs_rms.count == 1e-4 and normalizer.ret_rms.count == 1e-4


# ----------------------------------------------------------------------------- actor-critic


@pytest.mark.parametrize("discrete,action_shape", [(True, (5,)), (False, (5, 1))])
def test_actor_critic_shapes(discrete, action_shape):
    torch.manual_seed(0)
    agent = ActorCritic(discrete=discrete)
    action, log_prob, value = agent.act(torch.randn(5, 7))
    assert action.shape == action_shape and log_prob.shape == (5,) and value.shape == (5,)
    sizes = [(m.in_features, m.out_features) for m in agent.actor if isinstance(m, nn.Linear)]
    assert sizes == [(7, 32), (32, 32), (32, 3 if discrete else 1)]
    assert [(m.in_features, m.out_features) for m in agent.critic if isinstance(m, nn.Linear)] == \
        [(7, 32), (32, 32), (32, 1)]
    assert all(isinstance(m, nn.ReLU) for m in (agent.actor[1], agent.actor[3], agent.critic[1], agent.critic[3]))


@pytest.mark.parametrize("discrete", [True, False])
def test_orthogonal_initialization(discrete):
    torch.manual_seed(0)
    agent = ActorCritic(discrete=discrete)
    for network, out_gain in ((agent.actor, 0.01), (agent.critic, 1.0)):
        linears = [m for m in network if isinstance(m, nn.Linear)]
        for linear, gain in zip(linears, (math.sqrt(2), math.sqrt(2), out_gain)):
            w = linear.weight.detach().double()
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            torch.testing.assert_close(gram, gain ** 2 * torch.eye(len(gram), dtype=torch.float64),
                                       rtol=1e-5, atol=1e-5 * gain ** 2)
            assert not linear.bias.any()
    if not discrete:
        assert torch.equal(agent.log_std.detach(), torch.zeros(1))


def test_continuous_actions_are_sampled_unclipped():
    torch.manual_seed(0)
    agent = ActorCritic(discrete=False)
    obs = torch.randn(4000, 7)
    action, log_prob, _ = agent.act(obs)
    mean = agent.actor(obs).detach()
    assert action.min() < 1 / 1.05 - 1 and action.max() > 1.05 + 1  # std 1, mean near 0
    assert action.std().item() == pytest.approx(1.0, abs=0.05)
    torch.testing.assert_close(log_prob, torch.distributions.Normal(mean, 1.0).log_prob(action).sum(-1))
    deterministic, _, _ = agent.act(obs, deterministic=True)
    torch.testing.assert_close(deterministic, mean)


def test_discrete_actions_and_log_probs():
    torch.manual_seed(0)
    agent, _ = agent_and_batch(True)
    obs = torch.randn(3000, 7)
    action, log_prob, _ = agent.act(obs)
    log_p = torch.log_softmax(agent.actor(obs).detach(), -1)
    torch.testing.assert_close(log_prob, log_p.gather(1, action[:, None]).squeeze(1))
    assert set(action.tolist()) == {0, 1, 2}
    assert torch.equal(agent.act(obs, deterministic=True)[0], log_p.argmax(-1))


# ----------------------------------------------------------------------------- learning


def ppo_setup(discrete, seed=0):
    torch.manual_seed(seed)
    agent = ActorCritic(discrete=discrete)
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-3, eps=1e-5)
    return agent, optimizer, PPOConfig(clip_range=0.2, ent_coef=0.0, num_minibatches=4, num_epochs=4)


def bandit_reward(obs, action, discrete):
    """1-step bandit: the right discrete action is 0 if the first feature is positive, else 1;
    the best continuous action is 0.5."""
    if discrete:
        return (action == torch.where(obs[:, 0] > 0, 0, 1)).float()
    return -(action[:, 0] - 0.5) ** 2


def expected_reward(agent, obs, discrete):
    """Mean reward the current stochastic policy gets on ``obs``."""
    with torch.no_grad():
        dist = agent.distribution(obs)
        if discrete:
            return dist.probs.gather(1, torch.where(obs[:, 0] > 0, 0, 1)[:, None]).mean().item()
        return -((dist.mean[:, 0] - 0.5) ** 2 + dist.stddev[:, 0] ** 2).mean().item()


def collect(agent, buffer, num_steps, num_envs, discrete, generator):
    for _ in range(num_steps):
        obs = torch.randn(num_envs, 7, generator=generator)
        action, log_prob, value = agent.act(obs)
        buffer.add(obs, action, log_prob, value, bandit_reward(obs, action, discrete), np.ones(num_envs, bool))
    return buffer.batch(torch.zeros(num_envs), np.ones(num_envs, bool), 0.99)


@pytest.mark.parametrize("discrete", [True, False])
def test_ppo_learns_a_bandit(discrete):
    agent, optimizer, config = ppo_setup(discrete)
    num_steps, num_envs = 32, 8
    buffer = RolloutBuffer(num_steps, num_envs, 7, () if discrete else (1,))
    data = torch.Generator().manual_seed(1)
    test_obs = torch.randn(1000, 7, generator=torch.Generator().manual_seed(2))
    start = expected_reward(agent, test_obs, discrete)
    for update in range(40):
        batch = collect(agent, buffer, num_steps, num_envs, discrete, data)
        ppo_update(agent, optimizer, batch, config, torch.Generator().manual_seed(update))
    end = expected_reward(agent, test_obs, discrete)
    if discrete:
        assert start == pytest.approx(1 / 3, abs=0.05) and end > 0.85
    else:
        assert start == pytest.approx(-1.25, abs=0.1) and end > -0.1
        with torch.no_grad():
            assert agent.distribution(test_obs).mean.mean().item() == pytest.approx(0.5, abs=0.1)


def test_ppo_update_runs_epochs_times_minibatches_steps_and_is_deterministic(monkeypatch):
    results = []
    for _ in range(2):
        agent, optimizer, config = ppo_setup(True)
        batch = collect(agent, RolloutBuffer(8, 4, 7, ()), 8, 4, True, torch.Generator().manual_seed(0))
        calls = []

        def step(agent, optimizer, loss, max_grad_norm, reduce_gradients):
            calls.append(max_grad_norm)
            gradient_step(agent, optimizer, loss, max_grad_norm, reduce_gradients)

        monkeypatch.setattr(ppo, "gradient_step", step)
        stats = ppo_update(agent, optimizer, batch, config, torch.Generator().manual_seed(0))
        assert calls == [0.5] * (config.num_epochs * config.num_minibatches)
        assert set(stats) >= {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
                              "explained_variance"}
        results.append(torch.cat([p.detach().flatten() for p in agent.parameters()]))
    assert torch.equal(*results)


class ScriptedVecEnv:
    """Two environments with fixed outputs: observations 1..., rewards, env 1 ends at the first step."""
    num_envs = 2

    def reset(self, **kwargs):
        return np.array([[1.0] * 7, [3.0] * 7]), [{}, {}]

    def step(self, actions):
        return (np.array([[2.0] * 7, [5.0] * 7]), np.array([1.0, -2.0]), np.array([False, False]),
                np.array([False, True]), [{}, {"final_observation": np.zeros(7)}])


def test_normalized_env_applies_the_normalizer_as_vecnormalize_does():
    wrapped = NormalizedVecEnv(ScriptedVecEnv(), VecNormalizer(7, 2, gamma=0.9))
    by_hand = VecNormalizer(7, 2, gamma=0.9)
    raw = ScriptedVecEnv()
    np.testing.assert_array_equal(wrapped.reset()[0], by_hand.observation(raw.reset()[0]))
    obs, reward, terminated, truncated, infos = wrapped.step(np.zeros((2, 1)))
    raw_obs, raw_reward, *_ = raw.step(np.zeros((2, 1)))
    np.testing.assert_array_equal(obs, by_hand.observation(raw_obs))
    np.testing.assert_array_equal(reward, by_hand.reward(raw_reward, np.array([False, True])))
    assert truncated.tolist() == [False, True] and "final_observation" in infos[1]
    np.testing.assert_array_equal(wrapped.normalizer.returns, [1.0, 0.0])  # env 1's return restarts


# ----------------------------------------------------------------------------- the config


def test_train_pys_ppo_flags_and_their_defaults_come_from_ppo_config():
    assert PPOConfig.from_args(flags.parse_args("train", [])) == PPOConfig()
    config = PPOConfig.from_args(flags.parse_args("train", ["--ppo2-noptepochs", "7", "--ppo2-cliprange", "0.2",
                                                            "--ppo2-norm-obs", "0", "--ppo2-update-freq", "20"]))
    assert (config.num_epochs, config.clip_range, config.norm_obs, config.rollout_steps) == (7, 0.2, False, 20)
    assert config.ent_coef == PPOConfig().ent_coef and config.norm_obs is False
    help_text = flags.build_parser("train").format_help()
    flagged = [f for f in fields(PPOConfig) if f.metadata["flag"]]
    assert all("--" + f.metadata["flag"].replace("_", "-") in help_text for f in flagged) and len(flagged) == 11


def test_the_normalizer_clips_at_norm_clip_else_the_ppo_clip_range_else_the_default():
    assert PPOConfig(clip_range=0.2, norm_clip=5.0).normalizer_clip == 5.0
    assert PPOConfig(clip_range=0.2).normalizer_clip == 0.2  # the reference's one cliprange for both
    assert PPOConfig(clip_range=0.0).normalizer_clip == PPOConfig(clip_range=-1.0).normalizer_clip == DEFAULT_CLIP
