"""Command-line flags: the reference's names and defaults, in groups defined once; each script parses
only the groups it uses, so a flag another script reads is an error, not silently ignored."""
import argparse
import importlib.util
import math
import shlex
from dataclasses import fields
from pathlib import Path

import torch

from children import PRECISIONS
from data import DATASETS, DEFAULT_VAL_SIZE
from alrs.controller import ACTION_PARAMS, ANCHORS, FEATURES
from environment import REWARDS, EnvConfig
from models import ARCHITECTURES, check_architecture
from optimizers import OPTIMIZERS
from ppo import PPOConfig
from runs import DEFAULT_SEED, RUN_ID_PATTERN
from tasks import Task, check_task, parse_task, parse_task_values, task_from_args

DEFAULTS = EnvConfig()  # the environment's defaults are the flags' defaults
SETTING = ("dataset", "architecture", "batch_size", "update_freq", "num_train_steps", "train_size", "val_size",
           "classes", "label_noise", "image_size", "optimizer", "weight_decay", "beta1", "beta2", "seed", "precision",
           "data_dir", "runs_dir")  # what names a baseline setting, and where its files are


# Named sets of train.py defaults; flags given on the command line win. "reference" is the reference
# implementation's behaviour; "stable" is the arm of the learning study that learned from every initial
# rate (README: "Results: the learning study").
PRESETS = {
    "reference": {},
    "stable": {"action_param": "log", "ppo2_cliprange": 0.2, "norm_clip": 10.0, "ppo2_ent_coef": 0.01,
               "reward": "log-improvement"},
}


