"""experiments/paper.py: a run stopped by its budget goes on at the next call and ends as an
uninterrupted run of the same seed does."""
import importlib.util
import json

import pytest

from conftest import ROOT, compare_updates, experiment_id, jsonl, run

spec = importlib.util.spec_from_file_location("paper", ROOT / "experiments" / "paper.py")
paper = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paper)


@pytest.mark.slow
def test_two_slices_end_with_the_run_an_uninterrupted_one_gives(mnist_dir, tmp_path, capsys):
    out = tmp_path / "paper"
    common = ["--tiny", "--out", out, "--data-dir", mnist_dir, "--device", "cpu"]
    run("experiments/paper.py", "--budget-min", "0.05", *common)  # stopped by its budget while training
    run("experiments/paper.py", "--budget-min", "5", *common)
    slices = json.loads((out / "slices.json").read_text())
    assert [s["phases"]["train"] for s in slices["slices"]] == ["timed out", "ok"]
    assert slices["slices"][0]["phases"]["test"] == "not reached" and slices["done"] == list(paper.PHASES)
    assert "learned (latest, mode) from 0.001" in (out / "results.md").read_text()

    flags = [f"--{key.replace('_', '-')}={value}" for key, value in paper.TINY.items()]
    reference = tmp_path / "reference"
    out_id = experiment_id(run("train.py", *flags, "--data-dir", mnist_dir, "--runs-dir", reference,
                               "--device", "cpu").stdout)
    sliced = next((out / "runs").glob("*_paper"))
    compare_updates(reference / out_id / "updates.jsonl", sliced / "updates.jsonl")
    assert jsonl(reference / out_id / "episodes.jsonl") == jsonl(sliced / "episodes.jsonl")
    again = run("experiments/paper.py", "--budget-min", "5", *common).stdout  # nothing left to do
    assert "the run is complete" in again and "train, " not in again
