"""The training loop's pieces: rollout collection (diverging children never reach the controller) and
the choice of best.pt."""
import dataclasses

import numpy as np
import pytest
import torch

import flags
from environment import EnvConfig, VecALRSEnv
from alrs.policy import ActorCritic, VecNormalizer
from ppo import NormalizedVecEnv, PPOConfig, RolloutBuffer, collect_rollout, ppo_update
from train import RecentFinals
from data import load_splits
from plots import plot_training
from tasks import Task


def test_diverged_child_ends_its_episode_and_nothing_non_finite_enters_the_controller(mnist_dir):
    torch.manual_seed(0)
    splits = load_splits("fa-mnist", mnist_dir, train_size=200, val_size=50)
    raw_envs = VecALRSEnv(EnvConfig("mlp", batch_size=16, update_freq=3, num_train_steps=30), splits, [0, 1])
    agent, normalizer = ActorCritic(), VecNormalizer(7, 2)
    envs = NormalizedVecEnv(raw_envs, normalizer)
    buffer = RolloutBuffer(6, 2, 7, (1,))
    obs, done = envs.reset()[0], np.zeros(2, dtype=bool)
    with torch.no_grad():
        raw_envs.children.models[0].layers[1].weight.fill_(float("nan"))  # child 0 diverges at once

    obs, done, ended = collect_rollout(envs, agent, buffer, obs, done)

    (step, env, info), = ended
    assert (step, env, info["diverged"]) == (0, 0, True)
    assert buffer.dones[1, 0] == 1  # the next observation of env 0 starts a fresh episode
    for stored in (buffer.obs, buffer.rewards, buffer.values, buffer.log_probs, buffer.actions):
        assert torch.isfinite(stored).all()
    assert np.isfinite(obs).all()
    for stats in (normalizer.obs_rms, normalizer.ret_rms):
        assert np.isfinite(stats.mean).all() and np.isfinite(stats.var).all()
    assert buffer.rewards[0, 0] == buffer.rewards.min()  # the penalty is the worst reward

    with torch.no_grad():
        last_value = agent.value(torch.as_tensor(obs))
    ppo_update(agent, torch.optim.Adam(agent.parameters(), lr=3e-3), buffer.batch(last_value, done, 1.0),
               PPOConfig(num_minibatches=2, num_epochs=2))
    assert all(torch.isfinite(p).all() for p in agent.parameters())


def test_best_checkpoint_score_averages_a_window_per_initial_rate():
    recent = RecentFinals(["task"], (1e-2, 1e-3), window=2)
    recent.add("task", 1.05e-2, 0.4)
    recent.add("task", 0.0092, 0.6)  # both nearest 1e-2 (the initial rate carries noise)
    assert recent.score() is None  # no episode from 1e-3 yet
    for initial_lr, loss in ((9e-4, 1.0), (1.1e-3, 2.0), (1e-3, 3.0)):
        recent.add("task", initial_lr, loss)
    assert recent.losses == [[0.4, 0.6], [2.0, 3.0]]  # the last 2 of each rate
    assert recent.score() == pytest.approx((0.5 + 2.5) / 2)  # each rate counts the same, whatever the mix


def test_best_checkpoint_score_averages_a_window_per_task_and_rate():
    recent = RecentFinals(["easy", "hard"], (1e-3,), window=1)
    recent.add("hard", 1e-3, 2.0)
    assert recent.score() is None  # no episode of the easy task yet
    recent.add("easy", 1e-3, 0.2)
    recent.add("easy", 1e-3, 0.4)
    assert recent.losses == [[0.4], [2.0]]
    assert recent.score() == pytest.approx((0.4 + 2.0) / 2)


@pytest.mark.parametrize("policy", [{"policy_mean": 0.1, "policy_std": 0.9, "action_below": 0.1, "action_inside": 0.8,
                                     "action_above": 0.1},
                                    {f"action_{i}_frequency": 1 / 3 for i in range(3)}])
def test_every_panel_of_progress_png_with_several_lines_has_a_legend(tmp_path, monkeypatch, policy):
    import matplotlib.pyplot as plt
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure plot_training closes
    episodes = [{"timesteps": t, "final_val_loss": 0.5, "initial_lr": 1e-3, "lr_geomean": 1e-3, "final_lr": 1e-3,
                 "return": -1.0} for t in (8, 16)]
    plot_training(episodes, [{"timesteps": t, **policy} for t in (8, 16)], tmp_path / "progress.png", "run", window=16)
    (figure,) = figures
    for ax in figure.axes:
        if len(ax.lines) > 1:
            assert ax.get_legend() is not None and len(ax.get_legend().get_texts()) == len(ax.lines), ax.get_ylabel()


def test_every_environment_setting_is_a_train_flag():
    """EnvConfig.from_args reads the flags named like its fields: a field without its flag (one renamed
    on one side only) would silently keep its default in every run, so it fails here."""
    flag_names = set(vars(flags.parse_args("train", [])))
    assert {f.name for f in dataclasses.fields(EnvConfig)} - {"lr_noise"} <= flag_names
    assert {f.name for f in dataclasses.fields(Task)} <= flag_names
