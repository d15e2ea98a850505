"""Train a PPO controller that sets a child network's learning rate.

    python train.py --dataset fa-mnist --architecture cnn
    python train.py --resume <experiment-id>

Writes runs/<experiment-id>/: args.json, episodes.jsonl and updates.jsonl (metrics),
checkpoints/{latest,best,step-*}.pt and progress.png.
"""
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import distributed
import flags
from data import data_source
from controller import controller_state, nearest_start, start_lrs
from environment import EnvConfig, TaskMixVecEnv, VecALRSEnv
from plots import plot_training
from ppo import (DEFAULT_CLIP, ActorCritic, NormalizedVecEnv, PPOConfig, RolloutBuffer, VecNormalizer,
                 policy_statistics, ppo_update)
from runs import (BEST_WINDOW, SEED_STRIDE, UNTRAINED_CHECKPOINT, check_writable, find_run, load_training_state,
                  new_run_dir, save_training_state)
from tasks import TASK_KEYS, load_task_splits, parse_task, task_from_args
from tensorboard_log import TensorBoardLog
from utils import (UserError, append_jsonl, atomic_write, load_json, read_jsonl, resolve_device, run_cli,
                   save_checkpoint)

NUM_PERIODIC_CHECKPOINTS = 10
EPISODE_LR_KEYS = ("lr_min", "lr_max", "initial_lr", "final_lr", "lr_geomean", "lr_scale")


def resumed_args(args):
    """The saved settings of the experiment named by --resume (they win over the flags; settings
    added since the run started take their defaults)."""
    run_dir = find_run(args.runs_dir, args.resume)
    saved = vars(flags.build_parser("train").parse_args([])) | load_json(run_dir / "args.json")
    saved.update(resume=args.resume, runs_dir=args.runs_dir, device=args.device, tensorboard=args.tensorboard,
                 download=args.download)
    return type(args)(**saved), run_dir


def keep_records_before(path, update):
    """Drop metric lines written after the checkpoint a resumed run starts from."""
    records = [r for r in read_jsonl(path) if r["update"] < update]
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))


def collect_rollout(envs, agent, buffer, obs, done, on_step=None):
    """Fill ``buffer`` with one rollout of the current policy in ``envs`` (a NormalizedVecEnv).

    ``obs`` are normalized, ``done[i]`` says whether ``obs[i]`` starts an episode. Returns the next
    (obs, done) and (step, env, info) of every episode that ended; ``on_step(infos)`` is called
    after each step with the final infos of the episodes that ended in it.
    """
    ended = []
    for step in range(buffer.num_steps):
        action, log_prob, value = agent.act(torch.as_tensor(obs))
        next_obs, reward, terminated, truncated, infos = envs.step(action.numpy())
        buffer.add(obs, action, log_prob, value, reward, done)
        obs, done = next_obs, terminated | truncated
        ended_now = [(step, int(i), infos[i]) for i in np.flatnonzero(done)]
        ended += ended_now
        if on_step:
            on_step([info for _, _, info in ended_now])
    return obs, done, ended


class RecentFinals:
    """The final validation losses of the last ``window`` finished episodes of each task and initial rate.

    best.pt is chosen on their mean over the tasks and rates: with random initial rates (--initial-lr 0)
    or a task mix, a plain moving average would mostly reward a window that happened to draw the easy ones.
    """

    def __init__(self, tasks, starts, window=BEST_WINDOW, losses=None):
        self.tasks, self.starts, self.window = list(tasks), list(starts), window
        self.losses = losses or [[] for _ in range(len(self.tasks) * len(self.starts))]

    def add(self, task, initial_lr, final_val_loss):
        """Count an episode under its task and the start rate nearest to its (noisy) initial rate."""
        i = self.tasks.index(task) * len(self.starts) + self.starts.index(nearest_start(initial_lr, self.starts))
        self.losses[i] = (self.losses[i] + [final_val_loss])[-self.window:]

    def score(self):
        """Mean over the tasks and start rates of their windowed mean, or None until each fills its window."""
        if any(len(losses) < self.window for losses in self.losses):
            return None
        return float(np.mean([np.mean(losses) for losses in self.losses]))


