"""The tuning-free pieces: random classifiers, the family of tasks, the child's optimizer, the anchored action."""
import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
from torch import nn

from alrs.controller import anchor_factor, bound_to_anchor, output_layer_name
from conftest import TINY_PPO, experiment_id, jsonl, run
from environment import EnvConfig, FamilyVecEnv, VecALRSEnv
from models import build_model, check_architecture, has_buffers
from optimizers import OptimizerSpec, check_optimizer
from tasks import (FAMILY_TRAINING_SEEDS, FamilyDraws, Task, family_task, load_task_splits, parse_task)

SMALL = {"dataset": "fa-mnist", "train_size": 200, "val_size": 50, "batch_size": 16, "num_train_steps": 20}


@pytest.fixture(scope="module")
def splits(mnist_dir):
    return load_task_splits(Task(**SMALL), mnist_dir)


@pytest.mark.parametrize("spec, convs, linears, norms", [
    ("rc-linear", 0, 1, 0),
    ("rc-d64-d32-elu-bn-p0.3", 0, 3, 2),
    ("rc-c8k3-c4k5-c16k5-prelu", 3, 1, 0),
    ("rc-c4k3-d16-bn", 1, 2, 2),
])
def test_random_classifiers_are_built_from_their_names(spec, convs, linears, norms):
    for channels, size in ((1, 28), (3, 32), (1, 7)):
        model = build_model(spec, channels, (size, size), num_classes=5)
        out = model.eval()(torch.rand(3, channels, size, size))
        assert out.shape == (3, 5)
        kinds = [type(m) for m in model.modules()]
        assert kinds.count(nn.Conv2d) == convs and kinds.count(nn.Linear) == linears
        assert sum(k in (nn.BatchNorm1d, nn.BatchNorm2d) for k in kinds) == norms
        assert has_buffers(model) == bool(norms)
        assert model.get_submodule(output_layer_name(model)).out_features == 5  # the output layer is the last
    assert "Dropout" in str(build_model("rc-d8-p0.3", 1, (28, 28)))
    assert "PReLU" in str(build_model("rc-c4k3-prelu", 1, (28, 28)))


@pytest.mark.parametrize("spec, message", [
    ("rc-c8", "'c8' is none of"), ("rc-d0", "sizes must be positive"), ("rc-d8-tanh", "'tanh' is none of"),
    ("vgg", "unknown architecture 'vgg'")])
def test_bad_architecture_names_are_one_line_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        check_architecture(spec)


def test_a_family_seed_is_one_task_and_restrictions_change_only_their_keys():
    tasks = [family_task(seed) for seed in range(200)]
    assert family_task(7) == family_task(7) and len({t.name for t in tasks}) == 200
    assert {t.batch_size for t in tasks} == {16, 32, 64, 128, 256, 512}
    assert all(300 <= t.num_train_steps <= 3000 and t.num_train_steps % 10 == 0 for t in tasks)
    assert all(2000 <= t.train_size <= 20000 and t.val_size == 2000 for t in tasks)
    assert {t.optimizer for t in tasks} == {"adam", "adamw", "sgd", "schedulefree"}
    assert all(t.weight_decay == 0 and (t.beta1, t.beta2) == (0.9, 0.999) for t in tasks if t.optimizer == "adam")
    assert {t.architecture for t in tasks} > {"mlp", "cnn", "resnet", "rc-linear"}
    adam_only = [family_task(seed, optimizers=("adam",), members=("mlp",)) for seed in range(200)]
    keys = ("dataset", "batch_size", "num_train_steps", "train_size", "classes", "label_noise", "image_size")
    for full, restricted in zip(tasks, adam_only):
        same = keys[:-1] if full.architecture == "cnn" else keys  # LeNet-5 keeps full-size images
        assert [getattr(full, k) for k in same] == [getattr(restricted, k) for k in same]
        assert restricted.optimizer == "adam" and restricted.architecture not in ("cnn", "resnet")
    lenets = [(full, restricted) for full, restricted in zip(tasks, adam_only) if full.architecture == "cnn"]
    assert any(restricted.image_size == 14 for _, restricted in lenets)  # a draw of the 14-pixel variant
    for task, _ in lenets:  # LeNet-5 draws full-size images, so every draw builds
        assert task.image_size is None
        model = build_model(task.architecture, 1, (28, 28), task.classes or 10)
        assert model(torch.zeros(1, 1, 28, 28)).shape == (1, task.classes or 10)
    assert parse_task("family=7", Task()) == family_task(7)
    assert parse_task("family=7,optimizer=sgd", Task()) == dataclasses.replace(family_task(7), optimizer="sgd")


