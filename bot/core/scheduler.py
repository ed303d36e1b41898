"""The fair scheduler: which queued jobs run next, and as which batch.

Written by hand because no queue library does this mix:
- Strict priority tiers (admin, then vip, then user), round robin across users inside a tier:
  each user with queued jobs leads one batch per round, so a user with 20 jobs queued delays
  another user's first job by at most one batch.
- A batch is the leader's oldest job plus the oldest compatible jobs (same batch key) of any
  user, up to `max_batch_images` images, within each user's cap on running jobs.
- Among the users whose turn it is, one whose next job uses the LoRA set already loaded goes
  first (fairness allows it: everyone in the round still leads once).

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
    images: int
    batch_key: str | None  # None: always runs alone
    lora_set: str = ""  # which LoRAs the job needs loaded ("" for none)


@dataclass
class _Tier:
    users: OrderedDict[int, deque[QueuedJob]] = field(default_factory=OrderedDict)
    served: set[int] = field(default_factory=set)  # users who led a batch this round


class FairScheduler:
    def __init__(self, max_batch_images: int) -> None:
        self.max_batch_images = max_batch_images
        self._tiers: dict[int, _Tier] = {}
        self._jobs: dict[int, QueuedJob] = {}
        self._by_key: dict[str, dict[int, QueuedJob]] = {}  # insertion (job id) order

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def add(self, job: QueuedJob) -> None:
        if job.job_id in self._jobs:
            return
        self._jobs[job.job_id] = job
        tier = self._tiers.setdefault(job.tier, _Tier())
        tier.users.setdefault(job.user_id, deque()).append(job)
        if job.batch_key is not None:
            self._by_key.setdefault(job.batch_key, {})[job.job_id] = job

    def remove(self, job_id: int) -> QueuedJob | None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        tier = self._tiers[job.tier]
        queue = tier.users[job.user_id]
        queue.remove(job)
        if not queue:
            del tier.users[job.user_id]
            tier.served.discard(job.user_id)  # back later, they wait by their job's age
        if job.batch_key is not None:
            same = self._by_key[job.batch_key]
            del same[job_id]
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
    ) -> list[QueuedJob]:
        """Take the next batch off the queue ([] when nothing may run now).

        `running` counts each user's jobs running elsewhere; `running_cap(user)` is how many
        one user may have running at once."""
        running = running or {}
        cap = running_cap or (lambda _user: 1 << 30)

        def room(user_id: int, taken: int = 0) -> bool:
            busy = running.get(user_id, 0) + taken
            return busy == 0 or busy < cap(user_id)  # caps are at least 1

        for level in sorted(self._tiers):
            tier = self._tiers[level]
            leader = self._pick_leader(tier, room, active_loras)
            if leader is None:
                continue
            tier.served.add(leader.user_id)
            batch = self._fill(leader, room)
            for job in batch:
                self.remove(job.job_id)
            return batch
        return []

    def _pick_leader(
        self, tier: _Tier, room: Callable[[int], bool], active_loras: str | None
    ) -> QueuedJob | None:
        """One pass over the tier's users (10,000 queued jobs stay cheap): the oldest head
        job, a loaded LoRA set first, among users who have not led this round."""
        waiting: tuple[tuple[bool, int], QueuedJob] | None = None
        anyone: tuple[tuple[bool, int], QueuedJob] | None = None
        for user, queue in tier.users.items():
            if not room(user):
                continue
            head = queue[0]
            key = (head.lora_set != active_loras, head.job_id)
            if anyone is None or key < anyone[0]:
                anyone = (key, head)
            if user not in tier.served and (waiting is None or key < waiting[0]):
                waiting = (key, head)
        if anyone is None:
            return None
        if waiting is None:  # everyone led once: a new round
            tier.served.clear()
            return anyone[1]
        return waiting[1]

    def _fill(self, leader: QueuedJob, room: Callable[[int, int], bool]) -> list[QueuedJob]:
        batch, images = [leader], leader.images
        if leader.batch_key is None:
            return batch
        taken = {leader.user_id: 1}
        for job in self._by_key[leader.batch_key].values():
            if images >= self.max_batch_images:
                break
            if job is leader or images + job.images > self.max_batch_images:
                continue
            if not room(job.user_id, taken.get(job.user_id, 0)):
                continue
            batch.append(job)
            images += job.images
            taken[job.user_id] = taken.get(job.user_id, 0) + 1
        return batch

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

        # Users who have not led yet this round come first, each in order of their oldest job.
        def turn(user: int) -> tuple[bool, int]:
            return user in tier.served, tier.users[user][0].job_id

        my_turn = turn(job.user_id)
        for user, queue in tier.users.items():
            if user != job.user_id:
                rounds = mine + 1 if turn(user) < my_turn else mine
                ahead += min(len(queue), rounds)
        return ahead + mine

    def jobs(self) -> Iterator[QueuedJob]:
        return iter(self._jobs.values())
