"""Training: one run from config to metrics.json, resumable after a kill.

    train          `train_and_evaluate(config)`, and `build` for the tools
    recipe         optimizer, schedule, loss, EMA: how a phase is compiled
    devices        the strategy, the precision policy, the cluster
    feature_cache  frozen features and fine-tuning activations, cached on disk

Inside (not for other stages): callbacks, backups (the backup-file protocol),
watchdog (a worker that hangs is stopped).
"""

__all__ = ["devices", "feature_cache", "recipe", "train"]
