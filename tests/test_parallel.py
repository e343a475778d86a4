"""The dask path (a cluster, reached by its address) gives the same tables as the in-process path."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis.cli import build_parser
from analysis.pipeline.quantify import _local_cluster, quantify_study
from test_cache import subset_study, tables


def test_cluster_gives_the_tables_of_the_in_process_run(small_study: Path, tmp_path: Path) -> None:
    # the smallest study that still compares both paths on every table: one synapse field and
    # one terminal field (puncta, cells, engulfment), one image per worker
    raw = subset_study(small_study, tmp_path / "raw", n_synapse=1, n_terminal=1)
    serial = quantify_study(raw / "samples.csv", tmp_path / "serial", workers=1, progress=False)
    with _local_cluster(2) as cluster:
        parallel = quantify_study(raw / "samples.csv", tmp_path / "dask", scheduler=cluster.scheduler_address,
                                  progress=False)
        assert len(cluster.workers) == 2
    pd.testing.assert_frame_equal(serial, parallel)
    for a, b in zip(tables(tmp_path / "serial"), tables(tmp_path / "dask"), strict=True):
        pd.testing.assert_frame_equal(a, b)
    a, b = (pd.read_parquet(tmp_path / run / "puncta.parquet") for run in ("serial", "dask"))
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b, obj="puncta")
    assert serial["microglia_count"].sum() > 0  # the terminal image's cells are in the comparison
    assert len(list((tmp_path / "dask" / "cache").rglob("*.parquet"))) == 2  # written by the workers


def _worker_environ() -> tuple[str | None, str | None]:
    import os

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OPENBLAS_NUM_THREADS")


def test_local_workers_keep_the_default_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    """dask's MALLOC_TRIM_THRESHOLD_ (1.5x slower numpy work here) is not set in our workers; its
    one-thread-per-library settings are kept (no oversubscription of the cores)."""
    from distributed import Client

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with _local_cluster(1) as cluster, Client(cluster, set_as_default=False) as client:
        seen = list(client.run(_worker_environ).values())
    assert seen == [(None, "1")]


def test_cli_options() -> None:
    args = build_parser().parse_args(["quantify", "--scheduler", "tcp://10.0.0.5:8786", "--no-cache"])
    assert args.scheduler == "tcp://10.0.0.5:8786" and args.no_cache
    args = build_parser().parse_args(["quantify"])
    assert args.scheduler is None and not args.no_cache and args.workers is None


def test_unreachable_scheduler_is_a_clear_error() -> None:
    from analysis.errors import InputError
    from analysis.pipeline.quantify import _connect

    address = "tcp://127.0.0.1:1"  # nothing listens on port 1
    with pytest.raises(InputError) as exc:
        _connect(address, timeout="1s").close()
    assert address in str(exc.value) and "--scheduler" in str(exc.value)
