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
from analysis.quantify import quantify_study


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


def test_bad_images_are_listed_and_the_rest_quantified(damaged: Path, tmp_path: Path) -> None:
    before = digest(damaged)
    m = quantify_study(damaged / "samples.csv", tmp_path / "out", workers=2, progress=False)
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert len(failures) == 4 and len(m) == 26
    reasons = " | ".join(failures.reason)
    assert "truncated or corrupt" in reasons
    assert "is blank: every pixel is 0" in reasons
    assert "is saturated: 25.0% of pixels at 65535" in reasons
    assert "microglia_channel is 1 but the image has 1 channel(s)" in reasons
    assert not set(failures.image_id) & set(m.image_id)
    assert digest(damaged) == before  # raw data are never modified


def test_strict_fails_naming_every_file(damaged: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        quantify_study(damaged / "samples.csv", tmp_path / "out", workers=1, progress=False, strict=True)
    assert len(exc.value.problems) == 4 and "truncated" in str(exc.value)
    res = subprocess.run([sys.executable, "-m", "analysis", "-q", "quantify", "--samples", str(damaged / "samples.csv"),
                          "--out", str(tmp_path / "cli"), "--strict", "--workers", "1"], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "saturated" in res.stderr


def test_changed_raw_file_is_reported(small_study: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(small_study, raw)
    quantify_study(raw / "samples.csv", tmp_path / "out", workers=2, progress=False)
    manifest = pd.read_csv(tmp_path / "out" / "raw_manifest.csv")
    assert len(manifest) == len(digest(raw))
    victim = sorted((raw / "images").iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    (raw / "truth" / sorted(p.name for p in (raw / "truth").iterdir())[0]).unlink()
    with pytest.raises(InputError) as exc:
        quantify_study(raw / "samples.csv", tmp_path / "out", workers=2, progress=False)
    msg = str(exc.value)
    assert victim.name in msg and "changed since the manifest was written" in msg
    assert "missing since the manifest was written" in msg and "delete" in msg