def episode_record(update, step, env, info, num_envs, num_steps, number):
    """One line of episodes.jsonl (a diverged episode's final validation loss is null)."""
    return {"update": update, "episode": number, "env": env, "task": info["task"],
            "timesteps": (update * num_steps + step + 1) * num_envs,
            "return": info["episode_return"], "diverged": info["diverged"],
            "final_val_loss": None if info["diverged"] else info["final_val_loss"],
            **{key: info[key] for key in EPISODE_LR_KEYS}}


def main(argv=None):
    args = flags.parse_args("train", argv)
    with distributed.process_group(resolve_device(args.device, args.cudnn_benchmark)) as device:
        train(args, device)


def all_ranks_episodes(ended, num_envs):
    """Every rank's ended episodes, (step, env, info), as one run's: rank r's environment i is
    r * num_envs + i, in the order of a single process (by step, then environment)."""
    gathered = distributed.all_gather(ended)
    return sorted(((step, rank * num_envs + env, info) for rank, episodes in enumerate(gathered)
                   for step, env, info in episodes), key=lambda episode: episode[:2])


def rank_state(raw_envs, normalizer, obs, done):
    """What differs between torchrun ranks in the training state: their environments, random
    generator, observations and running returns (the controller and statistics are shared)."""
    return {"env": raw_envs.state_dict(), "torch_rng": torch.get_rng_state(), "obs": torch.as_tensor(obs),
            "done": torch.as_tensor(done), "returns": torch.as_tensor(normalizer.returns)}


def training_tasks(args):
    """The tasks of --task, or the one the setting flags describe."""
    return [parse_task(spec, task_from_args(args)) for spec in args.task or ()] or [task_from_args(args)]