def test_training_draws_are_reproducible_and_never_held_out():
    draws = FamilyDraws(3, overrides={"num_train_steps": 20})
    seeds = [draws.next()[1] for _ in range(50)]
    assert all(seed in FAMILY_TRAINING_SEEDS for seed in seeds) and len(set(seeds)) == 50
    again = FamilyDraws(3)
    assert [again.next()[1] for _ in range(50)] == seeds
    state = draws.state_dict()
    after = [draws.next() for _ in range(3)]
    resumed = FamilyDraws(0, overrides={"num_train_steps": 20})
    resumed.load_state_dict(state)
    assert [resumed.next() for _ in range(3)] == after and all(t.num_train_steps == 20 for t, _ in after)


def test_optimizer_specs_build_torch_optimizers_and_check_their_values():
    params = [nn.Parameter(torch.zeros(3))]
    adamw = OptimizerSpec("adamw", 0.01, 0.8, 0.99).build(params, 1e-3, 100)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.99)
    sgd = OptimizerSpec("sgd", 0.0, 0.5).build(params, 1e-2, 100)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.5 and sgd.defaults["lr"] == 1e-2
    assert OptimizerSpec().plain_adam and not OptimizerSpec("adam", 0.01).plain_adam
    assert OptimizerSpec.of(family_task(0)).name == family_task(0).optimizer
    for bad, message in ((OptimizerSpec("lamb"), "optimizer must be one of"),
                         (OptimizerSpec("adamw", -1.0), "weight_decay must be at least 0"),
                         (OptimizerSpec("adam", 0.0, 1.0), "beta1 must be in")):
        with pytest.raises(ValueError, match=message):
            check_optimizer(bad)


def test_schedule_free_children_are_validated_at_their_evaluation_weights(splits):
    pytest.importorskip("schedulefree")
    config = EnvConfig(architecture="mlp", batch_size=16, update_freq=5, num_train_steps=20, lr_noise=False,
                       optimizer="schedulefree", weight_decay=0.01)
    envs = VecALRSEnv(config, splits, [0], "cpu", autoreset=False)
    envs.reset(options={"initial_lr": [1e-2]})
    envs.step_lr(np.array([1e-2]))
    model, optimizer = envs.children.models[0], envs.children.optimizers[0]
    at_train_weights = model.eval()(splits.val_x[:8].float() / 255)
    logits = envs.children.logits(splits.val_x[:8])[0]
    optimizer.eval()
    at_eval_weights = model(splits.val_x[:8].float() / 255)
    optimizer.train()
    assert torch.allclose(logits, at_eval_weights) and not torch.allclose(logits, at_train_weights)