def finite_float(text):
    """argparse type of every float flag: a number, not nan or inf (which would pass every range check)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def architecture(text):
    """argparse type of --architecture: a fixed child or a random classifier's name (models.py)."""
    try:
        return check_architecture(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def family_override(text):
    """argparse type of --family-override: task keys (not family=) and their values."""
    try:
        values = parse_task_values(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if "family" in values:
        raise argparse.ArgumentTypeError("family= names an instance; it cannot override a draw")
    return values


def names_of(valid):
    """argparse type of a comma-separated list of names, each one of ``valid``."""
    def parse(text):
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        wrong = [name for name in names if name not in valid]
        if wrong or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of {', '.join(valid)}")
        return names
    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each flag's default to its help, unless the help already says what the default is."""

    def _get_help_string(self, action):
        return action.help if "(default:" in (action.help or "") else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, the message and where help is, not the whole usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_setting_flags(p):
    """What defines the children and their data: every script."""
    g = p.add_argument_group("child training setting")
    g.add_argument("--dataset", default="fa-mnist",
                   help=f"one of {', '.join(DATASETS)}, or a folder with train/<class>/* and test/<class>/* images")
    g.add_argument("--architecture", default=DEFAULTS.architecture, type=architecture,
                   help=f"child network: {', '.join(ARCHITECTURES)} or a random classifier rc-... (models.py)")
    g.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="child training batch size")
    g.add_argument("--update-freq", type=int, default=DEFAULTS.update_freq, help="child steps between actions")
    g.add_argument("--num-train-steps", type=int, default=DEFAULTS.num_train_steps, help="child steps per episode")
    g.add_argument("--data-dir", default="data", help="folder holding the datasets (torchvision layout)")
    g.add_argument("--download", action="store_true",
                   help="download mnist, fa-mnist or cifar10 into --data-dir if its files are missing")
    g.add_argument("--train-size", type=int, default=None,
                   help="training samples (default: the train split minus the validation split)")
    g.add_argument("--val-size", type=int, default=DEFAULT_VAL_SIZE, help="validation samples")
    g.add_argument("--classes", type=int, default=None,
                   help="a variant: only the images of the first this many classes (default: all)")
    g.add_argument("--label-noise", type=float, default=0.0,
                   help="a variant: this fraction of training labels replaced by random classes")
    g.add_argument("--image-size", type=int, default=None,
                   help="a variant: images resized to this many pixels square (default: as stored)")
    g.add_argument("--optimizer", default=DEFAULTS.optimizer, choices=OPTIMIZERS,
                   help="the child's optimizer (adam: the reference's; schedulefree needs the schedulefree package)")
    g.add_argument("--weight-decay", type=finite_float, default=DEFAULTS.weight_decay, help="the child optimizer's")
    g.add_argument("--beta1", type=finite_float, default=DEFAULTS.beta1,
                   help="the child optimizer's first-moment decay (SGD: its momentum)")
    g.add_argument("--beta2", type=finite_float, default=DEFAULTS.beta2, help="the child optimizer's second-moment decay")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where children train")
    g.add_argument("--cudnn-benchmark", type=int, default=1, choices=(0, 1),
                   help="1: cuDNN times its convolution algorithms (faster; the first steps slower); 0: bit-exact runs")
    g.add_argument("--precision", default=DEFAULTS.precision, choices=PRECISIONS,
                   help="bf16: the children's forward passes under bf16 autocast (a departure; faster on GPUs)")
    g.add_argument("--compile", type=int, default=0, choices=(0, 1),
                   help="1: torch.compile the children (CUDA graphs on a GPU; module children only; slow start)")
    g.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    g.add_argument("--runs-dir", default="runs", help="folder of experiments and baseline results")


def add_start_flag(p):
    """The child's start rate: train.py, and test.py, which tests from it."""
    p.add_argument("--initial-lr", type=finite_float, default=DEFAULTS.initial_lr,
                   help="child's initial learning rate; 0 draws one of 1e-2, 1e-3, 1e-4 per episode (test.py: tests each)")


def add_envs_flag(p):
    """How many children train side by side: train.py, and baselines.py, which runs that many grid runs at once."""
    p.add_argument("--num-envs", type=int, default=4, help="environments (children) trained together")


def add_controller_flags(p):
    """The controller and its PPO training: train.py."""
    g = p.add_argument_group("actions")
    g.add_argument("--discrete", type=int, default=0, choices=(0, 1),
                   help="1: actions multiply/divide/keep the lr; 0: a continuous scale factor")
    g.add_argument("--action-range", type=finite_float, default=DEFAULTS.action_range,
                   help="largest factor one action applies")
    g.add_argument("--action-param", default=DEFAULTS.action_param, choices=ACTION_PARAMS,
                   help="continuous action a -> factor: clip(a, 1/range, range) (reference) or range**clip(a, -1, 1)")
    g.add_argument("--reward", default=DEFAULTS.reward, choices=REWARDS,
                   help="per step: -L(t) (reference) or log L(t-1) - log L(t)")
    g.add_argument("--features", default=DEFAULTS.features, choices=FEATURES,
                   help="observation: the reference's 7; or scale-free log-ratios (relative), with the fraction "
                        "of the episode done (relative-progress)")
    g.add_argument("--hidden-lr-scale", type=finite_float, default=DEFAULTS.hidden_lr_scale, metavar="S",
                   help="a departure, for training: each episode the child trains at the chosen rate times a factor "
                        "drawn log-uniformly from [1/S, S] that the controller does not see (1: off)")
    g.add_argument("--anchor", default=DEFAULTS.anchor, choices=ANCHORS,
                   help="a departure: the rate the actions set multiplies this base schedule over the episode "
                        "(cosine annealing, or constant) and stays within --anchor-range of the start; none: the "
                        "reference's")
    g.add_argument("--anchor-range", type=finite_float, default=DEFAULTS.anchor_range,
                   help="an anchored rate stays within this factor of the episode's start rate")
    g.add_argument("--family", type=int, default=0, metavar="K",
                   help="K of the --num-envs environments draw a new task from the family of random classifiers "
                        "every episode (tasks.family_task; held-out seeds are never drawn); the others run --task")
    g.add_argument("--family-optimizers", type=names_of(OPTIMIZERS), default=("adam",), metavar="NAMES",
                   help=f"the child optimizers the family draws, comma-separated, of {', '.join(OPTIMIZERS)} "
                        "(default: adam)")
    g.add_argument("--family-members", type=names_of(ARCHITECTURES), default=("mlp",), metavar="NAMES",
                   help="the fixed children the family may draw besides random classifiers, comma-separated "
                        "(default: mlp; LeNet-5 is a held-out task)")
    g.add_argument("--family-override", type=family_override, default={}, metavar="KEY=VALUE,...",
                   help="task keys every family draw takes instead of what it drew, e.g. dataset=cifar10 "
                        "(default: none)")
    g.add_argument("--task", action="append", default=None, metavar="KEY=VALUE,...",
                   help="train on a mix of tasks, one --task each (keys: " + ", ".join(Task.__dataclass_fields__)
                        + "; keys left out take the flags' values); environments are shared out among them")
    g = p.add_argument_group("PPO")
    for setting in fields(PPOConfig):
        if setting.metadata["flag"]:
            g.add_argument("--" + setting.metadata["flag"].replace("_", "-"), default=flag_value(setting.default),
                           help=setting.metadata["help"], **FLAG_TYPES[setting.type])
    g = p.add_argument_group("experiment")
    g.add_argument("--preset", default="reference", choices=PRESETS,
                   help="named defaults, flags given explicitly win: " + "; ".join(
                       f"{name} = {describe(values)}" for name, values in PRESETS.items()))
    g.add_argument("--tb-suffix", default="", help="suffix appended to the experiment id")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write the metrics as TensorBoard scalars to runs/<id>/tb (needs: pip install tensorboard)")
    g.add_argument("--resume", default=None, metavar="ID", help="continue experiment ID with its saved settings")
    g.add_argument("--init-controller", default=None, metavar="PATH",
                   help="start from this controller checkpoint's weights and normalizer statistics instead of a "
                        "fresh policy (fine-tune a trained controller, or train one longer); its features, action "
                        "and anchor must match the flags")


FLAG_TYPES = {int: {"type": int}, float: {"type": finite_float}, float | None: {"type": finite_float},
              bool: {"type": int, "choices": (0, 1)}}  # argparse's view of a config field's type


def flag_value(default):
    """A config default as its flag holds it (a bool as 0 or 1, as the reference's flags)."""
    return int(default) if isinstance(default, bool) else default


def describe(values):
    """Flag values as a command line would give them (the reference's, when there are none)."""
    return " ".join(f"--{name.replace('_', '-')} {value:g}" if isinstance(value, float) else
                    f"--{name.replace('_', '-')} {value}" for name, value in values.items()) or "the reference's"


def add_baseline_flags(p):
    """The step-decay grid: baselines.py."""
    g = p.add_argument_group("step-decay grid")
    g.add_argument("--initial-lrs", type=finite_float, nargs="+", default=[1e-1, 1e-2, 1e-3, 1e-4],
                   help="initial learning rates")
    g.add_argument("--discount-steps", type=int, nargs="+", default=[10, 20, 50, 100], help="steps between decays")
    g.add_argument("--discount-factors", type=finite_float, nargs="+", default=[0.99, 0.9, 0.88], help="decay factors")


def add_test_flags(p):
    """Which controller, which checkpoint, how many seeds, which action mode: test.py."""
    g = p.add_argument_group("test")
    g.add_argument("--test-id", required=True, help="experiment id of the controller (printed by train.py)")
    g.add_argument("--test-schedule", default="best",
                   help="checkpoint to evaluate: best, latest, or a file name in checkpoints/")
    g.add_argument("--test-runs", type=int, default=10, help="seeds")
    g.add_argument("--test-deterministic", type=int, default=1, choices=(0, 1),
                   help="1 acts with the policy's mode, 0 samples actions (as the reference)")


SCRIPTS = {
    "train": ("Train a PPO controller that sets a child network's learning rate (arXiv:1909.09712).",
              (add_setting_flags, add_start_flag, add_envs_flag, add_controller_flags)),
    "baselines": ("Sweep the step-decay baseline grid (and constant rates) for one dataset and child.",
                  (add_setting_flags, add_envs_flag, add_baseline_flags)),
    "test": ("Evaluate a learned schedule against its untrained controller and the best baselines.",
             (add_setting_flags, add_start_flag, add_test_flags)),
}


def build_parser(script):
    description, groups = SCRIPTS[script]
    parser = ArgumentParser(prog=f"{script}.py", description=description,
                            formatter_class=HelpFormatter)
    for add in groups:
        add(parser)
    return parser


def parse_args(script, argv=None):
    """Parse and check ``script``'s flags; a wrong value exits with an argparse error naming what is valid."""
    parser = build_parser(script)
    args = parser.parse_args(argv)
    if getattr(args, "preset", "reference") != "reference":
        given = explicit_flags(script, argv)
        for name, value in PRESETS[args.preset].items():
            if name not in given:
                setattr(args, name, value)
    check(parser, args)
    return args


def command_line(script, values):
    """``python <script>.py --flag value ...`` for a dict of flag values (None left out), shell-quoted,
    so a printed hint works when pasted."""
    words = ["python", f"{script}.py"]
    for name, value in values.items():
        if value is not None:
            words += [f"--{name.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return shlex.join(words)


def baselines_command(args):
    """The baselines.py command for the child-training setting of ``args`` (a printed hint)."""
    return command_line("baselines", {name: getattr(args, name) for name in SETTING})


def explicit_flags(script, argv=None):
    """The names (dests) of the flags given on the command line, as opposed to left at their defaults."""
    parser = build_parser(script)
    unset = object()
    names = vars(parser.parse_args(argv)).keys()
    appended = {action.dest for action in parser._actions if isinstance(action, argparse._AppendAction)}
    start = {name: None if name in appended else unset for name in names}  # an append flag needs a list or None
    given = parser.parse_args(argv, namespace=argparse.Namespace(**start))
    return {name for name, value in vars(given).items() if value is not (None if name in appended else unset)}


def check(parser, args):
    """Checks argparse cannot express; only those of the flags this script has."""
    has = lambda name: hasattr(args, name)
    if args.dataset not in DATASETS and not Path(args.dataset).is_dir():
        parser.error(f"argument --dataset: invalid choice: {args.dataset!r} "
                     f"(choose from {', '.join(DATASETS)}, or an existing image folder)")
    positive = ("batch_size", "update_freq", "num_train_steps", "num_envs", "val_size", "train_size", "test_runs",
                "ppo2_update_freq", "ppo2_total_timesteps", "ppo2_nminibatches", "ppo2_noptepochs", "norm_clip")
    for name in filter(has, positive):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"argument --{name.replace('_', '-')}: must be positive, got {value}")
    if args.num_train_steps % args.update_freq or args.num_train_steps < 2 * args.update_freq:
        parser.error(f"argument --num-train-steps: must be a multiple of --update-freq ({args.update_freq}), "
                     f"at least twice it, got {args.num_train_steps}")
    try:
        check_task(task_from_args(args))
        tasks = [parse_task(spec, task_from_args(args)) for spec in getattr(args, "task", None) or ()]
    except ValueError as error:
        parser.error(f"argument --task: {error}")
    if any(t.num_train_steps % args.update_freq or t.num_train_steps < 2 * args.update_freq for t in tasks):
        parser.error(f"argument --task: num_train_steps must be a multiple of --update-freq ({args.update_freq}), "
                     "at least twice it")
    if has("num_envs") and len(tasks) > args.num_envs:
        parser.error(f"argument --num-envs: {len(tasks)} tasks need at least as many environments, got {args.num_envs}")
    if has("initial_lr") and args.initial_lr < 0:
        parser.error("argument --initial-lr: must be positive, or 0 (drawn per episode)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda is not available on this machine (use cpu or auto)")
    for name in filter(has, ("test_id", "resume", "tb_suffix")):
        value = getattr(args, name)
        if value and not RUN_ID_PATTERN.fullmatch(value):
            parser.error(f"argument --{name.replace('_', '-')}: {value!r} is not a plain name "
                         "(letters, digits, '.', '_', '-'; no paths)")
    if getattr(args, "tensorboard", False) and importlib.util.find_spec("tensorboard") is None:
        parser.error("argument --tensorboard: the tensorboard package is not installed (pip install tensorboard)")
    if has("action_range") and args.action_range <= 1:
        parser.error(f"argument --action-range: must be > 1, got {args.action_range}")
    if has("anchor_range") and args.anchor_range <= 1:
        parser.error(f"argument --anchor-range: must be > 1, got {args.anchor_range}")
    if has("family"):
        if not 0 <= args.family <= args.num_envs - len(tasks):
            parser.error(f"argument --family: between 0 and --num-envs less the --task count "
                         f"({args.num_envs - len(tasks)}), got {args.family}")
        if args.family and "schedulefree" in args.family_optimizers and importlib.util.find_spec("schedulefree") is None:
            parser.error("argument --family-optimizers: schedulefree needs the schedulefree package "
                         "(pip install schedulefree)")
    if has("hidden_lr_scale") and args.hidden_lr_scale < 1:
        parser.error(f"argument --hidden-lr-scale: must be >= 1 (1: off), got {args.hidden_lr_scale}")
    if has("ppo2_lr"):
        if args.ppo2_lr <= 0:
            parser.error(f"argument --ppo2-lr: must be positive, got {args.ppo2_lr}")
        if not 0 <= args.ppo2_gamma <= 1:
            parser.error(f"argument --ppo2-gamma: must be in [0, 1], got {args.ppo2_gamma}")
        rollout = args.num_envs * args.ppo2_update_freq
        if args.ppo2_total_timesteps < rollout:
            parser.error(f"argument --ppo2-total-timesteps: less than one rollout "
                         f"(--num-envs x --ppo2-update-freq = {rollout})")
        if rollout % args.ppo2_nminibatches:
            parser.error(f"argument --ppo2-nminibatches: must divide --num-envs x --ppo2-update-freq ({rollout})")
    if has("initial_lrs"):
        if any(lr <= 0 for lr in args.initial_lrs):
            parser.error("argument --initial-lrs: learning rates must be positive")
        if any(s <= 0 for s in args.discount_steps) or any(not 0 < f <= 1 for f in args.discount_factors):
            parser.error("--discount-steps must be positive and --discount-factors in (0, 1]")
