"""The controller: what it observes, what its actions do to the learning rate, the policy that acts,
and the checkpoint it is saved in. The environment, the test script and the drop-in scheduler all
take these from here, so a controller sees and acts the same way wherever it runs.

- Rates: the range every rate is clipped to (``clip_lr``) and the start rates (``start_lrs``).
- Observations: the reference's 7 features (``observation_features``) or the scale-free ones
  (``relative_features``), by name in ``FEATURES``.
- Actions: ``apply_action`` (discrete, or a continuous factor) and the continuous action's bounds;
  with an anchor (opt-in), the rate they set multiplies a base schedule (``anchor_factor``) and stays
  within a bounded factor of the start (``bound_to_anchor``).
- ``Controller``: a policy with its frozen normalizer, as a schedule (``next_lr``);
  ``ControllerEnsemble``: several trained alike, acting as one (the median of their rates).
- Checkpoints: ``controller_state`` (``ensemble_state``) writes what ``load_controller`` reads back
  as a ``Controller`` (a ``ControllerEnsemble``).
"""
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from alrs.policy import ActorCritic, VecNormalizer
from alrs.checkpoint import UserError, load_checkpoint

LR_MIN, LR_MAX = 1e-5, 1e-1  # every rate a controller sets, or an episode starts from, is clipped to this range
RANDOM_INITIAL_LRS = (1e-2, 1e-3, 1e-4)  # drawn from when --initial-lr is 0
ACTION_PARAMS = ("clip", "log")  # how a continuous action becomes a factor (see apply_action)
REFERENCE_FEATURES = ("train_loss", "val_loss", "prediction_var", "prediction_change_var", "output_weight_mean",
                      "output_weight_var", "lr")  # the reference's 7 (observation_features)
VAL_LOSS = REFERENCE_FEATURES.index("val_loss")  # the column the reward and the episode records read
RELATIVE_FEATURES = ("log_train_over_val", "log_val_over_first", "log_val_over_chance", "log_improvement",
                     "log_prediction_change", "log_lr", "log_lr_over_initial")  # scale-free (relative_features)
FEATURES = {"reference": REFERENCE_FEATURES, "relative": RELATIVE_FEATURES,
            "relative-progress": RELATIVE_FEATURES + ("progress",),
            # without the absolute rate: where to steer it must be read from how the losses respond
            "relative-progress-no-log-lr": tuple(f for f in RELATIVE_FEATURES if f != "log_lr") + ("progress",),
            }  # what a controller observes, by --features
ANCHORS = ("none", "constant", "cosine")  # the base schedule the controlled rate multiplies (none: the reference's)
DEFAULT_ANCHOR_RANGE = 100.0  # an anchored rate stays within this factor of the start (1e-4 reaches 1e-2)
TINY = 1e-30  # floor under the ratios whose logarithm is a feature (a fresh child's are exactly 1, never 0)
CHECKPOINT_FORMAT = "alrs-controller-1"


# ----------------------------------------------------------------------------- rates

def clip_lr(lr, max_lr=LR_MAX):
    """``lr`` (a number or an array) clipped to [LR_MIN, max_lr]."""
    return np.clip(lr, LR_MIN, max_lr)


def start_lrs(initial_lr):
    """The start rates an ``--initial-lr`` stands for: 0 means each of RANDOM_INITIAL_LRS (drawn per
    episode in training, each tested in turn), any other value itself."""
    return RANDOM_INITIAL_LRS if initial_lr == 0 else (initial_lr,)


def nearest_start(lr, starts=RANDOM_INITIAL_LRS):
    """The start rate an episode's initial rate was drawn from (it carries noise of std lr/10)."""
    return min(starts, key=lambda start: abs(math.log(lr / start)))


# ----------------------------------------------------------------------------- observation and actions

