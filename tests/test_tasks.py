"""Task mixes and their data variants (tasks.py), the scale-free observation, the mixed vector
environment, and the replay control (schedules.replay_schedules)."""
import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from data import Splits, load_splits
from alrs.controller import FEATURES, RELATIVE_FEATURES, relative_features
from environment import EnvConfig, TaskMixVecEnv, VecALRSEnv, run_episode, stack
from schedules import StepDecay, replay_schedules
from tasks import Task, make_variant, parse_task

CONFIG = EnvConfig(architecture="mlp", batch_size=16, update_freq=3, num_train_steps=12, initial_lr=1e-3,
                   lr_noise=False)


@pytest.fixture(scope="module")
def splits(mnist_dir):
    return load_splits("fa-mnist", mnist_dir, train_size=200, val_size=50)


# ----------------------------------------------------------------------------- tasks and variants

def test_a_task_spec_fills_the_keys_left_out_from_the_flags():
    base = Task(dataset="fa-mnist", architecture="mlp", batch_size=128, num_train_steps=500)
    task = parse_task("dataset=mnist, batch-size=64,label_noise=0.3", base)
    assert task == replace(base, dataset="mnist", batch_size=64, label_noise=0.3)
    assert task.name == "mnist_mlp_b64_s500_noise0.3"


