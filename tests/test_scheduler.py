"""ALRSScheduler in a plain PyTorch loop gives the environment's learning rates and losses exactly."""
import importlib.util
import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from children import BatchSampler, to_float
from conftest import ROOT, write_image_folder, write_mnist
from data import load_splits
from alrs.controller import FEATURES, Controller, ControllerEnsemble, ensemble_state, read_controller_checkpoint
from environment import EnvConfig, VecALRSEnv, run_episode
from alrs.policy import ActorCritic, VecNormalizer
from models import build_model
from alrs.scheduler import ALRSScheduler, load_scheduler_controller, pretrained_controllers
from utils import run_cli, save_checkpoint

PRETRAINED = ROOT / "alrs" / "pretrained" / "fa-mnist_mlp_stable.pt"
STEPS, FREQ, BATCH, SEED = 40, 10, 16, 3


@pytest.fixture(scope="module")
def splits(mnist_dir):
    return load_splits("fa-mnist", mnist_dir, train_size=200, val_size=60)


def environment_run(splits, controller, initial_lr):
    """test.py's learned row: one environment, no noise, driven by the controller."""
    config = EnvConfig(architecture="mlp", batch_size=BATCH, update_freq=FREQ, num_train_steps=STEPS, lr_noise=False,
                       features=controller.features)
    envs = VecALRSEnv(config, splits, [SEED], "cpu", autoreset=False)
    return run_episode(envs, lambda obs, lr, step: np.array([controller.next_lr(obs[0], lr[0], step)]),
                       [SEED], [initial_lr])


def plain_loop(splits, controller, initial_lr, steps=STEPS, scheduler_state=None):
    """A user's loop: the environment's child and batches through a DataLoader, Adam and the scheduler.
    Returns the model, the scheduler, and the (lr, val loss) after each block."""
    child_seed = int(torch.randint(2 ** 62, (1,), generator=torch.Generator().manual_seed(2 * SEED)))
    torch.manual_seed(child_seed)
    model = build_model("mlp", 1, (28, 28))
    order = BatchSampler(len(splits.train_x), BATCH, [torch.Generator().manual_seed(2 * SEED + 1)]).block(STEPS, [True])
    loader = DataLoader(TensorDataset(to_float(splits.train_x.clone()), splits.train_y),
                        batch_sampler=[indices.tolist() for indices in order[:, 0]])
    optimizer = torch.optim.Adam(model.parameters(), lr=initial_lr)
    scheduler = ALRSScheduler(optimizer, model, controller, (to_float(splits.val_x.clone()), splits.val_y),
                              update_freq=FREQ, total_steps=STEPS)
    blocks = [(scheduler.lr, scheduler.val_loss)]
    for images, labels in loader:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step(loss)
        if scheduler.last_epoch % FREQ == 0:
            blocks.append((scheduler.lr, scheduler.val_loss))
    return model, scheduler, blocks


@pytest.mark.parametrize("initial_lr", [1e-2, 1e-4])
def test_scheduler_reproduces_the_environment_exactly(splits, initial_lr):
    controller = load_scheduler_controller(PRETRAINED)
    episode = environment_run(splits, controller, initial_lr)
    _, scheduler, blocks = plain_loop(splits, controller, initial_lr)
    rates, losses = np.array(blocks).T
    # the environment records at each observation the rate of the block that ended there; the
    # scheduler's rate after an observation is the next block's
    np.testing.assert_array_equal(losses, episode["val_loss"][0])
    np.testing.assert_array_equal(rates[:-1], episode["lr"][0, 1:])
    assert len(set(rates)) > 2  # the controller changed the rate at every action
    assert scheduler.get_last_lr() == [rates[-1]]


def test_an_ensemble_checkpoint_of_copies_schedules_as_its_one_controller(splits, tmp_path):
    state = read_controller_checkpoint(PRETRAINED)
    save_checkpoint(tmp_path / "copies.pt", ensemble_state([state] * 3))
    _, _, alone = plain_loop(splits, load_scheduler_controller(PRETRAINED), 1e-3)
    _, scheduler, joined = plain_loop(splits, tmp_path / "copies.pt", 1e-3)
    assert isinstance(scheduler.controller, ControllerEnsemble)
    np.testing.assert_allclose(np.array(joined), np.array(alone), rtol=1e-6)
    assert len({rate for rate, _ in joined}) > 2


