"""GPU worker processes for the scale-out tests and `bench/scaleout.py`: `easel worker` on the
tiny model, each in its own process group, against a real Redis and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from diffusers import StableDiffusionPipeline

from bot.settings import Settings
from pipeline.executors.remote.channels import WorkerInfo, worker_key
from tests.lora_files import LoraSpec, write_lora
from tests.running_bot import REPO, bot_env

START_TIMEOUT = 240.0  # workers importing torch and loading the model on 2 busy cores
LEASE_SECONDS = 3.0  # short, so that a killed worker's jobs come back within a test


WEIGHTS = ("*.safetensors", "*.bin", "*.ckpt", "*.pt")


def cluster_models(root: Path, checkpoint: Path, pipe: StableDiffusionPipeline) -> Path:
    """The workers' models folder: the tiny checkpoint (linked) and one LoRA, `ink`."""
    models = root / "models"
    (models / "stable-diffusion").mkdir(parents=True)
    (models / "stable-diffusion" / "tiny-sd1").symlink_to(checkpoint)
    write_lora(pipe, models / "lora" / "ink.safetensors", LoraSpec(seed=3))
    return models


def weightless_models(root: Path, checkpoint: Path) -> Path:
    """The bot's models folder: the checkpoint's configs and tokenizer, not one weight file,
    and no LoRA (the workers announce theirs)."""
    models = root / "bot-models"
    shutil.copytree(
        checkpoint,
        models / "stable-diffusion" / checkpoint.name,
        ignore=shutil.ignore_patterns(*WEIGHTS),
    )
    return models


@dataclass
class Cluster:
    root: Path
    models: Path
    database_url: str
    redis_url: str
    bot_models: Path | None = None  # the bot's own (default: the workers' folder)
    batch_images: int = 1
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def settings(self) -> Settings:
        return Settings(
            _env_file=None,
            outputs_dir=self.root / "outputs",
            models_dir=self.bot_models or self.models,
            model="tiny-sd1",
            database_url=self.database_url,
            executor="celery",
            broker_url=self.redis_url,
            lease_seconds=LEASE_SECONDS,
            progress_interval=0,
            max_batch_images=self.batch_images,
        )

    def start_worker(self, name: str) -> None:
        env = bot_env(
            self.root,
            self.models,
            DATABASE_URL=self.database_url,
            EASEL_BROKER_URL=self.redis_url,
            EASEL_LOG_LEVEL="INFO",
        )
        log = (self.root / f"{name}.log").open("ab")
        command = [sys.executable, "-c", "from bot.cli import main; main()", "worker"]
        self.processes[name] = subprocess.Popen(
            [*command, "--name", name, "--device", "cpu"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a SIGKILL takes all of it
        )

    def wait_announced(self, names: tuple[str, ...]) -> None:
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(client.exists(worker_key(name)) for name in names):
            for name in names:
                if self.processes[name].poll() is not None:
                    raise AssertionError(f"worker {name} exited:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"workers {names} did not announce themselves")
            time.sleep(0.2)
        client.close()

    def info(self, name: str) -> WorkerInfo | None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            value = client.get(worker_key(name))
        finally:
            client.close()
        return WorkerInfo.from_json(value) if value is not None else None

    def reports(self) -> list[bytes]:
        """The reports waiting in Celery's result backend."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            return list(client.scan_iter("celery-task-meta-*"))
        finally:
            client.close()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        """The end of the tests: no need for the workers' graceful stop."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=30)
