"""compare.py: its statistics and the bar on hand-made numbers, paired runs, the replay's exclusion of
its own seed, and the command line end to end (resuming, a second controller adding only its rows)."""
import contextlib
import io
import json
import math
import shutil

import numpy as np
import pytest
import torch

import compare
import compare_report
from compare import Method
from conftest import ROOT
from schedules import Replay, pooled_replay
from tasks import Task
from utils import run_cli

PRETRAINED = ROOT / "alrs" / "pretrained" / "fa-mnist_mlp_stable.pt"
TINY_TASK = "dataset=fa-mnist,architecture=mlp,batch_size=16,num_train_steps=20,train_size=200,val_size=50"


def record(method, kind, lr, loss, seed, controller=None, diverged=False):
    """A runs.jsonl record with only what the report reads."""
    return {"task": "t", "method": method, "seed": seed, "kind": kind, "initial_lr": lr,
            "final_val_loss": None if diverged else loss, "test_loss": loss, "test_accuracy": 0.5,
            "diverged": diverged, "num_classes": 10, "lr": [lr, lr, lr], "controller": controller}


def task_runs(losses):
    """{method: {seed: record}} from {method: [final loss per seed]} (None: diverged)."""
    runs = {}
    for method, values in losses.items():
        kind, lr = method.split("@")[0].split(":")[0].split("/")[0], float(method.split("@")[1])
        label = method.split(":")[1].split("@")[0] if ":" in method else None
        runs[method] = {seed: record(method, kind, lr, v, seed, label, v is None) for seed, v in enumerate(values)}
    return runs


def test_summarize_and_paired_difference():
    assert compare_report.summarize([1.0, 2.0, math.nan, 3.0]) == {"mean": 2.0, "std": pytest.approx(1.0),
                                                           "sem": pytest.approx(1 / math.sqrt(3)),
                                                           "runs": 3, "diverged": 1}
    a, b = {0: 1.0, 1: 2.0, 2: 3.0, 3: math.nan}, {0: 0.5, 1: 1.5, 2: 2.9, 4: 1.0}
    diff = compare_report.paired_difference(a, b)  # seeds 0-2: differences 0.5, 0.5, 0.1
    sem = np.std([0.5, 0.5, 0.1], ddof=1) / math.sqrt(3)
    assert diff == {"mean": pytest.approx(1.1 / 3), "sem": pytest.approx(sem), "runs": 3}
    assert compare_report.verdict(diff) == "worse"  # 0.367 > 2 x 0.133
    assert compare_report.verdict({"mean": -0.1, "sem": 0.04}) == "better"
    assert compare_report.verdict({"mean": -0.1, "sem": 0.06}) == "within 2 SE"
    assert compare_report.paired_difference({0: 1.0, 1: 2.0}, {1: 1.0}) is None  # one common seed


def test_picks_and_bar_checks_on_hand_made_numbers():
    runs = task_runs({
        "alrs:c@1e-3": [0.30, 0.31, 0.32],
        "replay:c@1e-3": [0.40, 0.41, 0.42],  # beaten by 0.1 with SE 0: by far more than 2 SE
        "constant@1e-3": [0.35, 0.30, 0.36],  # mean difference -0.027: beaten
        "cosine@1e-3": [0.29, 0.30, 0.33],  # mean difference +0.003: not beaten
        "cosine@1e-2": [0.30, 0.30, 0.30],  # the best cosine: 0.31 <= 1.02 x 0.30
        "plateau@1e-3": [0.2, 0.2, 0.2],
        "step_decay/10x0.5@1e-3": [0.5, 0.5, 0.5], "step_decay/4x0.9@1e-3": [0.4, 0.4, 0.4]})
    summaries = compare_report.summarize_task(runs)
    chosen = compare_report.picks(summaries)
    assert chosen == {"step_decay@1e-3": "step_decay/4x0.9@1e-3", "cosine_best": "cosine@1e-2"}
    assert compare_report.bar_checks(runs, summaries, chosen, "c") == {
        "no_failure": True, "beats_constant": True, "beats_cosine": False, "beats_plateau": False,
        "near_best_cosine": False, "beats_replay": True}
    runs["alrs:c@1e-3"][1] = record("alrs:c@1e-3", "alrs", 1e-3, 2.25, 1, "c")  # at chance (ln 10 = 2.30)
    summaries = compare_report.summarize_task(runs)
    assert compare_report.bar_checks(runs, summaries, chosen, "c")["no_failure"] is False
    runs["constant@1e-3"][1] = record("constant@1e-3", "constant", 1e-3, None, 1, diverged=True)
    assert compare_report.bar_checks(runs, summaries, chosen, "c")["no_failure"] is True  # constant failed there too
    del runs["plateau@1e-3"]
    assert compare_report.bar_checks(runs, summaries, chosen, "c")["beats_plateau"] is None


