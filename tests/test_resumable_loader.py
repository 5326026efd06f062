"""The train loader resumes mid-epoch: the batches after a saved position are those of an uninterrupted
pass, over several epochs, on one device or sharded over ranks."""

import itertools

import pytest

from r1lab.data.resumable import ResumableLoader


def _epochs(loader, n_epochs, start_epoch=0):
    out = []
    for epoch in range(start_epoch, n_epochs):
        loader.epoch_sampler.set_epoch(epoch)
        out.append([batch.tolist() for batch in loader])
    return out


def test_every_epoch_is_a_new_permutation_of_whole_batches():
    loader = ResumableLoader(list(range(22)), batch_size=4, seed=3)
    epochs = _epochs(loader, 3)
    assert all(len(e) == 5 and all(len(b) == 4 for b in e) for e in epochs)  # 22 // 4 whole batches
    assert all(len({i for b in e for i in b}) == 20 for e in epochs)  # no record twice in an epoch
    assert epochs[0] != epochs[1] != epochs[2]
    assert _epochs(ResumableLoader(list(range(22)), batch_size=4, seed=3), 3) == epochs  # seeded
    assert _epochs(ResumableLoader(list(range(22)), batch_size=4, seed=4), 1)[0] != epochs[0]


@pytest.mark.parametrize("cut", [0, 1, 3, 5])
def test_resuming_at_any_batch_continues_the_uninterrupted_order(cut):
    whole = _epochs(ResumableLoader(list(range(22)), batch_size=4, seed=3), 3)
    first = ResumableLoader(list(range(22)), batch_size=4, seed=3)
    first.epoch_sampler.set_epoch(1)
    seen = [batch.tolist() for batch in itertools.islice(first, cut)]  # then the run is killed
    state = first.state_dict()
    assert state["delivered"] == cut
    resumed = ResumableLoader(list(range(22)), batch_size=4, seed=3)
    resumed.load_state_dict(state)
    rest = _epochs(resumed, 3, start_epoch=1)
    assert seen + rest[0] == whole[1] and rest[1] == whole[2]
    assert resumed.state_dict()["delivered"] == 5


def test_ranks_take_disjoint_slices_of_each_global_batch():
    ranks = [ResumableLoader(list(range(20)), batch_size=2, seed=0, rank=r, world=2) for r in range(2)]
    per_rank = [_epochs(loader, 1)[0] for loader in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == 5 == len(ranks[0])
    single = _epochs(ResumableLoader(list(range(20)), batch_size=4, seed=0), 1)[0]
    assert [a + b for a, b in zip(*per_rank)] == single  # one global batch of 4 = rank 0's 2 + rank 1's 2


def test_a_checkpoint_of_another_shape_is_refused():
    state = ResumableLoader(list(range(20)), batch_size=4, seed=0).state_dict()
    with pytest.raises(ValueError, match="ckpt_path: the checkpoint's train loader had"):
        ResumableLoader(list(range(20)), batch_size=2, seed=0).load_state_dict(state)