@pytest.mark.parametrize("spec, message", [
    ("batch_size", "not key=value"), ("colour=red", "not key=value"), ("batch_size=lots", "not a number"),
    ("batch_size=0", "batch_size must be positive"), ("label_noise=1.5", "label_noise must be in [0, 1]"),
    ("classes=1", "classes must be at least 2"),
])
def test_a_bad_task_spec_names_the_problem(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_task(spec, Task())


def test_a_class_subset_keeps_only_those_classes_in_every_split(splits):
    variant = make_variant(splits, classes=3)
    assert variant.num_classes == 3
    for x, y, full_y in ((variant.train_x, variant.train_y, splits.train_y), (variant.val_x, variant.val_y, splits.val_y),
                         (variant.test_x, variant.test_y, splits.test_y)):
        assert len(x) == len(y) == int((full_y < 3).sum()) and int(y.max()) < 3


def test_label_noise_replaces_that_fraction_of_training_labels_only(splits):
    big = Splits(splits.train_x.repeat(20, 1, 1, 1), splits.train_y.repeat(20), splits.val_x, splits.val_y,
                 splits.test_x, splits.test_y, 10)
    noisy = make_variant(big, label_noise=0.5)
    changed = (noisy.train_y != big.train_y).float().mean().item()
    assert changed == pytest.approx(0.5 * 0.9, abs=0.03)  # a replaced label keeps its class 1 time in 10
    assert torch.equal(noisy.val_y, big.val_y) and torch.equal(noisy.test_y, big.test_y)
    assert torch.equal(make_variant(big, label_noise=0.5).train_y, noisy.train_y)  # the same in every run


def test_downsampled_images_are_area_averages(splits):
    variant = make_variant(splits, image_size=14)
    assert variant.image_size == (14, 14) and variant.train_x.dtype == torch.uint8
    expected = splits.val_x[:1].float().view(1, 1, 14, 2, 14, 2).mean((3, 5)).round()
    assert torch.equal(variant.val_x[:1].float(), expected)


# ----------------------------------------------------------------------------- scale-free observation

@pytest.mark.parametrize("features", ["relative", "relative-progress", "relative-progress-no-log-lr"])
def test_env_observes_the_relative_features_of_its_reference_ones(splits, features):
    env = VecALRSEnv(replace(CONFIG, features=features), splits, [0], "cpu")
    reference_env = VecALRSEnv(CONFIG, splits, [0], "cpu")
    obs, _ = env.reset()
    reference_obs, _ = reference_env.reset()
    names = FEATURES[features]
    assert env.observation_space.shape == (len(names),) and obs.shape == (1, len(names))
    fresh = np.zeros(obs.shape[1])  # a fresh child: every ratio is 1
    nonzero = [names.index(f) for f in ("log_val_over_chance", "log_lr") if f in names]
    fresh[nonzero] = obs[0, nonzero]
    np.testing.assert_allclose(obs[0], fresh, atol=1e-6)
    if "log_lr" in names:
        assert obs[0, names.index("log_lr")] == pytest.approx(math.log(1e-3), rel=1e-6)
    first_val = reference_obs[0, 1]
    for block in range(1, 3):
        prev_val = reference_obs[0, 1]
        obs, reward, *_ = env.step_lr(np.array([2e-3]))
        reference_obs, reference_reward, *_ = reference_env.step_lr(np.array([2e-3]))
        assert reward == reference_reward  # the reward reads the losses, whatever the controller observes
        expected = relative_features(reference_obs.astype(np.float64), [first_val], [prev_val], [1e-3], math.log(10),
                                     [block * 3 / 12] if "progress" in names else None)
        if features == "relative-progress-no-log-lr":  # the same, less the log lr column
            expected = np.delete(expected, RELATIVE_FEATURES.index("log_lr"), axis=1)
        np.testing.assert_allclose(obs, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- task mixes

def test_a_task_mix_steps_each_task_in_its_own_environments(splits):
    short = make_variant(splits, classes=5)
    envs = [VecALRSEnv(CONFIG, splits, [0, 1], "cpu"), VecALRSEnv(replace(CONFIG, num_train_steps=6), short, [2], "cpu")]
    singles = [VecALRSEnv(CONFIG, splits, [0, 1], "cpu"), VecALRSEnv(replace(CONFIG, num_train_steps=6), short, [2], "cpu")]
    mix = TaskMixVecEnv(envs, ["full", "five"])
    obs, infos = mix.reset()
    assert mix.num_envs == 3 and obs.shape == (3, 7) and [i["task"] for i in infos] == ["full", "full", "five"]
    for single in singles:
        single.reset()
    for _ in range(2):
        obs, reward, terminated, truncated, infos = mix.step(np.array([1.05, 1.0, 0.95]))
        expected = [singles[0].step(np.array([1.05, 1.0])), singles[1].step(np.array([0.95]))]
        np.testing.assert_array_equal(obs, np.concatenate([expected[0][0], expected[1][0]]))
        np.testing.assert_array_equal(reward, np.concatenate([expected[0][1], expected[1][1]]))
    assert list(truncated) == [False, False, True]  # the 6-step task's episode ended, the others' did not
    assert "final_val_loss" in infos[2] and infos[2]["task"] == "five"
    np.testing.assert_allclose(mix.lr, [1e-3 * 1.05 ** 2, 1e-3, 1e-3])  # the ended episode restarted at 1e-3


def test_a_task_mix_resets_each_environment_with_its_own_seed_and_rate(splits):
    mix = TaskMixVecEnv([VecALRSEnv(CONFIG, splits, [0, 0], "cpu"), VecALRSEnv(CONFIG, splits, [0], "cpu")], "ab")
    single = VecALRSEnv(CONFIG, splits, [0, 0, 0], "cpu")
    obs, _ = mix.reset(seed=[4, 5, 6], options={"initial_lr": [1e-2, 1e-3, 1e-4]})
    expected, _ = single.reset(seed=[4, 5, 6], options={"initial_lr": [1e-2, 1e-3, 1e-4]})
    np.testing.assert_array_equal(obs, expected)
    np.testing.assert_allclose(mix.lr, [1e-2, 1e-3, 1e-4])


def test_a_task_mix_state_dict_continues_identically(splits):
    def build():
        return TaskMixVecEnv([VecALRSEnv(CONFIG, splits, [0], "cpu"), VecALRSEnv(CONFIG, splits, [5], "cpu")], "ab")
    mix = build()
    mix.reset()
    mix.step(np.array([1.05, 0.95]))
    restored = build()
    restored.load_state_dict(copy.deepcopy(mix.state_dict()))  # as from a file: no tensor shared
    np.testing.assert_array_equal(restored.step(np.array([1.0, 1.0]))[0], mix.step(np.array([1.0, 1.0]))[0])


def test_task_mix_spaces_must_agree(splits):
    with pytest.raises(ValueError, match="same observation"):
        TaskMixVecEnv([VecALRSEnv(CONFIG, splits, [0], "cpu"),
                       VecALRSEnv(replace(CONFIG, features="relative-progress"), splits, [1], "cpu")], "ab")


# ----------------------------------------------------------------------------- the replay control

def test_replay_is_the_geometric_mean_of_the_other_seeds_rates():
    curves = np.array([[1e-3, 1e-3, 4e-3, 4e-3],
                       [1e-3, 4e-3, 1e-3, np.nan],  # diverged in its last block
                       [1e-3, 1e-3, 1e-3, 1e-3]])
    replays = replay_schedules(1e-3, curves, update_freq=10)
    rates = lambda replay: [replay.next_lr(None, None, step) for step in (0, 10, 20, 25, 90)]
    np.testing.assert_allclose(rates(replays[0]), [2e-3, 1e-3, 1e-3, 1e-3, 1e-3])  # seeds 1 and 2; step 90: the last
    np.testing.assert_allclose(rates(replays[1]), [1e-3, 2e-3, 2e-3, 2e-3, 2e-3])  # seeds 0 and 2, not its own
    np.testing.assert_allclose(rates(replays[2]), [2e-3, 2e-3, 4e-3, 4e-3, 4e-3])  # seed 1's NaN skipped
    assert all(replay.initial_lr == 1e-3 for replay in replays)


def test_a_replayed_schedule_trains_like_the_schedule_it_replays(splits):
    """Open loop at the rates a fixed schedule chose reproduces that schedule's run exactly."""
    envs = VecALRSEnv(CONFIG, splits, [3, 3], "cpu", autoreset=False)
    decay = StepDecay(1e-3, every=6, factor=0.5)
    first = run_episode(envs, stack([decay, decay]), [3, 3], [1e-3, 1e-3])
    replay = replay_schedules(1e-3, first["lr"], CONFIG.update_freq)[0]
    again = run_episode(envs, stack([replay, decay]), [3, 3], [1e-3, 1e-3])
    np.testing.assert_array_equal(again["val_loss"][0], first["val_loss"][0])
