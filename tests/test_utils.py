"""The shared base (utils.py): checkpoints and JSON files that survive crashes and refuse damage or
code, and the CPU thread setting of every script."""
import os

import numpy as np
import pytest
import torch

import utils
from conftest import Exploit
from utils import UserError


# ----------------------------------------------------------------------------- files

def test_checkpoint_round_trip(tmp_path):
    state = {"format": "test-1", "tensor": torch.arange(6.0).view(2, 3), "int": 3, "float": 0.5,
             "list": [1, "a", None], "nested": {"rng": torch.Generator().manual_seed(1).get_state(),
                                                "flag": True}}
    path = tmp_path / "deep" / "ckpt.pt"
    utils.save_checkpoint(path, state)
    loaded = utils.load_checkpoint(path)
    assert torch.equal(loaded["tensor"], state["tensor"])
    assert torch.equal(loaded["nested"]["rng"], state["nested"]["rng"])
    assert {k: v for k, v in loaded.items() if k not in ("tensor", "nested")} == \
        {k: v for k, v in state.items() if k not in ("tensor", "nested")}
    assert loaded["nested"]["flag"] is True
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]  # no temporary file left


def damage(path, how):
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not a dict":
        torch.save([1, 2], path)
    elif how == "missing key":
        torch.save({"other": 1}, path)


@pytest.mark.parametrize("how", ["truncated", "random bytes", "empty", "not a dict", "missing key"])
def test_damaged_checkpoint_is_a_user_error(tmp_path, how):
    path = tmp_path / "ckpt.pt"
    utils.save_checkpoint(path, {"format": "test-1", "weights": torch.randn(100, 100)})
    damage(path, how)
    with pytest.raises(UserError, match="ckpt.pt"):
        utils.load_checkpoint(path)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        utils.load_checkpoint(tmp_path / "nope.pt")


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "test-1", "x": Exploit(os.mkdir, str(marker))}, path)
    with pytest.raises(UserError):
        utils.load_checkpoint(path)
    assert not marker.exists()


def test_atomic_write_replaces_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    utils.save_json(path, {"a": 1})
    utils.save_json(path, {"a": 2})
    assert utils.load_json(path) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]

    def crash(f):
        f.write(b'{"a": ')
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        utils.atomic_write(path, crash)
    assert utils.load_json(path) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind


def test_read_jsonl_skips_a_last_line_cut_short(tmp_path):
    path = tmp_path / "log.jsonl"
    assert utils.read_jsonl(path) == []
    records = [{"update": i, "loss": i / 3} for i in range(3)]
    for record in records:
        utils.append_jsonl(path, record)
    assert utils.read_jsonl(path) == records
    with open(path, "a") as f:
        f.write('{"update": 3, "lo')
    assert utils.read_jsonl(path) == records


def test_read_jsonl_refuses_a_damaged_middle_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"update": 0}\n{"upd\n{"update": 2}\n')
    with pytest.raises(UserError, match="line 2"):
        utils.read_jsonl(path)


# ----------------------------------------------------------------------------- threads

@pytest.mark.parametrize("omp, threads", [(None, 1), ("2", 2)])
def test_the_scripts_use_one_cpu_thread_unless_omp_num_threads_says(monkeypatch, omp, threads):
    monkeypatch.delenv("OMP_NUM_THREADS")
    if omp:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    torch.set_num_threads(2)
    try:
        assert utils.resolve_device("cpu") == torch.device("cpu") and torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest)
