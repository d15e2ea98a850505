"""The scripts end to end through their command lines (``main(argv)`` in-process, as the shell runs
it through run_cli), their errors, and resuming after SIGKILL and Ctrl-C (real subprocesses)."""
import json
import math
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import flags
from conftest import (ROOT, TINY, TINY_GRID, TINY_PPO, TINY_SETTING, compare_updates, experiment_id, jsonl,
                      load_script, run, write_image_folder)
from utils import append_jsonl

@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    """One tiny controller trained on fa-mnist/mlp from random initial rates, and the baselines."""
    runs = tmp_path_factory.mktemp("runs")
    common = ["--data-dir", mnist_dir, "--runs-dir", runs, *TINY_SETTING, "--architecture", "mlp"]
    # 80 episodes from random initial rates: enough for best.pt's 16 per rate
    out = run("train.py", *common, "--num-envs", "2", *TINY_PPO, "--initial-lr", "0",
              "--ppo2-total-timesteps", "320").stdout
    run("baselines.py", *common, "--num-envs", "2", *TINY_GRID)
    return runs, experiment_id(out), common


def test_train_writes_metrics_checkpoints_and_figure(trained):
    runs, run_id, _ = trained
    run_dir = runs / run_id
    assert json.loads((run_dir / "args.json").read_text())["architecture"] == "mlp"
    updates = jsonl(run_dir / "updates.jsonl")
    assert [u["update"] for u in updates] == list(range(40))  # 320 steps / (2 envs x 4)
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance",
                "steps_per_second", "policy_mean", "policy_std", "action_below", "action_above", "action_inside"):
        assert all(key in u for u in updates)
    assert all(u["action_below"] + u["action_inside"] + u["action_above"] == pytest.approx(1) for u in updates)
    episodes = jsonl(run_dir / "episodes.jsonl")
    assert len(episodes) == 2 * (320 // 2) // 4  # each env: 160 controller steps, 12 / 3 = 4 per episode
    assert all(e["final_val_loss"] > 0 and e["lr_min"] <= e["lr_geomean"] <= e["lr_max"] for e in episodes)
    drawn = {min((0.01, 0.001, 0.0001), key=lambda lr: abs(e["initial_lr"] / lr - 1)) for e in episodes}
    assert len(drawn) > 1  # --initial-lr 0: one of three rates per episode (plus 10% noise)
    for u in updates:  # each update's mean is over the episodes that finished in its rollout
        finals = [e["final_val_loss"] for e in episodes if e["update"] == u["update"]]
        assert u["mean_final_val_loss"] == (pytest.approx(np.mean(finals)) if finals else None)
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert {"best.pt", "latest.pt", "step-0000000_untrained.pt"} <= set(names)
    assert any(re.fullmatch(r"step-0000320_val-\d+\.\d{4}\.pt", n) for n in names), names
    latest = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert [len(losses) for losses in latest["recent_finals"]] == [16, 16, 16]  # the last 16 per initial rate
    untrained = torch.load(run_dir / "checkpoints" / "step-0000000_untrained.pt", weights_only=True)
    assert not torch.equal(untrained["agent"]["actor.0.weight"], torch.load(
        run_dir / "checkpoints" / "latest.pt", weights_only=True)["agent"]["actor.0.weight"])
    for name in names:
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert state["format"] == "alrs-controller-1"
    assert (run_dir / "progress.png").stat().st_size > 10_000


def test_baselines_pick_the_lowest_final_validation_loss(trained):
    runs, _, _ = trained
    folder = next((runs / "baselines").iterdir())
    results = jsonl(folder / "results.jsonl")
    assert len(results) == 3 * 1 * 1 + 3 + 3  # step decay grid, then a constant and a cosine per rate
    best = json.loads((folder / "best.json").read_text())
    cosine = [r for r in results if r["kind"] == "cosine"]
    assert best["cosine"]["final_val_loss"] == min(r["final_val_loss"] for r in cosine)
    lr0 = best["cosine"]["initial_lr"]  # 12 steps, blocks of 3: the rate at each block's first step
    assert best["cosine"]["curves"]["lr"][1:] == pytest.approx(
        [max(lr0 * (1 + math.cos(math.pi * step / 12)) / 2, 1e-5) for step in range(0, 12, 3)])
    step_decay = [r for r in results if r["kind"] == "step_decay"]
    assert best["step_decay"]["final_val_loss"] == min(r["final_val_loss"] for r in step_decay)
    lr_curve = best["step_decay"]["curves"]["lr"]
    lr0 = best["step_decay"]["initial_lr"]
    # the rate at each observation: the fresh child's (step 0), then that of the block ending there
    assert lr_curve == pytest.approx([lr0] + [lr0 * 0.5 ** (step // 3) for step in range(0, 12, 3)])
    assert (folder / "best.png").exists()


def test_test_compares_learned_schedule_with_untrained_and_baselines_from_each_rate(trained):
    runs, run_id, common = trained
    out = run("test.py", *common, "--test-id", run_id, "--test-runs", "2").stdout
    assert "TRANSFER" not in out
    assert re.search(r"^learned \(best, mode\) from 0.01\s+\d+\.\d{4} \+- \d+\.\d{4}\s", out, re.M), out
    assert re.search(r"^untrained \(step 0, mode\) from 0.01\s", out, re.M), out
    table = out.split("lower loss is better")[1].split("\nsaved ")[0]  # the lines before name paths
    assert max(map(len, table.splitlines())) <= 120 and "paired differences of final validation loss" in table
    folder = runs / run_id / "test" / "fa-mnist_mlp_best_deterministic"
    result = json.loads((folder / "results.json").read_text())
    assert not result["transfer"] and len(result["seeds"]) == 2 and result["mode"] == "deterministic"
    for lr in ("0.01", "0.001", "0.0001"):  # trained with --initial-lr 0: tested from each rate
        assert {f"{kind}@{lr}" for kind in ("learned", "untrained", "step_decay", "constant", "cosine")} <= set(result["rows"])
        assert result["rows"][f"learned@{lr}"]["initial_lr"] == float(lr)
        assert f"learned@{lr} - untrained@{lr}" in result["paired_differences"]
        assert f"learned@{lr} - cosine@{lr}" in result["paired_differences"]
    for key, method in result["runs"].items():
        assert len(method["test_accuracy"]) == 2 and all(0 <= a <= 1 for a in method["test_accuracy"])
    for lr in ("0.01", "0.001", "0.0001"):
        assert (folder / f"schedules_from_{lr}.png").exists()


def test_one_seed_shows_progress_in_child_steps_and_a_table_without_spread(trained):
    runs, run_id, common = trained
    result = run("test.py", *common, "--test-id", run_id, "--test-runs", "1", "--test-schedule", "latest",
                 "--test-deterministic", "0")  # a results folder no other test uses
    assert re.search(r"test: 100%.* 12/12 .*children=15, seed=1/1", result.stderr), result.stderr  # child steps
    table = result.stdout.split("lower loss is better")[1].split("\nsaved ")[0]
    assert "1 seed, no spread" in result.stdout and "+-" not in table and "paired differences of" not in table
    assert "no paired differences" in table and max(map(len, table.splitlines())) <= 120
    marked = [line.split(" from ")[0] for line in table.splitlines() if re.search(r" \*\s", line)]
    assert len(marked) == len(set(marked)) <= 3, marked  # at most one row per kind marked best overall


@pytest.mark.slow
def test_untrained_row_is_the_initial_policy_and_sampling_is_seeded(trained):
    """Tested as the checkpoint itself, the initial policy gives exactly the untrained rows; sampled
    actions give other numbers than the mode, the same ones on a rerun."""
    runs, run_id, common = trained
    args = [*common, "--test-id", run_id, "--test-runs", "1", "--test-schedule", "step-0000000_untrained"]
    results = {}
    for mode in ("1", "0", "0"):
        run("test.py", *args, "--test-deterministic", mode)
        name = "deterministic" if mode == "1" else "sampled"
        results.setdefault(name, []).append(json.loads(
            (runs / run_id / "test" / f"fa-mnist_mlp_step-0000000_untrained_{name}" / "results.json").read_text()))
    deterministic, sampled = results["deterministic"][0]["runs"], results["sampled"][0]["runs"]
    rates = ("0.01", "0.001", "0.0001")
    for lr in rates:
        assert deterministic[f"learned@{lr}"] == deterministic[f"untrained@{lr}"]
    assert sampled == results["sampled"][1]["runs"]
    assert any(sampled[f"learned@{lr}"] != deterministic[f"learned@{lr}"] for lr in rates)


def test_transfer_to_another_dataset_and_child_is_flagged(trained, mnist_dir):
    runs, run_id, common = trained
    other = [*common, "--dataset", "mnist", "--architecture", "mlp"]
    missing = run("test.py", *other, "--test-id", run_id, check=False)
    assert missing.returncode == 2 and "python baselines.py --dataset mnist --architecture mlp" in missing.stderr
    run("baselines.py", *other, *TINY_GRID)
    out = run("test.py", *other, "--test-id", run_id, "--test-runs", "1").stdout
    assert "[TRANSFER]" in out
    assert json.loads((runs / run_id / "test" / "mnist_mlp_transfer_best_deterministic" / "results.json")
                      .read_text())["transfer"]


@pytest.mark.slow
def test_cifar10_resnet_discrete_trains_a_controller(mnist_dir, tmp_path):
    out = run("train.py", "--dataset", "cifar10", "--architecture", "resnet", "--discrete", "1",
              "--image-size", "16", "--data-dir", mnist_dir, "--runs-dir", tmp_path, *TINY, "--ppo2-update-freq", "3",
              "--ppo2-total-timesteps", "6", "--ppo2-nminibatches", "2").stdout  # 16 px: a quarter of the work
    run_dir = tmp_path / experiment_id(out)
    assert run_dir.name.startswith("cifar10_resnet_discrete_")
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert state["discrete"] and state["agent"]["actor.4.weight"].shape == (3, 32)
    assert len(state["env"]["tasks"][0]["children"]["models"]) == 2  # BatchNorm children train as modules


def test_image_folder_dataset_runs_end_to_end(tmp_path):
    folder = write_image_folder(tmp_path / "shapes", size=36, num_classes=3, per_class=(40, 10))
    common = ["--dataset", folder, "--architecture", "mlp", "--runs-dir", tmp_path / "runs", *TINY,
              "--val-size", "30", "--train-size", "60"]
    out = run("train.py", *common, "--ppo2-update-freq", "3", "--ppo2-total-timesteps", "6",
              "--ppo2-nminibatches", "2").stdout
    assert experiment_id(out).startswith("shapes_mlp_continuous_")
    assert f"(images from {folder}) ..." in out and "from data" not in out


@pytest.mark.parametrize("script, argv, message", [
    ("train", ["--dataset", "imagenet"], "choose from mnist, fa-mnist, cifar10"),
    ("baselines", ["--architecture", "vgg"], "unknown architecture 'vgg'; choose from mlp, cnn, resnet"),
    ("train", ["--batch-size", "0"], "--batch-size: must be positive"),
    ("train", ["--action-range", "1"], "--action-range: must be > 1"),
    ("baselines", ["--num-train-steps", "20", "--update-freq", "7"], "--num-train-steps: must be a multiple of"),
    ("test", ["--test-id", "../other"], "is not a plain name"),
    ("test", [], "the following arguments are required: --test-id"),
    ("train", ["--resume", "a/b"], "is not a plain name"),
    ("train", ["--discrete", "2"], "invalid choice: 2"),
    ("train", ["--action-param", "exp"], "invalid choice: 'exp'"),
    ("train", ["--reward", "accuracy"], "invalid choice: 'accuracy'"),
    ("train", ["--norm-clip", "0"], "--norm-clip: must be positive"),
    ("test", ["--test-id", "x", "--test-deterministic", "2"], "invalid choice: 2"),
    ("train", ["--ppo2-nminibatches", "3"], "--ppo2-nminibatches: must divide"),
    ("train", ["--ppo2-total-timesteps", "100"], "--ppo2-total-timesteps: less than one rollout"),
    ("baselines", ["--discount-factors", "1.5"], "--discount-factors in (0, 1]"),
    # nan and inf pass every range check: refused for every float flag
    ("train", ["--initial-lr", "nan"], "--initial-lr: must be a finite number, got 'nan'"),
    ("test", ["--test-id", "x", "--initial-lr", "inf"], "--initial-lr: must be a finite number, got 'inf'"),
    ("train", ["--action-range", "nan"], "--action-range: must be a finite number"),
    ("train", ["--ppo2-gamma=-inf"], "--ppo2-gamma: must be a finite number"),
    ("baselines", ["--initial-lrs", "0.1", "NaN"], "--initial-lrs: must be a finite number"),
    ("train", ["--ppo2-lr", "fast"], "--ppo2-lr: not a number: 'fast'"),
    # each script takes only its own flags
    ("train", ["--test-runs", "5"], "unrecognized arguments: --test-runs"),
    ("baselines", ["--ppo2-lr", "0.1"], "unrecognized arguments: --ppo2-lr"),
    ("test", ["--test-id", "x", "--initial-lrs", "0.1"], "unrecognized arguments: --initial-lrs"),
])
def test_bad_flags_are_argparse_errors(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        flags.parse_args(script, argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_each_script_help_lists_only_its_flags(capsys):
    for script, present, absent in (("baselines", "--discount-steps", "--ppo2-lr"),
                                    ("test", "--test-deterministic", "--initial-lrs"),
                                    ("train", "--ppo2-cliprange", "--test-runs")):
        with pytest.raises(SystemExit):
            flags.parse_args(script, ["--help"])
        help_text = capsys.readouterr().out
        assert present in help_text and absent not in help_text
        for option in help_text.split("\n  --"):
            assert option.count("(default") <= 1, option  # a default the help text gives is not repeated
        assert "(default: 10000)" in help_text  # --val-size: the formatter's default


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_gpu_is_an_error(capsys):
    with pytest.raises(SystemExit):
        flags.parse_args("train", ["--device", "cuda"])
    assert "cuda is not available" in capsys.readouterr().err


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], result.stderr


def test_missing_data_names_the_files_and_folder(tmp_path):
    result = run("train.py", "--data-dir", tmp_path, "--runs-dir", tmp_path / "runs", check=False)
    assert_one_line_error(result, "train-images-idx3-ubyte", str(tmp_path / "FashionMNIST" / "raw"))
    assert not (tmp_path / "runs").exists()  # no empty folder left behind


def test_unknown_test_id_lists_the_experiments(trained):
    runs, run_id, common = trained
    assert_one_line_error(run("test.py", *common, "--test-id", "nope", check=False), "'nope'", run_id)


def own_copy(trained, tmp_path):
    """The trained fixture's experiment and baselines copied under ``tmp_path``, for a test that writes
    into them."""
    runs, run_id, common = trained
    for folder in (run_id, "baselines"):
        shutil.copytree(runs / folder, tmp_path / "runs" / folder)
    return tmp_path / "runs", run_id, [*common, "--runs-dir", tmp_path / "runs"]


def test_damaged_checkpoints_are_refused(trained, tmp_path):
    runs, run_id, common = own_copy(trained, tmp_path)
    checkpoints = runs / run_id / "checkpoints"
    (checkpoints / "truncated.pt").write_bytes((checkpoints / "best.pt").read_bytes()[:300])
    torch.save({"weights": torch.zeros(2)}, checkpoints / "foreign.pt")
    for name in ("truncated", "foreign"):
        assert_one_line_error(run("test.py", *common, "--test-id", run_id, "--test-schedule", name, check=False),
                              f"{name}.pt")
    assert_one_line_error(run("test.py", *common, "--test-id", run_id, "--test-schedule", "missing", check=False),
                          "best.pt", "latest.pt")


def start(script, *args):
    return subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_train_resumes_after_sigkill_and_ends_like_an_uninterrupted_run(mnist_dir, tmp_path):
    common = ["--data-dir", mnist_dir, "--runs-dir", tmp_path, *TINY, *TINY_PPO, "--seed", "3", "--architecture", "mlp"]
    reference = tmp_path / experiment_id(run("train.py", *common, "--tb-suffix", "reference").stdout)

    process = start("train.py", *common, "--tb-suffix", "killed")
    wait_for(lambda: any(tmp_path.glob("*killed/updates.jsonl")), process)
    killed = next(tmp_path.glob("*killed"))
    wait_for(lambda: len(jsonl(killed / "updates.jsonl")) >= 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(jsonl(killed / "updates.jsonl")) < 8

    out = run("train.py", "--resume", killed.name, "--runs-dir", tmp_path, "--device", "cpu").stdout
    assert "resuming at update" in out
    compare_updates(reference / "updates.jsonl", killed / "updates.jsonl")
    assert jsonl(reference / "episodes.jsonl") == jsonl(killed / "episodes.jsonl")
    final = [torch.load(d / "checkpoints" / "latest.pt", weights_only=True) for d in (reference, killed)]
    for key, value in final[0]["agent"].items():
        assert torch.equal(value, final[1]["agent"][key]), key


def test_init_controller_starts_training_from_a_checkpoints_weights_and_statistics(trained, tmp_path):
    runs, run_id, common = trained
    start_from = runs / run_id / "checkpoints" / "best.pt"
    out = run("train.py", *common, "--num-envs", "2", *TINY_PPO, "--ppo2-total-timesteps", "16",
              "--init-controller", start_from, "--runs-dir", tmp_path).stdout
    checkpoints = tmp_path / experiment_id(out) / "checkpoints"
    initial, first = (torch.load(path, weights_only=True) for path in (start_from, checkpoints / "step-0000000_untrained.pt"))
    for key, value in initial["agent"].items():  # the run's step-0 control is the controller it started from
        assert torch.equal(value, first["agent"][key]), key
    for stats in ("obs_rms", "ret_rms"):
        assert torch.equal(initial["normalizer"][stats]["mean"], first["normalizer"][stats]["mean"])
    assert not first["normalizer"]["returns"].any()  # a fresh start's running returns
    trained_on = torch.load(checkpoints / "latest.pt", weights_only=True)["agent"]["actor.0.weight"]
    assert not torch.equal(trained_on, initial["agent"]["actor.0.weight"])  # and it trained on from there
    shutil.copytree(runs / "baselines", tmp_path / "baselines")
    table = run("test.py", *common, "--runs-dir", tmp_path, "--test-id", experiment_id(out), "--test-runs", "1",
                "--test-schedule", "latest").stdout
    assert re.search(r"^initial \(best\.pt, step 0, mode\) from 0\.001\s", table, re.M) and "untrained" not in table, table


def test_init_controller_refuses_a_checkpoint_that_observes_otherwise(trained, tmp_path):
    runs, run_id, common = trained
    result = run("train.py", *common, "--num-envs", "2", *TINY_PPO, "--features", "relative", "--runs-dir", tmp_path,
                 "--init-controller", runs / run_id / "checkpoints" / "best.pt", check=False)
    assert_one_line_error(result, "--features reference (flags: relative)")
    assert not list(tmp_path.iterdir())  # refused before any experiment folder


def test_resume_without_latest_pt_refuses_and_keeps_the_records(mnist_dir, tmp_path):
    out = run("train.py", "--data-dir", mnist_dir, "--runs-dir", tmp_path, *TINY, *TINY_PPO, "--architecture", "mlp",
              "--ppo2-total-timesteps", "16").stdout
    run_dir = tmp_path / experiment_id(out)
    records = {name: (run_dir / name).read_text() for name in ("episodes.jsonl", "updates.jsonl")}
    (run_dir / "checkpoints" / "latest.pt").unlink()
    result = run("train.py", "--resume", run_dir.name, "--runs-dir", tmp_path, "--device", "cpu", check=False)
    assert_one_line_error(result, "latest.pt is missing", run_dir.name)
    assert records == {name: (run_dir / name).read_text() for name in records} and all(records.values())


@pytest.mark.slow
def test_ctrl_c_stops_train_cleanly_with_a_resume_hint(mnist_dir, tmp_path):
    process = start("train.py", "--data-dir", mnist_dir, "--runs-dir", tmp_path, *TINY, *TINY_PPO,
                    "--ppo2-total-timesteps", "800")
    wait_for(lambda: any(tmp_path.glob("*/checkpoints/latest.pt")), process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in err and "python train.py --resume" in err
    latest = next(tmp_path.glob("*/checkpoints/latest.pt"))
    assert torch.load(latest, weights_only=True)["update"] >= 1


def test_sigterm_in_baselines_stops_as_ctrl_c_and_says_how_to_continue(mnist_dir, tmp_path):
    process = start("baselines.py", "--data-dir", mnist_dir, "--runs-dir", tmp_path, *TINY, "--num-envs", "1")
    wait_for(lambda: any(tmp_path.glob("baselines/*/results.jsonl")), process)
    process.send_signal(signal.SIGTERM)  # kill or a job scheduler: the same clean stop as Ctrl-C (run_cli)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err
    assert re.search(r"stopped: \d+ finished runs are saved in .*; the same command again continues", err), err


@pytest.mark.slow
def test_baselines_resume_skips_finished_runs(mnist_dir, tmp_path):
    common = ["--data-dir", mnist_dir, "--runs-dir", tmp_path, *TINY, "--num-envs", "1",
              "--initial-lrs", "0.01", "0.001", "0.0001", "--discount-steps", "3", "6", "--discount-factors", "0.5"]
    process = start("baselines.py", *common)
    results = lambda: next(tmp_path.glob("baselines/*/results.jsonl"), None)
    wait_for(lambda: results() is not None and len(jsonl(results())) >= 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(jsonl(results()))
    assert finished < 12
    out = run("baselines.py", *common).stdout
    assert f"{finished} runs finished, {12 - finished} to go" in out
    names = [r["name"] for r in jsonl(results())]
    assert len(names) == len(set(names)) == 12  # 6 step decays, 3 constant, 3 cosine

    fresh = tmp_path / "fresh"
    run("baselines.py", *[fresh if a == tmp_path else a for a in common])
    reference = {r["name"]: r["final_val_loss"] for r in jsonl(next(fresh.glob("baselines/*/results.jsonl")))}
    resumed = {r["name"]: r["final_val_loss"] for r in jsonl(results())}
    assert resumed == pytest.approx(reference, rel=1e-5)


def test_bench_writes_milliseconds_and_speedups_per_child(tmp_path):
    out = tmp_path / "bench.json"
    printed = run("bench.py", "--device", "cpu", "--children", "mlp,cnn", "--steps", "10", "--num-envs", "2",
                  "--batch-size", "8", "--train-size", "64", "--val-size", "32", "--loop-envs", "2,4",
                  "--loop-rollout", "2", "--json", out).stdout
    figures = json.loads(out.read_text())
    loop = figures["training_loop_steps_per_second"]
    assert set(loop) == {"mlp", "cnn"} and all(set(rates) == {"2", "4"} and min(rates.values()) > 0
                                               for rates in loop.values())
    for child, rates in loop.items():  # each count against the first, measured in the same run
        assert re.search(rf"^{child}\s+{rates['2']:.1f} \(1.00x\)\s+{rates['4']:.1f} \({rates['4'] / rates['2']:.2f}x\)",
                         printed, re.M), printed
    assert set(figures["children"]) == {"mlp", "cnn"}
    for child in figures["children"].values():
        ms = child["ms_per_child_step"]
        assert set(ms) == {"dataloader", "env", "vec_env", "train_only"} and min(ms.values()) > 0
        assert child["speedup_over_dataloader"]["env"] == pytest.approx(ms["dataloader"] / ms["env"])
        assert child["seconds_per_episode"] == pytest.approx(ms["vec_env"])  # 1000 steps of ms each
        assert child["train_py_minutes"] == pytest.approx(500_000 * ms["vec_env"] / 1000 / 60)
    bad = run("bench.py", "--children", "vgg", check=False)
    assert bad.returncode == 2 and "unknown vgg" in bad.stderr


# ----------------------------------------------------------------------------- what a new user hits


def test_a_torn_last_line_of_results_is_dropped_and_its_run_redone(mnist_dir, tmp_path):
    common = ["--data-dir", mnist_dir, "--runs-dir", tmp_path, *TINY, *TINY_GRID]
    run("baselines.py", *common)
    results = next(tmp_path.glob("baselines/*/results.jsonl"))
    complete = jsonl(results)
    results.write_bytes(results.read_bytes()[:-300])  # a crash while writing the last record
    out = run("baselines.py", *common)
    assert "dropped the torn last line" in out.stderr and "1 to go" in out.stdout
    again = jsonl(results)
    assert sorted(r["name"] for r in again) == sorted(r["name"] for r in complete)
    assert {r["name"]: r["final_val_loss"] for r in again} == {r["name"]: r["final_val_loss"] for r in complete}
    with open(results, "ab") as f:
        f.write(b'{"torn')  # torn again: the next append must start on a line of its own
    append_jsonl(results, {"name": "extra"})
    assert results.read_text().splitlines()[-2:] == ['{"torn', '{"name": "extra"}']


def test_an_unwritable_output_folder_is_a_one_line_error_before_any_work(mnist_dir, trained, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    for script, extra in (("train.py", TINY_PPO), ("baselines.py", TINY_GRID)):
        result = run(script, "--data-dir", mnist_dir, "--runs-dir", blocked / "runs", *TINY, *extra, check=False)
        assert_one_line_error(result, "cannot write to", str(blocked))
        assert "loading" not in result.stdout
    runs, run_id, common = own_copy(trained, tmp_path)
    (runs / run_id / "test").mkdir(exist_ok=True)
    (runs / run_id / "test" / "fa-mnist_mlp_latest_deterministic").write_text("in the way")
    result = run("test.py", *common, "--test-id", run_id, "--test-schedule", "latest", check=False)
    assert_one_line_error(result, "cannot write to")


def test_an_image_folder_name_with_spaces_gives_a_plain_experiment_id(tmp_path):
    folder = write_image_folder(tmp_path / "my shapes (v2)", size=28, num_classes=2, per_class=(40, 10))
    out = run("train.py", "--dataset", folder, "--architecture", "mlp", "--runs-dir", tmp_path / "runs", *TINY,
              "--val-size", "20", "--train-size", "40", "--ppo2-update-freq", "3", "--ppo2-total-timesteps", "6",
              "--ppo2-nminibatches", "2").stdout
    run_id = experiment_id(out)
    assert run_id.startswith("my-shapes-v2_mlp_continuous_") and " " not in run_id
    flags.parse_args("test", ["--test-id", run_id])  # a plain name test.py and --resume accept


@pytest.mark.slow
def test_printed_hints_work_as_printed(mnist_dir, tmp_path, timesteps=64, checkpoint="best"):
    """train.py's hints, pasted: the baseline sweep of the setting (a small grid), then the test with no
    other flag (a run
    too short for best.pt: test_a_task_mix_trains_one_controller_and_its_hints_test_it_on_a_task_...)."""
    runs = tmp_path / "my runs"
    out = run("train.py", "--data-dir", mnist_dir, "--runs-dir", runs, *TINY, *TINY_PPO, "--architecture", "mlp",
              "--ppo2-total-timesteps", timesteps).stdout
    commands = [line.strip() for line in out.splitlines() if line.strip().startswith("python ")]
    assert [shlex.split(c)[1] for c in commands] == ["baselines.py", "test.py"]
    for command in commands:
        _, script, *args = shlex.split(command)
        run(script, *args, "--test-runs", "1") if script == "test.py" else run(script, *args, *TINY_GRID)
    result = json.loads(next(runs.glob(f"*/test/fa-mnist_mlp_{checkpoint}_deterministic/results.json")).read_text())
    assert result["args"]["num_train_steps"] == 12 and result["args"]["data_dir"] == str(mnist_dir)


def test_ctrl_c_before_the_first_update_says_there_is_nothing_to_resume(mnist_dir, tmp_path, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(load_script("train.py").VecALRSEnv, "reset", interrupted)
    result = run("train.py", "--data-dir", mnist_dir, "--runs-dir", tmp_path, *TINY, *TINY_PPO, check=False)
    assert result.returncode == 130 and "Traceback" not in result.stderr
    assert "stopped before the first update" in result.stderr and "--resume" in result.stderr


def test_a_single_class_image_folder_is_refused(tmp_path):
    folder = write_image_folder(tmp_path / "one", size=28, num_classes=1, per_class=(20, 5))
    for script in ("train.py", "baselines.py"):
        result = run(script, "--dataset", folder, "--architecture", "mlp", "--runs-dir", tmp_path / "runs", *TINY,
                     check=False)
        assert_one_line_error(result, "at least 2")


@pytest.mark.parametrize("damage", ["truncated gz", "garbage raw"])
def test_a_damaged_idx_file_is_named(mnist_dir, tmp_path, damage):
    data = tmp_path / "data"
    shutil.copytree(mnist_dir / "MNIST", data / "MNIST")
    raw = data / "MNIST" / "raw"
    if damage == "truncated gz":
        victim = raw / "train-images-idx3-ubyte.gz"
        victim.write_bytes(victim.read_bytes()[:500])
    else:
        victim = raw / "train-labels-idx1-ubyte"
        victim.write_bytes(b"not an idx file at all")
    result = run("baselines.py", "--dataset", "mnist", "--data-dir", data, "--runs-dir", tmp_path / "runs", *TINY,
                 check=False)
    assert_one_line_error(result, str(victim), "damaged")


def test_flag_errors_are_one_line_and_name_the_flag_given(capsys):
    with pytest.raises(SystemExit):
        flags.parse_args("train", ["--num-train-steps", "45"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--num-train-steps" in err and "(see train.py --help)" in err


def test_results_report_sample_std_standard_errors_and_configs(trained):
    runs, run_id, common = trained
    folder = runs / run_id / "test" / "fa-mnist_mlp_best_deterministic"
    if not (folder / "results.json").exists():
        run("test.py", *common, "--test-id", run_id, "--test-runs", "2")
    result = json.loads((folder / "results.json").read_text())
    values = result["runs"]["learned@0.01"]["final_val_loss"]
    summary = result["summary"]["learned@0.01"]["final_val_loss"]
    assert summary["std"] == pytest.approx(float(np.std(values, ddof=1)))
    assert summary["sem"] == pytest.approx(summary["std"] / np.sqrt(len(values)))
    assert result["rows"]["step_decay@0.01"]["config"]["kind"] == "step_decay"
    assert result["rows"]["learned@0.01"]["config"]["checkpoint"] == "best"
    assert result["trained_args"]["initial_lr"] == 0
    out = run("baselines.py", *common, *TINY_GRID).stdout
    assert "top 5 of 9 finished runs" in out


def test_a_preset_sets_its_flags_and_explicit_flags_win():
    reference = vars(flags.parse_args("train", []))
    assert flags.PRESETS["reference"] == {} and reference["action_param"] == "clip"
    for name, values in flags.PRESETS.items():
        preset = vars(flags.parse_args("train", ["--preset", name]))
        changed = {k: v for k, v in preset.items() if v != reference[k]}
        assert changed == ({} if name == "reference" else {"preset": name, **values})
        overridden = vars(flags.parse_args("train", ["--preset", name, "--ppo2-ent-coef", "0.05"]))
        assert overridden["ppo2_ent_coef"] == 0.05


def test_tensorboard_writes_the_jsonl_metrics_as_scalars(mnist_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = run("train.py", "--data-dir", mnist_dir, "--runs-dir", tmp_path, *TINY, *TINY_PPO, "--tensorboard",
              "--tb-suffix", "board", "--architecture", "mlp", "--ppo2-total-timesteps", "32").stdout
    run_dir = tmp_path / experiment_id(out)
    assert run_dir.name.endswith("_board")
    events = EventAccumulator(str(run_dir / "tb")).Reload()
    scalars = lambda tag: [(e.step, e.value) for e in events.Scalars(tag)]
    updates, episodes = jsonl(run_dir / "updates.jsonl"), jsonl(run_dir / "episodes.jsonl")
    assert scalars("ppo/approx_kl") == [(u["timesteps"], pytest.approx(u["approx_kl"], rel=1e-6)) for u in updates]
    assert {"ppo/entropy", "ppo/policy_std", "ppo/explained_variance"} <= set(events.Tags()["scalars"])
    finals = [(e["timesteps"], e["final_val_loss"]) for e in episodes if e["final_val_loss"] is not None]
    assert len(finals) > 0 and scalars("episode/final_val_loss") == [(t, pytest.approx(v, rel=1e-6)) for t, v in finals]
    assert scalars("episode/log_final_val_loss")[0][1] == pytest.approx(math.log(finals[0][1]), rel=1e-6)


def test_tensorboard_without_the_package_is_a_one_line_error(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    result = run("train.py", "--data-dir", mnist_dir, "--runs-dir", tmp_path, *TINY, "--tensorboard", check=False)
    assert result.returncode == 2 and "pip install tensorboard" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


def test_download_failure_is_a_one_line_error_before_any_experiment(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])  # discard port
    result = run("train.py", "--data-dir", tmp_path / "data", "--runs-dir", tmp_path / "runs", *TINY, "--download",
                 check=False)
    assert_one_line_error(result, "could not download fa-mnist", "FashionMNIST/raw/, or pass --data-dir")
    assert sorted(tmp_path.iterdir()) == []  # neither data/FashionMNIST/raw nor runs/ left behind


@pytest.mark.slow
def test_a_task_mix_trains_one_controller_and_its_hints_test_it_on_a_task_with_the_replay(mnist_dir, tmp_path):
    common = ["--data-dir", mnist_dir, "--runs-dir", tmp_path, *TINY, "--architecture", "mlp"]
    out = run("train.py", *common, *TINY_PPO, "--ppo2-total-timesteps", "16", "--features", "relative-progress",
              "--task", "num_train_steps=6", "--task", "classes=5,label_noise=0.2").stdout
    run_id = experiment_id(out)
    assert run_id.startswith("mix2_continuous_")
    short, variant = "fa-mnist_mlp_b16_s6_n200_val50", "fa-mnist_mlp_b16_s12_n200_val50_c5_noise0.2"
    episodes = jsonl(tmp_path / run_id / "episodes.jsonl")
    assert {e["task"] for e in episodes} == {short, variant}
    assert all((e["task"] == short) == (e["env"] == 0) for e in episodes)  # an environment keeps its task
    assert sum(e["task"] == short for e in episodes) == 2 * sum(e["task"] == variant for e in episodes)
    latest = torch.load(tmp_path / run_id / "checkpoints" / "latest.pt", weights_only=True)
    assert latest["features"] == "relative-progress" and latest["agent"]["actor.0.weight"].shape == (32, 8)
    commands = [shlex.split(line.strip()) for line in out.splitlines() if line.strip().startswith("python ")]
    assert [c[1] for c in commands] == ["baselines.py", "test.py"] * 2
    run("baselines.py", *commands[2][2:], *TINY_GRID)
    assert commands[3][-2:] == ["--test-schedule", "latest"]  # too short for best.pt: the hint says latest
    run("test.py", *commands[3][2:], "--test-runs", "2")
    result = json.loads((tmp_path / run_id / "test" / "fa-mnist_mlp_classes5_label_noise0.2_latest_deterministic"
                         / "results.json").read_text())
    assert not result["transfer"] and result["tested_on"] == "fa-mnist/mlp_classes5_label_noise0.2"
    replay = result["rows"]["replay@0.001"]
    assert replay["config"] == {"kind": "replay", "of": "learned@0.001", "initial_lr": 0.001}
    assert len(result["runs"]["replay@0.001"]["final_val_loss"]) == 2
    assert "learned@0.001 - replay@0.001" in result["paired_differences"]


@pytest.mark.parametrize("argv, message", [
    (["--task", "batch_size=0"], "argument --task: batch_size must be positive"),
    (["--task", "speed=fast"], "argument --task: 'speed=fast' is not key=value"),
    (["--task", "num_train_steps=7"], "argument --task: num_train_steps must be a multiple of --update-freq"),
    (["--num-envs", "1", "--task", "dataset=mnist", "--task", "dataset=fa-mnist"], "argument --num-envs: 2 tasks"),
    (["--features", "all"], "argument --features: invalid choice"),
])
def test_bad_tasks_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        flags.parse_args("train", argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