def test_bar_verdict_needs_every_task_and_half_the_replays():
    passing = dict.fromkeys(compare_report.BAR_CHECKS, True)
    no_replay = passing | {"beats_replay": False}
    assert compare_report.bar_verdict({"a": passing, "b": passing, "c": no_replay, "d": no_replay}) is True
    assert compare_report.bar_verdict({"a": passing, "b": no_replay, "c": no_replay, "d": no_replay}) is False
    assert compare_report.bar_verdict({"a": passing, "b": passing | {"beats_cosine": False}}) is False
    assert compare_report.bar_verdict({"a": passing, "b": passing | {"near_best_cosine": None}}) is None
    undecided = no_replay | {"beats_replay": None}
    assert compare_report.bar_verdict({"a": no_replay, "b": undecided}) is None  # 1 of 2 would do
    assert compare_report.bar_verdict({"a": no_replay, "b": no_replay, "c": undecided}) is False  # 1 of 3 would not


def test_replay_is_the_other_seeds_geometric_mean():
    curves = {0: [1e-3, 1e-1, 1e-1], 1: [1e-3, 1e-3, 4e-3], 2: [1e-3, 4e-3, None]}  # seed 2 diverged in block 1
    alrs = {seed: {"lr": lr} for seed, lr in curves.items()}
    replay, others = compare.replay_schedule(alrs, 0, 1e-3)
    assert others == [1, 2]
    assert replay.block_rates == pytest.approx([2e-3, 4e-3])  # sqrt(1e-3 x 4e-3); seed 2's NaN skipped
    alrs[0]["lr"] = [1e-3, 1e-5, 1e-5]  # the seed's own curve plays no part
    assert compare.replay_schedule(alrs, 0, 1e-3)[0].block_rates == pytest.approx([2e-3, 4e-3])
    assert [replay.next_lr(None, None, step) for step in (0, 9, 10, 19)] == pytest.approx([2e-3, 2e-3, 4e-3, 4e-3])


def test_pooled_replay_averages_other_runs_at_the_same_fraction_of_the_run():
    long_run = [1e-3, 1e-3, 2e-3, 4e-3, 8e-3]  # 4 blocks: at fractions 1/4 and 3/4 of the run, 2e-3 and 8e-3
    short_run = [1e-3, 8e-3, None]  # 2 blocks, diverged in the second
    pooled = pooled_replay(1e-3, [short_run, long_run], 2, 10)
    assert pooled.block_rates == pytest.approx([4e-3, 8e-3])  # sqrt(2e-3 x 8e-3); the NaN skipped
    stretched = pooled_replay(1e-3, [[1e-3, 1e-3, 1e-2]], 4, 10)
    assert stretched.block_rates == pytest.approx([1e-3, 1e-3, 1e-2, 1e-2])


def test_the_pooled_replay_follows_the_controller_on_the_other_tasks_only(tiny_data, monkeypatch):
    task, data = tiny_data
    other, path = Task(dataset="mnist", num_train_steps=40), str(PRETRAINED)
    alrs = Method("alrs", 1e-3, path).name
    records = [{"task": other.name, "method": alrs, "seed": seed, "lr": [1e-3, 1e-3, 4e-3, 4e-3, 1e-2]}
               for seed in (0, 1)]
    records.append({"task": task.name, "method": alrs, "seed": 1, "lr": [1e-3, 1e-5, 1e-5]})  # its own task's: unused
    def rates_of_its_blocks(method, task, data, seed, device, replay):
        return {"rates": [replay.next_lr(None, None, step) for step in range(0, task.num_train_steps, 10)]}
    monkeypatch.setattr(compare, "train_run", rates_of_its_blocks)
    result = compare.run_method(Method("pooled_replay", 1e-3, path), task, data, 0, [0, 1], [task, other],
                                records, "cpu")
    assert result["rates"] == pytest.approx([4e-3, 1e-2])  # the other task's blocks at 1/4 and 3/4 of its run
    assert result["pooled_tasks"] == [other.name] and result["controller"] == "fa-mnist_mlp_stable"