def test_an_anchored_rate_follows_cosine_and_its_corrections_are_bounded(splits):
    """Actions that keep the rate give cosine annealing from the start rate; actions that always raise it
    stop at anchor_range times the start (and the base schedule still applies)."""
    config = EnvConfig(architecture="mlp", batch_size=16, update_freq=5, num_train_steps=20, lr_noise=False,
                       anchor="cosine", anchor_range=2.0, action_param="log", action_range=1.5)
    for action, factors in ((0.0, [1, 1, 1, 1]), (1.0, [1.5, 2, 2, 2])):
        envs = VecALRSEnv(config, splits, [0], "cpu", autoreset=False)
        envs.reset(options={"initial_lr": [1e-3]})
        rates = []
        for _ in range(4):
            _, _, _, _, infos = envs.step(np.array([[action]]))
            rates.append(infos[0]["lr"])
        expected = [1e-3 * f * 0.5 * (1 + math.cos(math.pi * step / 20)) for f, step in zip(factors, (0, 5, 10, 15))]
        assert rates == pytest.approx(expected)
    assert anchor_factor("constant", 0.7) == 1 and anchor_factor("cosine", 1.0) == pytest.approx(0)
    assert bound_to_anchor(np.array([1.0]), 1e-3, "none", 2.0) == 1.0


def test_the_family_environment_draws_a_new_task_every_episode_and_resumes_exactly(mnist_dir):
    config = EnvConfig(update_freq=5, lr_noise=True, features="relative-progress", action_param="log", initial_lr=0)
    load = functools.partial(load_task_splits, data_dir=mnist_dir)
    overrides = dict(SMALL, num_train_steps=10)

    def make(seeds=(1, 2)):
        return FamilyVecEnv(config, [FamilyDraws(s, overrides=overrides) for s in seeds], load)

    envs = make()
    obs, infos = envs.reset()
    assert obs.shape == (2, 8) and infos[0]["instance"] != infos[1]["instance"]
    first = [info["instance"] for info in infos]
    for _ in range(2):
        obs, reward, terminated, truncated, infos = envs.step(np.zeros((2, 1)))
    assert truncated.all() and "final_observation" in infos[0]
    assert [envs.tasks[i].name for i in range(2)] != first  # the next episode runs a newly drawn task
    state = envs.state_dict()
    resumed = make(seeds=(5, 6))
    resumed.load_state_dict(state)
    for env in (envs, resumed):
        torch.manual_seed(0)
        env.result = [env.step(np.full((2, 1), 0.5)) for _ in range(3)]
    for a, b in zip(envs.result, resumed.result):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert [i["instance"] for i in a[4]] == [i["instance"] for i in b[4]]


def test_train_on_the_family_records_the_instances(mnist_dir, tmp_path):
    override = ",".join(f"{k}={v}" for k, v in dict(SMALL, num_train_steps=8).items())
    out = run("train.py", "--data-dir", mnist_dir, "--runs-dir", tmp_path, "--num-envs", "2", "--family", "2",
              "--family-optimizers", "adam,sgd", "--family-override", override, "--update-freq", "4",
              "--anchor", "cosine", "--features", "relative-progress", "--device", "cpu", *TINY_PPO).stdout
    run_dir = tmp_path / experiment_id(out)
    assert run_dir.name.startswith("family2_")
    episodes = jsonl(run_dir / "episodes.jsonl")
    assert episodes and all(e["task"] == "family" and e["family_seed"] in FAMILY_TRAINING_SEEDS for e in episodes)
    assert {family_task(e["family_seed"], ("adam", "sgd"), ("mlp",)).optimizer for e in episodes} <= {"adam", "sgd"}
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert state["anchor"] == "cosine" and state["optimizers"] == ["adam", "sgd"]
    bad = run("train.py", "--data-dir", mnist_dir, "--num-envs", "2", "--family", "3", check=False)
    assert bad.returncode == 2 and "argument --family: between 0 and" in bad.stderr


def test_a_cached_dataset_gives_each_task_the_splits_it_would_read(mnist_dir):
    cache = {}
    for task in (Task(**SMALL, classes=5), Task(**SMALL | {"train_size": 120}, label_noise=0.4, image_size=14)):
        cached, read = load_task_splits(task, mnist_dir, cache=cache), load_task_splits(task, mnist_dir)
        for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
            assert torch.equal(getattr(cached, name), getattr(read, name)), name
    assert len(cache) == 1
