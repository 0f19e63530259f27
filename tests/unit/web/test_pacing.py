"""The scrape thread's pacing: a pause after each slice of work, samples made lazily."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.samples import Sample

from cronloop.web.pacing import PacedSamples, Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def test_a_pause_once_a_slice_of_work_has_passed() -> None:
    clock = Clock()
    pacer = Pacer(slice_s=0.001, pause_s=0.0002, clock=lambda: clock.now, sleep=clock.sleep)
    pacer.step()  # the first step starts the first slice (the thread's start is not work)
    for _ in range(4):
        clock.now += 0.0002
        pacer.step()
    assert clock.pauses == []  # 0.8 ms of work
    clock.now += 0.0003
    pacer.step()
    assert clock.pauses == [0.0002] and pacer.pauses == 1
    assert abs(pacer.longest_s - 0.0011) < 1e-9
    clock.now += 0.0009
    pacer.step()  # the slice starts again after the pause
    assert pacer.pauses == 1
    clock.now += 0.004  # a long stretch without a step: seen at the next one
    pacer.step()
    assert pacer.pauses == 2 and abs(pacer.longest_s - 0.0049) < 1e-9


def test_samples_are_made_while_iterated_with_a_step_each() -> None:
    made: list[int] = []
    steps: list[int] = []

    def source() -> Iterator[Sample]:
        for i in range(3):
            made.append(i)
            yield Sample("x", {}, float(i))

    class Counting(Pacer):
        def step(self) -> None:
            steps.append(len(made))

    samples = PacedSamples(source, Counting())
    assert made == []  # nothing made ahead
    values = iter(samples)
    assert next(values).value == 0 and made == [0]
    assert [s.value for s in values] == [1.0, 2.0]
    assert steps == [1, 2, 3]
    assert [s.value for s in samples] == [0.0, 1.0, 2.0]  # made again on each iteration
