"""Training: the trainer (:func:`tresnet.training.trainer.train`) and its parts, the configuration and recipes,
optimisers and schedules, EMA, distributed set-up, distillation, and a run's data."""
