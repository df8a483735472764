"""Component: train an adapter on a snapshot's training rows."""

from kfp.dsl import Dataset, Input, Model, Output


def train_adapter(config: str, snapshot: Input[Dataset], trained: Output[Model]):
    """Train here, or as a Kubeflow Trainer TrainJob (train.distributed); `trained` holds adapter/, checkpoints/
    and train.json."""
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.cycle import train_step
    from tuneloop.progress import start_step

    start_step()
    cfg = config_from_json(config)
    if cfg.train.distributed.backend == "kubeflow_trainer":
        from tuneloop.components.trainjob import train_on_trainer

        result = train_on_trainer(cfg, Path(snapshot.path), Path(trained.path))
    else:
        result = train_step(cfg, Path(snapshot.path), Path(trained.path))
    trained.metadata.update(
        trainable_params=result.trainable_params, total_params=result.total_params, best_epoch=result.best_epoch,
        peak_memory_mb=result.peak_memory_mb, wall_seconds=result.wall_seconds, adapter_bytes=result.adapter_bytes,
        method=result.method, samples_per_second=result.samples_per_second, tokens_per_second=result.tokens_per_second,
        cost=result.cost,
    )
