"""Component: train an adapter on a snapshot's training rows."""

from kfp.dsl import Dataset, Input, Model, Output


def train_adapter(config: str, snapshot: Input[Dataset], trained: Output[Model]):
    """Train; `trained` holds adapter/, checkpoints/ and train.json."""
    from pathlib import Path

    from tuneloop.config import config_from_json
    from tuneloop.cycle import train_step
    from tuneloop.progress import start_step

    start_step()
    result = train_step(config_from_json(config), Path(snapshot.path), Path(trained.path))
    trained.metadata.update(
        trainable_params=result.trainable_params, total_params=result.total_params, best_epoch=result.best_epoch,
        peak_memory_mb=result.peak_memory_mb, wall_seconds=result.wall_seconds, adapter_bytes=result.adapter_bytes,
        method=result.method, samples_per_second=result.samples_per_second, tokens_per_second=result.tokens_per_second,
        cost=result.cost,
    )
