"""Weighted fair share between teams, with a bounded fast lane for interactive jobs.

Stride scheduling: each team has a virtual time that advances by ``1 / weight`` for every
job of its handed over, and the next slot of a model's queue goes to the waiting team with
the smallest virtual time. While two teams both have work, a team of weight 2 gets two
jobs for every one of a team of weight 1. Within a team, its own jobs go by priority class
(``interactive``, ``standard``, ``bulk``), then age.

Interactive pre-emption: a slot may go to the waiting team with an interactive job at the
head of its line even when another team's turn is due, but at most ``INTERACTIVE_SLOTS``
of every ``WINDOW`` consecutive slots of a model are taken that way, so the fair order
keeps at least one slot in four whatever is submitted as interactive. An interactive pick
advances its team's virtual time like any other, so a team that pre-empts pays for it in
its later turns.

A team that had no work re-enters at the model's virtual clock (the smallest virtual time
among the teams served last tick), so idling never banks credit. The state lives in the
dispatcher's memory: a restart starts every team even, two dispatchers each share fairly
what they hand over (the farm's shares are the sum of two fair orders, still fair in
proportion, with at most a tick's worth of slots out of order).
"""

from __future__ import annotations

import heapq
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

PRIORITIES = ("interactive", "standard", "bulk")
RANK = {name: rank for rank, name in enumerate(PRIORITIES)}
INTERACTIVE_SLOTS, WINDOW = 3, 4
# A weight of 0 would divide by zero; the smallest share a team can be given.
MIN_WEIGHT = 1e-3


@dataclass(frozen=True)
class Candidate:
    """One waiting job as the pick sees it; ``rank`` already raised for an urgent batch."""

    id: uuid.UUID
    team_id: uuid.UUID
    rank: int
    created_at: datetime

    @property
    def order(self) -> tuple[int, datetime, uuid.UUID]:
        return (self.rank, self.created_at, self.id)


@dataclass
class FairShare:
    """One model's virtual times and its recent interactive-first slots."""

    vtime: dict[uuid.UUID, float] = field(default_factory=dict)
    clock: float = 0.0
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def start(self, team: uuid.UUID) -> float:
        """The team's virtual time, not below the clock (no credit for idle time)."""
        return max(self.vtime.get(team, self.clock), self.clock)

    def plan(
        self,
        weights: Mapping[uuid.UUID, float],
        room: int,
        teams: Iterable[uuid.UUID] | None = None,
    ) -> dict[uuid.UUID, int]:
        """How many of ``room`` slots each of ``teams`` (default: all of ``weights``) would
        get if none ran out of jobs (a heap of the ``room`` least-served teams: only they
        can be given a slot)."""
        vtime, clock = self.vtime, self.clock  # vtime holds only times past the clock
        entries = ((vtime.get(t, clock), t.int, t) for t in (weights if teams is None else teams))
        heap = heapq.nsmallest(room, entries)
        counts: dict[uuid.UUID, int] = {}
        for _ in range(room if heap else 0):
            v, key, team = heapq.heappop(heap)
            counts[team] = counts.get(team, 0) + 1
            heapq.heappush(heap, (v + 1 / max(weights[team], MIN_WEIGHT), key, team))
        return counts

    @staticmethod
    def interactive_budget(room: int) -> int:
        """The most interactive-first slots ``room`` hand-overs can hold."""
        return min(room, INTERACTIVE_SLOTS * (room // WINDOW + 1))

    def order(
        self,
        weights: Mapping[uuid.UUID, float],
        lines: Mapping[uuid.UUID, Sequence[Candidate]],
        room: int,
    ) -> list[Candidate]:
        """Up to ``room`` jobs from the teams' lines (each its jobs in its own order), in the
        order they are handed over; advances the state as if all of them were.

        ``weights`` names every team with jobs waiting, ``lines`` those read this tick: the
        clock moves to the least-served waiting team, read or not.
        """
        vt = {t: self.start(t) for t in lines}
        heads = {t: 0 for t, line in lines.items() if line}
        # The next fair turn: least served, then oldest head; the next fast-lane turn: the
        # least-served team with an interactive job at its head. Entries of a team that has
        # moved on since are skipped when they come up.
        fair = [(vt[t], lines[t][0].created_at, lines[t][0].id, t) for t in heads]
        lane = [(vt[t], t.int, t) for t in heads if lines[t][0].rank == 0]
        heapq.heapify(fair)
        heapq.heapify(lane)

        def _head(team: uuid.UUID) -> Candidate:
            return lines[team][heads[team]]

        picked: list[Candidate] = []
        while len(picked) < room:
            while fair and not (fair[0][3] in heads and fair[0][2] == _head(fair[0][3]).id):
                heapq.heappop(fair)  # that team moved on (or ran out) since
            if not fair:
                break
            team, jumped = fair[0][3], False
            if _head(team).rank > 0 and self._may_jump():
                while lane and not (
                    lane[0][2] in heads
                    and vt[lane[0][2]] == lane[0][0]
                    and _head(lane[0][2]).rank == 0
                ):
                    heapq.heappop(lane)
                if lane:
                    team, jumped = lane[0][2], True
            line = lines[team]
            picked.append(line[heads[team]])
            self.recent.append(jumped)
            vt[team] += 1 / max(weights.get(team, 1.0), MIN_WEIGHT)
            heads[team] += 1
            if heads[team] == len(line):
                del heads[team]
            else:
                head = line[heads[team]]
                heapq.heappush(fair, (vt[team], head.created_at, head.id, team))
                if head.rank == 0:
                    heapq.heappush(lane, (vt[team], team.int, team))
        self._settle(vt, weights)
        return picked

    def _may_jump(self) -> bool:
        # Counting this slot, at most INTERACTIVE_SLOTS jumps in the last WINDOW slots.
        return sum(list(self.recent)[-(WINDOW - 1) :]) < INTERACTIVE_SLOTS

    def _settle(self, read: dict[uuid.UUID, float], weights: Mapping[uuid.UUID, float]) -> None:
        # Only times past the clock are kept: a team at or behind it re-enters at the clock.
        self.vtime.update((t, v) for t, v in read.items() if v > self.clock)
        # The clock moves to the least-served waiting team: it stays while any waiting team
        # is at the clock (has no time kept), which ends the scan at once on most ticks.
        if weights and all(t in self.vtime for t in weights):
            self.clock = max(self.clock, min(self.vtime[t] for t in weights))
            self.vtime = {t: v for t, v in self.vtime.items() if v > self.clock}