def relative_controller(features):
    """An untrained controller of the scale-free observation whose action depends on it: an actor with a
    large output layer, its normalizer frozen at zero mean and unit variance."""
    torch.manual_seed(0)
    agent = ActorCritic(len(FEATURES[features]))
    with torch.no_grad():
        agent.actor[-1].weight.mul_(300)
    normalizer = VecNormalizer(len(FEATURES[features]), 1)
    normalizer.training = False
    return Controller(agent.eval(), normalizer, 1.05, "log", features=features)


@pytest.mark.parametrize("features", ["relative", "relative-progress", "relative-progress-no-log-lr"])
def test_scheduler_reproduces_the_environment_with_relative_features(splits, features):
    controller = relative_controller(features)
    episode = environment_run(splits, controller, 1e-3)
    _, scheduler, blocks = plain_loop(splits, controller, 1e-3)
    rates, losses = np.array(blocks).T
    np.testing.assert_array_equal(losses, episode["val_loss"][0])
    np.testing.assert_allclose(rates[:-1], episode["lr"][0, 1:], rtol=1e-6)
    assert len(set(np.round(rates, 12))) > 2  # the observation moved the rate


@pytest.mark.parametrize("features", ["relative-progress", "relative-progress-no-log-lr"])
def test_a_progress_controller_needs_total_steps(splits, features):
    model = build_model("mlp", 1, (28, 28))
    with pytest.raises(ValueError, match="total_steps"):
        ALRSScheduler(torch.optim.Adam(model.parameters()), model, relative_controller(features),
                      (to_float(splits.val_x), splits.val_y))


