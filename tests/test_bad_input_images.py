"""Bad pixels and unusual images: each is measured correctly or lands in failures.csv with a reason.

Every case is a two-image sheet: a reference field with six bright, well separated puncta
(known answer: 6 puncta in 96 x 96 pixels of 0.1 um, 6.5104 per 100 um^2) and the case's
image.  An accepted image must give its known numbers, a rejected one exactly one row of
``failures.csv`` with the words that name the channel role and the fix; either way the
reference keeps the numbers it has alone, and the run never aborts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile

import analysis.measure.puncta
from analysis.pipeline import quantify
from analysis.errors import InputError
from analysis.pipeline.quantify import QuantifyParams, quantify_study

PX = 0.1
N = 96
SPOTS = ((20, 20), (20, 70), (50, 45), (75, 20), (75, 75), (48, 80))
#: Fast settings (no spike-in): the numbers under test do not depend on it.
PARAMS = QuantifyParams(quality={"spike_in": False})
REF_DENSITY = 6 / (N * N * PX * PX) * 100  # 6.5104... puncta / 100 um^2


def spots(n: int = N, centres: tuple[tuple[int, int], ...] = SPOTS, amp: float = 400.0, bg: float = 100.0,
          seed: int = 0) -> np.ndarray:
    """A field of Gaussian puncta (sigma 1.5 px) on a flat background with Gaussian noise (SD 5)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    img = np.full((n, n), bg)
    for y, x in centres:
        img += amp * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))
    return img + rng.normal(0, 5.0, img.shape)


def with_hot_pixels(img: np.ndarray, n: int, spike: float, seed: int = 9) -> np.ndarray:
    """``img`` with ``n`` single-pixel spikes at least 8 px from every punctum and the edge and
    3 px from each other (isolated defects, as a camera's hot pixels are)."""
    rng = np.random.default_rng(seed)
    out = img.copy()
    placed: list[tuple[int, int]] = []
    while len(placed) < n:
        y, x = rng.integers(8, img.shape[0] - 8, 2)
        if (min(np.hypot(y - cy, x - cx) for cy, cx in SPOTS) >= 8
                and all(np.hypot(y - py, x - px) >= 3 for py, px in placed)):
            out[y, x] += spike
            placed.append((int(y), int(x)))
    return out


def write_tif(path: Path, pixels: np.ndarray, axes: str, px: float | None = PX, dz: float | None = None) -> None:
    """OME-TIFF with the pixel size (and z step) in its metadata; plain TIFF without metadata when px is None."""
    if px is None:
        tifffile.imwrite(path, pixels)
        return
    meta: dict[str, Any] = {"axes": axes, "PhysicalSizeX": px, "PhysicalSizeY": px}
    if dz is not None:
        meta["PhysicalSizeZ"] = dz
    tifffile.imwrite(path, pixels, ome=True, metadata=meta)


def sheet_row(image_id: str, path: str, **extra: Any) -> dict[str, Any]:
    row = {"image_id": image_id, "path": path, "animal_id": f"A{image_id}", "genotype": "wt", "compound": "vehicle",
           "dose_mg_kg": 0, "treatment_days": 7, "day": 7, "pixel_size_um": PX, "synapse_channel": 0,
           "microglia_channel": "", "lysosome_channel": ""}
    row.update(extra)
    return row


def write_sheet(folder: Path, rows: list[dict[str, Any]]) -> Path:
    sheet = folder / "samples.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    return sheet


@dataclass
class Case:
    """One image next to the reference: how it is made and what must come out."""

    pixels: Callable[[], np.ndarray]
    axes: str = "YX"
    roles: dict[str, Any] = field(default_factory=dict)  # sheet overrides (channel roles, pixel size, z step)
    px: float | None = PX  # pixel size in the file's metadata (None: plain TIFF, no metadata)
    dz: float | None = None  # z step in the file's metadata
    reason: tuple[str, ...] = ()  # rejected: words of the failure reason
    expect: dict[str, float] = field(default_factory=dict)  # accepted: readouts of the row


