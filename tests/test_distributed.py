"""torchrun support: the collectives on 2 CPU processes (gloo), then the real CLIs under torchrun."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import distributed
from conftest import ROOT, TINY_GRID, jsonl, run
from conftest import TINY as TINY_SETTING, TINY_PPO as TINY_PPO_SETTING
from alrs.policy import RunningMeanStd

WORLD = 2
TINY = [*TINY_SETTING, "--architecture", "mlp"]
TINY_PPO = [*TINY_PPO_SETTING, "--initial-lr", "0"]  # each test gives its --ppo2-total-timesteps


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def thread_names():
    """The names of this process's threads, Python's and native ones alike (Linux's /proc)."""
    return sorted((task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir())


def collectives(rank, port, errors):
    """One rank of the collectives check; any failure is put on ``errors``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank), ALRS_DIST_TIMEOUT="60")
    try:
        with distributed.process_group(torch.device("cpu")):
            assert distributed.world_size() == WORLD and distributed.rank() == rank
            assert distributed.shard(range(5)) == [[0, 2, 4], [1, 3]][rank]
            assert distributed.broadcast(f"from {rank}") == "from 0"
            assert distributed.all_gather(rank * 10) == [0, 10]

            # the running statistics of each rank's batches merge into those of all batches at once
            batches = [np.random.default_rng(r).normal(r, 1 + r, (3 + 4 * r, 7)) for r in range(WORLD)]
            merged, single = RunningMeanStd((7,), distributed.merge_moments), RunningMeanStd((7,))
            merged.update(batches[rank])
            single.update(np.concatenate(batches))  # as one process that saw all
            np.testing.assert_allclose(merged.mean, single.mean, rtol=1e-12)
            np.testing.assert_allclose(merged.var, single.var, rtol=1e-12)
            assert merged.count == pytest.approx(single.count)

            # gradients are averaged over the ranks
            weight = torch.nn.Parameter(torch.ones(3))
            torch.optim.Adam([weight])  # as train.py builds one inside the group (it imports torch._dynamo)
            (weight * (rank + 1.0)).sum().backward()
            distributed.average_gradients([weight])
            assert torch.equal(weight.grad, torch.full((3,), 1.5))

            distributed.check_identical(torch.arange(4.0), "the same tensor")
            with pytest.raises(RuntimeError, match=r"differs between rank 0 and rank\(s\) \[1\]"):
                distributed.check_identical(torch.tensor([float(rank)]), "a rank-dependent tensor")
        # the group's threads end with it: left running into interpreter exit, they abort the process
        assert not [name for name in thread_names() if "gloo" in name], thread_names()
    except BaseException as error:  # noqa: BLE001 - reported to the parent test
        errors.put(f"rank {rank}: {type(error).__name__}: {error}")


def test_collectives_on_two_gloo_processes():
    context = mp.get_context("spawn")
    errors = context.Queue()
    port = free_port()
    processes = [context.Process(target=collectives, args=(rank, port, errors)) for rank in range(WORLD)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    failures = [errors.get() for _ in range(errors.qsize())]
    assert not failures, failures
    assert [p.exitcode for p in processes] == [0, 0]


# ----------------------------------------------------------------------------- the CLIs under torchrun


def torchrun(script, *args, processes=WORLD, check=True, wait=True):
    """``torchrun --nproc-per-node N script args`` from the repository root."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               script, *map(str, args)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "ALRS_DIST_TIMEOUT": "60"}
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"torchrun {script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def child_processes(pid):
    """The ids of the processes whose parent is ``pid`` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.slow
def test_torchrun_training_writes_one_experiment_and_resumes_after_a_rank_is_killed(mnist_dir, tmp_path):
    common = ["--data-dir", mnist_dir, "--runs-dir", tmp_path, *TINY, *TINY_PPO, "--ppo2-total-timesteps", "48"]
    out = torchrun("train.py", *common, "--tb-suffix", "reference").stdout
    assert "the controller is identical on all 2 processes" in out  # checked after the last update
    (reference,) = [p for p in tmp_path.iterdir() if p.is_dir()]  # one experiment folder
    updates = jsonl(reference / "updates.jsonl")
    assert [(u["world_size"], u["timesteps"]) for u in updates] == [(2, 16 * n) for n in (1, 2, 3)]  # all ranks
    episodes = jsonl(reference / "episodes.jsonl")
    assert {e["env"] for e in episodes} == {0, 1, 2, 3}  # rank 1's environments are 2 and 3
    assert [e["episode"] for e in episodes] == list(range(1, len(episodes) + 1))
    state = torch.load(reference / "checkpoints" / "latest.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["other_ranks"]) == 1
    assert not torch.equal(state["obs"], state["other_ranks"][0]["obs"])  # ranks ran their own children
    single = run("train.py", "--resume", reference.name, "--runs-dir", tmp_path, "--device", "cpu", check=False)
    assert single.returncode == 2 and "resume it with as many (torchrun --nproc-per-node 2)" in single.stderr

    job = torchrun("train.py", *common, "--tb-suffix", "killed", wait=False)
    deadline = time.time() + 120
    while not (list(tmp_path.glob("*killed/updates.jsonl"))
               and len(jsonl(next(tmp_path.glob("*killed/updates.jsonl")))) >= 1):
        assert job.poll() is None and time.time() < deadline, job.communicate()
        time.sleep(0.1)
    ranks = child_processes(job.pid)  # torchrun's workers
    assert len(ranks) == WORLD
    os.kill(max(ranks), signal.SIGKILL)  # one rank dies: the launcher stops the other and the job fails
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0 and "FAILED" in err
    killed = next(tmp_path.glob("*killed"))
    assert len(jsonl(killed / "updates.jsonl")) < 3
    assert "resuming at update" in torchrun("train.py", "--resume", killed.name, "--runs-dir", tmp_path,
                                            "--device", "cpu").stdout
    drop = lambda records: [{k: v for k, v in r.items() if k != "steps_per_second"} for r in records]
    assert drop(jsonl(killed / "updates.jsonl")) == drop(jsonl(reference / "updates.jsonl"))
    assert jsonl(killed / "episodes.jsonl") == jsonl(reference / "episodes.jsonl")


@pytest.mark.slow
def test_two_process_baselines_and_test_equal_one_process(mnist_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run("train.py", "--data-dir", mnist_dir, "--runs-dir", one, *TINY, *TINY_PPO, "--ppo2-total-timesteps", "16",
           "--tb-suffix", "c")
    shutil.copytree(one, two)  # one controller, tested by each launch
    run("baselines.py", "--data-dir", mnist_dir, "--runs-dir", one, *TINY, *TINY_GRID)
    torchrun("baselines.py", "--data-dir", mnist_dir, "--runs-dir", two, *TINY, *TINY_GRID)
    results = [{r["name"]: r for r in jsonl(next(runs.glob("baselines/*/results.jsonl")))} for runs in (one, two)]
    assert len(results[0]) == 9 and results[0] == results[1]

    outputs = []
    for runs, launch in ((one, run), (two, torchrun)):
        run_id = next(runs.glob("*_c")).name
        launch("test.py", "--test-id", run_id, "--runs-dir", runs, "--data-dir", mnist_dir, "--test-runs", "2",
               "--test-deterministic", "0", "--test-schedule", "latest")
        outputs.append(json.loads(next(runs.glob("*_c/test/*/results.json")).read_text()))
    assert outputs[0]["seeds"] == outputs[1]["seeds"]
    assert outputs[0]["runs"] == outputs[1]["runs"] and outputs[0]["summary"] == outputs[1]["summary"]