def make_envs(args, tasks, seeds, device):
    """The training environments: ``seeds`` shared out among ``tasks`` in order (as evenly as they
    go), each task's in one VecALRSEnv on its own data; a dataset is read once for all its tasks."""
    counts = [len(seeds) // len(tasks) + (t < len(seeds) % len(tasks)) for t in range(len(tasks))]
    envs, start = [], 0
    for task, count in zip(tasks, counts):
        splits = load_task_splits(task, args.data_dir, device, args.download)
        config = EnvConfig.from_args(args, lr_noise=True, architecture=task.architecture,
                                     batch_size=task.batch_size, num_train_steps=task.num_train_steps)
        envs.append(VecALRSEnv(config, splits, seeds[start:start + count], device))
        start += count
    return TaskMixVecEnv(envs, [task.name for task in tasks])


def train(args, device):
    """Train a controller; under torchrun, every rank runs its own environments (DD-PPO) and rank 0
    alone writes the experiment folder."""
    main_rank, rank, world = distributed.is_main(), distributed.rank(), distributed.world_size()
    args, run_dir = resumed_args(args) if args.resume else (args, None)
    if main_rank:
        check_writable(args.runs_dir)
    torch.manual_seed(args.seed)
    tasks = training_tasks(args)
    print("loading " + ", ".join(f"{t.name} ({data_source(t.dataset, args.data_dir)})" for t in tasks) + " ...",
          flush=True)
    seeds = [args.seed * SEED_STRIDE + rank * args.num_envs + i for i in range(args.num_envs)]
    raw_envs = make_envs(args, tasks, seeds, device)
    if main_rank:
        run_dir = run_dir or new_run_dir(args)  # created only once the data loaded
    run_dir = Path(distributed.broadcast(str(run_dir)))
    print(f"experiment id: {run_dir.name}  ({run_dir})" + (f", {world} processes" if world > 1 else ""), flush=True)

    num_envs, num_steps = args.num_envs, args.ppo2_update_freq
    steps_per_update = world * num_envs * num_steps  # controller steps of all ranks per PPO update
    num_updates = args.ppo2_total_timesteps // steps_per_update
    if num_updates == 0:
        raise UserError(f"--ppo2-total-timesteps {args.ppo2_total_timesteps} is less than one rollout of "
                        f"{world} processes x {num_envs} environments x {num_steps} steps")
    obs_dim = raw_envs.observation_space.shape[0]
    agent = ActorCritic(obs_dim, discrete=bool(args.discrete))  # the same initial weights on every rank
    if rank > 0:
        torch.manual_seed(args.seed * SEED_STRIDE + rank)  # its own action noise and minibatch order
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.ppo2_lr, eps=1e-5)
    clip = args.norm_clip or (args.ppo2_cliprange if args.ppo2_cliprange > 0 else DEFAULT_CLIP)
    normalizer = VecNormalizer(obs_dim, num_envs, bool(args.ppo2_norm_obs), bool(args.ppo2_norm_reward),
                               args.ppo2_gamma, clip, merge=distributed.merge_moments)
    envs = NormalizedVecEnv(raw_envs, normalizer)
    config = PPOConfig(clip_range=args.ppo2_cliprange, ent_coef=args.ppo2_ent_coef,
                       num_minibatches=args.ppo2_nminibatches, num_epochs=args.ppo2_noptepochs)
    action_bounds = () if args.discrete else (raw_envs.action_space.low, raw_envs.action_space.high)
    buffer = RolloutBuffer(num_steps, num_envs, obs_dim, () if args.discrete else (1,))
    periodic_every = max(1, num_updates // NUM_PERIODIC_CHECKPOINTS)
    checkpoints = run_dir / "checkpoints"
    episodes_path, updates_path = run_dir / "episodes.jsonl", run_dir / "updates.jsonl"
    controller = lambda: controller_state(agent, normalizer, args.action_range, args.action_param, args.features)
    starts = start_lrs(args.initial_lr)

    def report_stop():
        """What Ctrl-C prints (rank 0): how to continue, or that there is nothing to continue yet."""
        if not main_rank:
            return
        launcher = "python train.py" if world == 1 else f"torchrun --nproc-per-node {world} train.py"
        resume = flags.command_line("train", {"resume": run_dir.name, "runs_dir": args.runs_dir})
        resume = resume.replace("python train.py", launcher, 1)
        done_updates = len(read_jsonl(updates_path))
        if done_updates == 0:
            print(f"stopped before the first update; {resume} starts it from the beginning", file=sys.stderr)
        else:
            print(f"stopped after {done_updates} updates; continue with: {resume}", file=sys.stderr)

    state = load_training_state(run_dir, device.type) if args.resume else None
    if state is not None:
        if state.get("world_size", 1) != world:
            raise UserError(f"{run_dir.name} ran with {state.get('world_size', 1)} process(es); resume it with as "
                            f"many (torchrun --nproc-per-node {state.get('world_size', 1)})")
        mine = state if rank == 0 else state["other_ranks"][rank - 1]
        agent.load_state_dict(state["agent"])
        optimizer.load_state_dict(state["optimizer"])
        normalizer.load_state_dict(state["normalizer"])
        if rank > 0:
            normalizer.returns = mine["returns"].numpy().copy()
        raw_envs.load_state_dict(mine["env"])
        torch.set_rng_state(mine["torch_rng"])
        start_update, num_episodes, best_val = state["update"], state["episodes"], state["best_val_loss"]
        recent = RecentFinals(raw_envs.task_names, starts, losses=state["recent_finals"])
        obs, done = mine["obs"].numpy(), mine["done"].numpy()
        print(f"resuming at update {start_update}/{num_updates} ({start_update * steps_per_update} steps)")
    else:
        start_update, num_episodes, best_val, recent = 0, 0, float("inf"), RecentFinals(raw_envs.task_names, starts)
        if main_rank:
            save_checkpoint(checkpoints / UNTRAINED_CHECKPOINT, {**controller(), "timesteps": 0, "val_loss": None})
        try:
            obs, _ = envs.reset()
        except KeyboardInterrupt:
            report_stop()
            raise
        done = np.zeros(num_envs, dtype=bool)
    board = None
    if main_rank:
        for path in (episodes_path, updates_path):
            keep_records_before(path, start_update)
        if args.tensorboard:
            board = TensorBoardLog(run_dir / "tb", purge_step=start_update * steps_per_update)

    progress = tqdm(total=num_updates * steps_per_update, initial=start_update * steps_per_update,
                    unit="step", desc="controller", dynamic_ncols=True, disable=not main_rank)

    def show_progress(infos):
        progress.update(num_envs * world)
        if infos:
            progress.set_postfix(last_val_loss=f"{infos[-1]['final_val_loss']:.4f}")

    try:
        for update in range(start_update, num_updates):
            started = time.perf_counter()
            obs, done, ended = collect_rollout(envs, agent, buffer, obs, done, show_progress)
            ended = all_ranks_episodes(ended, num_envs)
            episodes = [episode_record(update, step, env, info, world * num_envs, num_steps, num_episodes + n + 1)
                        for n, (step, env, info) in enumerate(ended)]
            num_episodes += len(episodes)
            timesteps = (update + 1) * steps_per_update
            finished = [e for e in episodes if e["final_val_loss"] is not None]
            mean_val = float(np.mean([e["final_val_loss"] for e in finished])) if finished else None
            for e in finished:
                recent.add(e["task"], e["initial_lr"], e["final_val_loss"])
            score = recent.score()
            if score is not None and score < best_val:
                # the policy that produced the latest episodes, before this rollout's update changes it
                best_val = score
                if main_rank:
                    save_checkpoint(checkpoints / "best.pt",
                                    {**controller(), "timesteps": timesteps, "val_loss": best_val})
            with torch.no_grad():
                last_value = agent.value(torch.as_tensor(obs))
            batch = buffer.batch(last_value, done, args.ppo2_gamma)
            behaviour = policy_statistics(agent, batch["obs"], batch["actions"], *action_bounds)
            stats = ppo_update(agent, optimizer, batch, config,  # rank 0's statistics
                               reduce_gradients=distributed.average_gradients)
            stats.update(behaviour, update=update, timesteps=timesteps, episodes=num_episodes,
                         mean_final_val_loss=mean_val, world_size=world,
                         steps_per_second=steps_per_update / (time.perf_counter() - started))
            ranks = distributed.all_gather(rank_state(raw_envs, normalizer, obs, done))
            if not main_rank:
                continue
            for record in episodes:
                append_jsonl(episodes_path, record)
            append_jsonl(updates_path, stats)
            if board:
                board.add(episodes, stats)
            own = {key: value for key, value in ranks[0].items() if key != "returns"}  # in the normalizer's state
            save_training_state(run_dir, {
                **controller(), **own, "optimizer": optimizer.state_dict(), "update": update + 1,
                "episodes": num_episodes, "best_val_loss": best_val, "recent_finals": recent.losses,
                "device": device.type, "timesteps": timesteps, "world_size": world, "other_ranks": ranks[1:]})
            if (update + 1) % periodic_every == 0 or update + 1 == num_updates:
                name = f"step-{timesteps:07d}_val-{mean_val if mean_val is not None else float('nan'):.4f}.pt"
                save_checkpoint(checkpoints / name, {**controller(), "timesteps": timesteps, "val_loss": mean_val})
                plot_training(read_jsonl(episodes_path), read_jsonl(updates_path), run_dir / "progress.png",
                              run_dir.name)
    except KeyboardInterrupt:
        progress.close()
        report_stop()
        raise
    finally:
        progress.close()
        if board:
            board.close()
    distributed.check_identical(torch.nn.utils.parameters_to_vector(agent.parameters()), "the controller")
    if world > 1:
        print(f"the controller is identical on all {world} processes")
    best = f"none (fewer than {BEST_WINDOW} episodes per initial rate)" if best_val == float("inf") else f"{best_val:.4f}"
    print(f"done: {num_episodes} episodes; best mean final validation loss over {BEST_WINDOW} episodes per initial rate "
          f"{best}; "
          f"checkpoints in {checkpoints}")
    print("evaluate: sweep the baselines of a setting once, then test the controller on it:\n  "
          + "\n  ".join(evaluation_commands(args, tasks, run_dir.name, has_best=best_val < float("inf"))))


def evaluation_commands(args, tasks, run_id, has_best=True):
    """The baselines.py and test.py commands of each training task (a single task's test.py takes the
    run's own settings; a mix's names the task's); a run too short for best.pt tests latest.pt."""
    commands = []
    for task in tasks:
        setting = type(args)(**vars(args) | asdict(task))
        named = {key: getattr(setting, key) for key in (*TASK_KEYS, "update_freq")} if len(tasks) > 1 else {}
        commands += [flags.baselines_command(setting),
                     flags.command_line("test", {"test_id": run_id, **named, "runs_dir": args.runs_dir,
                                                 "test_schedule": None if has_best else "latest"})]
    return commands


if __name__ == "__main__":
    run_cli(main)