def test_observations_out_of_the_trained_range_warn_once_naming_the_feature(splits):
    controller = relative_controller("relative")
    controller.normalizer.obs_rms.var[:] = 1e-6  # a controller that saw log lr at -6.9 +- 0.001 only
    controller.normalizer.obs_rms.mean[:] = 0
    controller.normalizer.obs_rms.mean[5] = np.log(1e-3)
    model = build_model("mlp", 1, (28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = ALRSScheduler(optimizer, model, controller, (to_float(splits.val_x), splits.val_y), update_freq=1,
                              max_lr=2e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(12):
            scheduler.step(torch.tensor(1.0))
    messages = [str(w.message) for w in caught if "outside the range" in str(w.message)]
    assert len(messages) == 1 and "log_lr" in messages[0] and "5 actions in a row" in messages[0]
    assert max(scheduler.get_last_lr()) <= 2e-2  # max_lr bounds the rate


def test_scheduler_state_dict_resumes_exactly(splits):
    controller = load_scheduler_controller(PRETRAINED)
    _, _, blocks = plain_loop(splits, controller, 1e-3)
    model, scheduler, _ = plain_loop(splits, controller, 1e-3)
    saved = scheduler.state_dict()
    fresh_optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    resumed = ALRSScheduler(fresh_optimizer, model, controller, (to_float(splits.val_x), splits.val_y))
    resumed.load_state_dict(saved)
    assert resumed.get_last_lr() == [blocks[-1][0]] and resumed.last_epoch == STEPS
    assert torch.equal(resumed.prev_logits, scheduler.prev_logits)


def test_scheduler_accepts_a_dataloader_and_keeps_the_ratio_of_the_groups(splits):
    model = build_model("mlp", 1, (28, 28))
    optimizer = torch.optim.Adam([{"params": model.layers[:2].parameters()},
                                  {"params": model.layers[2:].parameters(), "lr": 1e-2}], lr=1e-4)
    val = DataLoader(TensorDataset(to_float(splits.val_x), splits.val_y), batch_size=25)
    scheduler = ALRSScheduler(optimizer, model, str(PRETRAINED), val)
    tensors = ALRSScheduler(torch.optim.Adam(model.parameters(), lr=1e-4), model, str(PRETRAINED),
                            (to_float(splits.val_x), splits.val_y))
    assert scheduler.val_loss == pytest.approx(tensors.val_loss, rel=1e-6)
    assert tensors.lr != 1e-4 and scheduler.get_last_lr() == [tensors.lr, pytest.approx(100 * tensors.lr)]
    assert scheduler.base_lrs == [1e-4, 1e-2]
    state = scheduler.state_dict()
    resumed = ALRSScheduler(torch.optim.Adam([{"params": model.layers[:2].parameters()},
                                              {"params": model.layers[2:].parameters()}], lr=0.05), model,
                            str(PRETRAINED), val)
    resumed.load_state_dict(state)
    assert resumed.get_last_lr() == scheduler.get_last_lr()


def test_scheduler_is_a_torch_scheduler_and_steps_without_a_loss(splits, monkeypatch):
    """step() with no loss: the block's training-loss feature is the validation loss at its end."""
    controller = load_scheduler_controller(PRETRAINED)
    observed = []
    next_lr = Controller.next_lr
    monkeypatch.setattr(Controller, "next_lr", lambda self, obs, lr, step: observed.append(obs) or next_lr(self, obs, lr, step))
    model = build_model("mlp", 1, (28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = ALRSScheduler(optimizer, model, controller, (to_float(splits.val_x), splits.val_y))
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    assert scheduler.last_epoch == 0 and scheduler.base_lrs == [1e-3]
    images, labels = to_float(splits.train_x[:BATCH]), splits.train_y[:BATCH]
    with pytest.warns(UserWarning, match="step\\(\\) without the loss"):
        for _ in range(FREQ):
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            scheduler.step()
    assert scheduler.last_epoch == FREQ and len(observed) == 2
    assert observed[1][0] == observed[1][1] == np.float32(scheduler.val_loss)


def test_scheduler_errors_name_the_argument(splits):
    val = (to_float(splits.val_x), splits.val_y)
    no_linear = torch.nn.Sequential(torch.nn.Conv2d(1, 10, 28), torch.nn.Flatten())
    adam = lambda model: torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="model: no nn.Linear is called.*output_layer="):
        ALRSScheduler(adam(no_linear), no_linear, PRETRAINED, val)
    with pytest.raises(ValueError, match="output_layer: '0' is a Conv2d, not the nn.Linear"):
        ALRSScheduler(adam(no_linear), no_linear, PRETRAINED, val, output_layer="0")
    model = build_model("mlp", 1, (28, 28))
    with pytest.raises(ValueError, match="output_layer: model has no layer 'head'"):
        ALRSScheduler(adam(model), model, PRETRAINED, val, output_layer="head")
    for empty in ((val[0][:0], val[1][:0]), DataLoader(TensorDataset(val[0][:0], val[1][:0]), batch_size=4)):
        with pytest.raises(ValueError, match="val_data holds no samples"):
            ALRSScheduler(adam(model), model, PRETRAINED, empty)


def test_from_pretrained_finds_the_shipped_controllers_from_any_folder(splits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = build_model("mlp", 1, (28, 28))
    val = (to_float(splits.val_x), splits.val_y)
    scheduler = ALRSScheduler.from_pretrained("fa-mnist_mlp_stable", torch.optim.Adam(model.parameters(), lr=1e-3),
                                              model, val, update_freq=5)
    by_path = ALRSScheduler(torch.optim.Adam(model.parameters(), lr=1e-3), model, PRETRAINED, val)
    assert scheduler.update_freq == 5 and scheduler.get_last_lr() == by_path.get_last_lr()
    with pytest.raises(ValueError, match="no pretrained controller 'mnist'; available: fa-mnist_mlp_stable"):
        ALRSScheduler.from_pretrained("mnist", torch.optim.Adam(model.parameters()), model, val)


def test_scheduler_warns_for_other_optimizers_only(splits):
    model = build_model("mlp", 1, (28, 28))
    val = (to_float(splits.val_x), splits.val_y)
    for optimizer, kind in ((torch.optim.SGD(model.parameters(), lr=1e-3), "sgd"),
                            (torch.optim.AdamW(model.parameters(), lr=1e-3), "adamw"),
                            (torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2), "L2 weight decay")):
        with pytest.warns(UserWarning, match=f"trained to set the rate of adam; it was not trained with .*{kind}") as caught:
            ALRSScheduler(optimizer, model, PRETRAINED, val)
        assert caught[0].filename == __file__  # the warning points at the user's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ALRSScheduler(torch.optim.Adam(model.parameters(), lr=1e-3), model, PRETRAINED, val)


def test_sampled_actions_follow_the_global_seed(splits):
    model = build_model("mlp", 1, (28, 28))
    val = (to_float(splits.val_x), splits.val_y)
    controller = load_scheduler_controller(PRETRAINED, deterministic=False)
    with torch.no_grad():  # a policy centred on "keep the rate", so samples do not all hit the clip
        controller.agent.actor[-1].weight.zero_()
        controller.agent.actor[-1].bias.zero_()
        controller.agent.log_std.fill_(-3.0)

    def first_rate(seed):
        torch.manual_seed(seed)
        return ALRSScheduler(torch.optim.Adam(model.parameters(), lr=1e-3), model, controller, val).lr

    assert first_rate(0) == first_rate(0)
    assert len({first_rate(seed) for seed in range(5)}) == 5


def test_pretrained_controller_is_the_study_policy():
    controller = load_scheduler_controller(PRETRAINED)
    assert isinstance(controller, Controller) and controller.action_param == "log"
    assert not controller.agent.discrete and controller.normalizer.training is False
    state = torch.load(PRETRAINED, weights_only=True)
    assert state["trained_args"]["reward"] == "log-improvement" and state["timesteps"] == 40000


def test_every_shipped_controller_has_its_card_and_training_flags(splits):
    """A controller shipped without its card, or whose card names other optimizers than it was trained with,
    would mislead the user picking one."""
    names = pretrained_controllers()
    assert {"family_adam_progress", "family_progress", "generalist_mlp_progress"} <= set(names)
    for name in names:
        assert (PRETRAINED.parent / f"{name}.md").read_text().startswith(f"# {name}.pt\n")
        trained_args = torch.load(PRETRAINED.parent / f"{name}.pt", weights_only=True)["trained_args"]
        drawn = trained_args.get("family_optimizers") or [trained_args.get("optimizer") or "adam"]
        assert sorted(load_scheduler_controller(PRETRAINED.parent / f"{name}.pt").optimizers) == sorted(drawn)
    model = build_model("mlp", 1, (28, 28))
    val = (to_float(splits.val_x), splits.val_y)
    with pytest.raises(ValueError, match="total_steps"):  # family_adam_progress observes the fraction of the run done
        ALRSScheduler.from_pretrained("family_adam_progress", torch.optim.Adam(model.parameters(), lr=1e-3), model, val)
    with pytest.warns(UserWarning, match="trained to set the rate of adam; it was not trained with sgd"):
        ALRSScheduler.from_pretrained("family_adam_progress", torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9),
                                      model, val, total_steps=100)


@pytest.mark.slow
def test_own_loop_example_trains_with_the_pretrained_controller_offline(tmp_path, capsys):
    """On the .gz files torchvision downloads (as the offline copies are), an image folder, or no data."""
    spec = importlib.util.spec_from_file_location("own_loop", ROOT / "examples" / "own_loop.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    data = write_mnist(tmp_path / "data", "FashionMNIST", compress=True)
    common = ["--data-dir", str(data), "--val-size", "100", "--steps", "20", "--batch-size", "16",
              "--log-every", "10"]
    images = write_image_folder(tmp_path / "images", size=28, mode="L", num_classes=3, per_class=(60, 4))
    folder = ["--image-folder", str(images), "--val-size", "30"]
    for extra, changed in (([], True), (["--constant"], False), (folder, True)):
        example.main(common + extra)
        lines = capsys.readouterr().out.splitlines()
        rates = [float(re.search(r"lr (\S+)", line).group(1)) for line in lines]
        assert len(lines) == 2 and all(r != 1e-3 for r in rates) == changed, lines
    with pytest.raises(SystemExit) as exit_info:
        run_cli(example.main, ["--data-dir", str(tmp_path / "nothing")], prog="own_loop.py")
    assert exit_info.value.code == 2 and "fa-mnist not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a user's mistakes, one line each

def adam(model, lr=1e-3):
    return torch.optim.Adam(model.parameters(), lr=lr)


def train_steps(model, optimizer, scheduler, images, labels, steps, loss_of=None):
    """``steps`` training steps on one batch, the scheduler stepped with ``loss_of(loss)`` (default: the loss)."""
    for _ in range(steps):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step(loss if loss_of is None else loss_of(loss))


@pytest.mark.parametrize("make_val, message", [
    (lambda x, y: (x, y.float().view(-1, 1)), "labels must be integer class indices.*not regression"),
    (lambda x, y: (x, torch.rand(len(y), 3)), "labels must be integer class indices"),
    (lambda x, y: ((x[i:i + 10], y[i:i + 10]) for i in range(0, len(y), 10)), "generator or iterator"),
    (lambda x, y: [{"image": x, "label": y}], "got a dict with keys image, label"),
    (lambda x, y: [x], "batches must be \\(images, labels\\) pairs of tensors, got Tensor"),
    (lambda x, y: (x, y[:-1]), "60 images but 59 labels"),
    (lambda x, y: (x, y + 10), "labels run from 10 to 19, but the model has 10 outputs"),
    (lambda x, y: (x.flatten(1), y), "val_data: the model cannot take its images, of shape \\(784,\\)"),
])
def test_bad_validation_data_gets_one_line_naming_it(splits, make_val, message):
    model = build_model("cnn", 1, (28, 28))
    with pytest.raises((ValueError, TypeError), match=message) as error:
        ALRSScheduler(adam(model), model, PRETRAINED, make_val(to_float(splits.val_x), splits.val_y))
    assert "\n" not in str(error.value)


def test_a_dataset_is_read_once_and_val_size_watches_a_fixed_subset(splits):
    model = build_model("mlp", 1, (28, 28))
    images, labels = to_float(splits.val_x), splits.val_y
    from_dataset = ALRSScheduler(adam(model), model, PRETRAINED, TensorDataset(images, labels), val_size=None)
    assert torch.equal(from_dataset.val_images, images) and torch.equal(from_dataset.val_labels, labels)
    subsets = [ALRSScheduler(adam(model), model, PRETRAINED, (images, labels), val_size=8) for _ in range(2)]
    assert len(subsets[0].val_labels) == 8 and torch.equal(subsets[0].val_images, subsets[1].val_images)
    assert not torch.equal(subsets[0].val_images, images[:8])  # a random subset, not the first (maybe sorted) ones
    for name, value in (("update_freq", 10.5), ("total_steps", "100"), ("val_size", 0), ("warmup_steps", -1)):
        with pytest.raises(ValueError, match=f"{name} must be an integer"):
            ALRSScheduler(adam(model), model, PRETRAINED, (images, labels), **{name: value})


def test_non_finite_and_per_sample_losses(splits):
    """NaN and inf losses are left out of the block's mean with one warning; the run goes on. A per-sample
    loss vector is refused at once."""
    model = build_model("mlp", 1, (28, 28))
    optimizer = adam(model)
    scheduler = ALRSScheduler(optimizer, model, PRETRAINED, (to_float(splits.val_x), splits.val_y))
    images, labels = to_float(splits.train_x[:BATCH]), splits.train_y[:BATCH]
    bad = iter([math.nan, math.inf] + [None] * 100)
    with pytest.warns(UserWarning, match="2 of the last 10 losses were not finite") as caught:
        train_steps(model, optimizer, scheduler, images, labels, 3 * FREQ,
                    lambda loss: loss if (value := next(bad)) is None else torch.tensor(value))
    assert sum("not finite" in str(w.message) for w in caught) == 1 and math.isfinite(scheduler.lr)
    assert caught[0].filename == __file__
    with pytest.raises(ValueError, match=r"one loss per step.*shape \(16,\); pass loss.mean\(\)"):
        scheduler.step(F.cross_entropy(model(images), labels, reduction="none"))


def test_warnings_for_rates_out_of_range_running_past_the_end_and_stepping_first(splits):
    model = build_model("mlp", 1, (28, 28))
    val = (to_float(splits.val_x), splits.val_y)
    with pytest.warns(UserWarning, match="learning rate 0.5 is outside the controller's range.*starts from 0.1"):
        ALRSScheduler(torch.optim.Adam(model.parameters(), lr=0.5), model, PRETRAINED, val)
    optimizer = adam(model)
    scheduler = ALRSScheduler(optimizer, model, PRETRAINED, val, total_steps=FREQ)
    with pytest.warns(UserWarning, match="before optimizer.step"):
        scheduler.step(1.0)
    images, labels = to_float(splits.train_x[:BATCH]), splits.train_y[:BATCH]
    with pytest.warns(UserWarning, match="step 11: past total_steps=10") as caught:
        train_steps(model, optimizer, scheduler, images, labels, 2 * FREQ)
    assert sum("past total_steps" in str(w.message) for w in caught) == 1


def test_the_output_layer_is_the_last_linear_the_forward_pass_calls(splits):
    class HeadFirst(torch.nn.Module):  # the head registered before the body
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(32, 10)
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU())

        def forward(self, x):
            return self.head(self.body(x))

    model = HeadFirst()
    scheduler = ALRSScheduler(adam(model), model, PRETRAINED, (to_float(splits.val_x), splits.val_y))
    assert scheduler.output_layer is model.head


def test_warm_up_then_the_controller_and_sequential_lr(splits):
    """warmup_steps ramps the rate linearly, then the controller's episode starts from the optimizer's
    rate on the warmed-up model. Inside SequentialLR after a LinearLR warm-up the episode starts at
    the milestone the same way; ChainedScheduler is refused in one line."""
    images, labels = to_float(splits.train_x[:BATCH]), splits.train_y[:BATCH]
    val = (to_float(splits.val_x), splits.val_y)
    torch.manual_seed(0)
    model = build_model("mlp", 1, (28, 28))
    optimizer = adam(model)
    scheduler = ALRSScheduler(optimizer, model, PRETRAINED, val, warmup_steps=4)
    rates = [scheduler.get_last_lr()[0]]
    for _ in range(4 + FREQ):
        train_steps(model, optimizer, scheduler, images, labels, 1)
        rates.append(scheduler.get_last_lr()[0])
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert rates[4] != 1e-3 and rates[4] == rates[4 + FREQ - 1] != rates[4 + FREQ]  # acts at 4, then every 10
    assert scheduler.initial_lr == 1e-3 and scheduler.episode_start == 4

    torch.manual_seed(0)
    model = build_model("mlp", 1, (28, 28))
    optimizer = adam(model)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.25, total_iters=4)
    alrs = ALRSScheduler(optimizer, model, PRETRAINED, val)
    sequential = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, alrs], milestones=[4])
    seen = [optimizer.param_groups[0]["lr"]]
    with pytest.warns(UserWarning, match="step\\(\\) without the loss"):
        for _ in range(4 + FREQ):
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sequential.step()
            seen.append(optimizer.param_groups[0]["lr"])
    assert seen[:4] == pytest.approx([2.5e-4, 4.375e-4, 6.25e-4, 8.125e-4])
    assert alrs.episode_start == 0 and alrs.initial_lr == 1e-3 and seen[4] == pytest.approx(rates[4])
    assert sequential.get_last_lr() == alrs.get_last_lr() == alrs.get_lr()
    chained = torch.optim.lr_scheduler.ChainedScheduler([torch.optim.lr_scheduler.LinearLR(optimizer), alrs])
    with pytest.raises(TypeError, match="cannot run inside ChainedScheduler"):
        chained.step()


