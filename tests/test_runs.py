"""The runs/ folder (runs.py): experiment ids, finding runs and checkpoints, the training state that
--resume reads, and the baseline folders' names."""
import json

import pytest
import torch

import flags
import runs
from utils import UserError, save_checkpoint

TRAIN_ARGS = ["--dataset", "mnist", "--architecture", "mlp"]


def test_a_new_run_is_named_by_its_setting_and_never_reuses_a_folder(tmp_path):
    args = flags.parse_args("train", [*TRAIN_ARGS, "--runs-dir", str(tmp_path), "--tb-suffix", "x"])
    first, second = runs.new_run_dir(args), runs.new_run_dir(args)
    assert first.name.startswith("mnist_mlp_continuous_") and first.name.endswith("_x")
    assert second != first and second.name.startswith(first.name)  # same second: a numbered sibling
    assert json.loads((first / "args.json").read_text())["architecture"] == "mlp"
    mix = flags.parse_args("train", ["--runs-dir", str(tmp_path), "--task", "batch_size=64", "--task", "classes=5"])
    assert runs.new_run_dir(mix).name.startswith("mix2_continuous_")


def test_a_missing_run_or_checkpoint_names_what_there_is(tmp_path):
    args = flags.parse_args("train", [*TRAIN_ARGS, "--runs-dir", str(tmp_path)])
    run_dir = runs.new_run_dir(args)
    with pytest.raises(UserError, match=run_dir.name):
        runs.find_run(tmp_path, "nope")
    assert runs.find_run(tmp_path, run_dir.name) == run_dir
    save_checkpoint(run_dir / "checkpoints" / "latest.pt", {"x": 1})
    assert runs.checkpoint_path(run_dir, "latest") == runs.checkpoint_path(run_dir, "latest.pt")
    with pytest.raises(UserError, match=r"no checkpoint best.pt .*16 episodes.*latest.pt"):
        runs.checkpoint_path(run_dir, "best")


def training_state(**changes):
    return {key: 0 for key in runs.TRAINING_STATE_KEYS} | {"device": "cpu"} | changes


def test_the_training_state_round_trips_and_says_how_to_resume_otherwise(tmp_path):
    assert runs.load_training_state(tmp_path, "cpu") is None  # stopped before its first update
    with pytest.raises(AssertionError, match="optimizer"):
        runs.save_training_state(tmp_path, {k: v for k, v in training_state().items() if k != "optimizer"})
    runs.save_training_state(tmp_path, training_state(update=3, obs=torch.ones(2)))
    state = runs.load_training_state(tmp_path, "cpu")
    assert state["update"] == 3 and torch.equal(state["obs"], torch.ones(2))
    with pytest.raises(UserError, match="--device cpu"):
        runs.load_training_state(tmp_path, "cuda")
    (tmp_path / "checkpoints" / runs.TRAINING_STATE).unlink()
    (tmp_path / "updates.jsonl").write_text('{"update": 0}\n')
    with pytest.raises(UserError, match="records are kept"):
        runs.load_training_state(tmp_path, "cpu")


def test_a_baseline_folder_names_the_settings_that_change_the_numbers():
    args = flags.parse_args("baselines", TRAIN_ARGS)
    assert runs.setting_id(args) == "mnist_mlp_steps1000_batch1000"  # defaults left out
    varied = flags.parse_args("baselines", [*TRAIN_ARGS, "--label-noise", "0.3", "--classes", "5", "--seed", "2"])
    assert runs.setting_id(varied) == "mnist_mlp_steps1000_batch1000_c5_noise0.3_seed2"


def test_best_of_a_kind_skips_diverged_runs_and_filters_by_start():
    results = [{"kind": "cosine", "final_val_loss": None, "initial_lr": 1e-2},
                {"kind": "cosine", "final_val_loss": 0.5, "initial_lr": 1e-2},
                {"kind": "cosine", "final_val_loss": 0.3, "initial_lr": 1e-3},
                {"kind": "constant", "final_val_loss": 0.1, "initial_lr": 1e-3}]
    assert runs.best_of(results, "cosine")["final_val_loss"] == 0.3
    assert runs.best_of(results, "cosine", initial_lr=1e-2)["final_val_loss"] == 0.5
    assert runs.best_of(results, "step_decay") is None
