"""Grading off the request path: a bounded asyncio queue, fed when an answer is complete, read by
`grading.workers` workers.

`Grading.offer(record)` runs on the event loop right after a call finishes (recorder.Call.finish)
and never blocks or awaits: for a captured, answered (200) request of an adapter, each grader that
applies to the adapter (`applies_to`, empty = all) takes it with probability `sample`; when the
queue (`grading.queue_size`) is full the answer is dropped for that grader and counted
(loraplane_grader_dropped_total). A worker awaits the grader's score within its `timeout_s`; a
timeout or a grader's NoScore is counted by reason (loraplane_grader_failed_total) and stores
nothing. A score is counted (loraplane_grader_scored_total, loraplane_grader_score) and handed
to the store writer as feedback with source "grader:NAME", copying the request's variant,
rollout, unit, step and exclusion (so a rollout guard `grader:NAME:MARGIN` compares it per user,
like user feedback, which it never mixes with).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from serving.graders.kinds import Grader, NoScore, build_grader
from serving.metrics import GatewayMetrics
from serving.store import FeedbackRecord, RequestRecord

log = logging.getLogger("loraplane.graders")


@dataclass(frozen=True)
class Answer:
    """What a grader sees of one call, copied when it finished (the log record may change later)."""

    record: RequestRecord
    request: dict
    text: str

    @property
    def adapter(self) -> str:
        return self.record.variant.partition("@")[0]


class Grading:
    def __init__(
        self,
        graders: list[Grader],
        metrics: GatewayMetrics,
        write: Callable[[FeedbackRecord], object],
        *,
        queue_size: int,
        workers: int,
        rng: Callable[[], float] = random.random,
    ):
        self.graders = graders
        self.metrics = metrics
        self.write = write  # the store writer's offer_score (never blocks)
        self.workers = workers
        self.rng = rng
        self.queue: asyncio.Queue[tuple[Grader, Answer]] = asyncio.Queue(maxsize=queue_size)
        self._tasks: list[asyncio.Task] = []

    @classmethod
    def from_config(cls, cfg, metrics: GatewayMetrics, write: Callable[[FeedbackRecord], object]) -> Grading:
        """cfg: the ServingConfig; every grader is built now (ConfigError naming a bad one)."""
        graders = [build_grader(g) for g in cfg.graders]
        return cls(graders, metrics, write, queue_size=cfg.grading.queue_size, workers=cfg.grading.workers)

    # --- the event loop side (never blocks) -------------------------------------------------------

    def offer(self, record: RequestRecord) -> None:
        if not self.graders or record.status != 200 or record.variant == "none":
            return
        if record.response_text is None or not isinstance(record.request_body, dict):
            return  # only captured answers are graded
        answer = Answer(record, record.request_body, record.response_text)
        for grader in self.graders:
            applies = grader.cfg.applies_to
            if (applies and answer.adapter not in applies) or self.rng() >= grader.cfg.sample:
                continue
            try:
                self.queue.put_nowait((grader, answer))
            except asyncio.QueueFull:
                self.metrics.grader_dropped.labels(grader.name, record.variant).inc()

    # --- workers ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self.graders:
            self._tasks = [asyncio.create_task(self._work(), name=f"grader-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for grader in self.graders:
            await grader.close()

    async def _work(self) -> None:
        while True:
            grader, answer = await self.queue.get()
            try:
                await self.grade(grader, answer)
            finally:
                self.queue.task_done()

    async def grade(self, grader: Grader, answer: Answer) -> float | None:
        """Score one answer; the score, or None when the grader gave none (counted by reason)."""
        variant = answer.record.variant
        try:
            score = await asyncio.wait_for(grader.score(answer.request, answer.text), grader.cfg.timeout_s)
        except asyncio.TimeoutError:
            self.metrics.grader_failed.labels(grader.name, variant, "timeout").inc()
            return None
        except NoScore as exc:
            self.metrics.grader_failed.labels(grader.name, variant, exc.reason).inc()
            log.debug("grader %s gave no score for %s: %s", grader.name, answer.record.id, exc)
            return None
        except Exception as exc:  # a grader's bug must not end its worker
            self.metrics.grader_failed.labels(grader.name, variant, "error").inc()
            log.warning("grader %s failed on %s: %s: %s", grader.name, answer.record.id, type(exc).__name__, exc)
            return None
        self.metrics.grader_scored.labels(grader.name, variant).inc()
        self.metrics.grader_score.labels(grader.name, variant).observe(score)
        self.write(score_record(grader.name, answer.record, score))
        return score


def score_record(grader: str, request: RequestRecord, score: float) -> FeedbackRecord:
    """A grader's score as feedback with source "grader:NAME", attributed like the request."""
    source = f"grader:{grader}"
    return FeedbackRecord(
        request.id,
        score,
        source,
        request.model,
        request.variant,
        request.rollout,
        unit=request.unit,
        step=request.step,
        excluded=request.excluded,
        source=source,
    )
