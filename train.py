"""Train a PPO controller that sets a child network's learning rate.

    python train.py --dataset fa-mnist --architecture cnn
    python train.py --resume <experiment-id>

Writes runs/<experiment-id>/: args.json, episodes.jsonl and updates.jsonl (metrics),
checkpoints/{latest,best,step-*}.pt and progress.png.
"""
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import distributed
import flags
from data import data_source
from alrs.controller import (controller_semantics, controller_state, nearest_start, read_controller_checkpoint,
                             start_lrs)
from environment import EnvConfig, FamilyVecEnv, TaskMixVecEnv, VecALRSEnv
from plots import plot_training
from alrs.policy import ActorCritic, VecNormalizer
from ppo import (ADAM_EPSILON, NormalizedVecEnv, PPOConfig, RolloutBuffer, collect_rollout, policy_statistics,
                 ppo_update)
from runs import (BEST_WINDOW, SEED_STRIDE, UNTRAINED_CHECKPOINT, check_writable, find_run, load_training_state,
                  new_run_dir, save_training_state)
from tasks import TASK_KEYS, FamilyDraws, load_task_splits, parse_task, task_from_args
from tensorboard_log import TensorBoardLog
from utils import (UserError, append_jsonl, atomic_write, load_json, read_jsonl, resolve_device, run_cli,
                   save_checkpoint)

