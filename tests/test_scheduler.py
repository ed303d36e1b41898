"""The fair scheduler: which queued job runs when, as a user waiting in the queue sees it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

from bot.core.scheduler import FairScheduler, QueuedJob

ADMIN, VIP, USER = 0, 1, 2
A, B, C = 1, 2, 3


class Jobs:
    """Hands out increasing job ids, the way the database does."""

    def __init__(self, scheduler: FairScheduler) -> None:
        self.scheduler = scheduler
        self.next_id = 1

    def add(
        self,
        user: int,
        *,
        images: int = 1,
        key: str | None = "k",
        tier: int = USER,
        lora: str = "",
    ) -> QueuedJob:
        job = QueuedJob(self.next_id, user, tier, images, key, lora)
        self.next_id += 1
        self.scheduler.add(job)
        return job

    def many(self, user: int, count: int, **fields: object) -> list[QueuedJob]:
        return [self.add(user, **fields) for _ in range(count)]  # type: ignore[arg-type]


def drain(
    scheduler: FairScheduler,
    running: Mapping[int, int] | None = None,
    running_cap: Callable[[int], int] | None = None,
    active_loras: str | None = None,
) -> list[list[QueuedJob]]:
    batches = []
    while batch := scheduler.next_batch(running, running_cap, active_loras):
        batches.append(batch)
    return batches


def batch_of(batches: list[list[QueuedJob]], job: QueuedJob) -> int:
    return next(index for index, batch in enumerate(batches) if job in batch)


# ---------------------------------------------------------------------------------- fairness


def test_a_heavy_user_delays_a_newcomer_by_at_most_one_batch() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    heavy = jobs.many(A, 20)
    newcomer = jobs.add(B)

    batches = drain(scheduler)

    # A leads the first batch; its first spare slot goes to B, the rest to A's next jobs.
    assert batches[0] == [heavy[0], *heavy[1:3], newcomer]
    assert sum(len(batch) for batch in batches) == 21


def test_a_newcomer_is_not_stuck_behind_incompatible_jobs() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    for index in range(20):
        jobs.add(A, key=f"model-{index}")  # nothing batches with anything: one job per batch
    first, second = jobs.add(B, key="b"), jobs.add(B, key="b2")

    batches = drain(scheduler)

    assert all(len(batch) == 1 for batch in batches)
    assert batch_of(batches, first) <= 1
    # B keeps getting every other batch while A still has work queued.
    assert batch_of(batches, second) <= 3


def test_round_robin_over_three_users() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    for user in (A, B, C):
        jobs.many(user, 3, key=None)

    leaders = [batch[0].user_id for batch in drain(scheduler)]

    assert leaders == [A, B, C] * 3


def test_round_robin_holds_when_users_interleave_and_one_runs_out() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    jobs.many(A, 4, key=None)
    jobs.add(B, key=None)
    jobs.many(C, 2, key=None)

    leaders = [batch[0].user_id for batch in drain(scheduler)]

    assert leaders == [A, B, C, A, C, A, A]


# ---------------------------------------------------------------------------------- priority


def test_an_admin_job_runs_in_the_very_next_batch() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    for user in range(10, 20):
        jobs.many(user, 3, key=None)
    admin = jobs.add(99, tier=ADMIN, key=None)

    assert scheduler.next_batch() == [admin]


def test_vip_runs_before_user_and_admin_before_both() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    users = jobs.many(A, 5, key=None)
    vip = jobs.add(B, tier=VIP, key=None)
    admin = jobs.add(C, tier=ADMIN, key=None)

    order = [job for batch in drain(scheduler) for job in batch]

    assert order == [admin, vip, *users]


def test_a_lower_tier_runs_when_the_higher_one_is_capped() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    jobs.add(A, tier=ADMIN, key=None)
    user_job = jobs.add(B, key=None)

    batch = scheduler.next_batch(running={A: 1}, running_cap=lambda user: 1)

    assert batch == [user_job]


# ---------------------------------------------------------------------------------- caps


def test_a_user_at_the_running_cap_waits_while_others_run() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    a_jobs = jobs.many(A, 3)
    b_jobs = jobs.many(B, 2)

    def cap(user: int) -> int:
        return 2 if user == A else 100

    batch = scheduler.next_batch(running={A: 2}, running_cap=cap)

    assert batch == b_jobs
    # Only A's jobs are left and A is still at the cap: nothing may run now.
    assert scheduler.next_batch(running={A: 2}, running_cap=cap) == []
    assert scheduler.next_batch(running={A: 1}, running_cap=cap) == a_jobs[:1]


def test_the_running_cap_limits_one_users_share_of_a_batch() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    a_jobs = jobs.many(A, 4)
    b_jobs = jobs.many(B, 2)

    batch = scheduler.next_batch(running_cap=lambda user: 2)

    assert Counter(job.user_id for job in batch)[A] == 2
    assert batch == [*a_jobs[:2], *b_jobs]


def test_running_jobs_count_against_the_share_of_a_batch() -> None:
    scheduler = FairScheduler(max_batch_images=8)
    jobs = Jobs(scheduler)
    a_jobs = jobs.many(A, 4)

    batch = scheduler.next_batch(running={A: 1}, running_cap=lambda user: 3)

    assert batch == a_jobs[:2]


# ---------------------------------------------------------------------------------- batching


def test_compatible_jobs_of_different_users_share_a_batch_up_to_the_image_limit() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    a, b, c = jobs.add(A, images=2), jobs.add(B, images=2), jobs.add(C, images=2)

    batches = drain(scheduler)

    assert batches == [[a, b], [c]]


def test_a_job_that_would_overflow_the_batch_is_skipped_not_a_stopper() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    three = jobs.add(A, images=3)
    two = jobs.add(B, images=2)
    one = jobs.add(C, images=1)

    batches = drain(scheduler)

    assert batches[0] == [three, one]  # 3 + 2 > 4, but 3 + 1 fits
    assert batches[1] == [two]
    for batch in batches:
        assert sum(job.images for job in batch) <= 4


def test_jobs_without_a_batch_key_always_run_alone() -> None:
    scheduler = FairScheduler(max_batch_images=8)
    jobs = Jobs(scheduler)
    alone = [jobs.add(user, key=None) for user in (A, B, A, C)]

    batches = drain(scheduler)

    assert len(batches) == 4
    a1, b1, a2, c1 = alone
    assert [job for batch in batches for job in batch] == [a1, b1, c1, a2]  # round robin
    assert all(len(batch) == 1 for batch in batches)


def test_a_keyless_job_is_never_pulled_into_a_keyed_batch() -> None:
    scheduler = FairScheduler(max_batch_images=8)
    jobs = Jobs(scheduler)
    keyed = jobs.add(A, key="k")
    keyless = jobs.add(B, key=None)
    other_keyed = jobs.add(C, key="k")

    batches = drain(scheduler)

    assert batches[0] == [keyed, other_keyed]
    assert batches[1] == [keyless]


def test_different_keys_are_never_mixed() -> None:
    scheduler = FairScheduler(max_batch_images=8)
    jobs = Jobs(scheduler)
    for index in range(12):
        jobs.add(index % 4, key=f"key-{index % 3}")

    batches = drain(scheduler)

    for batch in batches:
        assert len({job.batch_key for job in batch}) == 1
    assert sorted(len(batch) for batch in batches) == [4, 4, 4]


# ---------------------------------------------------------------------------------- LoRA


def test_the_loaded_lora_set_leads_but_everyone_still_leads_once_per_round() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    jobs.many(A, 3, key=None, lora="x")
    jobs.many(B, 3, key=None, lora="y")

    leaders = [batch[0].user_id for batch in drain(scheduler, active_loras="y")]

    # B's jobs match the loaded LoRAs so B goes first each round, yet A is never skipped.
    assert leaders == [B, A] * 3


def test_without_a_lora_match_the_oldest_head_leads() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    jobs.add(A, key=None, lora="x")
    jobs.add(B, key=None, lora="y")

    leaders = [batch[0].user_id for batch in drain(scheduler, active_loras="z")]

    assert leaders == [A, B]


# ---------------------------------------------------------------------------------- remove


def test_a_removed_job_never_comes_out() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    a_jobs = jobs.many(A, 3)
    b_job = jobs.add(B)
    lone = jobs.add(C, key=None)
    assert len(scheduler) == 5
    assert scheduler.queued_for(A) == 3

    assert scheduler.remove(a_jobs[0].job_id) == a_jobs[0]
    assert scheduler.remove(lone.job_id) == lone
    assert scheduler.remove(lone.job_id) is None  # already gone
    assert scheduler.remove(12345) is None  # never queued

    assert len(scheduler) == 3
    assert scheduler.queued_for(A) == 2
    assert scheduler.queued_for(C) == 0
    assert a_jobs[0].job_id not in scheduler
    assert b_job.job_id in scheduler

    out = [job.job_id for batch in drain(scheduler) for job in batch]
    assert sorted(out) == [job.job_id for job in [*a_jobs[1:], b_job]]
    assert len(scheduler) == 0
    assert scheduler.queued_for(A) == 0


def test_adding_a_job_twice_queues_it_once() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    job = QueuedJob(1, A, USER, 1, "k")
    scheduler.add(job)
    scheduler.add(job)

    assert len(scheduler) == 1
    assert drain(scheduler) == [[job]]


def test_queued_for_counts_only_that_user() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    jobs.many(A, 4)
    jobs.many(B, 2, tier=VIP)

    assert (scheduler.queued_for(A), scheduler.queued_for(B), scheduler.queued_for(C)) == (4, 2, 0)
    assert len(scheduler) == 6


# ---------------------------------------------------------------------------------- position


def test_position_is_zero_for_the_next_job() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    job = jobs.add(A)

    assert scheduler.position(job.job_id) == 0


def test_a_newcomer_behind_a_heavy_user_is_near_the_front() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    jobs.many(A, 20)
    newcomer = jobs.add(B)

    assert scheduler.position(newcomer.job_id) == 1  # A's oldest job leads, then B's
    assert newcomer in scheduler.next_batch()  # and B takes a spare slot of that batch


def test_position_grows_by_one_per_own_earlier_job() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    mine = jobs.many(A, 5, key=None)

    assert [scheduler.position(job.job_id) for job in mine] == [0, 1, 2, 3, 4]


def test_position_matches_the_run_order_of_one_job_batches() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    for user in (A, B, C):
        jobs.many(user, 3, key=None)
    scheduler.next_batch()  # A has led once this round

    positions = {job.job_id: scheduler.position(job.job_id) for job in scheduler.jobs()}
    order = [batch[0].job_id for batch in drain(scheduler)]

    assert [positions[job_id] for job_id in order] == list(range(len(order)))


def test_higher_tiers_count_ahead() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    jobs = Jobs(scheduler)
    user_job = jobs.add(A, key=None)
    assert scheduler.position(user_job.job_id) == 0

    jobs.add(B, tier=VIP, key=None)
    jobs.add(C, tier=ADMIN, key=None)
    jobs.add(C, tier=ADMIN, key=None)

    assert scheduler.position(user_job.job_id) == 3
    assert [job.job_id for batch in drain(scheduler) for job in batch][-1] == user_job.job_id


# ---------------------------------------------------------------------------------- scale


def test_ten_thousand_jobs_from_a_thousand_users_drain_exactly_once() -> None:
    max_images = 8
    scheduler = FairScheduler(max_batch_images=max_images)
    keys: list[str | None] = ["sd15-512", "sd15-768", "sdxl-1024", None]
    expected = set()
    for job_id in range(10_000):
        user = job_id % 1_000
        job = QueuedJob(
            job_id=job_id,
            user_id=user,
            tier=(ADMIN, VIP, USER, USER, USER)[user % 5],
            images=1 + job_id % 4,
            batch_key=keys[job_id % 7 % 4],
            lora_set=f"lora-{job_id % 3}",
        )
        scheduler.add(job)
        expected.add(job_id)

    seen: list[int] = []
    while batch := scheduler.next_batch(running_cap=lambda user: 4, active_loras="lora-1"):
        assert sum(job.images for job in batch) <= max_images or len(batch) == 1
        assert len({job.batch_key for job in batch}) == 1
        assert batch[0].batch_key is not None or len(batch) == 1
        seen.extend(job.job_id for job in batch)

    assert len(seen) == len(expected)
    assert set(seen) == expected
    assert len(scheduler) == 0