def observation_features(train_loss, val_loss, val_logits, prev_val_logits, output_weight, lr):
    """The reference's 7 features, for a batch of E children (leading dimension E).

    train_loss, val_loss, lr: (E,); val_logits: (E, N, C); prev_val_logits: the logits at the
    previous observation, or None at the first; output_weight: (E, out, in). Variances are
    population variances over all elements (numpy's np.var).
    """
    change = val_logits if prev_val_logits is None else val_logits - prev_val_logits
    flat = lambda t: t.reshape(t.shape[0], -1)
    return torch.stack([
        train_loss,
        val_loss,
        flat(val_logits).var(1, correction=0),
        flat(change).var(1, correction=0),
        flat(output_weight).mean(1),
        flat(output_weight).var(1, correction=0),
        lr,
    ], dim=1)


def relative_features(reference, first_val_loss, prev_val_loss, initial_lr, chance_loss, progress=None):
    """The scale-free observation, from the reference's 7 features (E, 7) and the episode so far.

    Losses enter only as log-ratios: training to validation loss, validation loss to the episode's
    first one and to chance level (log of the number of classes), and the last block's
    log-improvement log L(t-1) - log L(t); the predictions' change as the log of its variance relative
    to theirs; the rate as log lr and log(lr / initial lr); optionally ``progress``, the fraction of the
    episode done. A fresh child's ratios are 1 (features 0). Non-finite losses stay non-finite.
    first_val_loss, prev_val_loss, initial_lr: (E,); chance_loss: a number; progress: (E,) or None.
    """
    train, val, prediction_var, change_var, _, _, lr = np.asarray(reference, dtype=np.float64).T
    log = lambda ratio: np.log(np.maximum(ratio, TINY))  # NaN stays NaN
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        columns = [log(train / val), log(val / first_val_loss), log(val / chance_loss), log(prev_val_loss / val),
                   log(change_var / prediction_var), np.log(lr), np.log(lr / initial_lr)]
    if progress is not None:
        columns.append(np.asarray(progress, dtype=np.float64))
    return np.stack(columns, axis=1)


def select_features(name, reference, first_val_loss, prev_val_loss, initial_lr, chance_loss, progress):
    """The observation named ``name`` (a key of FEATURES) of E children, (E, len(FEATURES[name]))."""
    if name == "reference":
        return np.asarray(reference, dtype=np.float64)
    names = FEATURES[name]
    with_progress = "progress" in names
    columns = relative_features(reference, first_val_loss, prev_val_loss, initial_lr, chance_loss,
                                progress if with_progress else None)
    computed = FEATURES["relative-progress" if with_progress else "relative"]  # relative_features' columns
    return columns[:, [computed.index(feature) for feature in names]]


def apply_action(lr, action, discrete, action_range, action_param="clip"):
    """New learning rate(s) after an action: discrete 0 multiplies, 1 divides, 2 keeps.

    A continuous action ``a`` is, with ``action_param="clip"`` (the reference), the factor itself
    clipped to [1/range, range]: a policy at its initial mean 0 always divides. With ``"log"``
    the factor is range ** clip(a, -1, 1): a = 0 keeps the rate, and the factor is symmetric in a.
    """
    action = np.asarray(action).reshape(np.shape(lr))  # one action per learning rate, (E,) or (E, 1)
    if discrete:
        factor = np.choose(action.astype(int), [action_range, 1 / action_range, 1.0])
    elif action_param == "log":
        factor = action_range ** np.clip(action, -1.0, 1.0)
    else:
        factor = np.clip(action, 1 / action_range, action_range)
    return clip_lr(lr * factor)


def anchor_factor(anchor, progress):
    """The base schedule at ``progress`` (the fraction of the run done, a number or an array) that an
    anchored controller's rate multiplies: cosine annealing's 0.5 (1 + cos(pi p)), or 1."""
    progress = np.asarray(progress, dtype=np.float64)
    if anchor == "cosine":
        return 0.5 * (1 + np.cos(np.pi * np.clip(progress, 0.0, 1.0)))
    return np.ones_like(progress)


