"""The learning-rate environment (environment.py) on a tiny Fashion-MNIST, on the CPU."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import utils
from data import load_splits
from children import ModuleChildren, VmapChildren, make_children
from alrs.controller import LR_MAX, LR_MIN, apply_action
from environment import Discrete, EnvConfig, VecALRSEnv, run_episode
from alrs.controller import output_layer_name
from models import build_model
from schedules import Cosine, baseline_schedule

TRAIN_SIZE, VAL_SIZE, BATCH, FREQ, STEPS = 200, 50, 16, 3, 12
BLOCKS = STEPS // FREQ  # actions (and trained blocks) per episode; observations are one more
CONFIG = EnvConfig(architecture="mlp", batch_size=BATCH, update_freq=FREQ, num_train_steps=STEPS,
                   initial_lr=1e-3, discrete=True, action_range=1.05, lr_noise=False)
BACKENDS = ["vmap", "module"]
SHORT = dict(update_freq=1, num_train_steps=3)  # one child step per block, for tests of many envs


@pytest.fixture(scope="module")
def splits(mnist_dir):
    return load_splits("fa-mnist", mnist_dir, train_size=TRAIN_SIZE, val_size=VAL_SIZE)


def make_env(splits, seeds=(0,), backend="module", autoreset=True, **changes):
    return VecALRSEnv(replace(CONFIG, **changes), splits, list(seeds), "cpu", autoreset, backend)


def poison(env, index):
    """Make child ``index`` non-finite, as a diverged training run would."""
    with torch.no_grad():
        if isinstance(env.children, VmapChildren):
            for param in env.children.params.values():
                param[index] = float("nan")
        else:
            for param in env.children.models[index].parameters():
                param.fill_(float("nan"))


# ----------------------------------------------------------------------------- observation


class Replay:
    """The child of environment seed ``seed`` rebuilt outside the environment and trained with
    torch.optim.Adam on the same batches: child seed from Generator(2 * seed), batches are shuffled
    epochs (drop_last) from Generator(2 * seed + 1)."""

    def __init__(self, splits, architecture, seed):
        self.splits = splits
        child_seed = int(torch.randint(2 ** 62, (1,), generator=torch.Generator().manual_seed(2 * seed)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(child_seed)
            self.model = build_model(architecture, splits.in_channels, splits.image_size, splits.num_classes)
        order = torch.randperm(TRAIN_SIZE, generator=torch.Generator().manual_seed(2 * seed + 1))
        self.batches = iter(order[: TRAIN_SIZE - TRAIN_SIZE % BATCH].view(-1, BATCH))
        self.optimizer = torch.optim.Adam(self.model.parameters())
        self.prev_logits = None

    def block(self, lr):
        """Train FREQ steps at ``lr``; the 7 features computed directly, in float64."""
        self.optimizer.param_groups[0]["lr"] = lr
        losses = []
        for _ in range(FREQ):
            index = next(self.batches)
            loss = F.cross_entropy(self.model(self.splits.train_x[index].float() / 255), self.splits.train_y[index])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        return self.observe(np.mean(losses), lr)

    def observe(self, train_loss, lr):
        """The features of the current child; ``train_loss=None`` (fresh child): its validation loss."""
        with torch.no_grad():
            logits = self.model(self.splits.val_x.float() / 255)
            val_loss = F.cross_entropy(logits, self.splits.val_y).item()
        logits = logits.double().numpy()
        change = logits if self.prev_logits is None else logits - self.prev_logits
        self.prev_logits = logits
        weight = self.model.get_parameter(output_layer_name(self.model) + ".weight").detach().double().numpy()
        return np.array([val_loss if train_loss is None else train_loss, val_loss, np.var(logits),
                         np.var(change), weight.mean(), np.var(weight), lr])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
def test_observations_match_a_direct_computation(splits, architecture, backend):
    seed = 5
    env = make_env(splits, [seed], backend, architecture=architecture)
    replay = Replay(splits, architecture, seed)
    obs, infos = env.reset(seed=seed)
    assert obs.shape == (1, 7) and obs.dtype == np.float32
    # the first observation is of the fresh child: its training-loss feature is its validation loss,
    # and the change of the predictions is the predictions
    assert obs[0, 3] == obs[0, 2] and obs[0, 0] == obs[0, 1]
    np.testing.assert_allclose(obs[0], replay.observe(None, 1e-3), rtol=1e-4, atol=1e-7)
    for action, lr in ((0, 1e-3 * 1.05), (1, 1e-3)):
        obs, reward, *_ = env.step(np.array([action]))
        expected = replay.block(lr)
        np.testing.assert_allclose(obs[0], expected, rtol=1e-4, atol=1e-7)
        assert reward[0] == pytest.approx(-expected[1], rel=1e-5)
        assert abs(obs[0, 3] - obs[0, 2]) > 1e-3 * obs[0, 2]  # a change, no longer the predictions
    assert infos[0]["val_loss"] == pytest.approx(float(np.log(10)), rel=0.1)  # an untrained child


# ----------------------------------------------------------------------------- actions and lr

@pytest.mark.parametrize("discrete,actions,factors", [
    (True, [0, 1, 2], [1.05, 1 / 1.05, 1.0]),
    (False, [[1.03], [0.5], [9.0]], [1.03, 1 / 1.05, 1.05]),
])
def test_env_applies_actions_exactly_without_noise(splits, discrete, actions, factors):
    env = make_env(splits, [0, 1, 2], discrete=discrete)
    obs, infos = env.reset()
    assert [info["lr"] for info in infos] == [1e-3] * 3
    obs, _, _, _, infos = env.step(np.array(actions))
    expected = 1e-3 * np.array(factors)
    np.testing.assert_allclose([info["lr"] for info in infos], expected, rtol=1e-12)
    np.testing.assert_allclose(env.lr, expected, rtol=1e-12)
    np.testing.assert_allclose(obs[:, 6], expected, rtol=1e-6)


def test_env_clips_initial_and_later_learning_rates(splits):
    env = make_env(splits, [0, 1, 2], initial_lr=2e-3)
    obs, infos = env.reset(options={"initial_lr": [0.5, 1e-7, 0]})  # 0: as configured
    np.testing.assert_array_equal(env.lr, [LR_MAX, LR_MIN, 2e-3])
    env.step(np.array([0, 1, 2]))
    np.testing.assert_array_equal(env.lr, [LR_MAX, LR_MIN, 2e-3])
    env.step_lr(np.array([3.0, 0.0, 5e-3]))
    np.testing.assert_array_equal(env.lr, [LR_MAX, LR_MIN, 5e-3])


@pytest.mark.parametrize("action_param", ["clip", "log"])
def test_action_space_bounds_are_where_clipping_starts(splits, action_param):
    env = make_env(splits, discrete=False, action_param=action_param)
    low, high = env.action_space.low, env.action_space.high
    factor = lambda a: apply_action(np.array([1e-3]), np.array([[a]]), False, 1.05, action_param)[0] / 1e-3
    assert factor(high) == factor(high + 1) == pytest.approx(1.05, rel=1e-12)
    assert factor(low) == factor(low - 1) == pytest.approx(1 / 1.05, rel=1e-12)
    assert factor(low) < factor(low + 1e-3) < factor(high - 1e-3) < factor(high)
    assert env.observation_space.shape == (7,)
    assert make_env(splits, discrete=True).action_space == Discrete(3)


def test_learning_rate_noise(splits):
    """Initial lr noise has std lr/10, action noise std 1e-5; both seeded per environment."""
    seeds = list(range(48))
    env = make_env(splits, seeds, "vmap", lr_noise=True, **SHORT)
    env.reset()
    z = (env.lr - 1e-3) / 1e-4
    assert np.all(env.lr != 1e-3)
    assert abs(z.mean()) < 0.5 and 0.7 < z.std() < 1.3
    before = env.lr.copy()
    env.step(np.full(len(seeds), 2))  # keep: only the noise changes the lr
    z = (env.lr - before) / 1e-5
    assert np.all(env.lr != before)
    assert abs(z.mean()) < 0.5 and 0.7 < z.std() < 1.3
    again = make_env(splits, seeds[:3], lr_noise=True, **SHORT)
    again.reset()
    again.step(np.full(3, 2))
    np.testing.assert_array_equal(again.lr, env.lr[:3])


def test_initial_lr_zero_draws_from_the_three_rates(splits):
    env = make_env(splits, range(24), "vmap", initial_lr=0.0, **SHORT)
    obs, infos = env.reset()
    assert set(env.lr) == {1e-2, 1e-3, 1e-4}
    np.testing.assert_allclose(obs[:, 6], env.lr, rtol=1e-6)


# ----------------------------------------------------------------------------- episodes


def test_episode_length_rewards_and_final_info(splits):
    env = make_env(splits, [0], autoreset=True)
    obs, infos = env.reset(seed=0)
    assert infos[0]["step"] == 0 and "final_val_loss" not in infos[0]
    rewards, lrs = [], []
    for t, action in enumerate([0, 0, 1, 2]):  # num_train_steps / update_freq actions, as the reference
        last = t == BLOCKS - 1
        next_obs, reward, terminated, truncated, infos = env.step(np.array([action]))
        info = infos[0]
        rewards.append(reward[0])
        lrs.append(info["lr"])
        assert not terminated[0] and truncated[0] == last
        assert reward[0] == -info["val_loss"]
        assert info["step"] == FREQ * (t + 1)
        if not last:
            assert "final_observation" not in info
            assert reward[0] == pytest.approx(-next_obs[0, 1], rel=1e-6)
    assert info["final_val_loss"] == pytest.approx(info["final_observation"][1], rel=1e-6)
    assert rewards[-1] == pytest.approx(-info["final_observation"][1], rel=1e-6)
    assert info["episode_return"] == pytest.approx(sum(rewards), rel=1e-12)
    assert info["diverged"] is False
    assert lrs == pytest.approx([1.05e-3, 1e-3 * 1.05 ** 2, 1.05e-3, 1.05e-3], rel=1e-12)
    assert (info["lr_min"], info["lr_max"]) == pytest.approx((1.05e-3, 1e-3 * 1.05 ** 2), rel=1e-12)
    assert (info["initial_lr"], info["final_lr"]) == pytest.approx((1e-3, 1.05e-3), rel=1e-12)
    assert info["lr_geomean"] == pytest.approx(math.exp(np.mean(np.log(lrs))), rel=1e-12)
    # auto-reset: a fresh episode at the initial lr, whose return starts again from zero
    assert env.step_count[0] == 0
    assert next_obs[0, 3] == next_obs[0, 2] and next_obs[0, 6] == np.float32(1e-3)
    assert not np.array_equal(next_obs[0], info["final_observation"])
    rewards = []
    for t in range(BLOCKS):
        _, reward, _, truncated, infos = env.step(np.array([2]))
        rewards.append(reward[0])
        assert infos[0]["step"] == FREQ * (t + 1)
    assert truncated[0] and infos[0]["episode_return"] == pytest.approx(sum(rewards), rel=1e-12)
    assert [infos[0][k] for k in ("lr_min", "lr_max", "lr_geomean")] == pytest.approx([1e-3] * 3, rel=1e-12)


def test_hidden_lr_scale_trains_the_child_at_a_rate_the_controller_does_not_see(splits):
    """With hidden_lr_scale, each episode's child trains at the chosen rate times its own drawn factor;
    the observation and the infos show the chosen rate. The child's curve is that of a plain
    environment started at the product."""
    seeds, keep = (0, 1, 2), np.full(3, 2)
    hidden = make_env(splits, seeds, hidden_lr_scale=10.0)
    obs, _ = hidden.reset()
    scale = hidden.lr_scale.copy()
    assert ((0.1 <= scale) & (scale <= 10)).all() and len(set(scale)) == 3
    assert (obs[:, 6] == np.float32(1e-3)).all()
    plain = make_env(splits, seeds)
    plain.reset(options={"initial_lr": list(1e-3 * scale)})
    for _ in range(BLOCKS - 1):
        obs, *_ = hidden.step(keep)
        np.testing.assert_allclose(obs[:, 1], plain.step(keep)[0][:, 1], rtol=1e-6)
        assert (obs[:, 6] == np.float32(1e-3)).all()
    infos = hidden.step(keep)[-1]
    assert [info["lr_scale"] for info in infos] == pytest.approx(scale) and infos[0]["final_lr"] == 1e-3
    assert not np.array_equal(hidden.lr_scale, scale)  # a new factor for the next episode
    assert (make_env(splits, seeds).lr_scale == 1).all()  # off by default


def test_log_improvement_return_is_the_log_ratio_of_first_and_final_losses(splits):
    env = make_env(splits, [0, 1], reward="log-improvement", lr_noise=True)
    obs, _ = env.reset()
    rewards = []
    for action in ([0, 1], [2, 0], [1, 1], [0, 2]):
        next_obs, reward, terminated, truncated, infos = env.step(np.array(action))
        rewards.append(reward)
    assert truncated.all() and not terminated.any()
    final = np.array([info["final_observation"][1] for info in infos], dtype=np.float64)
    expected = np.log(obs[:, 1].astype(np.float64)) - np.log(final)  # log L(0) - log L(T)
    np.testing.assert_allclose(np.sum(rewards, 0), expected, rtol=1e-5)
    np.testing.assert_allclose([info["episode_return"] for info in infos], expected, rtol=1e-5)


def test_finished_env_without_autoreset_stays_put(splits):
    env = make_env(splits, [0, 1], autoreset=False)
    env.reset()
    for _ in range(BLOCKS):
        obs, _, _, truncated, _ = env.step(np.array([2, 2]))
    assert truncated.all()
    weights = env.children.output_weights().clone()
    again, reward, terminated, truncated, infos = env.step(np.array([0, 0]))
    np.testing.assert_array_equal(again, obs)
    assert torch.equal(env.children.output_weights(), weights)
    assert not (terminated | truncated).any() and (reward == 0).all()
    assert [info["step"] for info in infos] == [STEPS, STEPS]


@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
def test_vmap_and_module_backends_agree(splits, architecture):
    runs = []
    for backend in BACKENDS:
        env = make_env(splits, [0, 1], backend, architecture=architecture, discrete=False, lr_noise=True)
        observations = [env.reset()[0]]
        for actions in ([[1.05], [0.9]], [[0.97], [1.2]], [[1.0], [1.01]]):
            obs, reward, *_ = env.step(np.array(actions))
            observations += [obs, reward[:, None]]
        runs.append(observations)
    assert isinstance(make_env(splits, [0], "vmap").children, VmapChildren)
    for vmap_out, module_out in zip(*runs):
        np.testing.assert_allclose(vmap_out, module_out, rtol=1e-4, atol=1e-7)


def test_auto_backend_on_cpu_and_resnet_refuses_vmap(splits):
    assert isinstance(make_children("mlp", splits, 2, "cpu"), ModuleChildren)
    with pytest.raises(ValueError, match="BatchNorm"):
        make_children("resnet", splits, 2, "cpu", backend="vmap")


def run(env, actions, seed=None):
    """Observations, rewards and flags of reset + one step per row of ``actions``."""
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for action in actions:
        obs, reward, terminated, truncated, infos = env.step(action)
        out += [obs, reward, terminated, truncated, [info["lr"] for info in infos]]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_vector_env_equals_separate_envs(splits, backend):
    seeds = [5, 6, 7]
    actions = np.array([[0, 1, 2], [1, 1, 0], [2, 0, 1], [0, 0, 0], [1, 2, 1]])  # crosses an auto-reset
    together = run(make_env(splits, seeds, backend, lr_noise=True), actions)
    alone = [run(make_env(splits, [s], backend, lr_noise=True), actions[:, [i]]) for i, s in enumerate(seeds)]
    for t, joint in enumerate(together):
        np.testing.assert_allclose(np.asarray(joint, dtype=np.float64),
                                   np.concatenate([np.asarray(a[t], dtype=np.float64) for a in alone]),
                                   rtol=1e-5, atol=1e-8)


def test_reset_seed_argument(splits):
    """reset(seed=s) reseeds: env i gets seed s + i, the same as building the env with those seeds."""
    a = make_env(splits, [0, 1], lr_noise=True)
    b = make_env(splits, [10, 11], lr_noise=True)
    np.testing.assert_array_equal(a.reset(seed=10)[0], b.reset()[0])
    assert not np.array_equal(a.reset(seed=0)[0], b.reset()[0])


# ----------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("autoreset", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_ends_the_episode_with_a_finite_penalty(splits, backend, autoreset):
    env = make_env(splits, [0, 1], backend, autoreset)
    reference = make_env(splits, [0, 1], backend, autoreset)
    first, _ = env.reset()
    reference.reset()
    poison(env, 0)
    obs, reward, terminated, truncated, infos = env.step(np.array([2, 2]))
    ref_obs, ref_reward, *_ = reference.step(np.array([2, 2]))
    remaining = BLOCKS  # rewards the rest of the episode would have given
    assert terminated.tolist() == [True, False] and not truncated.any()
    assert infos[0]["diverged"] is True and not infos[1].get("diverged", False)
    assert np.isfinite(reward).all() and np.isfinite(obs).all()
    assert reward[0] <= -math.log(10) * remaining + 1e-9
    assert np.isfinite(infos[0]["episode_return"]) and infos[0]["episode_return"] == reward[0]
    np.testing.assert_array_equal(obs[1], ref_obs[1])
    assert reward[1] == ref_reward[1]
    if autoreset:
        assert np.isfinite(infos[0]["final_observation"]).all()
        assert env.step_count[0] == 0 and obs[0, 3] == obs[0, 2]  # a fresh episode
    obs, reward, terminated, *_ = env.step(np.array([2, 2]))
    assert np.isfinite(obs).all() and np.isfinite(reward).all() and not terminated.any()
    if autoreset:
        assert reward[0] < 0 and env.step_count[0] == FREQ


def test_divergence_penalty_of_the_log_improvement_reward(splits):
    """A diverged episode returns log L(0) - log max(chance, last finite loss)."""
    env = make_env(splits, [0], reward="log-improvement")
    first, _ = env.reset()
    obs, reward, *_ = env.step(np.array([2]))
    poison(env, 0)
    _, penalty, terminated, _, infos = env.step(np.array([2]))
    assert terminated[0] and infos[0]["diverged"]
    worst = max(math.log(10), obs[0, 1])
    assert penalty[0] == pytest.approx(math.log(obs[0, 1]) - math.log(worst), rel=1e-6)
    assert infos[0]["episode_return"] == pytest.approx(math.log(first[0, 1]) - math.log(worst), rel=1e-5)


# ----------------------------------------------------------------------------- state


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_continues_identically(splits, backend, tmp_path):
    seeds, changes = [3, 4], dict(discrete=False, lr_noise=True)
    actions = np.array([[[1.04], [0.96]], [[1.0], [1.05]], [[0.95], [1.02]], [[1.01], [1.0]], [[1.05], [1.05]]])
    env = make_env(splits, seeds, backend, **changes)
    env.reset()
    env.step(actions[0])
    utils.save_checkpoint(tmp_path / "env.pt", {"format": "env", "env": env.state_dict()})
    expected = [env.step(a) for a in actions[1:]]  # crosses an auto-reset: new child, initial lr noise
    restored = make_env(splits, [90, 91], backend, **changes)
    restored.load_state_dict(utils.load_checkpoint(tmp_path / "env.pt")["env"])
    for a, (obs, reward, terminated, truncated, infos) in zip(actions[1:], expected):
        obs2, reward2, terminated2, truncated2, infos2 = restored.step(a)
        np.testing.assert_array_equal(obs2, obs)
        np.testing.assert_array_equal(reward2, reward)
        np.testing.assert_array_equal(truncated2, truncated)
        assert [i["lr"] for i in infos2] == [i["lr"] for i in infos]
    assert any(truncated.any() for _, _, _, truncated, _ in expected)  # an episode ended meanwhile


# ----------------------------------------------------------------------------- fixed schedules


def step_decay(step):
    return 2e-3 * 0.5 ** (step // 6)


def test_run_episode_with_a_fixed_schedule(splits):
    env = make_env(splits, [0, 1], autoreset=False)
    calls = []

    def next_lr(obs, lr, step):
        calls.append((obs.copy(), lr.copy(), step))
        return np.full(2, step_decay(step))

    result = run_episode(env, next_lr, seeds=[0, 1], initial_lr=[step_decay(0)] * 2)
    np.testing.assert_array_equal(result["step"], [0, 3, 6, 9, 12])  # the fresh child, then each block
    for key in ("train_loss", "val_loss", "lr"):
        assert result[key].shape == (2, BLOCKS + 1) and np.isfinite(result[key]).all()
    expected_lr = [step_decay(max(s - FREQ, 0)) for s in result["step"]]  # lr of the block ending at each step
    np.testing.assert_allclose(result["lr"], [expected_lr] * 2, rtol=1e-12)
    assert [c[2] for c in calls] == [0, 3, 6, 9]
    np.testing.assert_allclose(calls[2][1], [step_decay(3)] * 2, rtol=1e-12)
    assert calls[0][0].shape == (2, 7)
    assert not result["diverged"].any()
    assert result["val_loss"][:, -1].max() < result["val_loss"][:, 0].min()  # the children learn

    # test loss / accuracy of the final children, computed directly
    with torch.no_grad():
        for i, model in enumerate(env.children.models):
            logits = model.eval()(splits.test_x.float() / 255)
            assert result["test_loss"][i] == pytest.approx(F.cross_entropy(logits, splits.test_y).item(), rel=1e-5)
            accuracy = (logits.argmax(1) == splits.test_y).float().mean().item()
            assert result["test_accuracy"][i] == pytest.approx(accuracy, abs=1e-6)
    assert ((0 <= result["test_accuracy"]) & (result["test_accuracy"] <= 1)).all()
    loss, accuracy = env.evaluate_test()
    np.testing.assert_allclose(loss, result["test_loss"], rtol=1e-6)
    np.testing.assert_allclose(accuracy, result["test_accuracy"], rtol=1e-6)


def test_run_episode_marks_a_diverged_child(splits):
    env = make_env(splits, [0, 1], autoreset=False)

    def next_lr(obs, lr, step):
        if step == FREQ:
            poison(env, 0)
        return lr

    result = run_episode(env, next_lr, seeds=[0, 1])
    assert result["diverged"].tolist() == [True, False]
    assert np.isfinite(result["val_loss"][0, :2]).all() and np.isnan(result["val_loss"][0, 2:]).all()
    assert np.isfinite(result["val_loss"][1]).all() and len(result["step"]) == BLOCKS + 1
    assert np.isnan(result["test_loss"][0]) and np.isnan(result["test_accuracy"][0])
    assert np.isfinite(result["test_loss"][1]) and 0 <= result["test_accuracy"][1] <= 1


def test_child_diverging_in_its_first_block_ends_at_the_first_step(splits, monkeypatch):
    env = make_env(splits, seeds=(0, 1), lr_noise=False)
    train_block = env.children.train_block

    def poison_child_0(*args):
        with torch.no_grad():
            for p in env.children.models[0].parameters():
                p.fill_(float("nan"))
        return train_block(*args)

    fresh, _ = env.reset()
    monkeypatch.setattr(env.children, "train_block", poison_child_0)
    obs, reward, terminated, _, infos = env.step(np.array([2, 2]))
    assert terminated.tolist() == [True, False] and infos[0]["diverged"]
    np.testing.assert_array_equal(infos[0]["final_observation"], fresh[0])  # its last finite observation
    assert np.isfinite(obs).all() and np.isfinite(reward).all()
    assert reward[0] == pytest.approx(-max(math.log(10), fresh[0, 1]) * BLOCKS, rel=1e-6)


def test_cosine_baseline_follows_torch_cosine_annealing_per_block():
    """The cosine baseline is CosineAnnealingLR (eta_min 0) stepped once per block of FREQ steps."""
    lr0, total, freq = 1e-2, 60, 10
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr0)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total // freq)
    cosine = Cosine(lr0, total)
    for step in range(0, total, freq):
        assert cosine.next_lr(None, None, step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
        optimizer.step()
        reference.step()
    assert baseline_schedule({"kind": "cosine", "initial_lr": lr0}, total).next_lr(None, None, total) == 0


# ----------------------------------------------------------------------------- speed options


def block_losses(splits, seeds=(0, 1), blocks=8, **options):
    """Validation losses (blocks, children) after each block of children trained with ``options``."""
    env = make_env(splits, seeds, lr_noise=False, initial_lr=5e-3, num_train_steps=blocks * FREQ, **options)
    env.reset()
    return np.array([env.step(np.full(len(seeds), 2))[0][:, 1] for _ in range(blocks)])


def test_bf16_autocast_keeps_the_learning_curve_within_noise_of_fp32(splits):
    """bf16 moves each child's log-loss curve less than changing the child's seed does."""
    seeds = (0, 1, 2, 3)
    fp32, bf16 = np.log(block_losses(splits, seeds)), np.log(block_losses(splits, seeds, precision="bf16"))
    assert not np.array_equal(fp32, bf16)  # autocast is on
    precision_effect = np.abs(bf16 - fp32).mean()
    seed_noise = np.abs(fp32[:, :, None] - fp32[:, None, :]).sum() / (len(fp32) * len(seeds) * (len(seeds) - 1))
    assert precision_effect < 0.5 * seed_noise, (precision_effect, seed_noise)


def test_compiled_children_give_the_eager_losses(splits):
    eager, compiled = block_losses(splits, blocks=2), block_losses(splits, blocks=2, compile=True)
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="checks CUDA synchronization; needs a GPU")
@pytest.mark.parametrize("architecture", ["mlp", "cnn", "resnet"])
def test_a_block_never_waits_on_the_gpu(splits, architecture):
    """Training a block issues no synchronizing CUDA call (the observation's copy back is the one wait)."""
    config = replace(CONFIG, architecture=architecture, discrete=False)
    env = VecALRSEnv(config, splits.to("cuda"), [0, 1], "cuda", autoreset=False)
    env.reset()
    env.step(np.ones((2, 1)))  # warm-up: cuDNN autotuning, allocator
    torch.cuda.set_sync_debug_mode("error")
    try:
        env._train_block(np.array([True, False]))
    finally:
        torch.cuda.set_sync_debug_mode("default")
