"""The controller's pieces (controller.py): its observations, actions, rate range and start rates,
``Controller`` as a schedule, and the checkpoint that loads back as one."""
import math
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch

import utils
import ensemble
from alrs.controller import (FEATURES, LR_MAX, LR_MIN, RANDOM_INITIAL_LRS, Controller, ControllerEnsemble, apply_action,
                             clip_lr, controller_state, load_controller, nearest_start, observation_features,
                             read_controller_checkpoint, relative_features, start_lrs)
from alrs.policy import ActorCritic, VecNormalizer


# ----------------------------------------------------------------------------- rates

def test_rates_are_clipped_to_the_controllers_range_or_a_lower_max():
    np.testing.assert_array_equal(clip_lr(np.array([1.0, 1e-9, 3e-3])), [LR_MAX, LR_MIN, 3e-3])
    assert clip_lr(0.05, max_lr=0.01) == 0.01 and (LR_MIN, LR_MAX) == (1e-5, 1e-1)


def test_initial_lr_zero_stands_for_the_three_start_rates():
    assert start_lrs(0) == RANDOM_INITIAL_LRS == (1e-2, 1e-3, 1e-4)
    assert start_lrs(3e-3) == (3e-3,)
    # a noisy start (std lr/10) maps back to the rate it was drawn from
    assert [nearest_start(lr) for lr in (1.3e-2, 0.8e-3, 1.1e-4)] == [1e-2, 1e-3, 1e-4]


# ----------------------------------------------------------------------------- observation and actions

def test_observation_features_function():
    torch.manual_seed(0)
    logits, prev, weight = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(2, 4, 6)
    train_loss, val_loss, lr = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), torch.tensor([1e-3, 1e-2])
    first = observation_features(train_loss, val_loss, logits, None, weight, lr).numpy()
    later = observation_features(train_loss, val_loss, logits, prev, weight, lr).numpy()
    for i in range(2):
        expected = [train_loss[i], val_loss[i], np.var(logits[i].numpy()), np.var((logits[i] - prev[i]).numpy()),
                    weight[i].mean(), np.var(weight[i].numpy()), lr[i]]
        np.testing.assert_allclose(later[i], np.array(expected, dtype=np.float64), rtol=1e-5)
        assert first[i, 3] == first[i, 2]


@pytest.mark.parametrize("discrete,actions,action_range,factors", [
    (True, [0, 1, 2], 1.05, [1.05, 1 / 1.05, 1.0]),
    (True, [2, 0, 1], 2.0, [1.0, 2.0, 0.5]),
    (False, [[2.0], [0.1], [1.02]], 1.05, [1.05, 1 / 1.05, 1.02]),
    (False, [[3.0], [-1.0], [0.7]], 2.0, [2.0, 0.5, 0.7]),
])
def test_apply_action(discrete, actions, action_range, factors):
    lr = np.array([1e-3, 2e-3, 4e-3])
    np.testing.assert_allclose(apply_action(lr, np.array(actions), discrete, action_range),
                               lr * np.array(factors), rtol=1e-12)


def test_log_action_parametrization():
    """factor = range ** clip(a, -1, 1): a = 0 keeps the rate, +-1 and beyond give range and 1/range,
    and opposite actions give reciprocal factors."""
    lr = np.full(6, 1e-3)
    actions = np.array([[0.0], [1.0], [-1.0], [0.5], [-0.5], [7.0]])
    new = apply_action(lr, actions, False, 1.05, "log")
    np.testing.assert_allclose(new / lr, [1.0, 1.05, 1 / 1.05, 1.05 ** 0.5, 1.05 ** -0.5, 1.05], rtol=1e-12)


@pytest.mark.parametrize("discrete,actions", [(True, [0, 1]), (False, [[5.0], [0.0]])])
def test_apply_action_clips_the_learning_rate(discrete, actions):
    lr = np.array([0.099, 1.02e-5])
    np.testing.assert_array_equal(apply_action(lr, np.array(actions), discrete, 1.05), [LR_MAX, LR_MIN])
    assert (LR_MIN, LR_MAX) == (1e-5, 1e-1)


def test_relative_features_against_a_direct_computation():
    reference = np.array([[0.5, 0.4, 2.0, 0.5, 0.0, 1e-3, 2e-3]])
    got = relative_features(reference, first_val_loss=np.array([2.0]), prev_val_loss=np.array([0.8]),
                            initial_lr=np.array([1e-3]), chance_loss=math.log(10), progress=np.array([0.25]))
    expected = [math.log(0.5 / 0.4), math.log(0.4 / 2.0), math.log(0.4 / math.log(10)), math.log(0.8 / 0.4),
                math.log(0.5 / 2.0), math.log(2e-3), math.log(2.0), 0.25]
    np.testing.assert_allclose(got[0], expected, rtol=1e-12)
    assert got.shape[1] == len(FEATURES["relative-progress"])


