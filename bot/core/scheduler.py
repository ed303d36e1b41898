"""The fair scheduler: which queued jobs run next, and as which batch.

Written by hand because no queue library does this mix:
- Strict priority tiers (admin, then vip, then user), fair shares across users inside a tier.
- Fair shares are counted in jobs started: each user has a count of jobs started while they had
  work queued, and the lowest count goes next (oldest job first among equals). A user who
  comes (back) to the queue starts at the lowest count of those waiting, so their first job
  starts within one round: at most one job of each other waiting user runs before it.
- A batch is a leader job plus compatible jobs (same batch key) up to `max_batch_images`
  images, within each user's cap on running jobs. The spare slots go round robin too: one job
  per user per pass, the users with the fewest jobs started first, so a user with many jobs
  queued cannot fill every batch.
- Among the users whose turn it is, one whose next job runs on the checkpoint already loaded
  goes first (switching checkpoints costs seconds), then one whose next job uses the LoRA set
  already loaded (fairness allows it: everyone in the round still goes once).

It holds the queue in memory, indexed for O(users) picks with 10,000 jobs queued; the
database stays the truth and the service rebuilds this from it at start.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class QueuedJob:
    job_id: int
    user_id: int
    tier: int  # 0 runs first (admin), then 1 (vip), then 2 (user)
    images: int  # the images it makes, or more when each costs more (AND parts, long prompts)
    batch_key: str | None  # None: always runs alone
    lora_set: str = ""  # which LoRAs the job needs loaded ("" for none)
    model: str = ""  # the checkpoint it was queued for ("": whichever is loaded)
    lora_names: tuple[str, ...] = ()  # the LoRAs of `lora_set`, by name

    def needs_switch(self, active_model: str | None) -> bool:
        """Whether running it means loading another checkpoint than `active_model`."""
        return bool(self.model) and active_model is not None and self.model != active_model


@dataclass
class _Tier:
    users: OrderedDict[int, deque[QueuedJob]] = field(default_factory=OrderedDict)
    started: dict[int, int] = field(default_factory=dict)  # jobs started, per waiting user

    def join(self, user_id: int) -> None:
        """A user with nothing queued queues a job: they start level with the lowest count."""
        self.started[user_id] = min(self.started.values(), default=0)

    def leave(self, user_id: int) -> None:
        del self.users[user_id]
        del self.started[user_id]


class FairScheduler:
    def __init__(self, max_batch_images: int) -> None:
        self.max_batch_images = max_batch_images
        self._tiers: dict[int, _Tier] = {}
        self._jobs: dict[int, QueuedJob] = {}
        self._images = 0  # of every queued job, for the wait estimate
        # batch key -> tier -> jobs in insertion (job id) order
        self._by_key: dict[str, dict[int, dict[int, QueuedJob]]] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def add(self, job: QueuedJob) -> None:
        if job.job_id in self._jobs:
            return
        self._jobs[job.job_id] = job
        self._images += job.images
        tier = self._tiers.setdefault(job.tier, _Tier())
        if job.user_id not in tier.users:
            tier.join(job.user_id)
            tier.users[job.user_id] = deque()
        tier.users[job.user_id].append(job)
        if job.batch_key is not None:
            same = self._by_key.setdefault(job.batch_key, {})
            same.setdefault(job.tier, {})[job.job_id] = job

    def remove(self, job_id: int) -> QueuedJob | None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        self._images -= job.images
        tier = self._tiers[job.tier]
        queue = tier.users[job.user_id]
        queue.remove(job)
        if not queue:
            tier.leave(job.user_id)  # back later, they join level with those waiting then
        if job.batch_key is not None:
            same = self._by_key[job.batch_key]
            del same[job.tier][job_id]
            if not same[job.tier]:
                del same[job.tier]
            if not same:
                del self._by_key[job.batch_key]
        return job

    def queued_for(self, user_id: int) -> int:
        return sum(len(tier.users.get(user_id, ())) for tier in self._tiers.values())

    def next_batch(
        self,
        running: Mapping[int, int] | None = None,
        running_cap: Callable[[int], int] | None = None,
        active_loras: str | None = None,
        active_model: str | None = None,
        runnable: Callable[[QueuedJob], bool] | None = None,
    ) -> list[QueuedJob]:
        """Take the next batch off the queue ([] when nothing may run now).

        `running` counts each user's jobs running elsewhere; `running_cap(user)` is how many
        one user may have running at once. `active_model` and `active_loras`: what is loaded
        now, preferred among the users whose turn it is. `runnable(job)`: whether a job's
        batch could start now (a free worker holds its checkpoint); a user whose next job
        cannot waits, without losing their turn, while the others go."""
        running = running or {}
        cap = running_cap or (lambda _user: 1 << 30)

        def room(user_id: int, taken: int = 0) -> bool:
            busy = running.get(user_id, 0) + taken
            return busy == 0 or busy < cap(user_id)  # caps are at least 1

        for level in sorted(self._tiers):
            tier = self._tiers[level]
            leader = self._pick_leader(tier, running, cap, active_loras, active_model, runnable)
            if leader is None:
                continue
            batch = self._fill(leader, room)
            for job in batch:
                self._tiers[job.tier].started[job.user_id] += 1
            for job in batch:
                self.remove(job.job_id)
            return batch
        return []

    def _pick_leader(
        self,
        tier: _Tier,
        running: Mapping[int, int],
        cap: Callable[[int], int],
        active_loras: str | None,
        active_model: str | None = None,
        runnable: Callable[[QueuedJob], bool] | None = None,
    ) -> QueuedJob | None:
        """One pass over the tier's users (10,000 queued jobs stay cheap): the head job of
        the user with the fewest jobs started, the loaded checkpoint first, then a loaded
        LoRA set, then the oldest."""
        best_key: tuple[int, bool, bool, int] | None = None
        best: QueuedJob | None = None
        started = tier.started
        for user, queue in tier.users.items():
            busy = running.get(user, 0)
            if busy and busy >= cap(user):
                continue
            head = queue[0]
            if runnable is not None and not runnable(head):
                continue
            key = (
                started[user],
                head.needs_switch(active_model),
                head.lora_set != active_loras,
                head.job_id,
            )
            if best_key is None or key < best_key:
                best_key, best = key, head
        return best

    def _fill(self, leader: QueuedJob, room: Callable[[int, int], bool]) -> list[QueuedJob]:
        """The leader plus compatible jobs: higher tiers first, then in passes of one job per
        user, the users with the fewest jobs started (counting this batch) first."""
        batch, images = [leader], leader.images
        if leader.batch_key is None:
            return batch
        taken = {leader.user_id: 1}
        by_tier = self._by_key[leader.batch_key]
        for level in sorted(by_tier):
            if images >= self.max_batch_images:
                break
            started = self._tiers[level].started
            images = self._fill_from(by_tier[level], started, batch, images, taken, room)
        return [leader, *sorted(batch[1:], key=lambda job: job.job_id)]

    def _fill_from(
        self,
        pool: Mapping[int, QueuedJob],
        started: Mapping[int, int],
        batch: list[QueuedJob],
        images: int,
        taken: dict[int, int],
        room: Callable[[int, int], bool],
    ) -> int:
        """Passes over one tier's compatible jobs (oldest first); pass `level` takes one job of
        each user whose started count, with what this batch took, is at most `level`."""
        chosen = {job.job_id for job in batch}

        def count(user: int) -> int:
            return started[user] + taken.get(user, 0)

        level = min(started.values(), default=0)  # nobody waiting has started fewer
        while images < self.max_batch_images:
            took, next_level = False, None
            for job in pool.values():
                if images >= self.max_batch_images:
                    break
                user = job.user_id
                if job.job_id in chosen or images + job.images > self.max_batch_images:
                    continue
                if not room(user, taken.get(user, 0)):
                    continue
                mine = count(user)
                if mine > level:
                    next_level = mine if next_level is None else min(next_level, mine)
                    continue
                batch.append(job)
                chosen.add(job.job_id)
                images += job.images
                taken[user] = taken.get(user, 0) + 1
                took = True
            if next_level is None and not took:
                break
            level = level + 1 if took else next_level  # type: ignore[assignment]
            if took and next_level is not None:
                level = min(level, next_level)
        return images

    def position(self, job_id: int) -> int:
        """How many queued jobs run before this one (0: it is next), counting one job per
        batch; a rough figure for the reply, not a promise."""
        job = self._jobs[job_id]
        ahead = sum(
            len(queue)
            for level, tier in self._tiers.items()
            if level < job.tier
            for queue in tier.users.values()
        )
        tier = self._tiers[job.tier]
        mine = next(index for index, queued in enumerate(tier.users[job.user_id]) if queued is job)
        # One-job batches run in order of (jobs started before it, job id).
        turn = tier.started[job.user_id] + mine
        for user, queue in tier.users.items():
            if user == job.user_id:
                continue
            before = min(max(turn - tier.started[user], 0), len(queue))
            if before < len(queue) and tier.started[user] + before == turn:
                before += queue[before].job_id < job.job_id
            ahead += before
        return ahead + mine

    def queued_images(self) -> int:
        return self._images

    def images_of(self, job_id: int) -> int:
        return self._jobs[job_id].images

    def jobs(self) -> Iterator[QueuedJob]:
        return iter(self._jobs.values())