def with_nan(n: int = 100, value: float = np.nan, extra: tuple[int, float] | None = None) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        img = spots().astype(np.float32)
        flat = img.reshape(-1)
        flat[np.random.default_rng(1).choice(flat.size, n, replace=False)] = value
        if extra is not None:
            flat[np.random.default_rng(2).choice(np.flatnonzero(np.isfinite(flat)), extra[0], replace=False)] = extra[1]
        return img
    return make


def two_channels(second: Callable[[], np.ndarray], first: Callable[[], np.ndarray] = spots,
                 dtype: Any = np.float32) -> Callable[[], np.ndarray]:
    return lambda: np.stack([first(), second()]).astype(dtype)


def saturated(dtype: Any, fraction: float, top: int | None = None) -> Callable[[], np.ndarray]:
    """The spots field with ``fraction`` of its pixels at ``top`` (default: the dtype's maximum)."""
    full = top

    def make() -> np.ndarray:
        top = np.iinfo(dtype).max if full is None else full
        img = np.clip(spots() / (4 if dtype == np.uint8 else 1), 0, top - 1).astype(dtype)
        flat = img.reshape(-1)
        flat[np.random.default_rng(3).choice(flat.size, round(fraction * flat.size), replace=False)] = top
        return img
    return make


def stack(nz: int = 3, nan_plane: int | None = None) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        planes = [spots(seed=z) * (1.0 if z == nz // 2 else 0.3) + (70 if z != nz // 2 else 0) for z in range(nz)]
        img = np.stack(planes).astype(np.float32 if nan_plane is not None else np.uint16)
        if nan_plane is not None:
            img[nan_plane, 10:20, 10:20] = np.nan
        return img
    return make


SIX = {"n_puncta": 6, "analysed_area_um2": N * N * PX * PX, "puncta_density_per_100um2": REF_DENSITY}

CASES: dict[str, Case] = {
    # --- rejected: NaN / inf in a used channel --------------------------------------------
    "nan-100-synapse": Case(with_nan(100), reason=("synapse_channel (channel 0, synapse)", "100 NaN pixel(s) of 9216",
                                                   "Remove NaNs")),
    "inf-5-synapse": Case(with_nan(5, np.inf), reason=("synapse_channel", "5 infinite pixel(s)", "export the raw image")),
    "neg-inf-1-synapse": Case(with_nan(1, -np.inf), reason=("synapse_channel", "1 infinite pixel(s)")),
    "nan-and-inf": Case(with_nan(3, np.nan, extra=(2, np.inf)), reason=("3 NaN and 2 infinite pixel(s)",)),
    "all-nan": Case(lambda: np.full((N, N), np.nan, np.float32), reason=("9216 NaN pixel(s) of 9216",)),
    "nan-100-microglia": Case(two_channels(with_nan(100)), "CYX", {"microglia_channel": 1},
                              reason=("microglia_channel (channel 1, microglia)", "100 NaN")),
    "nan-lysosome": Case(lambda: np.stack([spots(), spots(seed=4), with_nan(7)()]).astype(np.float32), "CYX",
                         {"microglia_channel": 1, "lysosome_channel": 2},
                         reason=("lysosome_channel (channel 2, lysosome)", "7 NaN")),
    "nan-in-one-plane-of-stack": Case(stack(3, nan_plane=2), "ZYX", {"z_step_um": 0.5},
                                      reason=("synapse_channel", "100 NaN pixel(s) of 27648")),
    # --- rejected: blank, constant, saturated ---------------------------------------------
    "all-zero-uint16": Case(lambda: np.zeros((N, N), np.uint16), reason=("synapse_channel (channel 0) is blank",
                                                                          "every pixel is 0", "right channel")),
    "all-zero-float32": Case(lambda: np.zeros((N, N), np.float32), reason=("is blank: every pixel is 0;",)),
    "constant-700": Case(lambda: np.full((N, N), 700, np.uint16), reason=("is blank: every pixel is 700",)),
    "all-negative-float32": Case(lambda: (spots() - spots().max() - 1).astype(np.float32),
                                 reason=("synapse_channel (channel 0) has no positive intensity", "raw intensities")),
    "all-zero-microglia": Case(two_channels(lambda: np.zeros((N, N))), "CYX", {"microglia_channel": 1},
                               reason=("microglia_channel (channel 1) is blank: every pixel is 0",)),
    "saturated-uint8-5pct": Case(saturated(np.uint8, 0.05), reason=("synapse_channel (channel 0) is saturated",
                                                                     "5.0% of pixels at 255", "lower gain")),
    "saturated-uint16-2pct": Case(saturated(np.uint16, 0.02), reason=("is saturated: 2.0% of pixels at 65535",)),
    # a 12-bit camera's data in a uint16 file saturate at 4095
    "saturated-12-bit-in-uint16-2pct": Case(saturated(np.uint16, 0.02, top=4095),
                                           reason=("is saturated: 2.0% of pixels at 4095", "lower gain")),
    # --- rejected: a mask, not intensities (a thresholded export; a 1-bit TIFF reads as bool) -
    "binary-mask-0-255": Case(lambda: np.where(spots() > 250, 255, 0).astype(np.uint8),
                              reason=("synapse_channel (channel 0) holds only two values (0 and 255)", "binary mask",
                                      "export the raw image")),
    "one-bit-tiff": Case(lambda: spots() > 250, reason=("holds only two values (0 and 1)", "1-bit")),
    # --- rejected: too small ---------------------------------------------------------------
    "2x2": Case(lambda: np.array([[1, 2], [3, 4]], np.uint16), reason=("synapse_channel (channel 0)",
                                                                        "2 x 2 pixels, too small",
                                                                        "at least 32 x 32")),
    "31x96": Case(lambda: spots()[:31].astype(np.uint16), reason=("31 x 96 pixels, too small",)),
    "1x256-line": Case(lambda: np.arange(256, dtype=np.uint16)[None], reason=("1 x 256 pixels, too small",)),
    # --- rejected: what the measurement needs is missing -----------------------------------
    "stack-without-z-step": Case(stack(3), "ZYX", reason=("stack without z step", "add z_step_um to the sheet")),
    "channel-beyond-file": Case(spots, roles={"microglia_channel": 1},
                                reason=("microglia_channel is 1 but the image has 1 channel(s)",)),
    "no-pixel-size-anywhere": Case(lambda: spots().astype(np.uint16), px=None, roles={"pixel_size_um": ""},
                                   reason=("no pixel size", "add pixel_size_um to the sheet")),
    # --- accepted, with the numbers they must give -----------------------------------------
    "uint16": Case(lambda: spots().astype(np.uint16), expect=SIX),
    "float32": Case(lambda: spots().astype(np.float32), expect=SIX),
    "uint8": Case(lambda: (spots() / 4).astype(np.uint8), expect=SIX),
    "float32-gain-1e-3": Case(lambda: (spots() * 1e-3).astype(np.float32), expect=SIX),
    "nan-in-unused-channel": Case(two_channels(with_nan(100)), "CYX", expect=SIX),
    "saturated-0.3pct-below-limit": Case(lambda: np.clip(spots(amp=600) / 2, 0, 255).astype(np.uint8),
                                         expect={**SIX, "saturated_fraction": 30 / 9216}),
    "exactly-32x32": Case(lambda: spots(32, ((10, 10), (20, 22))).astype(np.uint16),
                          expect={"n_puncta": 2, "analysed_area_um2": 32 * 32 * PX * PX}),
    "2-d-image-ignores-z-step": Case(lambda: spots().astype(np.uint16), roles={"z_step_um": 0.7}, expect=SIX),
    # a camera's hot pixels (30 single-pixel spikes of 3000 ADU, noise SD 5): not puncta
    "hot-pixels": Case(lambda: with_hot_pixels(spots(), 30, 3000.0).astype(np.uint16), expect=SIX),
    # stacks: the volume inside the axial guard bands (1 plane at either end of the 3; synapse_density)
    "stack-of-2-planes": Case(stack(2), "ZYX", {"z_step_um": 0.5},
                              reason=("synapse_channel (channel 0)", "2 planes", "at least 3 planes", "maximum projection")),
    "stack-z-step-from-sheet": Case(stack(3), "ZYX", {"z_step_um": 0.5},
                                    expect={"analysed_volume_um3": N * N * PX * PX * (3 - 2) * 0.5}),
    "stack-z-step-from-metadata": Case(stack(3), "ZYX", dz=0.5,
                                       expect={"analysed_volume_um3": N * N * PX * PX * (3 - 2) * 0.5}),
    "stack-sheet-z-step-overrides-metadata": Case(stack(3), "ZYX", {"z_step_um": 0.5}, dz=2.0,
                                                  expect={"analysed_volume_um3": N * N * PX * PX * (3 - 2) * 0.5}),
}


def run_case(case: Case, folder: Path, **kwargs: Any) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    write_tif(folder / "ref.tif", spots().astype(np.uint16), "YX")
    write_tif(folder / "x.tif", case.pixels(), case.axes, px=case.px, dz=case.dz)
    rows = [sheet_row("ref", "ref.tif"), sheet_row("x", "x.tif", **case.roles)]
    if any("z_step_um" in r for r in rows):
        for r in rows:
            r.setdefault("z_step_um", "")
    sheet = write_sheet(folder, rows)
    out = folder / "out"
    m = quantify_study(sheet, out, workers=1, progress=False, params=PARAMS, **kwargs)
    return m.set_index("image_id"), pd.read_csv(out / "failures.csv", dtype=str, keep_default_na=False), out


@pytest.mark.parametrize("name", list(CASES))
def test_image_case(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    m, failures, _ = run_case(case, tmp_path)
    # the reference field is measured as if it were alone
    assert m.loc["ref", "n_puncta"] == 6
    assert m.loc["ref", "puncta_density_per_100um2"] == pytest.approx(REF_DENSITY, rel=1e-12)
    if case.reason:
        assert failures.image_id.tolist() == ["x"] and failures.path.tolist() == ["x.tif"]
        for words in case.reason:
            assert words in failures.reason[0]
        assert "x" not in m.index
    else:
        assert failures.empty and "x" in m.index
        for col, value in case.expect.items():
            assert m.loc["x", col] == pytest.approx(value, rel=1e-9), col


def test_stack_z_step_from_sheet_and_metadata_agree(tmp_path: Path) -> None:
    rows = {}
    for name in ("stack-z-step-from-sheet", "stack-z-step-from-metadata", "stack-sheet-z-step-overrides-metadata"):
        m, failures, _ = run_case(CASES[name], tmp_path / name)
        assert failures.empty
        rows[name] = m.loc["x"]
    a, b, c = rows.values()
    for col in ("n_puncta", "analysed_volume_um3", "puncta_density_per_um3"):
        assert a[col] == b[col] == c[col], col
    assert a["n_puncta"] > 0 and np.isnan(a.get("puncta_density_per_100um2", np.nan))


def test_nan_image_does_not_change_the_other_images(tmp_path: Path) -> None:
    alone_dir, mixed_dir = tmp_path / "alone", tmp_path / "mixed"
    alone_dir.mkdir()
    write_tif(alone_dir / "ref.tif", spots().astype(np.uint16), "YX")
    alone = quantify_study(write_sheet(alone_dir, [sheet_row("ref", "ref.tif")]), alone_dir / "out", workers=1,
                           progress=False, params=PARAMS)
    mixed, failures, _ = run_case(CASES["nan-100-synapse"], mixed_dir)
    pd.testing.assert_series_equal(alone.set_index("image_id").loc["ref"], mixed.loc["ref"])
    assert failures.image_id.tolist() == ["x"]


# --- files that are not images, or not where they seem ------------------------------------

def _link_to_passwd(folder: Path) -> tuple[str, ...]:
    (folder / "x.tif").symlink_to("/etc/passwd")
    head = Path("/etc/passwd").read_bytes()[:4]
    return (repr(head), "/etc/passwd", "root:")


def _link_outside(folder: Path) -> tuple[str, ...]:
    secret = folder.parent / f"{folder.name}-elsewhere" / "token.txt"
    secret.parent.mkdir()
    secret.write_text("SECRETTOKEN=hunter2\n" * 20)
    (folder / "x.tif").symlink_to(secret)
    return ("SECR", "hunter2", str(secret))


def _link_to_dev_zero(folder: Path) -> tuple[str, ...]:
    (folder / "x.tif").symlink_to("/dev/zero")  # endless: never hashed nor read to the end
    return ("/dev/zero", "\\x00")


def _text_file(folder: Path) -> tuple[str, ...]:
    (folder / "x.tif").write_text("SECRET-TOKEN=hunter2\n" * 20)
    return ("SECR", "hunter2")


def _truncated(folder: Path) -> tuple[str, ...]:
    write_tif(folder / "full.tif", spots().astype(np.uint16), "YX")
    (folder / "x.tif").write_bytes((folder / "full.tif").read_bytes()[:3000])
    return ()


def _symlink_loop(folder: Path) -> tuple[str, ...]:
    (folder / "x.tif").symlink_to(folder / "y.tif")
    (folder / "y.tif").symlink_to(folder / "x.tif")
    return ()


def _folder(folder: Path) -> tuple[str, ...]:
    (folder / "x.tif").mkdir()
    return ()


FILE_CASES: dict[str, tuple[Callable[[Path], tuple[str, ...]], tuple[str, ...]]] = {
    "symlink-to-etc-passwd": (_link_to_passwd, ("cannot read", "<file bytes omitted>")),
    "symlink-to-text-outside": (_link_outside, ("cannot read", "<file bytes omitted>")),
    "symlink-to-dev-zero": (_link_to_dev_zero, ("cannot read|not a regular file|not an image",)),
    "text-file-named-tif": (_text_file, ("cannot read", "<file bytes omitted>")),
    "truncated-tiff": (_truncated, ("truncated or corrupt", "export it again")),
    # (io.read_image's own messages; "a|b": either, while the reader's wording is being improved)
    "symlink-loop": (_symlink_loop, ("symbolic link loop|check the path",)),
    "folder-named-tif": (_folder, ("is a folder, not an image file|cannot read",)),
}


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_file_case(name: str, tmp_path: Path) -> None:
    make, words = FILE_CASES[name]
    write_tif(tmp_path / "ref.tif", spots().astype(np.uint16), "YX")
    forbidden = make(tmp_path)
    sheet = write_sheet(tmp_path, [sheet_row("ref", "ref.tif"), sheet_row("x", "x.tif")])
    m = quantify_study(sheet, tmp_path / "out", workers=1, progress=False, params=PARAMS)
    assert m.image_id.tolist() == ["ref"] and m.n_puncta.tolist() == [6]
    text = (tmp_path / "out" / "failures.csv").read_text()
    failures = pd.read_csv(tmp_path / "out" / "failures.csv", dtype=str)
    assert failures.image_id.tolist() == ["x"]
    for w in words:
        assert any(alt in failures.reason[0] for alt in w.split("|")), (w, failures.reason[0])
    outputs = "".join(p.read_text() for p in (tmp_path / "out").glob("*.csv"))
    # the strict run's message (what the command line prints)
    with pytest.raises(InputError) as exc:
        quantify_study(sheet, tmp_path / "strict", workers=1, progress=False, params=PARAMS, strict=True)
    assert "x.tif" in str(exc.value)
    for s in forbidden:  # the file's content is never copied into an output or a message, nor the link's target
        assert s not in text and s not in outputs and s not in str(exc.value), s


def test_unexpected_error_becomes_a_failure_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    real = analysis.measure.puncta.detect_puncta

    def breaks_on_small_fields(image: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        if image.shape[-1] == 64:
            raise RuntimeError("boom in the detector")
        return real(image, *args, **kwargs)

    monkeypatch.setattr(analysis.measure.puncta, "detect_puncta", breaks_on_small_fields)
    case = Case(lambda: spots(64, ((20, 20),)).astype(np.uint16))
    with caplog.at_level(logging.DEBUG, logger="analysis.pipeline.quantify"):
        m, failures, _ = run_case(case, tmp_path)
    assert m.index.tolist() == ["ref"] and m.loc["ref", "n_puncta"] == 6
    assert failures.image_id.tolist() == ["x"]
    assert "measuring failed with RuntimeError: boom in the detector" in failures.reason[0]
    assert "Traceback" in caplog.text and "boom in the detector" in caplog.text  # the traceback at DEBUG


def test_nothing_measured_is_an_error_naming_failures_csv(tmp_path: Path) -> None:
    write_tif(tmp_path / "a.tif", np.zeros((N, N), np.uint16), "YX")
    write_tif(tmp_path / "b.tif", with_nan(100)(), "YX")
    sheet = write_sheet(tmp_path, [sheet_row("a", "a.tif"), sheet_row("b", "b.tif")])
    with pytest.raises(InputError) as exc:
        quantify_study(sheet, tmp_path / "out", workers=1, progress=False, params=PARAMS)
    msg = str(exc.value)
    assert str(tmp_path / "out" / "failures.csv") in msg and "none of the 2 image(s) could be measured" in msg
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")  # written before failing
    assert failures.image_id.tolist() == ["a", "b"]
    assert "blank" in failures.reason[0] and "NaN" in failures.reason[1]
    # the command line: a message naming failures.csv, exit status 2, no traceback
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "analysis", "-q", "quantify", "--samples", str(sheet), "--out",
                          str(tmp_path / "cli"), "--workers", "1"], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "none of the 2 image(s) could be measured" in res.stderr and "failures.csv" in res.stderr


def test_partial_failure_exits_zero_and_strict_exits_two(tmp_path: Path) -> None:
    import subprocess
    import sys

    m, failures, _ = run_case(CASES["nan-100-synapse"], tmp_path)
    assert len(m) == 1 and len(failures) == 1
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    base = [sys.executable, "-m", "analysis", "-q", "quantify", "--samples", str(tmp_path / "samples.csv"),
            "--workers", "1"]
    ok = subprocess.run([*base, "--out", str(tmp_path / "cli")], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    strict = subprocess.run([*base, "--out", str(tmp_path / "cli-strict"), "--strict"], capture_output=True,
                            text=True, env=env)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr and "100 NaN" in strict.stderr


def test_default_worker_count_follows_available_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """workers=None: as many workers as fit in the memory available (here: too little for two), logged."""
    per_worker = quantify.WORKER_BASE_BYTES + quantify.WORKER_MEMORY_FACTOR * N * N * 2
    monkeypatch.setattr(quantify, "_available_memory", lambda: int(1.5 * per_worker))
    monkeypatch.setattr(quantify, "_cores", lambda: 8)
    for name in ("a", "b"):
        write_tif(tmp_path / f"{name}.tif", spots().astype(np.uint16), "YX")
    sheet = write_sheet(tmp_path, [sheet_row("a", "a.tif"), sheet_row("b", "b.tif")])
    with caplog.at_level(logging.INFO, logger="analysis.pipeline.quantify"):
        m = quantify_study(sheet, tmp_path / "out", progress=False, params=PARAMS)
    assert m.n_puncta.tolist() == [6, 6]
    assert "1 worker(s): 8 core(s)" in caplog.text and "image needing the most: a.tif" in caplog.text
