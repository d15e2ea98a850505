"""Time child training: a torchvision DataLoader loop vs this project's environment.

    python bench.py --device cpu --children mlp,cnn --steps 100 --json bench.json

For each child, on synthetic data of the real shapes (28x28x1 for mlp/cnn, 32x32x3 for resnet),
batch 1000 and a full validation pass every 10 steps, it measures in one run:
  dataloader  the loop a torchvision user writes: per-sample PIL -> ToTensor, DataLoader(shuffle),
              loss.item() every step, validation through a DataLoader every update_freq steps;
  env         VecALRSEnv with one environment (reset excluded);
  vec env     VecALRSEnv with --num-envs environments stepping together (time per environment);
  train only  the floor: Adam steps on device-resident batches, no validation, no observation.
and prints milliseconds per child step with the speed-up of the environment over the DataLoader loop,
then what that means for planning: seconds per 1000-step episode of one environment (vectorized),
and the estimated wall time of a default train.py run (50 000 controller steps x 10 child steps,
child training only).

With --loop-envs 8,16,32,64 it also times train.py's whole loop (rollouts of every environment, with
their validation passes and observations, then the PPO update: ppo.collect_rollout and ppo_update,
as train.py runs them) and prints controller steps per second at each number of environments, each
against the first (the reference, measured in the same run).
"""
import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import ToTensor

from children import PRECISIONS, to_float
from data import Splits
from alrs.policy import ActorCritic, VecNormalizer
from environment import EnvConfig, VecALRSEnv
from flags import ArgumentParser
from models import build_model
from ppo import ADAM_EPSILON, NormalizedVecEnv, PPOConfig, RolloutBuffer, collect_rollout, ppo_update
from utils import resolve_device, run_cli, save_json

SHAPES = {"mlp": (1, 28, 28), "cnn": (1, 28, 28), "resnet": (3, 32, 32)}
DEFAULT_CHILD_STEPS = 50000 * 10  # a default train.py run: --ppo2-total-timesteps x --update-freq, all envs


def synthetic_splits(child, train_size, val_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = SHAPES[child]
    images = lambda n: torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)
    labels = lambda n: torch.randint(0, 10, (n,), generator=generator)
    return Splits(images(train_size), labels(train_size), images(val_size), labels(val_size),
                  images(val_size), labels(val_size), 10)


