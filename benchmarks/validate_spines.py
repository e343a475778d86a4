"""Validate the spine measurement on real two-photon frames and on the project's simulator.

Real data: ``../shared/realdata/spines_2p`` (SpineDetector "Dendritic2" set, CC BY 4.0): 505
maximum projections, 416 x 416, with hand-marked spine heads. Detected heads are matched one to
one to the marks within 10 px (:func:`analysis.measure.matching.match_points`), and also within
half of the frame's median mark box (the README's "about half a box": 11 px on the wide-field
frames, ~60 px on the zoomed ones, whose boxes are ~5x larger because the frames are ~5x
enlarged crops); precision, recall and F1 are pooled over all images (and per family: "field"
frames 0000xx/LAC/Neuron, "zoomed" frames spine_image*), and the per-image count error is
reported. Marks no detector can match are left out and counted (:func:`real_marks`): boxes
under 3 px (124 marks of the zoomed frames, all at the frame's corner, 0.5 / 0.5) and centres
outside the frame (29 marks of the Neuron*PKCdKO frames). The pixel size given
to the detector is 0.04 um/px for every frame (the README's approximate value; the detector
takes its spatial scale from the measured shaft width, see :mod:`analysis.measure.spines`).
No parameter is fitted per frame; the defaults were chosen on every 5th frame of this set
(the "tuning" subset, frames 0, 5, 10, ... in name order) together with the simulator (a
trade-off, see the closing note of the spines work); the other frames ("held-out") are
reported separately.

Simulator (:mod:`analysis.sim.spines`, when present): per SNR level, detection
precision/recall/F1 (match within 0.5 um), spine density error against the true in-field
spines per um of true centreline, tracking across the 4 sessions of the default preset
(stable spines linked, gained/lost precision/recall/F1 by truth identity), beside them the
gained/lost F1 of the true heads linked by position alone (:func:`linking_ceiling`: what the
tracker's linking rule could reach with a perfect detector and a registration that knows the
persistent spines), and the apparent turnover of two images minutes apart
(:func:`simulate_repeat_imaging`).

Speed: ``detect_spines`` on a synthetic 512 x 512 frame, one thread (wall and CPU time).

Run: ``python benchmarks/validate_spines.py [--limit N] [--subset all|tuning|held-out] [--no-real]
[--no-sim] [--sim-seeds 2] [--repeat-seeds N] [--max-elevation-deg 90]
[--out benchmarks/results/spines_validation.md]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from skimage import io  # noqa: E402

from analysis.measure.matching import match_points  # noqa: E402
from analysis.measure.spines import detect_spines  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "realdata" / "spines_2p"
PIXEL_SIZE_UM = 0.04
MATCH_PX = 10.0


#: Mark boxes narrower than this (px) are not marks of a head (the set's 124 such boxes are 1 px
#: wide, all at a zoomed frame's corner).
MIN_MARK_BOX_PX = 3.0


def real_marks(shape: tuple[int, int] = (416, 416)) -> tuple[pd.DataFrame, dict[str, int]]:
    """The set's marks that a detector can match, and the counts of those left out.

    Left out: boxes narrower than :data:`MIN_MARK_BOX_PX` (``degenerate``) and centres outside a
    frame of ``shape`` (``outside``: the exporter kept marks of a larger original frame).
    """
    pts = pd.read_csv(REAL / "valid_spine_points.csv")
    degenerate = (pts["box_w_px"] < MIN_MARK_BOX_PX) | (pts["box_h_px"] < MIN_MARK_BOX_PX)
    outside = ~degenerate & ((pts["y_px"] < 0) | (pts["y_px"] >= shape[0]) | (pts["x_px"] < 0)
                             | (pts["x_px"] >= shape[1]))
    return pts[~degenerate & ~outside], {"degenerate": int(degenerate.sum()), "outside": int(outside.sum())}


def half_box_px(marks: pd.DataFrame) -> float:
    """Half of a frame's median mark box (px), at least :data:`MATCH_PX` (a frame without marks)."""
    if len(marks) == 0:
        return MATCH_PX
    return max(MATCH_PX, 0.5 * float(np.median(np.r_[marks["box_w_px"], marks["box_h_px"]])))