def test_an_anchored_controller_schedules_cosine_in_a_plain_loop_as_in_the_environment(splits):
    """An untrained anchored controller keeps its controlled rate, so the scheduler runs cosine annealing
    from the optimizer's rate, block by block, and the environment gives the same rates."""
    agent = ActorCritic(len(FEATURES["relative-progress"]))
    with torch.no_grad():
        agent.actor[-1].weight.zero_()
        agent.actor[-1].bias.zero_()
    controller = Controller(agent, VecNormalizer(agent.actor[0].in_features, 1), 1.5, "log", "relative-progress",
                            anchor="cosine")
    model = build_model("mlp", 1, (28, 28))
    optimizer = adam(model)
    scheduler = ALRSScheduler(optimizer, model, controller, (to_float(splits.val_x), splits.val_y), total_steps=STEPS,
                              update_freq=FREQ)
    images, labels = to_float(splits.train_x[:BATCH]), splits.train_y[:BATCH]
    rates = [scheduler.get_last_lr()[0]]
    for _ in range(STEPS // FREQ - 1):
        train_steps(model, optimizer, scheduler, images, labels, FREQ)
        rates.append(scheduler.get_last_lr()[0])
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * step / STEPS)) for step in range(0, STEPS, FREQ)]
    assert rates == pytest.approx(cosine)
    config = EnvConfig(architecture="mlp", batch_size=BATCH, update_freq=FREQ, num_train_steps=STEPS, lr_noise=False,
                       features="relative-progress", anchor="cosine", action_param="log", action_range=1.5)
    envs = VecALRSEnv(config, splits, [SEED], "cpu", autoreset=False, anchors=["cosine"])
    episode = run_episode(envs, lambda obs, lr, step: np.array([controller.starting_at(1e-3).next_lr(obs[0], lr[0], step)]),
                          [SEED], [1e-3])
    assert episode["lr"][0, 1:] == pytest.approx(cosine)
