"""Streamed training rows (trainer/rows.py, trainer/data.py prepare): bounded memory, reproducible order, resume,
one shard per worker, and the same metrics as the rows loaded whole."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cambrian.trainer.config import ModelConfig
from cambrian.trainer.data import load_dataset, prepare, train_file
from cambrian.trainer.distributed import shard_name
from cambrian.trainer.features import Catalogue, Categorical, FeatureSpec, Numeric
from cambrian.trainer.rows import RowGroupStream, RowWriter, read_columns
from cambrian.trainer.fit import fit, predict
from cambrian.trainer.train import evaluate

N, GROUP = 1_050, 100  # 11 row groups, the last one short


def _file(path, n=N, group=GROUP):
    """Rows whose label is their own index, so a batch says which rows it holds."""
    writer = RowWriter(path, group)
    for lo in range(0, n, 37):  # written in uneven pieces: the writer cuts the groups
        idx = np.arange(lo, min(lo + 37, n))
        writer.write(idx % 7, idx % 5, idx.astype(np.float32), np.ones(len(idx), np.float32))
    writer.close()
    return path


CATALOGUE = Catalogue(FeatureSpec(7, 5), {})


def _labels(batches):
    return [b[1].astype(np.int64) for b in batches]


def test_the_writer_cuts_row_groups_of_the_declared_size(tmp_path):
    meta = pq.ParquetFile(_file(tmp_path / "rows.parquet")).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [GROUP] * 10 + [50]


def test_a_stream_holds_at_most_its_buffer_and_yields_every_row_once_per_epoch(tmp_path):
    stream = RowGroupStream(_file(tmp_path / "rows.parquet"), CATALOGUE, buffer=3)
    epochs = [_labels(stream.batches(epoch, 64, seed=5)) for epoch in range(2)]
    assert stream.most_held == 3  # never more row groups in memory than the buffer
    for batches in epochs:
        assert [len(b) for b in batches] == [64] * (N // 64) + [N % 64]  # batches span windows: none short inside
        assert sorted(np.concatenate(batches).tolist()) == list(range(N))
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))  # reshuffled every epoch
    # shuffled across the window's row groups, not only within one: a batch mixes groups
    assert len(np.unique(epochs[0][0] // GROUP)) > 1
    again = RowGroupStream(tmp_path / "rows.parquet", CATALOGUE, buffer=3)
    assert all(np.array_equal(a, b) for a, b in zip(epochs[0], _labels(again.batches(0, 64, seed=5))))
    other = _labels(RowGroupStream(tmp_path / "rows.parquet", CATALOGUE, buffer=3).batches(0, 64, seed=6))
    assert not np.array_equal(np.concatenate(other), np.concatenate(epochs[0]))


@pytest.mark.parametrize("start", [1, 7, 16])
def test_a_resumed_stream_replays_the_same_batches_and_skips_unread_windows(tmp_path, start):
    path = _file(tmp_path / "rows.parquet")
    full = _labels(RowGroupStream(path, CATALOGUE, buffer=3).batches(1, 64, seed=5))
    resumed = RowGroupStream(path, CATALOGUE, buffer=3)
    tail = _labels(resumed.batches(1, 64, seed=5, start_step=start))
    assert len(tail) == len(full) - start
    assert all(np.array_equal(a, b) for a, b in zip(full[start:], tail))


def test_a_file_that_fits_the_buffer_is_loaded_whole_once(tmp_path):
    path = _file(tmp_path / "rows.parquet")
    assert not RowGroupStream(path, CATALOGUE, 10).whole
    rows = RowGroupStream(path, CATALOGUE, 11)
    epochs = [_labels(rows.batches(epoch, 64, seed=5)) for epoch in range(2)]
    assert rows.whole and rows.most_held == 11
    for whole in epochs:
        assert sorted(np.concatenate(whole).tolist()) == list(range(N))
    # one permutation of all rows: the first batch draws from across the file
    assert np.ptp(epochs[0][0]) > N // 2


def test_each_worker_gets_its_own_equal_shard_of_the_kept_rows(world_dir, tmp_path):
    config = ModelConfig()
    config.training.max_train_examples = 10_001  # the most recent rows; 10,001 is odd: one row is cut
    one = prepare(world_dir, config, tmp_path / "one")
    two = prepare(world_dir, config, tmp_path / "two", workers=2)
    assert [p.name for p in two.train.files] == [shard_name(0, 2), shard_name(1, 2)] == [train_file(r, 2) for r in (0, 1)]
    assert len(one.train) == len(two.train) == 10_001 and one.n_train_available == two.n_train_available > 10_001
    assert one.spec == two.spec  # vocabularies and statistics from the same kept rows
    single = np.stack(read_columns(pq.read_table(one.train.files[0])), axis=1)
    for rank, path in enumerate(two.train.files):
        shard = np.stack(read_columns(pq.read_table(path)), axis=1)
        assert len(shard) == 5_000  # equal lengths: both workers take the same number of steps
        np.testing.assert_array_equal(shard, single[rank:10_000:2])  # dealt round-robin, nothing shared


def test_rows_cut_by_the_cap_are_never_labelled_and_the_kept_ones_are_the_uncapped_passs_last(world_dir, tmp_path,
                                                                                             monkeypatch):
    from cambrian.trainer import data as data_module

    labelled = []
    real = data_module._reward_values
    monkeypatch.setattr(data_module, "_reward_values",
                        lambda df, *a, **k: labelled.append(len(df)) or real(df, *a, **k))
    uncapped = ModelConfig()
    uncapped.training.max_train_examples = None
    everything = prepare(world_dir, uncapped, tmp_path / "all")
    assert sum(labelled) == everything.n_train_available + len(everything.val)
    labelled.clear()
    capped = uncapped.model_copy(deep=True)
    capped.training.max_train_examples = 10_001
    kept = prepare(world_dir, capped, tmp_path / "capped")
    assert sum(labelled) == 10_001 + len(kept.val) < everything.n_train_available  # the cut rows: not one
    rows = np.stack(read_columns(pq.read_table(kept.train.files[0])), axis=1)
    all_rows = np.stack(read_columns(pq.read_table(everything.train.files[0])), axis=1)
    np.testing.assert_array_equal(rows, all_rows[-10_001:])
    np.testing.assert_array_equal(kept.val.label, everything.val.label)
    np.testing.assert_array_equal(kept.val.features["user"], everything.val.features["user"])


def _metrics(config, data, train_rows):
    data.train = train_rows
    threads = torch.get_num_threads()
    torch.set_num_threads(config.training.cpu_threads)  # as the contained trainer does: one thread is fastest here
    try:
        model, _ = fit(config, data, torch.device("cpu"))
        return evaluate(config, predict(model, data.val, torch.device("cpu")), data.val)
    finally:
        torch.set_num_threads(threads)


def test_rows_held_in_memory_train_in_the_order_of_a_stream_that_fits_its_buffer(tmp_path):
    """bench/fidelity trains in process on load_dataset's Split; the loop's contained trainer streams the same file.
    Both must see the same batches, or the benchmark measures another model than the loop trains (before: another
    permutation stream, and the same config on the same world gave top_watch_share 0.093 in process, 0.078 in the loop)."""
    from cambrian.trainer.splits import Split

    path = _file(tmp_path / "rows.parquet")
    user, item, label, weight = read_columns(pq.read_table(path))
    held = Split(CATALOGUE.features(user, item), label, weight, None)
    stream = RowGroupStream(path, CATALOGUE, 11)
    assert stream.whole
    for epoch in range(2):
        a, b = _labels(held.batches(epoch, 64, seed=5)), _labels(stream.batches(epoch, 64, seed=5))
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    resumed = _labels(held.batches(1, 64, seed=5, start_step=7))
    assert all(np.array_equal(x, y) for x, y in zip(resumed, _labels(stream.batches(1, 64, seed=5))[7:]))


FEATURED = Catalogue(
    FeatureSpec(7, 5, (Categorical("topic", "items.topic", "item", (3, 4, 5)),),
                (Numeric("price", "items.price", "item", 1.0, 2.0), Numeric("age", "users.age", "user", 0.0, 1.0))),
    {"topic": np.array([1, 2, 3, 0, 2]), "price": np.linspace(-1, 1, 5, dtype=np.float32),
     "age": np.linspace(0, 3, 7, dtype=np.float32)})


def _same_batches(on_host, on_device) -> int:
    """Asserts that two iterators of batches hold equal values (numpy on one side, tensors on the other)."""
    count = 0
    for (features, label, weight), (t_features, t_label, t_weight) in zip(on_host, on_device, strict=True):
        assert isinstance(t_label, torch.Tensor) and set(features) == set(t_features)
        for name, values in features.items():
            np.testing.assert_array_equal(values, t_features[name].cpu().numpy())
        np.testing.assert_array_equal(label, t_label.cpu().numpy())
        np.testing.assert_array_equal(weight, t_weight.cpu().numpy())
        count += 1
    return count


# CUDA too where this runs on a GPU machine (collected, never skipped: CI has no GPU and skips nothing)
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("buffer", [3, 11])  # streamed in windows (batches spanning two) and loaded whole
def test_batches_cut_on_the_device_are_the_host_batches(tmp_path, buffer, device):
    """fit cuts every batch on its device (features looked up in the catalogue's copy there, no host copy per
    step): the same rows in the same order, features included, for a stream, the rows held whole and a resume."""
    from cambrian.trainer.splits import Split

    path = _file(tmp_path / "rows.parquet")
    stream = RowGroupStream(path, FEATURED, buffer)
    on = torch.device(device)
    features, label, _ = next(stream.batches(0, 64, 5, 0, on))
    assert label.device.type == device and all(v.device.type == device for v in features.values())
    for epoch, start in ((0, 0), (1, 0), (1, 9)):
        n = _same_batches(stream.batches(epoch, 64, 5, start), stream.batches(epoch, 64, 5, start, on))
        assert n == -(-N // 64) - start
    user, item, label, weight = read_columns(pq.read_table(path))
    held = Split(FEATURED.features(user, item), label, weight, None)
    assert _same_batches(held.batches(1, 64, 5, 3), held.batches(1, 64, 5, 3, on)) == -(-N // 64) - 3


def test_streamed_training_reaches_the_whole_loads_metrics_within_the_seed_noise(world_dir, tmp_path, monkeypatch):
    """Same data and seed: the rows streamed through a buffer of 2 row groups of 4,096 (the file has 15) against
    the rows loaded whole, within the distance between two seeds of the whole load."""
    from cambrian.trainer import rows

    monkeypatch.setattr(rows, "ROW_GROUP_ROWS", 4_096)
    config = ModelConfig()
    config.training.epochs = 2
    config.training.max_train_examples = 60_000
    data = prepare(world_dir, config, tmp_path)
    path = data.train.files[0]
    assert pq.ParquetFile(path).metadata.num_row_groups > 2
    streamed = _metrics(config, data, RowGroupStream(path, data.catalogue, 2))
    whole = _metrics(config, data, RowGroupStream(path, data.catalogue, 10_000))
    reseeded_config = config.model_copy(deep=True)
    reseeded_config.training.seed = 1
    reseeded = _metrics(reseeded_config, data, RowGroupStream(path, data.catalogue, 10_000))
    assert set(streamed) == set(whole)
    for metric in ("val_loss", "auc"):
        noise = abs(whole[metric] - reseeded[metric])
        assert abs(streamed[metric] - whole[metric]) <= max(2 * noise, 0.005), metric
    assert streamed["auc"] > 0.6


def test_load_dataset_reads_back_the_rows_prepare_wrote(world_dir, tmp_path):
    config = ModelConfig()
    data = load_dataset(world_dir, config)
    written = prepare(world_dir, config, tmp_path)
    user, item, label, weight = read_columns(pq.read_table(written.train.files[0]))
    np.testing.assert_array_equal(data.train.features["user"], user)
    np.testing.assert_array_equal(data.train.label, label)
    assert len(data.val) == len(written.val) > 0 and data.spec == written.spec


def test_read_columns_reads_chunks_and_slices_as_arrow_does():
    """read_columns reads Arrow's buffers itself (to_numpy would import pandas): several chunks, a sliced chunk
    (an offset into its buffer) and an empty table give what pyarrow gives; a missing value is refused."""
    import pyarrow as pa

    from cambrian.trainer.rows import COLUMNS

    def table(lo, hi):
        idx = np.arange(lo, hi)
        return pa.table([pa.array(idx), pa.array(idx * 3), pa.array(idx / 2, pa.float32()),
                         pa.array(np.ones(len(idx)), pa.float32())], schema=COLUMNS)

    chunked = pa.concat_tables([table(0, 10), table(10, 25).slice(3, 9), table(40, 41)])
    for t in (chunked, chunked.slice(5, 12), table(0, 0), table(0, 7).combine_chunks(),
              pa.concat_tables([table(0, 0), table(0, 3)])):  # an empty chunk first
        got = read_columns(t)
        for name, column in zip(COLUMNS.names, got):
            np.testing.assert_array_equal(column, t.column(name).to_numpy())
            assert column.dtype == t.column(name).to_numpy().dtype
    with pytest.raises(ValueError, match="column label has missing values"):
        read_columns(pa.table([pa.array([1]), pa.array([2]), pa.array([None], pa.float32()),
                               pa.array([1.0], pa.float32())], schema=COLUMNS))