def load_grey(path: Path) -> np.ndarray:
    im = io.imread(path)
    return (im[..., 0] if im.ndim == 3 else im).astype(np.float32)


def real_benchmark(limit: int | None = None, subset: str = "all", detectors: dict | None = None,
                   **params) -> tuple[pd.DataFrame, dict]:
    """Per frame (and per detector): marks, detections, one-to-one matches and CPU seconds.

    ``detectors``: name -> function of a frame returning (n, 2) head centres y, x in pixels
    (default: ``{"ours": detect_spines(frame, PIXEL_SIZE_UM, **params)}``); each frame is read
    once for all of them.  The summary (:func:`summarise`) pools every row: with more than one
    detector, summarise the ``method`` groups separately."""
    if detectors is None:
        detectors = {"ours": lambda im: detect_spines(im, PIXEL_SIZE_UM, **params)[["y", "x"]].to_numpy(float)}
    pts, _ = real_marks()
    files = sorted((REAL / "valid" / "images").glob("*.jpg"))
    tuning = {f.name for f in files[::5]}
    if subset != "all":
        files = [f for f in files if (f.name in tuning) == (subset == "tuning")]
    if limit:
        files = files[::max(1, len(files) // limit)][:limit]
    by = {k: g for k, g in pts.groupby("image")}
    rows = []
    for f in files:
        img = load_grey(f)
        marks = by.get(f.name, pts.iloc[:0])
        true = marks[["y_px", "x_px"]].to_numpy(float)
        for name, detect in detectors.items():
            c0 = time.process_time()
            det = np.asarray(detect(img), float).reshape(-1, 2)
            cpu = time.process_time() - c0
            m = match_points(det, true, MATCH_PX)
            mb = match_points(det, true, half_box_px(marks))
            rows.append({"image": f.name, "method": name, "family": "zoomed" if f.name.startswith("spine_") else "field",
                         "subset": "tuning" if f.name in tuning else "held-out",
                         "n_true": len(true), "n_det": len(det), "tp": m.tp, "fp": m.fp, "fn": m.fn,
                         "tp_box": mb.tp, "fp_box": mb.fp, "fn_box": mb.fn, "cpu_s": cpu})
    per = pd.DataFrame(rows)
    return per, summarise(per)


def summarise(per: pd.DataFrame, match: str = "") -> dict:
    """Pooled precision, recall, F1 and count errors; ``match="_box"``: within half a mark box."""
    tp, fp, fn = per["tp" + match].sum(), per["fp" + match].sum(), per["fn" + match].sum()
    p = tp / max(tp + fp, 1)
    r = tp / max(tp + fn, 1)
    err = per.n_det - per.n_true
    return {"images": len(per), "true": int(per.n_true.sum()), "detected": int(per.n_det.sum()),
            "precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12),
            "count_err_median_abs": float(np.median(np.abs(err))),
            "count_err_mean": float(err.mean()),
            "count_rel_err_median_abs": float(np.median(np.abs(err) / np.maximum(per.n_true, 1)))}


def speed() -> tuple[float, float]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    img = 200 * np.exp(-((yy - 256 - 0.2 * (xx - 256)) ** 2) / (2 * 4.0 ** 2))
    for k in range(30):
        x0 = 20 + 16 * k
        side = 1 if k % 2 else -1
        y0 = 256 + 0.2 * (x0 - 256) + side * 14
        img += 150 * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * 2.5 ** 2))
    img = rng.poisson(img + 10).astype(np.float32)
    detect_spines(img, 0.1)
    wall, cpu = [], []
    for _ in range(5):
        t0, c0 = time.perf_counter(), time.process_time()
        detect_spines(img, 0.1)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def _true_length_um(session) -> float:
    """Length of the in-field true centrelines (um)."""
    px = session.info["pixel_size_um"]
    total = 0.0
    for _, g in session.dendrites.groupby("dendrite_id"):
        yx = g[["y", "x"]].to_numpy(float)
        inside = g["in_field"].to_numpy(bool)
        seg = np.hypot(*np.diff(yx, axis=0).T)
        total += float(seg[inside[1:] & inside[:-1]].sum()) * px
    return total


