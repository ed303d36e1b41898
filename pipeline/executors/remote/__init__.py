"""Remote GPU workers: batches go to `easel worker` processes through Celery and Redis.

- `wire.py`: what crosses machines (JSON: work, outcomes, images as PNG bytes).
- `channels.py`: the Redis side channels (progress, cancel, workers' announcements).
- `app.py`: the Celery application both sides configure the same way.
- `worker.py`: a worker's side: claims a run, keeps its lease, runs it on the engine.
- `executor.py`: the bot's side: `RemoteExecutor`, the executor seam over Celery.
"""