def test_relative_features_do_not_change_when_the_losses_scale():
    reference = np.array([[0.5, 0.4, 2.0, 0.5, 0.1, 1e-3, 2e-3]])
    scaled = reference * [[7, 7, 1, 1, 1, 1, 1]]
    args = dict(initial_lr=np.array([1e-3]), chance_loss=2.0)
    a = relative_features(reference, np.array([2.0]), np.array([0.8]), **args)
    b = relative_features(scaled, np.array([14.0]), np.array([5.6]), **args)
    np.testing.assert_allclose(a[:, [0, 1, 3, 4, 5, 6]], b[:, [0, 1, 3, 4, 5, 6]], rtol=1e-12)


# ----------------------------------------------------------------------------- the controller and its checkpoint

def constant_action_controller(action, **changes):
    """A continuous controller whose policy mean is ``action`` whatever it observes."""
    agent = ActorCritic()
    with torch.no_grad():
        agent.actor[-1].weight.zero_()
        agent.actor[-1].bias.fill_(action)
    normalizer = VecNormalizer(7, 1)
    normalizer.training = False
    return Controller(agent.eval(), normalizer, 1.05, "log", **changes)


def test_controller_applies_its_policys_mode_to_the_rate():
    controller = constant_action_controller(0.5, initial_lr=1e-3)
    assert controller.next_lr(np.ones(7), 2e-3, 0) == pytest.approx(2e-3 * 1.05 ** 0.5, rel=1e-6)
    assert constant_action_controller(9.0).next_lr(np.ones(7), 0.099, 0) == LR_MAX  # clipped


def test_controller_starting_at_another_rate_or_with_another_policy_shares_the_rest():
    controller = constant_action_controller(0.5, features="relative")
    other = ActorCritic()
    moved = controller.starting_at(1e-2, agent=other)
    assert (moved.initial_lr, moved.agent, moved.features) == (1e-2, other, "relative")
    assert moved.normalizer is controller.normalizer and controller.initial_lr is None
    assert controller.starting_at(1e-4).agent is controller.agent
    with pytest.raises(FrozenInstanceError):
        controller.initial_lr = 1e-3


def perturbed_agent(discrete):
    """An agent away from the near-uniform initial policy, so a wrong weight would show in its actions."""
    torch.manual_seed(3)
    agent = ActorCritic(discrete=discrete)
    with torch.no_grad():
        for param in agent.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return agent


