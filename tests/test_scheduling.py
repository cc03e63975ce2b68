"""The runner's scheduling: which variant's study a worker asks the next trial of, so that the
variants of one command advance together and a variant given up on takes no more."""

import pytest

from bench.trials import LaneCount, next_lane


@pytest.mark.parametrize("counts, chosen", [
    ([LaneCount(0, 0, 3), LaneCount(0, 0, 3)], 0),  # a tie: the first in the command
    ([LaneCount(1, 0, 3), LaneCount(0, 0, 3)], 1),  # the fewest started
    ([LaneCount(0, 2, 3), LaneCount(1, 0, 3)], 1),  # running trials count as started
    ([LaneCount(1, 2, 3), LaneCount(2, 1, 3)], None),  # each has its trials running: wait for them
    ([LaneCount(3, 0, 3), LaneCount(2, 0, 3)], 1),  # a finished variant takes no more
    ([LaneCount(0, 0, 5), LaneCount(1, 0, 2)], 0),  # another number of trials does not change the order
    ([None, LaneCount(2, 0, 3)], 1),  # a variant given up on is passed over, however few it started
    ([None, LaneCount(1, 2, 3)], None),
])
def test_the_next_trial_goes_to_the_variant_with_the_fewest_started(counts, chosen):
    assert next_lane(counts) == chosen


def test_a_study_of_several_variants_interleaves_their_trials_and_ends_when_each_has_its_number():
    """Trials asked one at a time and finished at once, as by one worker: the order the variants train in."""
    counts = [LaneCount(0, 0, 3), LaneCount(0, 0, 2), LaneCount(0, 0, 3)]
    order = []
    while not all(count.done for count in counts):
        index = next_lane(counts)
        order.append(index)
        count = counts[index]
        counts[index] = LaneCount(count.finished + 1, count.running, count.trials)
    assert order == [0, 1, 2, 0, 1, 2, 0, 2]
    assert LaneCount(2, 1, 2).done and not LaneCount(1, 1, 2).done  # done: finished, not merely started