class PILImages(Dataset):
    """How torchvision's MNIST/CIFAR10 serve a sample: a PIL image through a transform."""

    def __init__(self, images, labels):
        self.images = images.permute(0, 2, 3, 1).squeeze(-1).numpy()  # (N, H, W) or (N, H, W, 3)
        self.labels = labels.tolist()
        self.transform = ToTensor()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_dataloader(child, splits, steps, update_freq, batch_size, device, workers):
    torch.manual_seed(0)
    model = build_model(child, *SHAPES[child][:1], SHAPES[child][1:]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = DataLoader(PILImages(splits.train_x, splits.train_y), batch_size, shuffle=True, drop_last=True,
                       num_workers=workers, persistent_workers=workers > 0)
    val = DataLoader(PILImages(splits.val_x, splits.val_y), batch_size, num_workers=workers,
                     persistent_workers=workers > 0)

    def run(num_steps):
        done = 0
        while done < num_steps:
            for x, y in train:
                model.train()
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss.item()
                done += 1
                if done % update_freq == 0:
                    model.eval()
                    with torch.no_grad():
                        sum(F.cross_entropy(model(vx.to(device)), vy.to(device), reduction="sum").item()
                            for vx, vy in val)
                if done == num_steps:
                    return

    run(update_freq)  # warm-up
    sync(device)
    start = time.perf_counter()
    run(steps)
    sync(device)
    return (time.perf_counter() - start) / steps * 1000


def time_env(child, splits, steps, update_freq, batch_size, device, num_envs, precision, compile):
    # one episode longer than the timed steps plus the warm-up, so no reset falls inside the timing
    config = EnvConfig(architecture=child, batch_size=batch_size, update_freq=update_freq,
                       num_train_steps=steps + 2 * update_freq, lr_noise=False, precision=precision,
                       compile=bool(compile))
    envs = VecALRSEnv(config, splits.to(device), list(range(num_envs)), device)
    envs.reset()
    envs.step(np.ones((num_envs, 1)))  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps // update_freq):
        envs.step(np.ones((num_envs, 1)))
    sync(device)
    return (time.perf_counter() - start) / steps / num_envs * 1000


def time_train_only(child, splits, steps, batch_size, device):
    torch.manual_seed(0)
    model = build_model(child, *SHAPES[child][:1], SHAPES[child][1:]).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all, y_all = splits.train_x.to(device), splits.train_y.to(device)
    batches = torch.randint(0, len(y_all), (steps + 1, batch_size), device=device)

    def step(indices):
        loss = F.cross_entropy(model(to_float(x_all[indices])), y_all[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(batches[-1])  # warm-up
    sync(device)
    start = time.perf_counter()
    for indices in batches[:-1]:
        step(indices)
    sync(device)
    return (time.perf_counter() - start) / steps * 1000


def time_training_loop(child, splits, num_envs, rollout, batch_size, device, precision, compile):
    """Controller steps per second of train.py's loop with ``num_envs`` environments: a rollout of
    ``rollout`` steps per environment (1000-step episodes, each step 10 child steps and a validation
    pass) and one PPO update with the reference's settings, after a warm-up rollout and update."""
    config = EnvConfig(architecture=child, batch_size=batch_size, precision=precision, compile=bool(compile))
    ppo = PPOConfig(rollout_steps=rollout)
    envs = VecALRSEnv(config, splits, list(range(num_envs)), device)
    agent = ActorCritic(envs.observation_space.shape[0])
    optimizer = torch.optim.Adam(agent.parameters(), lr=ppo.learning_rate, eps=ADAM_EPSILON)
    normalized = NormalizedVecEnv(envs, VecNormalizer(agent.actor[0].in_features, num_envs))
    buffer = RolloutBuffer(rollout, num_envs, agent.actor[0].in_features, (1,))
    obs, _ = normalized.reset()
    done = np.zeros(num_envs, dtype=bool)

    def update(obs, done):
        obs, done, _ = collect_rollout(normalized, agent, buffer, obs, done)
        with torch.no_grad():
            last_value = agent.value(torch.as_tensor(obs))
        ppo_update(agent, optimizer, buffer.batch(last_value, done, ppo.gamma), ppo)
        return obs, done

    obs, done = update(obs, done)  # warm-up: every shape seen once
    sync(device)
    start = time.perf_counter()
    update(obs, done)
    sync(device)
    return num_envs * rollout / (time.perf_counter() - start)


def loop_table(children, splits_of, env_counts, args, device):
    """Controller steps per second of the training loop per child and number of environments, each
    against the first count's (the reference); a count that does not fit in memory is reported so."""
    print(f"\ntrain.py's loop, controller steps per second ({args.loop_rollout}-step rollouts and a PPO update; "
          f"x: against {env_counts[0]} environments)")
    print(f"{'child':<8}" + "".join(f"{f'{n} envs':>18}" for n in env_counts))
    table = {}
    for child in children:
        table[child], cells = {}, []
        for count in env_counts:
            try:
                rate = time_training_loop(child, splits_of(child), count, args.loop_rollout, args.batch_size, device,
                                          args.precision, args.compile)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                rate = None
            table[child][count] = rate
            reference = table[child][env_counts[0]]
            cells.append(f"{'out of memory':>18}" if rate is None else
                         f"{rate:>10.1f} ({rate / reference:.2f}x)" if reference else f"{rate:>18.1f}")
        print(f"{child:<8}" + "".join(cells), flush=True)
    return table


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--children", default="mlp,cnn,resnet", help="comma-separated: mlp, cnn, resnet")
    parser.add_argument("--steps", type=int, default=100, help="child steps timed per loop (a multiple of 10)")
    parser.add_argument("--num-envs", type=int, default=8, help="environments of the vectorized run")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=10000)
    parser.add_argument("--train-size", type=int, default=50000)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--cudnn-benchmark", type=int, default=1, choices=(0, 1), help="as train.py's")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="as train.py's (env loops)")
    parser.add_argument("--compile", type=int, default=0, choices=(0, 1), help="as train.py's (env loops)")
    parser.add_argument("--loop-envs", default=None, metavar="N,N,...",
                        help="also time train.py's whole loop at these numbers of environments (the first: reference)")
    parser.add_argument("--loop-rollout", type=int, default=20, help="rollout steps per environment of that timing")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    children = args.children.split(",")
    if bad := [c for c in children if c not in SHAPES]:
        parser.error(f"argument --children: unknown {', '.join(bad)} (choose from {', '.join(SHAPES)})")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda is not available on this machine")
    if args.steps <= 0 or args.steps % 10:
        parser.error("argument --steps: must be a positive multiple of 10")
    try:
        env_counts = [int(n) for n in args.loop_envs.split(",")] if args.loop_envs else []
    except ValueError:
        parser.error(f"argument --loop-envs: not a comma-separated list of numbers: {args.loop_envs!r}")
    if any(n <= 0 for n in env_counts) or args.loop_rollout <= 0:
        parser.error("argument --loop-envs, --loop-rollout: must be positive")
    device = resolve_device(args.device, args.cudnn_benchmark)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}, batch {args.batch_size}, validation {args.val_size} "
          f"every 10 steps, {args.steps} steps per loop, {args.precision}, compile {args.compile}, "
          f"cudnn.benchmark {args.cudnn_benchmark}")
    results = {"device": name, "torch": torch.__version__, "args": vars(args), "children": {}}
    header = f"{'child':<8}{'dataloader':>12}{'env':>10}{f'vec env x{args.num_envs}':>14}{'train only':>12}" \
             f"{'env speed-up':>14}{'vec speed-up':>14}{'s/episode':>11}{'train.py est.':>15}"
    rows = []
    for child in children:
        splits = synthetic_splits(child, args.train_size, args.val_size)
        ms = {"dataloader": time_dataloader(child, splits, args.steps, 10, args.batch_size, device, args.workers),
              "env": time_env(child, splits, args.steps, 10, args.batch_size, device, 1, args.precision, args.compile),
              "vec_env": time_env(child, splits, args.steps, 10, args.batch_size, device, args.num_envs,
                                  args.precision, args.compile),
              "train_only": time_train_only(child, splits, args.steps, args.batch_size, device)}
        speedup = {"env": ms["dataloader"] / ms["env"], "vec_env": ms["dataloader"] / ms["vec_env"]}
        plan = {"seconds_per_episode": ms["vec_env"],  # 1000 steps x ms per step = seconds
                "train_py_minutes": DEFAULT_CHILD_STEPS * ms["vec_env"] / 1000 / 60}
        results["children"][child] = {"ms_per_child_step": ms, "speedup_over_dataloader": speedup, **plan}
        rows.append(f"{child:<8}{ms['dataloader']:>12.2f}{ms['env']:>10.2f}{ms['vec_env']:>14.2f}"
                    f"{ms['train_only']:>12.2f}{speedup['env']:>13.1f}x{speedup['vec_env']:>13.1f}x"
                    f"{plan['seconds_per_episode']:>11.1f}{plan['train_py_minutes']:>11.0f} min")
        print(rows[-1] if len(rows) > 1 else f"milliseconds per child step\n{header}\n{rows[-1]}", flush=True)
        if args.json:  # after each child, so a run stopped part-way keeps the children it timed
            save_json(args.json, results)
    if env_counts:
        splits_of = lambda child: synthetic_splits(child, args.train_size, args.val_size).to(device)
        results["training_loop_steps_per_second"] = loop_table(children, splits_of, env_counts, args, device)
        if args.json:
            save_json(args.json, results)
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run_cli(main)