@pytest.mark.parametrize("discrete", [True, False])
def test_controller_checkpoint_round_trip(discrete, tmp_path):
    agent = perturbed_agent(discrete)
    normalizer = VecNormalizer(7, 4, clip=5.0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        normalizer.observation(rng.normal(1.0, 3.0, (4, 7)))
    utils.save_checkpoint(tmp_path / "best.pt", controller_state(agent, normalizer, 1.07))
    controller = load_controller(utils.load_checkpoint(tmp_path / "best.pt"))
    loaded, loaded_normalizer = controller.agent, controller.normalizer
    assert controller.action_range == 1.07 and loaded.discrete == discrete and not loaded.training
    assert (controller.action_param, controller.features, controller.initial_lr) == ("clip", "reference", None)
    assert loaded_normalizer.training is False and loaded_normalizer.clip == 5.0
    normalizer.training = False
    raw = rng.normal(1.0, 30.0, (50, 7))
    obs = torch.as_tensor(normalizer.observation(raw))
    np.testing.assert_array_equal(loaded_normalizer.observation(raw), obs.numpy())
    assert obs.abs().max() == 5.0  # clipped at the saved clip
    torch.testing.assert_close(loaded.act(obs, deterministic=True), agent.act(obs, deterministic=True), rtol=0, atol=0)
    torch.manual_seed(7)
    expected = agent.act(obs)
    torch.manual_seed(7)
    torch.testing.assert_close(loaded.act(obs), expected, rtol=0, atol=0)


def test_a_checkpoint_records_the_features_and_actions_it_was_trained_with(tmp_path):
    agent = ActorCritic(len(FEATURES["relative-progress"]))
    normalizer = VecNormalizer(len(FEATURES["relative-progress"]), 1)
    utils.save_checkpoint(tmp_path / "c.pt", controller_state(agent, normalizer, 1.25, "log", "relative-progress"))
    controller = load_controller(utils.load_checkpoint(tmp_path / "c.pt"), deterministic=False)
    assert (controller.features, controller.action_range, controller.action_param) == ("relative-progress", 1.25, "log")
    assert controller.agent.actor[0].in_features == 8 and controller.deterministic is False


# ----------------------------------------------------------------------------- ensembles

def test_an_ensemble_sets_the_median_of_its_members_rates_in_log_space():
    members = [constant_action_controller(action) for action in (-1.0, 0.5, 2.0)]
    obs, lr = np.ones(7), 2e-3
    assert ControllerEnsemble(tuple(members)).next_lr(obs, lr, 0) == pytest.approx(lr * 1.05 ** 0.5, rel=1e-6)
    pair = ControllerEnsemble(tuple(members[:2]))  # an even count: the geometric mean of the middle two
    assert pair.next_lr(obs, lr, 0) == pytest.approx(lr * 1.05 ** -0.25, rel=1e-6)
    # one member failing upwards does not move the median of three
    outvoted = ControllerEnsemble((members[0], members[1], constant_action_controller(50.0)))
    assert outvoted.next_lr(obs, lr, 0) == pytest.approx(lr * 1.05 ** 0.5, rel=1e-6)
    moved = outvoted.starting_at(1e-2)
    assert moved.initial_lr == 1e-2 and all(member.initial_lr == 1e-2 for member in moved.members)


def test_ensemble_members_must_observe_and_act_alike():
    with pytest.raises(utils.UserError, match="differ in features"):
        ControllerEnsemble((constant_action_controller(0.0), relative_controller_like("relative")))
    with pytest.raises(utils.UserError, match="differ in anchor"):
        ControllerEnsemble((constant_action_controller(0.0), constant_action_controller(0.0, anchor="cosine")))
    both = ControllerEnsemble((constant_action_controller(0.0, optimizers=("adam", "sgd")),
                               constant_action_controller(0.0, optimizers=("adam",))))
    assert both.optimizers == ("adam",)  # the scheduler warns for any other


def relative_controller_like(features):
    """A controller of another observation than constant_action_controller's."""
    agent = ActorCritic(len(FEATURES[features]))
    return Controller(agent.eval(), VecNormalizer(len(FEATURES[features]), 1), 1.05, "log", features=features)


def test_an_ensemble_flags_features_beyond_any_members_range():
    narrow, wide = constant_action_controller(0.0), constant_action_controller(0.0)
    narrow.normalizer.obs_rms.var[:] = 1e-6
    narrow.normalizer.obs_rms.mean[:] = 1.0
    obs = np.ones(7)
    obs[3] = 2.0
    assert narrow.beyond_range(obs).tolist() == [False] * 3 + [True] + [False] * 3
    assert not wide.beyond_range(obs).any()
    assert ControllerEnsemble((wide, narrow)).beyond_range(obs).tolist() == narrow.beyond_range(obs).tolist()


def saved_controllers(tmp_path, count):
    """``count`` checkpoints of different continuous controllers, as train.py writes them."""
    paths = []
    for index in range(count):
        torch.manual_seed(index)
        agent = ActorCritic().eval()
        with torch.no_grad():
            agent.actor[-1].bias.fill_(0.4 * (index - 1))  # means -0.4, 0, 0.4, moved by the observation
        normalizer = VecNormalizer(7, 1)
        paths.append(tmp_path / f"c{index}.pt")
        utils.save_checkpoint(paths[-1], controller_state(agent, normalizer, 1.2, "log"))
    return paths


def test_ensemble_cli_writes_a_checkpoint_that_loads_as_the_median(tmp_path, capsys):
    paths = saved_controllers(tmp_path, 3)
    ensemble.main(["--out", str(tmp_path / "e.pt"), *map(str, paths)])
    assert "median of 3" in capsys.readouterr().out
    joined = load_controller(read_controller_checkpoint(tmp_path / "e.pt"))
    members = [load_controller(read_controller_checkpoint(path)) for path in paths]
    assert isinstance(joined, ControllerEnsemble) and len(joined.members) == 3
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs = rng.normal(size=7)
        rates = sorted(member.next_lr(obs, 1e-3, 0) for member in members)
        assert len(set(rates)) == 3  # the members disagree, so the median is a choice
        assert joined.next_lr(obs, 1e-3, 0) == pytest.approx(rates[1], rel=1e-12)


def test_ensemble_cli_refuses_one_controller_or_an_ensemble(tmp_path):
    paths = saved_controllers(tmp_path, 2)
    with pytest.raises(utils.UserError, match="two or more"):
        ensemble.main(["--out", str(tmp_path / "e.pt"), str(paths[0])])
    ensemble.main(["--out", str(tmp_path / "e.pt"), *map(str, paths)])
    with pytest.raises(utils.UserError, match="not ensembles"):
        ensemble.main(["--out", str(tmp_path / "f.pt"), str(tmp_path / "e.pt"), str(paths[0])])
    utils.save_checkpoint(tmp_path / "other.pt", {"format": 1, "weights": {}})
    with pytest.raises(utils.UserError, match="not an ALRS checkpoint"):
        ensemble.main(["--out", str(tmp_path / "g.pt"), str(tmp_path / "other.pt"), str(paths[0])])
