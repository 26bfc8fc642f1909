"""The round loop the pursuits share."""

from gradstore.selectors.lockstep import lockstep


class Counter:
    def __init__(self, steps: int) -> None:
        self.left, self.done, self.seen = steps, steps == 0, []


def test_rounds_scan_only_the_active_states_until_all_are_done():
    states = [Counter(3), Counter(1), Counter(0)]
    scanned, reported = [], []

    def scan(active):
        scanned.append([states.index(s) for s in active])
        return [s.left for s in active]

    def step(active, found):
        for s, f in zip(active, found, strict=True):
            s.seen.append(f)
            s.left -= 1
            s.done = s.left == 0

    rounds = lockstep(states, scan, step, after=lambda n, active: reported.append(n))
    assert scanned == [[0, 1], [0], [0]]
    assert rounds.scans == 3 and reported == [1, 2, 3] and rounds.scan_seconds >= 0
    assert states[0].seen == [3, 2, 1] and states[1].seen == [1] and states[2].seen == []


def test_max_scans_ends_the_loop_with_states_still_active():
    states = [Counter(10)]

    def step(active, found):
        active[0].left -= 1

    rounds = lockstep(states, lambda active: [None], step, max_scans=4)
    assert rounds.scans == 4 and states[0].left == 6 and not states[0].done
