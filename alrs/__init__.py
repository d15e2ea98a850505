"""ALRS: learned adaptive learning-rate schedules (arXiv:1909.09712) for your own PyTorch training.

    from alrs import ALRSScheduler
    scheduler = ALRSScheduler.from_pretrained("generalist_mlp_progress", optimizer, model, (val_x, val_y),
                                              total_steps=num_steps)

``pretrained_controllers()`` lists the shipped controllers; their cards are alrs/pretrained/<name>.md.
The package needs torch and numpy only.
"""
from alrs.controller import Controller, ControllerEnsemble, load_controller, read_controller_checkpoint
from alrs.scheduler import ALRSScheduler, pretrained_controllers

__version__ = "0.2.0"
__all__ = ["ALRSScheduler", "Controller", "ControllerEnsemble", "load_controller", "pretrained_controllers",
           "read_controller_checkpoint"]
