"""Puncta beside a repaired tissue edge: recall and false puncta by distance to the dark region.

Two measurements of the repair of step 11 of :func:`analysis.measure.puncta.detect_puncta`
(:func:`analysis.measure.outside.lift_beyond_edge`), which sessions 57 and 58 judged by:

* **height** - a straight void edge (tissue 100 photons, void 20, the step blurred by 1 px), a
  Gaussian punctum (sigma 1.1 px) centred at a given distance from the edge: the punctum's
  height above the lifted background, fitted (Gaussian + constant within 5 px) with and without
  it over the same noise, as a fraction of its true height, at 5 and 3 tissue noise SDs;
* **bands** - the terminal fields of a simulated study (the default study of ``make report``,
  ``data/raw``) whose dark regions the first detection lines: every true punctum (from the
  study's ground truth) banded by its distance to those regions (inside, 0-3 px, 3-10 px,
  beyond), found or not by the first detection (``repair_tissue_edges=False``) and by the
  default, matched within 0.25 um; false puncta by the same bands; engulfed puncta found; and
  recall by amplitude quintile per band (a band's recall at matched amplitude should be the
  far field's).

Usage::

    python benchmarks/tissue_edge_bands.py --study data/raw --fields 20
    python benchmarks/tissue_edge_bands.py --height-only

The band figures need a simulated study with ground truth (``make report`` writes one to
``data/raw``); about 3 s per field.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from analysis.measure.matching import match_points
from analysis.measure.outside import edges_lined_with_puncta, lift_beyond_edge
from analysis.measure.puncta import _detect_puncta, detect_puncta
from validate_real import md_table

BANDS = [-np.inf, 0.0, 3.0, 10.0, np.inf]
BAND_NAMES = ["inside", "0-3 px", "3-10 px", "beyond 10 px"]


def height_table(distances=(-6, -3, -1, 0, 1, 2, 3, 8), draws: int = 20) -> pd.DataFrame:
    """Fraction of a punctum's height kept above the lifted background, by its distance (px,
    negative inside the void) from a straight edge; mean and SD over ``draws`` noise draws."""
    h, w, edge, sig = 96, 128, 64, 1.1
    void = np.zeros((h, w), bool)
    void[:, edge:] = True
    lam = 20.0 + 80.0 * ndi.gaussian_filter((~void).astype(float), 1.0)
    yy, xx = np.mgrid[:h, :w]
    regions = [((slice(0, h), slice(edge, w)), void[:, edge:])]
    info = {"alpha": 1.0, "beta": 0.0, "var_min": 0.0, "var_max": 1e12}  # shot noise, 1 count per photon
    rows = []
    for amp in (50.0, 30.0):
        for d in distances:
            x0 = edge - 0.5 - d
            g = np.exp(-((yy - 48) ** 2 + (xx - x0) ** 2) / (2 * sig**2))
            near = (yy - 48) ** 2 + (xx - x0) ** 2 <= 25
            design = np.column_stack([g[near], np.ones(near.sum())])
            kept = []
            for s in range(draws):
                noise = np.random.default_rng(s).normal(0.0, 1.0, (h, w)) * np.sqrt(lam)
                on, off = (lift_beyond_edge(lam + noise + amp * g * k, regions, 0.1, margin_px=2, punctum_px=1.3,
                                            noise_info=info) for k in (1, 0))
                kept.append(np.linalg.lstsq(design, (on - off)[near], rcond=None)[0][0] / amp)
            rows.append({"height_sd": amp / 10.0, "distance_px": d, "kept": np.mean(kept), "sd": np.std(kept)})
    return pd.DataFrame(rows)


def band_tables(study: Path, n_fields: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-field counts by band, and per true punctum (band, amplitude, found by each detection)."""
    import tifffile

    sheet = pd.read_csv(study / "samples.csv")
    truth = pd.read_csv(study / "ground_truth.csv").set_index("image_id")
    terminal = sheet[sheet["lysosome_channel"].notna()]
    counts, per = [], []
    for _, r in terminal.iterrows():
        px = float(r.pixel_size_um)
        img = tifffile.imread(study / r.path)
        plane = img[int(r.synapse_channel)] if img.ndim == 3 else img
        first, regions, bg_px, _ = _detect_puncta(plane, px)
        lined = edges_lined_with_puncta(regions, first[["y", "x"]].to_numpy(float), px, bg_px, plane.shape)
        if not lined:
            continue
        repaired = detect_puncta(plane, px)
        dark = np.zeros(plane.shape, bool)
        for i in lined:
            dark[regions[i][0]] |= regions[i][1]
        dist = np.where(dark, -ndi.distance_transform_edt(dark), ndi.distance_transform_edt(~dark))
        t = pd.read_csv(study / truth.loc[r.image_id, "puncta_file"])
        tt = t[["y", "x"]].to_numpy(float)

        def band_of(points: np.ndarray) -> np.ndarray:
            ij = np.clip(np.rint(points).astype(int), 0, np.array(plane.shape) - 1)
            return pd.cut(dist[ij[:, 0], ij[:, 1]], BANDS, labels=BAND_NAMES).astype(str)

        tb = band_of(tt)
        one = {"image": r.image_id}
        found = {}
        for name, det in (("first", first), ("repaired", repaired)):
            p = det[["y", "x"]].to_numpy(float)
            m = match_points(p * px, tt * px, 0.25)
            hit = np.zeros(len(tt), bool)
            hit[m.pairs[:, 1]] = True
            false = np.ones(len(p), bool)
            false[m.pairs[:, 0]] = False
            pb = band_of(p)
            for b in BAND_NAMES:
                one[f"{name} true {b}"] = int(hit[tb == b].sum())
                one[f"{name} false {b}"] = int(false[pb == b].sum())
            if "engulfed" in t:
                one[f"{name} engulfed"] = int(hit[t["engulfed"].astype(bool).to_numpy()].sum())
            found[name] = hit
        for b in BAND_NAMES:
            one[f"truth {b}"] = int((tb == b).sum())
        one["truth engulfed"] = int(t["engulfed"].astype(bool).sum()) if "engulfed" in t else 0
        counts.append(one)
        per.append(pd.DataFrame({"image": r.image_id, "band": tb, "amplitude": t["amplitude"].to_numpy(), **found}))
        print(json.dumps(one), flush=True)
        if len(counts) >= n_fields:
            break
    return pd.DataFrame(counts), pd.concat(per, ignore_index=True) if per else pd.DataFrame()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", type=Path, default=Path("data/raw"), help="a simulated study with ground truth")
    ap.add_argument("--fields", type=int, default=20, help="lined terminal fields to measure")
    ap.add_argument("--height-only", action="store_true", help="only the synthetic edge's height table")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    heights = height_table()
    heights.to_csv(args.out / "tissue_edge_height.csv", index=False)
    print("\nheight kept above the lifted background, by distance from the edge (px; < 0 in the void):")
    print(md_table(heights.pivot(index="height_sd", columns="distance_px", values="kept").round(2).reset_index()))
    if args.height_only:
        return
    if not (args.study / "ground_truth.csv").is_file():
        raise SystemExit(f"{args.study} holds no simulated study with ground truth: run `make report` first, "
                         "or pass --study, or --height-only")
    counts, per = band_tables(args.study, args.fields)
    counts.to_csv(args.out / "tissue_edge_bands.csv", index=False)
    if counts.empty:
        print("no terminal field has a lined dark region")
        return
    tot = counts.drop(columns="image").sum()
    table = pd.DataFrame({b: [tot[f"truth {b}"], f"{tot[f'first true {b}']} / {tot[f'first false {b}']}",
                              f"{tot[f'repaired true {b}']} / {tot[f'repaired false {b}']}"] for b in BAND_NAMES},
                         index=["truth", "first detection: true / false", "repaired: true / false"])
    print(f"\n{len(counts)} terminal fields with lined regions, by distance to them:")
    print(md_table(table.reset_index(names="")))
    if "truth engulfed" in tot:
        print(f"engulfed puncta found: first {tot.get('first engulfed', 0)}, repaired "
              f"{tot.get('repaired engulfed', 0)} of {tot['truth engulfed']}")
    per["quintile"] = pd.qcut(per["amplitude"], 5, labels=False) + 1
    rec = per.groupby(["band", "quintile"])[["first", "repaired"]].mean().unstack("quintile")
    print("\nrecall by amplitude quintile (1 = faintest):")
    rec.columns = [f"{d} q{q}" for d, q in rec.columns]
    print(md_table(rec.round(2).reset_index()))


if __name__ == "__main__":
    main()