def _truth_ids(det: pd.DataFrame, truth: pd.DataFrame, max_px: float) -> np.ndarray:
    """Truth spine_id of each detection (-1 if unmatched)."""
    ids = np.full(len(det), -1)
    m = match_points(det[["y", "x"]].to_numpy(float), truth[["y", "x"]].to_numpy(float), max_px)
    if len(m.pairs):
        ids[m.pairs[:, 0]] = truth["spine_id"].to_numpy()[m.pairs[:, 1]]
    return ids


def _f1(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 1.0
    r = tp / n_true if n_true else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def linking_ceiling(sessions, max_distance_um: float, n_neighbours: int = 8) -> dict[str, int]:
    """Gained / lost calls of position-only linking of the *true* heads (a ceiling for any linker).

    Per interval, every true head of the previous session is moved by the median true
    displacement of its ``n_neighbours`` nearest other persistent spines (a registration that
    knows which spines persist: better than any image can give) and the true heads are linked
    one to one within ``max_distance_um`` (:func:`match_points`, as :func:`track_spines` does).
    Unlinked heads are called gained / lost (not a persistent spine that was outside the other
    session's field, as :func:`track_spines` makes no call there).  Errors left are those of position alone: a
    persistent head that moved farther than the gate (tissue deformation, axial drift of an
    inclined spine in the projection) and a new spine within the gate of one just lost.
    Returns the counts of :func:`sim_benchmark`'s gained / lost columns (true positives,
    calls, true events)."""
    from scipy.spatial import cKDTree

    px = sessions[0].info["pixel_size_um"]
    out = dict.fromkeys(("gained_tp", "gained_pred", "gained_true", "lost_tp", "lost_pred", "lost_true"), 0)
    for k in range(1, len(sessions)):
        a = sessions[k - 1].spines[sessions[k - 1].spines["in_field"]]
        b = sessions[k].spines[sessions[k].spines["in_field"]]
        ids_a, ids_b = a["spine_id"].to_numpy(), b["spine_id"].to_numpy()
        ya, yb = a[["y", "x"]].to_numpy(float), b[["y", "x"]].to_numpy(float)
        common, ia, ib = np.intersect1d(ids_a, ids_b, return_indices=True)
        pred = ya.copy()
        if len(common) > n_neighbours:
            disp = yb[ib] - ya[ia]
            _, idx = cKDTree(ya[ia]).query(ya, k=n_neighbours + 1)
            is_anchor = np.full(len(ya), -1)
            is_anchor[ia] = np.arange(len(ia))
            for r in range(len(ya)):  # leave the spine itself out of its own displacement
                nb = [i for i in idx[r] if i != is_anchor[r]][:n_neighbours]
                pred[r] = ya[r] + np.median(disp[nb], axis=0)
        m = match_points(yb, pred, max_distance_um / px)
        linked_b = np.zeros(len(yb), bool)
        linked_a = np.zeros(len(ya), bool)
        if len(m.pairs):
            linked_b[m.pairs[:, 0]] = True
            linked_a[m.pairs[:, 1]] = True
        all_a, all_b = sessions[k - 1].spines["spine_id"].to_numpy(), sessions[k].spines["spine_id"].to_numpy()
        new, gone = ~np.isin(ids_b, all_a), ~np.isin(ids_a, all_b)
        # a persistent spine outside the other session's field entered or left it: no call
        moved_in = ~new & ~np.isin(ids_b, ids_a)
        moved_out = ~gone & ~np.isin(ids_a, ids_b)
        out["gained_tp"] += int((new & ~linked_b).sum())
        out["gained_pred"] += int((~linked_b & ~moved_in).sum())
        out["gained_true"] += int(new.sum())
        out["lost_tp"] += int((gone & ~linked_a).sum())
        out["lost_pred"] += int((~linked_a & ~moved_out).sum())
        out["lost_true"] += int(gone.sum())
    return out


def _truth_in_frame(ses, px: float) -> pd.DataFrame:
    """A session's in-field true spines in the frame of the detector's registered planes.

    A stack whose planes moved (``plane_jitter_um``) is registered onto the planes' own median
    position (:func:`analysis.measure.planes.register_planes`); which frame that is, is a
    convention, and the simulator's truth is in another (the mean over all planes, out-of-focus
    ones included). The truth is moved by the offset of the registered planes in focus (the
    median over the planes of at least median spread), so that detections are scored, not the
    choice of frame."""
    truth = ses.spines[ses.spines["in_field"]]
    true = np.asarray(ses.info.get("plane_shifts_px", []), float)
    if np.asarray(ses.image).ndim != 3 or not true.size or not true.any():
        return truth
    from analysis.measure.planes import register_planes

    _, shifts = register_planes(ses.image, px)
    spread = np.asarray(ses.image, float).reshape(ses.image.shape[0], -1).std(axis=1)
    off = np.median((true + shifts)[spread >= np.median(spread)], axis=0)
    return truth.assign(y=truth["y"] + off[0], x=truth["x"] + off[1])


def sim_benchmark(seeds=(0, 1), match_um: float = 0.5, repeat_seeds=None,
                  max_elevation_deg: float | None = None, mode: str = "mip",
                  z_step_um: float | None = None, plane_jitter_um: float | None = None) -> list[str]:
    """Detection, density, tracking and repeat-imaging turnover on the project's simulator.

    ``repeat_seeds`` (default: ``seeds``) are the seeds of the repeat-imaging pairs; a pair
    costs two detections, so more pairs than series narrow the apparent-turnover figure
    (about 90-140 spines per pair). ``max_elevation_deg``: the largest angle of a spine out of
    the image plane (default: the simulator's, 30 degrees; 90 draws spines in every direction
    around the shaft, so that some heads lie over or under it in the projection). Detection
    recall is also given by the spine's true angle out of the plane. ``mode="stack"``: the
    sessions are z-stacks (``z_step_um``, default the preset's 1 um) given to the detector and
    the tracker as such, instead of their maximum projections. ``plane_jitter_um``: motion
    within each stack, a random lateral shift of each plane with this SD per axis (the
    detector registers the planes of a stack of 3 or more).
    """
    repeat_seeds = tuple(seeds if repeat_seeds is None else repeat_seeds)
    from analysis.measure.spines import trace_dendrites, track_spines
    from analysis.sim.spines import simulate_repeat_imaging, simulate_spine_sessions

    import inspect

    gate_um = float(inspect.signature(track_spines).parameters["max_distance_um"].default)
    sim_kw = {} if max_elevation_deg is None else {"max_elevation_deg": float(max_elevation_deg)}
    if mode != "mip":
        sim_kw["mode"] = mode
    if z_step_um is not None:
        sim_kw["z_step_um"] = float(z_step_um)
    if plane_jitter_um:
        sim_kw["plane_jitter_um"] = float(plane_jitter_um)
    det_rows, trk_rows, rep_rows, ceil_rows, el_rows = [], [], [], [], []
    for snr in ("high", "default", "low"):
        for seed in seeds:
            sessions = simulate_spine_sessions(seed, preset="default", snr=snr, **sim_kw)
            px = sessions[0].info["pixel_size_um"]
            mpx = match_um / px
            truths = [_truth_in_frame(ses, px) for ses in sessions]
            for k, ses in enumerate(sessions):
                truth = truths[k]
                tr = trace_dendrites(ses.image, px)
                det = detect_spines(ses.image, px, trace=tr)
                m = match_points(det[["y", "x"]].to_numpy(float), truth[["y", "x"]].to_numpy(float), mpx)
                elevation = truth["spine_id"].map(ses.truth.spines.set_index("spine_id")["elevation_deg"])
                hit = np.zeros(len(truth), bool)
                hit[m.pairs[:, 1]] = True
                el_rows.append(pd.DataFrame({"snr": snr, "abs_elevation_deg": np.abs(elevation.to_numpy(float)),
                                             "found": hit}))
                dens_true = len(truth) / max(_true_length_um(ses), 1e-9)
                dens = len(det) / max(float(tr.table["length_um"].sum()), 1e-9)
                det_rows.append({"snr": snr, "seed": seed, "session": k, "tp": m.tp, "fp": m.fp, "fn": m.fn,
                                 "density_rel_err": dens / dens_true - 1})
            tracks = track_spines([s.image for s in sessions], px)
            ceil_rows.append({"snr": snr, **linking_ceiling(sessions, gate_um)})
            for k in range(1, len(sessions)):
                t_prev, t_cur = truths[k - 1], truths[k]
                ids_prev_all = set(sessions[k - 1].spines["spine_id"])
                ids_cur_all = set(sessions[k].spines["spine_id"])
                prev_rows = tracks[(tracks.session == k - 1) & (tracks.status != "lost")]
                cur_rows = tracks[tracks.session == k]
                present = cur_rows[cur_rows.status != "lost"]
                lost = cur_rows[cur_rows.status == "lost"]
                gained = present[(present.status == "gained") & present.in_common_field.astype(bool)]
                id_prev = dict(zip(prev_rows.track_id, _truth_ids(prev_rows, t_prev, mpx)))
                id_cur = dict(zip(present.track_id, _truth_ids(present, t_cur, mpx)))
                # stable spines detected in both sessions: same track?
                stable_true = set(t_prev.spine_id) & set(t_cur.spine_id)
                inv_prev = {v: kk for kk, v in id_prev.items() if v >= 0}
                inv_cur = {v: kk for kk, v in id_cur.items() if v >= 0}
                both = [i for i in stable_true if i in inv_prev and i in inv_cur]
                linked = sum(inv_prev[i] == inv_cur[i] for i in both)
                # gained: present now, truth id new; lost: track ended, its truth id is gone
                true_gained = {i for i in t_cur.spine_id if i not in ids_prev_all}
                true_lost = {i for i in t_prev.spine_id if i not in ids_cur_all}
                g_tp = sum(id_cur.get(tid, -1) in true_gained for tid in gained.track_id)
                l_tp = sum(id_prev.get(tid, -1) in true_lost for tid in lost.track_id)
                trk_rows.append({"snr": snr, "seed": seed, "interval": k, "stable_both": len(both),
                                 "stable_linked": linked, "gained_tp": g_tp, "gained_pred": len(gained),
                                 "gained_true": len(true_gained), "lost_tp": l_tp, "lost_pred": len(lost),
                                 "lost_true": len(true_lost)})
        for seed in repeat_seeds:
            a, b = simulate_repeat_imaging(seed, preset="default", snr=snr, **sim_kw)
            px = a.info["pixel_size_um"]
            rep = track_spines([a.image, b.image], px)
            n0 = int((rep.session == 0).sum())
            changed = int(((rep.session == 1) & rep.status.isin(["gained", "lost"])
                           & rep.in_common_field.astype(bool)).sum())
            rep_rows.append({"snr": snr, "seed": seed, "n0": n0, "changed": changed})
    det, trk, ceil = pd.DataFrame(det_rows), pd.DataFrame(trk_rows), pd.DataFrame(ceil_rows)
    # (no repeat-imaging pairs, --repeat-seeds 0: the turnover column is empty)
    rep = pd.DataFrame(rep_rows, columns=["snr", "seed", "n0", "changed"])
    elev = "" if max_elevation_deg is None else f"; spines up to {max_elevation_deg:g} degrees out of the plane"
    frame = "MIP" if mode == "mip" else f"z-stacks ({z_step_um or 1.0:g} um steps)"
    lines = [f"## Simulator (analysis.sim.spines, preset 'default': 512 x 512 {frame}, 0.12 um/px, 3 dendrites, "
             f"4 sessions; seeds {list(seeds)}, repeat-imaging pairs {list(repeat_seeds)}; match within "
             f"{match_um} um{elev})", "",
             "| SNR | detection precision | recall | F1 | density rel. error (median) | stable spines linked | "
             "gained P / R / F1 | lost P / R / F1 | gained / lost F1, true heads linked (ceiling) | "
             "apparent turnover, repeat imaging |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for snr in ("high", "default", "low"):
        d, t, r = det[det.snr == snr], trk[trk.snr == snr], rep[rep.snr == snr]
        p, rc, f = _f1(int(d.tp.sum()), int(d.tp.sum() + d.fp.sum()), int(d.tp.sum() + d.fn.sum()))
        gp, gr, gf = _f1(int(t.gained_tp.sum()), int(t.gained_pred.sum()), int(t.gained_true.sum()))
        lp, lr, lf = _f1(int(t.lost_tp.sum()), int(t.lost_pred.sum()), int(t.lost_true.sum()))
        c = ceil[ceil.snr == snr]
        cg = _f1(int(c.gained_tp.sum()), int(c.gained_pred.sum()), int(c.gained_true.sum()))[2]
        cl = _f1(int(c.lost_tp.sum()), int(c.lost_pred.sum()), int(c.lost_true.sum()))[2]
        linked = t.stable_linked.sum() / max(t.stable_both.sum(), 1)
        turnover = r.changed.sum() / r.n0.sum() if r.n0.sum() else float("nan")
        lines.append(f"| {snr} | {p:.3f} | {rc:.3f} | {f:.3f} | {d.density_rel_err.median():+.3f} | {linked:.3f} | "
                     f"{gp:.2f} / {gr:.2f} / {gf:.2f} | {lp:.2f} / {lr:.2f} / {lf:.2f} | {cg:.2f} / {cl:.2f} | {turnover:.3f} |")
    lines += ["", "Stable spines linked: of the true persistent spines detected in both sessions of an interval, "
              "the fraction given the same track. Gained/lost: per interval, by truth identity. Ceiling: the "
              f"true heads linked by position alone within the tracker's {gate_um:g} um after a registration "
              "that knows the persistent spines (`linking_ceiling`): the best that one-to-one linking of head "
              "positions within that distance can do. "
              "Apparent "
              "turnover: (gained + lost) / spines of the first image, two images minutes apart "
              "(simulate_repeat_imaging).", ""]
    el = pd.concat(el_rows, ignore_index=True)
    el["angle"] = pd.cut(el.abs_elevation_deg, [0, 30, 60, 90], include_lowest=True,
                         labels=["0-30", "30-60", "60-90"])
    rec = el.groupby(["snr", "angle"], observed=True).found.agg(["mean", "size"])
    lines += ["Detection recall by the spine's angle out of the image plane (degrees, absolute):", "",
              "| SNR | " + " | ".join(rec.index.get_level_values("angle").unique().astype(str)) + " |",
              "|---|" + "---|" * rec.index.get_level_values("angle").nunique()]
    for snr in ("high", "default", "low"):
        cells = [f"{r['mean']:.2f} ({int(r['size'])})" for _, r in rec.loc[snr].iterrows()]
        lines.append(f"| {snr} | " + " | ".join(cells) + " |")
    lines += ["", "(recall (true heads) per bin, pooled over sessions and seeds)", ""]
    return lines


def fmt(d: dict) -> str:
    return (f"| {d['images']} | {d['true']} | {d['detected']} | {d['precision']:.3f} | {d['recall']:.3f} | "
            f"{d['f1']:.3f} | {d['count_err_median_abs']:.1f} | {d['count_err_mean']:+.1f} | "
            f"{d['count_rel_err_median_abs']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--no-sim", action="store_true")
    ap.add_argument("--sim-seeds", type=int, default=2)
    ap.add_argument("--max-elevation-deg", type=float, default=None,
                    help="simulator: largest angle of a spine out of the image plane (default: the simulator's, 30)")
    ap.add_argument("--mode", choices=("mip", "stack"), default="mip",
                    help="simulator: sessions as maximum projections (default) or as z-stacks")
    ap.add_argument("--z-step-um", type=float, default=None, help="simulator, --mode stack: z step (default 1 um)")
    ap.add_argument("--plane-jitter-um", type=float, default=None,
                    help="simulator: SD of a random lateral shift of each plane (motion within a stack; default 0)")
    ap.add_argument("--repeat-seeds", type=int, default=None,
                    help="number of repeat-imaging pairs per SNR (default: --sim-seeds)")
    ap.add_argument("--subset", choices=("all", "tuning", "held-out"), default="all",
                    help="real frames: every 5th frame (tuning), the others (held-out) or all")
    a = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    lines = [f"# Spine measurement validation (commit {commit})", ""]
    if a.no_real:
        pass
    elif REAL.exists():
        t0 = time.perf_counter()
        per, tot = real_benchmark(a.limit, a.subset)
        el = time.perf_counter() - t0
        head = ("| images | true | detected | precision | recall | F1 | median abs count err | "
                "mean count err | median rel count err |\n|---|---|---|---|---|---|---|---|---|")
        _, left_out = real_marks()
        lines += [f"## Real two-photon frames (spines_2p), pixel size {PIXEL_SIZE_UM} um, match within "
                  f"{MATCH_PX:.0f} px", "", f"Marks left out (no detector can match them): {left_out}", "",
                  "All images:", "", head, fmt(tot), ""]
        for fam, g in per.groupby("family"):
            lines += [f"{fam} frames:", "", head, fmt(summarise(g)), ""]
        lines += ["Matched within half of the frame's median mark box instead:", ""]
        for label, g in [("all", per), *per.groupby("family"), *per.groupby("subset")]:
            lines += [f"{label} frames:", "", head, fmt(summarise(g, "_box")), ""]
        for (sub, fam), g in per.groupby(["subset", "family"]):
            lines += [f"{sub} subset, {fam} frames:", "", head, fmt(summarise(g)), ""]
        lines += [f"({el / len(per):.2f} s per 416 x 416 frame including reading)", ""]
    else:
        lines += [f"real data folder {REAL} absent: skipped", ""]
    if not a.no_sim:
        if importlib.util.find_spec("analysis.sim.spines") is None:
            lines += ["simulator analysis.sim.spines not available: skipped", ""]
        else:
            lines += sim_benchmark(tuple(range(a.sim_seeds)),
                                   repeat_seeds=None if a.repeat_seeds is None else tuple(range(a.repeat_seeds)),
                                   max_elevation_deg=a.max_elevation_deg, mode=a.mode, z_step_um=a.z_step_um,
                                   plane_jitter_um=a.plane_jitter_um)
    wall, cpu = speed()
    lines += [f"## Speed: detect_spines on a 512 x 512 frame, one thread: {wall:.3f} s wall, {cpu:.3f} s CPU "
              "(median of 5; wall time is inflated when other jobs share the cores)", ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(a.out)


if __name__ == "__main__":
    sys.exit(main())