NUM_PERIODIC_CHECKPOINTS = 10
PLOT_INTERVAL_S = 60  # progress.png is drawn at a periodic checkpoint at most this often (and at the end)
EPISODE_LR_KEYS = ("lr_min", "lr_max", "initial_lr", "final_lr", "lr_geomean", "lr_scale")
FAMILY = "family"  # the task name of the environments that draw from the family (--family)


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
    instance = {"instance": info["instance"], "family_seed": info["family_seed"]} if "instance" in info else {}
    return {"update": update, "episode": number, "env": env, "task": info["task"], **instance,
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
    """The tasks of --task, or the one the setting flags describe (none when every environment draws
    from the family)."""
    tasks = [parse_task(spec, task_from_args(args)) for spec in args.task or ()]
    return tasks or ([task_from_args(args)] if args.family < args.num_envs else [])


def make_envs(args, tasks, seeds, device):
    """The training environments: the last --family of ``seeds`` draw from the family (one
    FamilyVecEnv), the others are shared out among ``tasks`` in order (as evenly as they go), each
    task's in one VecALRSEnv on its own data; a dataset is read once for all its tasks."""
    config = EnvConfig.from_args(args, lr_noise=True)
    fixed, family = seeds[:len(seeds) - args.family], seeds[len(seeds) - args.family:]
    counts = [len(fixed) // len(tasks) + (t < len(fixed) % len(tasks)) for t in range(len(tasks))]
    envs, start = [], 0
    for task, count in zip(tasks, counts):
        splits = load_task_splits(task, args.data_dir, device, args.download)
        envs.append(VecALRSEnv(config.for_task(task), splits, fixed[start:start + count], device))
        start += count
    if family:
        draws = [FamilyDraws(seed, args.family_optimizers, args.family_members, args.family_override)
                 for seed in family]
        load = functools.partial(load_task_splits, data_dir=args.data_dir, device=device, download=args.download,
                                 cache={})  # each dataset read once for every task drawn
        envs.append(FamilyVecEnv(config, draws, load, device))
    return TaskMixVecEnv(envs, [task.name for task in tasks] + [FAMILY] * bool(family))


@dataclass
class Learner:
    """The controller being trained and what trains it: the policy, its optimizer, the normalizer
    with the environments it wraps, the rollout buffer and PPO's hyperparameters."""
    agent: ActorCritic
    optimizer: torch.optim.Optimizer
    normalizer: VecNormalizer
    raw_envs: TaskMixVecEnv
    envs: NormalizedVecEnv
    buffer: RolloutBuffer
    config: PPOConfig


@dataclass
class Progress:
    """Where training stands: the next update, episodes so far, the best windowed score (best.pt's),
    the recent finals it is computed from, and the environments' current observations."""
    update: int
    episodes: int
    best_val: float
    recent: RecentFinals
    obs: np.ndarray
    done: np.ndarray


@dataclass
class Run:
    """One process's view of the experiment: its folder and files, the world it runs in, and the
    update plan (PPO updates, and controller steps of all ranks per update)."""
    dir: Path
    rank: int
    world: int
    num_updates: int
    steps_per_update: int
    plotted_at: float = field(default_factory=time.monotonic)  # when progress.png was last drawn, or the
    # run (re)started: a run under a minute draws it once, at its end

    @property
    def main(self):
        return self.rank == 0

    @property
    def checkpoints(self):
        return self.dir / "checkpoints"

    @property
    def episodes_path(self):
        return self.dir / "episodes.jsonl"

    @property
    def updates_path(self):
        return self.dir / "updates.jsonl"


def train(args, device):
    """Train a controller; under torchrun, every rank runs its own environments (DD-PPO) and rank 0
    alone writes the experiment folder."""
    args, run_dir = resumed_args(args) if args.resume else (args, None)
    if distributed.is_main():
        check_writable(args.runs_dir)
    torch.manual_seed(args.seed)
    config, tasks = PPOConfig.from_args(args), training_tasks(args)
    initial = initial_controller(args) if args.init_controller and not args.resume else None
    raw_envs, run = open_run(args, config, tasks, run_dir, device)
    learner = build_learner(args, config, raw_envs, run.rank)
    optimizers = sorted({task.optimizer for task in tasks} | set(args.family_optimizers if args.family else ())
                        | set(initial.get("optimizers", ()) if initial else ()))
    controller = lambda: controller_state(learner.agent, learner.normalizer, args.action_range, args.action_param,
                                          args.features, args.anchor, args.anchor_range, optimizers)
    bar = board = None
    try:
        if initial:
            learner.agent.load_state_dict(initial["agent"])
            learner.normalizer.obs_rms.load_state_dict(initial["normalizer"]["obs_rms"])
            learner.normalizer.ret_rms.load_state_dict(initial["normalizer"]["ret_rms"])
        progress = restore(learner, run, start_lrs(args.initial_lr), device) if args.resume else \
            start(learner, run, start_lrs(args.initial_lr), controller())
        if run.main:
            for path in (run.episodes_path, run.updates_path):
                keep_records_before(path, progress.update)
            if args.tensorboard:
                board = TensorBoardLog(run.dir / "tb", purge_step=progress.update * run.steps_per_update)
        bar = tqdm(total=run.num_updates * run.steps_per_update, initial=progress.update * run.steps_per_update,
                   unit="step", desc="controller", dynamic_ncols=True, disable=not run.main)
        for update in range(progress.update, run.num_updates):
            started = time.perf_counter()
            episodes, finished, improved = collect_episodes(learner, progress, run, update, bar)
            if improved and run.main:  # best.pt: the policy that produced these episodes, before the update
                save_checkpoint(run.checkpoints / "best.pt", {**controller(), "val_loss": progress.best_val,
                                                              "timesteps": (update + 1) * run.steps_per_update})
            stats = update_policy(learner, progress, run, update, finished, started)
            ranks = distributed.all_gather(rank_state(raw_envs, learner.normalizer, progress.obs, progress.done))
            if run.main:
                write_update(run, learner, progress, episodes, stats, ranks, controller(), device, board)
    except KeyboardInterrupt:
        if bar:
            bar.close()
        report_stop(args, run)
        raise
    finally:
        if bar:
            bar.close()
        if board:
            board.close()
    distributed.check_identical(torch.nn.utils.parameters_to_vector(learner.agent.parameters()), "the controller")
    report_done(args, tasks, run, progress)


def initial_controller(args):
    """The checkpoint --init-controller names, checked to observe and act as this run's flags say (its
    weights and statistics would mean something else otherwise). Its Adam moments are not in it: the
    policy's optimizer starts afresh."""
    state = read_controller_checkpoint(args.init_controller)
    if "members" in state:
        raise UserError(f"--init-controller {args.init_controller} is an ensemble; start from one of its members")
    wanted = {"discrete": bool(args.discrete), "action_range": args.action_range, "action_param": args.action_param,
              "features": args.features, "anchor": args.anchor, "anchor_range": args.anchor_range}
    saved = controller_semantics(state)
    differ = [f"--{key.replace('_', '-')} {saved[key]} (flags: {wanted[key]})" for key in wanted
              if saved[key] != wanted[key]]
    if differ:
        raise UserError(f"--init-controller {args.init_controller} was trained with " + ", ".join(differ))
    return state


def open_run(args, config, tasks, run_dir, device):
    """This rank's environments (its own seeds) and the experiment folder: rank 0 creates it once the
    data loaded (or reopens the resumed one) and tells the others its name."""
    rank, world = distributed.rank(), distributed.world_size()
    print("loading " + ", ".join([f"{t.name} ({data_source(t.dataset, args.data_dir)})" for t in tasks]
                                 + [f"{args.family} family environment(s)"] * bool(args.family)) + " ...", flush=True)
    seeds = [args.seed * SEED_STRIDE + rank * args.num_envs + i for i in range(args.num_envs)]
    raw_envs = make_envs(args, tasks, seeds, device)
    if rank == 0:
        run_dir = run_dir or new_run_dir(args)
    run_dir = Path(distributed.broadcast(str(run_dir)))
    print(f"experiment id: {run_dir.name}  ({run_dir})" + (f", {world} processes" if world > 1 else ""), flush=True)
    steps_per_update = world * args.num_envs * config.rollout_steps  # controller steps of all ranks per update
    num_updates = config.total_timesteps // steps_per_update
    if num_updates == 0:
        raise UserError(f"--ppo2-total-timesteps {config.total_timesteps} is less than one rollout of "
                        f"{world} processes x {args.num_envs} environments x {config.rollout_steps} steps")
    return raw_envs, Run(run_dir, rank, world, num_updates, steps_per_update)


def build_learner(args, config, raw_envs, rank):
    """The policy (the same initial weights on every rank), its Adam, the normalizer (statistics merged
    over the ranks) around the environments, and the rollout buffer."""
    obs_dim = raw_envs.observation_space.shape[0]
    agent = ActorCritic(obs_dim, discrete=bool(args.discrete))
    if rank > 0:
        torch.manual_seed(args.seed * SEED_STRIDE + rank)  # its own action noise and minibatch order
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.learning_rate, eps=ADAM_EPSILON)
    normalizer = VecNormalizer(obs_dim, args.num_envs, config.norm_obs, config.norm_reward, config.gamma,
                               config.normalizer_clip, merge=distributed.merge_moments)
    buffer = RolloutBuffer(config.rollout_steps, args.num_envs, obs_dim, () if args.discrete else (1,))
    return Learner(agent, optimizer, normalizer, raw_envs, NormalizedVecEnv(raw_envs, normalizer), buffer, config)


def start(learner, run, starts, untrained):
    """A fresh start: rank 0 saves the untrained controller (test.py's control), and the environments
    reset."""
    if run.main:
        save_checkpoint(run.checkpoints / UNTRAINED_CHECKPOINT, {**untrained, "timesteps": 0, "val_loss": None})
    obs, _ = learner.envs.reset()
    return Progress(0, 0, float("inf"), RecentFinals(learner.raw_envs.task_names, starts), obs,
                    np.zeros(learner.raw_envs.num_envs, dtype=bool))


def restore(learner, run, starts, device):
    """Load the run's training state into ``learner`` (this rank's environments, random generator and
    running returns from its own part) and return where it stood."""
    state = load_training_state(run.dir, device.type)
    if state.get("world_size", 1) != run.world:
        raise UserError(f"{run.dir.name} ran with {state.get('world_size', 1)} process(es); resume it with as "
                        f"many (torchrun --nproc-per-node {state.get('world_size', 1)})")
    mine = state if run.rank == 0 else state["other_ranks"][run.rank - 1]
    learner.agent.load_state_dict(state["agent"])
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.normalizer.load_state_dict(state["normalizer"])
    if run.rank > 0:
        learner.normalizer.returns = mine["returns"].numpy().copy()
    learner.raw_envs.load_state_dict(mine["env"])
    torch.set_rng_state(mine["torch_rng"])
    progress = Progress(state["update"], state["episodes"], state["best_val_loss"],
                        RecentFinals(learner.raw_envs.task_names, starts, losses=state["recent_finals"]),
                        mine["obs"].numpy(), mine["done"].numpy())
    print(f"resuming at update {progress.update}/{run.num_updates} ({progress.update * run.steps_per_update} steps)")
    return progress


def collect_episodes(learner, progress, run, update, bar):
    """One rollout on every rank; ``progress`` moves on (observations, episodes, recent finals, best
    score). Returns every rank's ended episodes as records, the final validation losses of those that
    finished (not diverged), and whether the best score improved."""
    num_envs = learner.raw_envs.num_envs

    def show(infos):
        bar.update(num_envs * run.world)
        if infos:
            bar.set_postfix(last_val_loss=f"{infos[-1]['final_val_loss']:.4f}")

    progress.obs, progress.done, ended = collect_rollout(learner.envs, learner.agent, learner.buffer, progress.obs,
                                                         progress.done, show)
    episodes = [episode_record(update, step, env, info, run.world * num_envs, learner.config.rollout_steps,
                               progress.episodes + n + 1)
                for n, (step, env, info) in enumerate(all_ranks_episodes(ended, num_envs))]
    progress.episodes += len(episodes)
    finished = [e for e in episodes if e["final_val_loss"] is not None]
    for e in finished:
        progress.recent.add(e["task"], e["initial_lr"], e["final_val_loss"])
    score = progress.recent.score()
    improved = score is not None and score < progress.best_val
    progress.best_val = score if improved else progress.best_val
    return episodes, [e["final_val_loss"] for e in finished], improved


def update_policy(learner, progress, run, update, finished, started):
    """PPO's update on the rollout in the buffer (gradients averaged over the ranks); returns the
    update's line of updates.jsonl (rank 0's statistics, with the mean of ``finished``, the rollout's
    final validation losses)."""
    agent, raw_envs = learner.agent, learner.raw_envs
    with torch.no_grad():
        last_value = agent.value(torch.as_tensor(progress.obs))
    batch = learner.buffer.batch(last_value, progress.done, learner.config.gamma)
    bounds = () if agent.discrete else (raw_envs.action_space.low, raw_envs.action_space.high)
    behaviour = policy_statistics(agent, batch["obs"], batch["actions"], *bounds)
    stats = ppo_update(agent, learner.optimizer, batch, learner.config, reduce_gradients=distributed.average_gradients)
    mean_val = float(np.mean(finished)) if finished else None
    stats.update(behaviour, update=update, timesteps=(update + 1) * run.steps_per_update,
                 episodes=progress.episodes, mean_final_val_loss=mean_val, world_size=run.world,
                 steps_per_second=run.steps_per_update / (time.perf_counter() - started))
    progress.update = update + 1
    return stats


def write_update(run, learner, progress, episodes, stats, ranks, controller, device, board):
    """Rank 0's files after an update: the metrics, the training state (with every rank's part), and
    every tenth of the run a periodic checkpoint and progress.png (drawing takes one to two seconds: at
    most once a minute, the first a minute after the start, and always after the last update)."""
    for record in episodes:
        append_jsonl(run.episodes_path, record)
    append_jsonl(run.updates_path, stats)
    if board:
        board.add(episodes, stats)
    own = {key: value for key, value in ranks[0].items() if key != "returns"}  # in the normalizer's state
    timesteps = stats["timesteps"]
    save_training_state(run.dir, {
        **controller, **own, "optimizer": learner.optimizer.state_dict(), "update": progress.update,
        "episodes": progress.episodes, "best_val_loss": progress.best_val, "recent_finals": progress.recent.losses,
        "device": device.type, "timesteps": timesteps, "world_size": run.world, "other_ranks": ranks[1:]})
    periodic_every = max(1, run.num_updates // NUM_PERIODIC_CHECKPOINTS)
    if progress.update % periodic_every == 0 or progress.update == run.num_updates:
        mean_val = stats["mean_final_val_loss"]
        name = f"step-{timesteps:07d}_val-{mean_val if mean_val is not None else float('nan'):.4f}.pt"
        save_checkpoint(run.checkpoints / name, {**controller, "timesteps": timesteps, "val_loss": mean_val})
        if progress.update == run.num_updates or time.monotonic() - run.plotted_at >= PLOT_INTERVAL_S:
            plot_training(read_jsonl(run.episodes_path), read_jsonl(run.updates_path), run.dir / "progress.png",
                          run.dir.name, window=BEST_WINDOW)  # the running mean best.pt is chosen on
            run.plotted_at = time.monotonic()


def report_stop(args, run):
    """What Ctrl-C prints (rank 0): how to continue, or that there is nothing to continue yet."""
    if not run.main:
        return
    launcher = "python train.py" if run.world == 1 else f"torchrun --nproc-per-node {run.world} train.py"
    resume = flags.command_line("train", {"resume": run.dir.name, "runs_dir": args.runs_dir})
    resume = resume.replace("python train.py", launcher, 1)
    done_updates = len(read_jsonl(run.updates_path))
    if done_updates == 0:
        print(f"stopped before the first update; {resume} starts it from the beginning", file=sys.stderr)
    else:
        print(f"stopped after {done_updates} updates; continue with: {resume}", file=sys.stderr)


def report_done(args, tasks, run, progress):
    """The closing lines: episodes, the best score, where the checkpoints are and how to evaluate them."""
    if run.world > 1:
        print(f"the controller is identical on all {run.world} processes")
    has_best = progress.best_val < float("inf")
    best = f"{progress.best_val:.4f}" if has_best else f"none (fewer than {BEST_WINDOW} episodes per initial rate)"
    print(f"done: {progress.episodes} episodes; best mean final validation loss over {BEST_WINDOW} episodes per "
          f"initial rate {best}; checkpoints in {run.checkpoints}")
    print("evaluate: sweep the baselines of a setting once, then test the controller on it:\n  "
          + "\n  ".join(evaluation_commands(args, tasks, run.dir.name, has_best)))


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