def test_batches_are_shuffled_epochs_without_the_partial_batch():
    first = [b.tolist() for _, b in zip(range(6), compare.batches(10, 4, seed=3))]
    assert first == [b.tolist() for _, b in zip(range(6), compare.batches(10, 4, seed=3))]
    for epoch in (first[0:2], first[2:4], first[4:6]):  # 2 batches of 4 per epoch of 10
        assert len(set(epoch[0] + epoch[1])) == 8
    assert first[0:2] != first[2:4]


def test_the_rate_schedules_follow_their_definitions():
    def rates(method, total=100, val_losses=None):
        model = torch.nn.Linear(2, 2)
        optimizer = compare.make_optimizer(method, compare.BASE_TASK, model, total)
        scheduler = compare.make_scheduler(method, optimizer, model, None, total)
        lrs = []
        for step in range(total):
            lrs.append(compare.current_lr(optimizer))
            optimizer.step()
            if val_losses is None:
                scheduler.step()
            elif (step + 1) % compare.UPDATE_FREQ == 0:
                scheduler.step(val_losses[step // compare.UPDATE_FREQ])
        return lrs, optimizer
    lrs, _ = rates(Method("plateau", 1.0), val_losses=[1.0] + [2.0] * 9)
    assert lrs[59] == 1.0 and lrs[60] == 0.5  # halved at the 5th check without a new best: step 60
    assert rates(Method("step_decay", 1.0, decay_every=10, decay_factor=0.5))[0][::10] == [0.5 ** k for k in range(10)]
    lrs, optimizer = rates(Method("onecycle", 1e-2))
    assert max(lrs) == pytest.approx(1e-2) and optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    assert rates(Method("cosine", 1.0))[0][50] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def tiny_data(mnist_dir):
    task = Task(dataset="fa-mnist", architecture="mlp", batch_size=16, num_train_steps=20, train_size=200, val_size=50)
    return task, compare.load_data(task, mnist_dir, "cpu")


def test_every_method_on_a_seed_starts_alike_and_sees_the_same_batches(tiny_data):
    task, data = tiny_data
    constant = compare.train_run(Method("constant", 1e-3), task, data, seed=1, device="cpu")
    again = compare.train_run(Method("constant", 1e-3), task, data, seed=1, device="cpu")
    keep = Replay(1e-3, [1e-3, 1e-3], compare.UPDATE_FREQ)  # a replay that keeps the rate
    replay = compare.train_run(Method("replay", 1e-3, str(PRETRAINED)), task, data, seed=1, device="cpu", replay=keep)
    other_seed = compare.train_run(Method("constant", 1e-3), task, data, seed=2, device="cpu")
    for run in (again, replay):
        assert [run[key] for key in ("final_val_loss", "test_loss", "lr")] == [
            constant[key] for key in ("final_val_loss", "test_loss", "lr")]
    assert other_seed["final_val_loss"] != constant["final_val_loss"]
    assert constant["lr"] == [1e-3] * 3 and not constant["diverged"]


def test_a_non_finite_loss_ends_the_run_as_diverged(tiny_data, monkeypatch):
    task, data = tiny_data
    def poisoned(*args):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
        torch.nn.init.constant_(model[1].bias, math.nan)
        return model
    monkeypatch.setattr(compare, "build_model", poisoned)
    result = compare.train_run(Method("cosine", 1e-3), task, data, seed=0, device="cpu")
    assert result["diverged"] and result["final_val_loss"] is None and result["test_accuracy"] is None
    assert result["lr"] == [1e-3, 1e-3, None]  # the start, block 0 (where it stopped), then nothing
    assert compare_report.failed(result)


def run(*args):
    """compare.py in this process, as the shell runs it; (exit code, stdout, stderr)."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(compare.main, [str(a) for a in args], prog="compare.py")
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_cli_end_to_end_resumes_and_adds_a_controller(mnist_dir, tmp_path):
    out = tmp_path / "compare"
    common = ["--data-dir", mnist_dir, "--out", out, "--seeds", 2, "--task", TINY_TASK, "--device", "cpu"]
    code, stdout, stderr = run(*common)
    assert code == 0, stderr
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    per_start = 2 + 1 + len(compare.STEP_DECAY_GRID) + 4  # alrs, replay; constant; the grid; cosine .. schedule-free
    assert len(records) == 2 * (3 * per_start + 1)
    names = {r["method"] for r in records}
    assert {"alrs:fa-mnist_mlp_stable@1e-3", "replay:fa-mnist_mlp_stable@1e-2", "step_decay/4x0.5@1e-4",
            "plateau@1e-3", "schedulefree@1e-2", "prodigy"} <= names
    assert all(len(r["lr"]) == 3 and not r["diverged"] for r in records)
    assert [r["replay_seeds"] for r in records if r["method"] == "replay:fa-mnist_mlp_stable@1e-3"] == [[1], [0]]
    results = (out / "results.md").read_text()
    assert "## fa-mnist_mlp_b16_s20_n200_val50" in results and "The bar: fa-mnist_mlp_stable" in results
    assert results in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bar"]["fa-mnist_mlp_stable"]["tasks"] == 1
    assert (out / "compare.png").stat().st_size > 10_000

    before = (out / "runs.jsonl").read_text()
    assert run(*common)[0] == 0
    assert (out / "runs.jsonl").read_text() == before  # every run finished: none redone

    shutil.copy(PRETRAINED, tmp_path / "again.pt")
    code, stdout, stderr = run(*common, "--controller", tmp_path / "again.pt", "--methods", "alrs")
    assert code == 0, stderr
    added = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()][len(records):]
    assert sorted(r["method"] for r in added) == sorted([f"alrs:again@{lr}" for lr in ("1e-2", "1e-3", "1e-4")] * 2)
    same = added[0]["method"].replace("again", "fa-mnist_mlp_stable")  # the same file under another name
    assert added[0]["final_val_loss"] == next(r["final_val_loss"] for r in records
                                              if r["method"] == same and r["seed"] == added[0]["seed"])
    assert "alrs:again@1e-3 − row" in stdout and "The bar: again" in stdout


def test_cli_runs_the_pooled_replay_after_every_task_s_controller_runs(mnist_dir, tmp_path):
    out, longer = tmp_path / "compare", TINY_TASK.replace("num_train_steps=20", "num_train_steps=40")
    code, stdout, stderr = run("--data-dir", mnist_dir, "--out", out, "--seeds", 2, "--task", TINY_TASK,
                               "--task", longer, "--methods", "pooled_replay", "--lrs", "1e-3", "--device", "cpu")
    assert code == 0, stderr
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["alrs"] * 4 + ["pooled_replay"] * 4
    short, long = records[0]["task"], records[2]["task"]
    assert [r["pooled_tasks"] for r in records[4:]] == [[long], [long], [short], [short]]
    assert "pooled_replay:fa-mnist_mlp_stable@1e-3" in stdout and "one task" not in stdout


@pytest.mark.parametrize("argv, message", [
    (["--task", "architecture=vgg"], "unknown architecture 'vgg'"),
    (["--task", "num_train_steps=25"], "multiple of 10"),
    (["--task", "colour=red"], "'colour=red' is not key=value"),
    (["--seeds", "0"], "must be positive"),
    (["--controller", "a/x.pt", "--controller", "b/x.pt"], "same file name"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_missing_optional_package_is_named_only_when_asked_for(monkeypatch, capsys, tmp_path):
    find_spec = compare.importlib.util.find_spec
    monkeypatch.setattr(compare.importlib.util, "find_spec",
                        lambda name: None if name == "schedulefree" else find_spec(name))
    assert compare.parse_args(["--methods", "constant", "prodigy"]).kinds == {"constant", "prodigy"}
    with pytest.raises(SystemExit):
        compare.parse_args(["--methods", "schedulefree"])
    assert "pip install schedulefree" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    code, _, stderr = run("--controller", tmp_path / "bad.pt", "--out", tmp_path / "out", "--methods", "alrs")
    assert code == 2 and "bad.pt" in stderr and "Traceback" not in stderr
