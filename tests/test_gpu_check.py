"""experiments/gpu_check.py: its tiny CPU mode end to end, and what a step past its cap does."""
import importlib.util
import json
import shlex

import pytest
import torch

from conftest import ROOT, run

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "experiments" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def run_in_process(command, cap, log):
    """gpu_check.run_capped for the project's scripts, without a subprocess (the subprocess, its cap and
    its SIGINT are tested on their own below): ``python script.py ...`` through the script's main."""
    words = shlex.split(command)
    log.parent.mkdir(parents=True, exist_ok=True)
    result = run(words[1], *words[2:], check=False)
    log.write_text(f"$ {command}\n{result.stdout}{result.stderr}")
    return "ok" if result.returncode == 0 else "failed"


@pytest.mark.slow
def test_smoke_runs_every_step_and_keeps_its_figures(mnist_dir, tmp_path, capsys, monkeypatch):
    if not torch.cuda.is_available():  # the GPU tests step is a pytest subprocess, skipped without a GPU
        monkeypatch.setattr(gpu_check, "run_capped", run_in_process)
    out = tmp_path / "check"
    gpu_check.main(["--smoke", "--data-dir", str(mnist_dir), "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    steps = {step["step"]: step for step in summary["steps"]}
    assert {name: step["status"] for name, step in steps.items()} == {
        "gpu tests": "ok" if torch.cuda.is_available() else "skipped", "bench": "ok", "bench mlp bf16": "ok",
        "bench loop": "ok", "train": "ok", "baselines": "ok", "test": "ok"}

    assert set(json.loads((out / "bench.json").read_text())["children"]) == {"mlp"}
    assert steps["bench"]["figures"]["mlp ms/step"] > 0
    assert json.loads((out / "bench-variant.json").read_text())["args"]["precision"] == "bf16"
    loop = steps["bench loop"]["figures"]
    assert loop["fastest"] == max((2, 4), key=lambda n: loop[f"{n} envs steps/s"])
    run = next(out.glob("runs/*_*/"))
    assert json.loads((run / "args.json").read_text())["num_envs"] == loop["fastest"]  # trains with the fastest
    updates = (run / "updates.jsonl").read_text().splitlines()
    assert len(updates) == steps["train"]["figures"]["PPO updates"] == gpu_check.SMOKE.max_total_steps // (
        loop["fastest"] * gpu_check.SMOKE.ppo["ppo2_update_freq"])
    results = json.loads(next(out.glob("runs/*/test/*/results.json")).read_text())
    assert results["checkpoint"] == "latest" and len(results["seeds"]) == gpu_check.SMOKE.test_runs
    for lr in ("0.01", "0.001", "0.0001"):  # --initial-lr 0: tested from each rate
        figures = steps["test"]["figures"][f"from {lr}"]
        assert figures["learned"] > 0 and figures["untrained"] > 0 and figures["best baseline"] > 0

    table = (out / "summary.md").read_text()
    for name, step in steps.items():
        assert f"| {name} | {step['status']} |" in table
    assert table in capsys.readouterr().out


def test_a_step_past_its_cap_is_interrupted_and_reported_and_the_next_still_runs(tmp_path):
    stopped = tmp_path / "stopped"
    slow = ("import time\ntry:\n    time.sleep(60)\n"
            f"except KeyboardInterrupt:\n    open({str(stopped)!r}, 'w').write('cleanly')")
    steps = [gpu_check.Step("slow", 0.5, lambda cap: shlex.join(["python", "-c", slow])),
             gpu_check.Step("next", 0.5, lambda cap: shlex.join(["python", "-c", "print('ran')"]))]
    results = list(gpu_check.run_steps(steps, budget_s=4, logs=tmp_path))
    assert [r["status"] for r in results] == ["timed out", "ok"]
    assert results[0]["cap_s"] == 2 and results[0]["seconds"] < 10
    assert stopped.read_text() == "cleanly"  # SIGINT, as Ctrl-C: the step could stop on its own
    assert "ran" in (tmp_path / "2-next.log").read_text()
