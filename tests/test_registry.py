"""The readout registry: a new readout is one module plus one registry entry.

The toy readout below ("blobs": bright pixels of a ``blob_channel``) touches nothing but its
own function and its :func:`analysis.pipeline.registry.register` call; the sheet accepts its
channel role, ``quantify_study`` runs it, stores its row and its per-object table, writes
``blobs.parquet``, and its source enters the cache key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from analysis.errors import SampleSheetError
from analysis.io import load_samples
from analysis.pipeline import cache, registry
from analysis.pipeline.quantify import QuantifyParams, measure_image, quantify_study
from analysis.pipeline.registry import Measured, Readout

THRESHOLD = 1000.0


def measure_blobs(channels, pixel_size_um, *, z_step_um, params, upstream, seed, quality) -> Measured:
    """Toy readout: pixels above a threshold, and their positions as a per-object table."""
    img = channels["blob_channel"]
    ys, xs = np.nonzero(img > params.get("threshold", THRESHOLD))
    area_um2 = img.size * pixel_size_um**2
    return Measured(row={"n_blobs": int(len(ys)), "blob_density_per_100um2": 100.0 * len(ys) / area_um2},
                    tables={"blobs": pd.DataFrame({"y": ys.astype(float), "x": xs.astype(float)})})


@pytest.fixture()
def toy() -> Iterator[Readout]:
    entry = registry.register(Readout(name="blobs", roles=("blob_channel",), measure=measure_blobs,
                                      modules=(__name__,), notebook=None, description="blob channel"))
    yield entry
    registry.unregister("blobs")


def _study(folder: Path, blobs_per_image: list[int], *, with_synapse: bool = False) -> Path:
    """Images with a blob channel (channel 1) holding a known number of bright pixels."""
    rng = np.random.default_rng(0)
    rows = []
    for i, n in enumerate(blobs_per_image):
        img = rng.normal(100, 5, (2, 64, 64)).clip(0).astype(np.uint16)
        flat = rng.choice(64 * 64, n, replace=False)
        img[1].flat[flat] = 3000
        tifffile.imwrite(folder / f"img{i}.ome.tif", img, ome=True, photometric="minisblack",
                         metadata={"axes": "CYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
        rows.append({"image_id": f"img{i}", "path": f"img{i}.ome.tif", "animal_id": f"m{i % 2}", "genotype": "WT",
                     "compound": "vehicle" if i % 2 == 0 else "diazepam", "dose_mg_kg": 0 if i % 2 == 0 else 5,
                     "treatment_days": 7, "day": 7, "pixel_size_um": 0.2,
                     "synapse_channel": 0 if with_synapse else "", "microglia_channel": "", "lysosome_channel": "",
                     "blob_channel": 1})
    sheet = folder / "samples.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    return sheet


def test_toy_readout_runs_through_quantify(toy: Readout, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    counts = [3, 7, 0, 12]
    sheet = _study(raw, counts)
    m = quantify_study(sheet, tmp_path / "out", workers=1, progress=False)
    assert m["n_blobs"].tolist() == counts
    assert np.allclose(m["blob_density_per_100um2"], [100.0 * n / (64 * 64 * 0.04) for n in counts])
    assert "n_puncta" not in m  # no synapse channel: the puncta readout did not run
    blobs = pd.read_parquet(tmp_path / "out" / "blobs.parquet")
    assert blobs.groupby("image_id").size().reindex(m["image_id"], fill_value=0).tolist() == counts
    assert list(blobs.columns) == ["image_id", "y", "x"]
    # a rerun is served from the cache, tables identical
    again = quantify_study(sheet, tmp_path / "out", workers=1, progress=False)
    pd.testing.assert_frame_equal(again, m)


def test_toy_readout_beside_the_built_in_ones(toy: Readout, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    sheet = _study(raw, [5, 9], with_synapse=True)
    m = quantify_study(sheet, tmp_path / "out", workers=1, progress=False,
                       params=QuantifyParams(quality={"spike_in": False}))
    assert m["n_blobs"].tolist() == [5, 9] and "n_puncta" in m
    # its parameters come from QuantifyParams.readouts
    img = tifffile.imread(raw / "img0.ome.tif")
    row, tables = measure_image(img[:, None], 0.2, {"blob_channel": 1},
                                params=QuantifyParams(readouts={"blobs": {"threshold": 5000.0}}))
    assert row["n_blobs"] == 0 and tables["blobs"].empty


def test_the_sheet_validates_a_registered_role(toy: Readout, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    sheet = _study(raw, [1, 2])
    assert load_samples(sheet)["blob_channel"].tolist() == [1, 1]
    bad = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    bad.loc[1, "blob_channel"] = "x"
    bad.to_csv(sheet, index=False)
    with pytest.raises(SampleSheetError, match="blob_channel"):
        load_samples(sheet)


def test_the_cache_key_covers_a_registered_readout(tmp_path: Path) -> None:
    before = cache.code_digest()
    registry.register(Readout(name="blobs", roles=("blob_channel",), measure=measure_blobs, modules=(__name__,)))
    try:
        assert __name__ in registry.code_modules()
        assert cache.code_digest() != before
    finally:
        registry.unregister("blobs")
    assert cache.code_digest() == before


def test_registry_derives_roles_and_notebooks(toy: Readout) -> None:
    assert registry.channel_roles()[:3] == ("synapse_channel", "microglia_channel", "lysosome_channel")
    assert "blob_channel" in registry.channel_roles()
    sheet = pd.DataFrame({"synapse_channel": [0, np.nan], "microglia_channel": [np.nan, np.nan],
                          "lysosome_channel": [np.nan, np.nan]})
    run, skipped = registry.notebooks_for(sheet)
    assert run == ["02_synapse_dose_duration.ipynb"]
    assert [nb for nb, _ in skipped] == ["03_microglia.ipynb", "05_spines.ipynb"]
    assert "microglia_channel" in skipped[0][1]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Readout(name="blobs", roles=("blob_channel",), measure=measure_blobs))
    with pytest.raises(ValueError, match="needs"):
        registry.register(Readout(name="x", roles=("x_channel",), measure=measure_blobs, needs=("nothing",)))


def test_the_cache_key_follows_the_helpers_a_readout_imports() -> None:
    # (before session 57 only the modules a readout named entered the key: an edit of
    # analysis.measure.outside or .stripes, which change every detection of the puncta readout,
    # reused stale cached rows)
    import analysis.pipeline.readouts  # noqa: F401  (registers the built-in readouts)

    modules = registry.code_modules()
    for helper in ("analysis.measure.outside", "analysis.measure.stripes", "analysis.measure.hotpixels",
                   "analysis.measure.filters"):
        assert helper in modules, helper
    assert not [m for m in modules if m.startswith(("analysis.stats", "analysis.report", "analysis.sim"))]
    assert len(set(modules)) == len(modules)
