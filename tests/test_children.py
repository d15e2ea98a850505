"""Children trained side by side (children.py): BatchedAdam against torch's Adam, and the module
backend's memory layout."""
import numpy as np
import pytest
import torch

from children import BatchedAdam, ModuleChildren
from data import load_splits
from models import build_model

BATCH = 16


@pytest.fixture(scope="module")
def splits(mnist_dir):
    return load_splits("fa-mnist", mnist_dir, train_size=200, val_size=50)


# ----------------------------------------------------------------------------- BatchedAdam

def test_batched_adam_matches_torch_adam_per_child():
    torch.manual_seed(0)
    lrs = torch.tensor([1e-3, 1e-2, 1e-1], dtype=torch.float64)
    params = {"w": torch.randn(3, 4, 5), "b": torch.randn(3, 5)}
    references = [{k: v[i].clone().requires_grad_() for k, v in params.items()} for i in range(3)]
    optimizers = [torch.optim.Adam(list(ref.values()), lr=float(lr)) for ref, lr in zip(references, lrs)]
    adam = BatchedAdam(params)
    schedule = [[True] * 3] * 3 + [[True, False, True]] * 2 + [[True] * 3] * 2
    for active in schedule:
        grads = {k: torch.randn_like(v) * 3 for k, v in params.items()}
        frozen = {k: v[1].clone() for k, v in params.items()}
        moments = {k: adam.exp_avg_sq[k][1].clone() for k in params}
        adam.step(params, grads, lrs, torch.tensor(active))
        for i, (ref, optimizer) in enumerate(zip(references, optimizers)):
            if active[i]:
                for key, tensor in ref.items():
                    tensor.grad = grads[key][i].clone()
                optimizer.step()
            for key in params:
                torch.testing.assert_close(params[key][i], ref[key].detach(), rtol=1e-5, atol=1e-7)
        if not active[1]:
            assert all(torch.equal(params[k][1], frozen[k]) for k in params)
            assert all(torch.equal(adam.exp_avg_sq[k][1], moments[k]) for k in params)
    assert adam.step_count.tolist() == [7, 5, 7]


def test_batched_adam_reset_restarts_one_child():
    torch.manual_seed(1)
    params = {"w": torch.randn(2, 3)}
    adam = BatchedAdam(params)
    lrs, active = torch.tensor([1e-2, 1e-2], dtype=torch.float64), torch.tensor([True, True])
    for _ in range(3):
        adam.step(params, {"w": torch.randn(2, 3)}, lrs, active)
    adam.reset(0)
    assert adam.step_count.tolist() == [0, 3] and not adam.exp_avg["w"][0].any()
    start = params["w"][0].clone().requires_grad_()
    fresh = torch.optim.Adam([start], lr=1e-2)
    grad = torch.randn(2, 3)
    adam.step(params, {"w": grad}, lrs, active)
    start.grad = grad[0].clone()
    fresh.step()
    torch.testing.assert_close(params["w"][0], start.detach(), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- layout

def test_channels_last_children_train_like_contiguous_ones(splits):
    template = build_model("cnn", 1, (28, 28))
    runs = []
    for channels_last in (False, True):
        children = ModuleChildren(template, 2, "cpu", channels_last=channels_last)
        steps = torch.randint(0, len(splits.train_y), (3, 2, BATCH), generator=torch.Generator().manual_seed(0))
        loss = children.train_block(splits.train_x, splits.train_y, steps, np.array([1e-3, 1e-2]), np.array([True, True]))
        runs.append((loss, children.logits(splits.val_x)))
    assert runs[1][1].is_contiguous() and next(children.models[0].parameters()).dim() > 1
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(runs[1][1], runs[0][1], rtol=1e-3, atol=1e-4)
