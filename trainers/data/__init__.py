"""Records to batches: the built dataset, the split plan and the tf.data streams.

The pipeline never knows the model: it takes a split, a plan and an image size
and returns a `tf.data.Dataset`.

    dataset         the TFDS builder of a data dir, and the records it could not use
    records         read records undecoded, filter on metadata, name and shard them
    split_plan      counts, balance, class weights and steps, decided first (`plan`)
    input_pipeline  decode, resize, shuffle, batch; MixUp/CutMix; exact evaluation
    batches         one worker's training and evaluation streams (`WorkerBatches`)
"""

__all__ = ["batches", "dataset", "input_pipeline", "records", "split_plan"]
