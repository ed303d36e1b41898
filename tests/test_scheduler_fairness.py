"""Fairness under load: a user who holds the queue cannot fill every batch's spare slots, and a
user who asks later starts within one round (at most one job of each other waiting user first)."""

from __future__ import annotations

from collections import Counter

from bot.core.scheduler import FairScheduler, QueuedJob

USER_TIER = 2
HOLDER = 1


class Queue:
    def __init__(self, max_batch_images: int) -> None:
        self.scheduler = FairScheduler(max_batch_images)
        self.next_id = 1
        self.started: list[QueuedJob] = []  # every job, in the order its batch started
        self.batch_starts: list[int] = []  # index into `started` where each batch begins

    def add(self, user: int, key: str = "sd15-512x512") -> QueuedJob:
        job = QueuedJob(self.next_id, user, USER_TIER, 1, key)
        self.next_id += 1
        self.scheduler.add(job)
        return job

    def run(self, batches: int | None = None) -> None:
        while batches is None or batches > 0:
            batch = self.scheduler.next_batch()
            if not batch:
                return
            self.batch_starts.append(len(self.started))
            self.started.extend(batch)
            batches = None if batches is None else batches - 1

    def ahead_of(self, job: QueuedJob, since: int = 0) -> list[QueuedJob]:
        """The jobs whose batch started before `job`'s, from index `since` on."""
        at = self.started.index(job)
        batch_start = max(start for start in self.batch_starts if start <= at)
        return self.started[since:batch_start]


def test_a_queue_holder_does_not_fill_every_batch_before_ten_newcomers() -> None:
    queue = Queue(max_batch_images=4)
    holder = [queue.add(HOLDER) for _ in range(10)]
    newcomers = [queue.add(user) for user in range(10, 20)]

    queue.run()

    last = newcomers[-1]
    ahead = queue.ahead_of(last)
    assert len(ahead) == 8  # before: all ten of the holder's jobs and the nine others
    assert Counter(job.user_id for job in ahead)[HOLDER] == 1
    for job in newcomers:
        assert max(Counter(other.user_id for other in queue.ahead_of(job)).values(), default=0) <= 1
    assert sorted(job.job_id for job in queue.started) == [
        job.job_id for job in [*holder, *newcomers]
    ]


def test_a_user_who_asks_after_a_burst_starts_within_one_round() -> None:
    queue = Queue(max_batch_images=8)
    for _ in range(20):
        queue.add(HOLDER)
    users = range(100, 200)
    for _ in range(5):  # a burst: 100 users, 5 jobs each, interleaved
        for user in users:
            queue.add(user)
    queue.run(batches=10)  # the bot has been busy for a while
    arrived = len(queue.started)
    late = queue.add(999)

    queue.run()

    ahead = queue.ahead_of(late, since=arrived)
    waiting = 1 + len(users)  # the holder and the burst's users all still had work queued
    # Before: rank 520 of 591, behind 20 of the holder's jobs.
    assert len(ahead) <= waiting
    per_user = Counter(job.user_id for job in ahead)
    assert per_user[HOLDER] <= 1
    assert max(per_user.values()) <= 1
    assert len(queue.started) == 20 + 500 + 1


def test_spare_slots_go_one_job_per_user_per_pass() -> None:
    queue = Queue(max_batch_images=6)
    a_jobs = [queue.add(HOLDER) for _ in range(6)]
    b_jobs = [queue.add(2) for _ in range(2)]
    c_job = queue.add(3)

    batch = queue.scheduler.next_batch()

    # Pass one: one job of each user; pass two: a second one each; then the holder's third.
    assert Counter(job.user_id for job in batch) == {HOLDER: 3, 2: 2, 3: 1}
    assert batch[0] == a_jobs[0]
    assert set(batch) == {*a_jobs[:3], *b_jobs, c_job}


def test_a_newcomer_s_position_is_what_it_waits_for() -> None:
    queue = Queue(max_batch_images=1)  # one job per batch: the position is exact
    for _ in range(20):
        queue.add(HOLDER)
    for user in range(10, 15):
        queue.add(user)
    queue.run(batches=3)
    late = queue.add(99)
    promised = queue.scheduler.position(late.job_id)
    arrived = len(queue.started)

    queue.run()

    assert promised == len(queue.ahead_of(late, since=arrived))
    assert promised <= 6  # one job of each of the six users waiting before it
