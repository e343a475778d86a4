"""Bad image files are recorded and skipped (or fail the run with --strict); raw data never change."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from analysis.errors import InputError
from analysis.pipeline.quantify import quantify_study


def with_session_cache(small_quantified: Path, out: Path) -> Path:
    """``out`` with a copy of the session quantification's per-image cache: images whose file and
    channel roles are unchanged are served from it, so only the damaged ones are read here (the
    quantification itself is tested on the session's run)."""
    shutil.copytree(small_quantified / "cache", out / "cache")
    return out


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def damaged(small_study: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(small_study, raw)
    sheet = pd.read_csv(raw / "samples.csv", dtype=str, keep_default_na=False)
    syn = sheet[sheet.microglia_channel == ""].path.tolist()
    # 1: truncated file
    p = raw / syn[0]
    p.write_bytes(p.read_bytes()[:5000])
    # 2: blank image; 3: saturated image (same metadata, new pixels)
    saturated = np.random.default_rng(0).integers(100, 200, (256, 256)).astype(np.uint16)
    saturated[:64] = 65535
    for rel, pixels in ((syn[1], np.zeros((256, 256), np.uint16)), (syn[2], saturated)):
        tifffile.imwrite(raw / rel, pixels, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1})
    # 4: a channel the file does not have
    sheet.loc[sheet.path == syn[3], "microglia_channel"] = "1"
    sheet.to_csv(raw / "samples.csv", index=False)
    return raw


def test_bad_images_are_listed_and_the_rest_quantified(damaged: Path, small_quantified: Path, tmp_path: Path) -> None:
    before = digest(damaged)
    out = with_session_cache(small_quantified, tmp_path / "out")
    m = quantify_study(damaged / "samples.csv", out, workers=2, progress=False)
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert len(failures) == 4 and len(m) == 26
    reasons = " | ".join(failures.reason)
    assert "truncated or corrupt" in reasons
    assert "is blank: every pixel is 0" in reasons
    assert "is saturated: 25.0% of pixels at 65535" in reasons
    assert "microglia_channel is 1 but the image has 1 channel(s)" in reasons
    assert not set(failures.image_id) & set(m.image_id)
    assert digest(damaged) == before  # raw data are never modified


def test_strict_fails_naming_every_file(damaged: Path, small_quantified: Path, tmp_path: Path) -> None:
    out = with_session_cache(small_quantified, tmp_path / "out")
    with pytest.raises(InputError) as exc:
        quantify_study(damaged / "samples.csv", out, workers=1, progress=False, strict=True)
    assert len(exc.value.problems) == 4 and "truncated" in str(exc.value)
    cli = with_session_cache(small_quantified, tmp_path / "cli")
    res = subprocess.run([sys.executable, "-m", "analysis", "-q", "quantify", "--samples", str(damaged / "samples.csv"),
                          "--out", str(cli), "--strict", "--workers", "1"], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "saturated" in res.stderr


def test_changed_raw_file_is_reported(small_study: Path, small_quantified: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(small_study, raw)
    quantify_study(raw / "samples.csv", with_session_cache(small_quantified, tmp_path / "out"), workers=2,
                   progress=False)
    manifest = pd.read_csv(tmp_path / "out" / "raw_manifest.csv")
    sheet = pd.read_csv(raw / "samples.csv", dtype=str, keep_default_na=False)
    # the inputs are the images the sheet lists and the sheet (ground truth, notes are not)
    assert manifest.path.tolist() == [*sheet.path, "samples.csv"]
    assert manifest.kind.tolist() == ["image"] * len(sheet) + ["sample sheet"]
    files = digest(raw)
    assert manifest.sha256.tolist() == [files[p] for p in manifest.path]
    assert manifest.bytes.tolist() == [(raw / p).stat().st_size for p in manifest.path]
    victim, gone = raw / sheet.path[0], raw / sheet.path[1]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    gone.unlink()
    (raw / "truth" / sorted(p.name for p in (raw / "truth").iterdir())[0]).unlink()  # not an input
    with pytest.raises(InputError) as exc:
        quantify_study(raw / "samples.csv", tmp_path / "out", workers=2, progress=False)
    assert len(exc.value.problems) == 2
    first, second = (str(p) for p in exc.value.problems)
    assert victim.name in first and "changed since the manifest was written" in first and "delete" in first
    assert gone.name in second and "missing since the manifest was written" in second


@pytest.mark.parametrize(("per_worker", "available", "cores", "expected"), [
    (2e9, 5e9, 8, 2),  # memory-bound: 5 GB / 2 GB
    (2e9, 1e9, 8, 1),  # less than one worker's need: still one
    (1e6, 5e9, 4, 4),  # core-bound
    (3e9, 9e9, 2, 2),  # exactly three fit, two cores
    (4e9, 1.2e10, 16, 3),
])
def test_default_workers_from_memory(per_worker: float, available: float, cores: int, expected: int) -> None:
    from analysis.pipeline.quantify import default_workers

    assert default_workers(per_worker, available_bytes=int(available), cores=cores) == expected


def test_worker_memory_estimate_uses_the_largest_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from analysis.pipeline import quantify

    small, large = tmp_path / "small.tif", tmp_path / "large.tif"
    tifffile.imwrite(small, np.ones((64, 64), np.uint16))
    tifffile.imwrite(large, np.ones((2, 256, 256), np.uint16), compression="zlib")  # compressed: decoded size counts
    per_worker, largest = quantify.worker_memory_estimate([str(small), str(large), str(tmp_path / "absent.tif")])
    assert largest == str(large)
    # (a 3-D TIFF without axes metadata is read as a z-stack of 2 planes)
    factor = quantify.WORKER_STACK_MEMORY_FACTOR if quantify.image_info(large).n_z > 1 else quantify.WORKER_MEMORY_FACTOR
    assert per_worker == quantify.WORKER_BASE_BYTES + factor * 2 * 256 * 256 * 2
    # a z-stack needs more per byte (3-D detection): a smaller stack can be the image that needs the most
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.ones((40, 64, 64), np.uint16), imagej=True, metadata={"axes": "ZYX"})
    assert quantify.image_info(stack).n_z == 40
    per_worker, largest = quantify.worker_memory_estimate([str(small), str(large), str(stack)])
    assert largest == str(stack)
    assert per_worker == quantify.WORKER_BASE_BYTES + quantify.WORKER_STACK_MEMORY_FACTOR * 40 * 64 * 64 * 2
    # quantify_study logs its choice when the caller leaves the worker count open
    with caplog.at_level(logging.INFO, logger="analysis.pipeline.quantify"):
        assert quantify.default_workers(per_worker) >= 1
    assert quantify._available_memory() is None or quantify._available_memory() > 0