def bound_to_anchor(lr, initial_lr, anchor, anchor_range):
    """The controlled rate of an anchored controller kept within ``anchor_range`` of the start (its
    corrections to the base schedule are bounded); without an anchor, ``lr`` itself."""
    if anchor == "none":
        return lr
    return np.clip(lr, np.asarray(initial_lr) / anchor_range, np.asarray(initial_lr) * anchor_range)


def action_bounds(action_param, action_range):
    """The interval outside which a continuous action is clipped, (low, high)."""
    return (-1.0, 1.0) if action_param == "log" else (1 / action_range, action_range)


def output_layer_name(model):
    """Name of the output layer whose weights are observed: the last ``nn.Linear`` of ``model``'s modules
    (the children's, built in order; the scheduler finds the last one a forward pass calls instead)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1]


# ----------------------------------------------------------------------------- the controller

@dataclass(frozen=True, eq=False)
class Controller:
    """A trained (or untrained) PPO controller as a schedule: its action on the frozen-normalized
    observation, the mode of its policy (``deterministic``) or a sample from it, applied to the
    current rate. ``initial_lr``: the rate it starts from in an episode (None in the scheduler,
    which takes the optimizer's)."""
    agent: ActorCritic
    normalizer: VecNormalizer
    action_range: float
    action_param: str = "clip"
    features: str = "reference"  # the observation it expects (a key of FEATURES)
    initial_lr: float | None = None
    deterministic: bool = True
    anchor: str = "none"  # the base schedule its rate multiplies (a key of ANCHORS)
    anchor_range: float = DEFAULT_ANCHOR_RANGE
    optimizers: tuple = ("adam",)  # the child optimizers it was trained with (optimizers.OPTIMIZERS names)

    def starting_at(self, initial_lr, agent=None):
        """This controller from rate ``initial_lr`` (with another policy ``agent``, if given)."""
        return replace(self, initial_lr=initial_lr, agent=agent or self.agent)

    def next_lr(self, obs, lr, step):
        """The next controlled rate (an anchored controller's before its base schedule) from ``lr``."""
        normalized = torch.as_tensor(self.normalizer.observation(np.asarray(obs)[None]))
        action = self.agent.action(normalized, deterministic=self.deterministic)
        lr = apply_action(np.array([lr]), action.numpy(), self.agent.discrete, self.action_range, self.action_param)
        return float(bound_to_anchor(lr, self.initial_lr, self.anchor, self.anchor_range)[0])

    def beyond_range(self, obs):
        """Which features of ``obs`` lie beyond the normalizer's clip: values it never saw in training."""
        return np.abs(self.normalizer.standardize(np.asarray(obs)[None])[0]) > self.normalizer.clip


@dataclass(frozen=True, eq=False)
class ControllerEnsemble:
    """Controllers trained alike (the same observation and anchor; e.g. from different training seeds)
    acting as one: each chooses the next rate from the same observation and the same current rate,
    and the ensemble sets their median, in log space. A training seed can learn a failure its
    siblings do not (docs/results.md, replication over training seeds); with three or more members
    the median follows the majority."""
    members: tuple

    def __post_init__(self):
        if not self.members:
            raise UserError("an ensemble needs at least one controller")
        first = self.members[0]
        for key in ("features", "anchor", "anchor_range", "initial_lr"):
            values = {getattr(member, key) for member in self.members}
            if len(values) > 1:
                raise UserError(f"ensemble: its controllers differ in {key} ({', '.join(map(str, values))}); "
                                "the members must observe and act alike")
        for key in ("features", "anchor", "anchor_range", "initial_lr", "deterministic"):
            object.__setattr__(self, key, getattr(first, key))
        object.__setattr__(self, "optimizers", tuple(name for name in first.optimizers  # those every member knows
                                                     if all(name in m.optimizers for m in self.members)))

    def starting_at(self, initial_lr):
        """This ensemble, every member from rate ``initial_lr``."""
        return ControllerEnsemble(tuple(member.starting_at(initial_lr) for member in self.members))

    def next_lr(self, obs, lr, step):
        """The median, in log space, of the members' next rates from ``lr``."""
        rates = [member.next_lr(obs, lr, step) for member in self.members]
        return float(np.exp(np.median(np.log(rates))))

    def beyond_range(self, obs):
        """The features beyond some member's normalizer clip."""
        return np.any([member.beyond_range(obs) for member in self.members], axis=0)


# ----------------------------------------------------------------------------- checkpoints

def controller_state(agent, normalizer, action_range, action_param="clip", features="reference", anchor="none",
                     anchor_range=DEFAULT_ANCHOR_RANGE, optimizers=("adam",)):
    """What a learned schedule needs at test time: weights, frozen normalizer, action semantics (with
    the anchor), the observation it expects (a key of FEATURES) and the child optimizers it trained with."""
    return {"format": CHECKPOINT_FORMAT, "discrete": agent.discrete, "action_range": action_range,
            "action_param": action_param, "features": features, "anchor": anchor, "anchor_range": anchor_range,
            "optimizers": list(optimizers),
            "agent": agent.state_dict(),
            "normalizer": normalizer.state_dict(), "norm_obs": normalizer.norm_obs, "clip": normalizer.clip}


def ensemble_state(states):
    """One checkpoint of several ``controller_state`` dicts: ``load_controller`` reads it back as a
    ``ControllerEnsemble`` (which checks that the members observe and act alike)."""
    load_controller({"format": CHECKPOINT_FORMAT, "members": list(states)})
    return {"format": CHECKPOINT_FORMAT, "members": list(states)}


def read_controller_checkpoint(path):
    """The dict ``controller_state`` (or ``ensemble_state``) saved at ``path``; a file that is not a
    controller checkpoint, or is of another format, is a UserError."""
    state = load_checkpoint(path)
    if not ("members" in state or all(key in state for key in ("agent", "discrete"))):
        raise UserError(f"{path} is not an ALRS checkpoint")
    if state["format"] != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint format {state['format']!r} is not {CHECKPOINT_FORMAT!r}")
    return state


def controller_features(state):
    """The observation a controller checkpoint expects; checkpoints from before feature sets: the reference's."""
    return state.get("features", "reference")


def controller_semantics(state):
    """How a controller checkpoint observes and acts, with the defaults of checkpoints from before each
    setting was saved: the reference's clip, features and no anchor."""
    return {"discrete": state["discrete"], "action_range": state["action_range"],
            "action_param": state.get("action_param", "clip"), "features": controller_features(state),
            "anchor": state.get("anchor", "none"), "anchor_range": state.get("anchor_range", DEFAULT_ANCHOR_RANGE)}


def load_controller(state, deterministic=True):
    """The ``Controller`` of a ``controller_state`` dict, in eval mode with its normalizer frozen (the
    ``ControllerEnsemble`` of an ``ensemble_state`` dict).
    Checkpoints from before the action parametrization was saved act with "clip"; those from before
    the feature sets observe the reference's features; those from before anchors have none and were
    trained with Adam."""
    if "members" in state:
        return ControllerEnsemble(tuple(load_controller(member, deterministic) for member in state["members"]))
    agent = ActorCritic(state["agent"]["actor.0.weight"].shape[1], discrete=state["discrete"])
    agent.load_state_dict(state["agent"])
    normalizer = VecNormalizer(agent.actor[0].in_features, 1, norm_obs=state["norm_obs"], clip=state["clip"])
    normalizer.load_state_dict(state["normalizer"])
    normalizer.training = False
    semantics = controller_semantics(state)
    return Controller(agent.eval(), normalizer, semantics["action_range"], semantics["action_param"],
                      semantics["features"], deterministic=deterministic, anchor=semantics["anchor"],
                      anchor_range=semantics["anchor_range"], optimizers=tuple(state.get("optimizers", ("adam",))))
