"""Peak memory of the per-image quantification and of its parts.

Run with ``.venv/bin/python benchmarks/bench_memory.py`` (part of ``make bench``).  Measures,
for simulated 3-channel terminal fields (PSD95, Iba1, CD68; :mod:`analysis.sim.phantoms`, 0.2 um
pixels, uint16):

- ``plane256``, ``plane2048``: one field rendered at that size;
- ``plane2048_syn``: the synapse channel of ``plane2048`` alone (an image of one channel, the
  case of issue 16's "one 8000 x 8000 plane at 8.8 GB (69x the image)"; no microglia or
  engulfment parts);
- ``plane8000``: an 8000 x 8000 plane (a 2000 x 2000 field tiled 4 x 4, mirrored so that
  the seams are continuous; rendering 8000^2 directly would itself take several GB);
- ``stack30``: a 30 x 512 x 512 z-stack (30 fields of 512 x 512 rendered with their own
  seeds, z step 0.3 um; puncta are detected in 3-D, microglia and CD68 on the projection),

the peak memory of :func:`analysis.pipeline.quantify.quantify_image` (all three channels, default
parameters) and of its parts, each in a fresh subprocess so that nothing else counts:

- ``detect``: :func:`analysis.measure.puncta.detect_puncta` of the synapse channel;
- ``mask``: :func:`analysis.measure.area.analysed_area_mask` (given the puncta);
- ``quality``: :func:`analysis.measure.quality.image_quality` of the synapse channel as quantify calls
  it (brightness, SNR, the spike-in detection in a 192 px window);
- ``microglia``: :func:`analysis.measure.microglia.segment_microglia` + ``measure_microglia``;
- ``engulfment``: :func:`analysis.measure.engulfment.segment_lysosomes` + ``measure_engulfment``
  (given the microglia labels and the puncta);
- ``quantify``: :func:`analysis.pipeline.quantify.quantify_image`, everything.

Two figures per run:

- ``rss``: the true peak resident memory of the subprocess (``VmHWM``, reset after the inputs
  are loaded; ``ru_maxrss`` is also reported: it includes loading), minus the resident memory
  just before the call, i.e. what the call itself needs on top of its inputs (``rss_work``);
  ``rss_peak`` is the whole process (interpreter, libraries, the input image);
- ``traced``: the peak of :mod:`tracemalloc` during the call (numpy arrays and Python
  objects; C-level temporaries of scipy / scikit-image are not traced), in a separate
  subprocess (tracing slows the call down).

Figures are in MB and as multiples of ``plane_mb``, the bytes of one channel of the input
(one YX plane, or one ZYX stack for ``stack30``: ``rss_work_x``), and of ``image_mb``, the
decoded bytes of the whole three-channel image (``rss_work_image_x``: the measure of
:func:`analysis.pipeline.quantify.worker_memory_estimate` and of issue 16's "69x the image" for
a one-channel 8000^2 plane).  The target of issue 16 is a peak per worker of at most 10x the
image for one plane; per channel is the stricter reading (an image of one channel).  Inputs (images and the dependencies of the parts:
puncta, mask, labels) are cached in ``benchmarks/results/memory_inputs/`` (git-ignored;
``--fresh`` rebuilds them); the table goes to ``benchmarks/results/memory.csv``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
INPUTS = RESULTS / "memory_inputs"
PX = 0.2
Z_STEP = 0.3
CASES = ("plane256", "plane2048", "plane2048_syn", "plane8000", "stack30")
#: cases of one channel (the synapse channel only): no microglia or engulfment parts
ONE_CHANNEL = ("plane2048_syn",)
PARTS = ("detect", "mask", "quality", "microglia", "engulfment", "quantify")
MB = 1024.0**2


# --------------------------------------------------------------------------- inputs


def render_case(case: str) -> np.ndarray:
    """The CZYX uint16 image of a case (deterministic)."""
    from analysis.sim.phantoms import render_terminal_field

    if case == "plane256":
        return render_terminal_field(np.random.default_rng([16, 256]), shape=(256, 256)).image[:, None]
    if case in ("plane2048", "plane2048_syn"):
        image = render_terminal_field(np.random.default_rng([16, 2048]), shape=(2048, 2048)).image[:, None]
        return np.ascontiguousarray(image[:1]) if case == "plane2048_syn" else image
    if case == "plane8000":
        tile = render_terminal_field(np.random.default_rng([16, 8000]), shape=(2000, 2000)).image
        row = np.concatenate([tile, tile[:, :, ::-1]] * 2, axis=2)
        img = np.concatenate([row, row[:, ::-1]] * 2, axis=1)
        return np.ascontiguousarray(img[:, None])
    if case == "stack30":
        planes = [render_terminal_field(np.random.default_rng([16, 30, z]), shape=(512, 512)).image
                  for z in range(30)]
        return np.stack(planes, axis=1)
    raise ValueError(f"unknown case {case!r}; one of {CASES}")


def _paths(case: str) -> dict[str, Path]:
    return {"image": INPUTS / f"{case}.npy", "deps": INPUTS / f"{case}_deps.pkl"}


def _channels(data: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Synapse channel (YX or ZYX), microglia and CD68 projections (YX; None for an image of
    one channel)."""
    syn = data[0, 0] if data.shape[1] == 1 else data[0]
    if data.shape[0] == 1:
        return syn, None, None
    mg = data[1].max(axis=0)
    lys = data[2].max(axis=0)
    return syn, mg, lys


def prepare(case: str, fresh: bool = False) -> None:
    """Render a case and compute the inputs of its parts (in this process)."""
    from analysis.measure import engulfment
    from analysis.measure import microglia
    from analysis.measure import area
    from analysis.measure import puncta as synapses

    p = _paths(case)
    INPUTS.mkdir(parents=True, exist_ok=True)
    if fresh or not p["image"].exists():
        t0 = time.perf_counter()
        data = render_case(case)
        np.save(p["image"], data)
        print(f"  rendered {case} {data.shape} in {time.perf_counter() - t0:.0f} s", flush=True)
    if fresh or not p["deps"].exists():
        data = np.load(p["image"])
        syn, mg, lys = _channels(data)
        dz = Z_STEP if syn.ndim == 3 else None
        t0 = time.perf_counter()
        puncta = synapses.detect_puncta(syn, PX, z_step_um=dz)
        mask = area.analysed_area_mask(syn, PX, puncta=puncta)
        labels = microglia.segment_microglia(mg, PX) if mg is not None else None
        lys_mask = engulfment.segment_lysosomes(lys, PX) if lys is not None else None
        with open(p["deps"], "wb") as fh:
            pickle.dump({"puncta": puncta, "puncta_attrs": dict(puncta.attrs), "mask": mask, "labels": labels,
                         "lys_mask": lys_mask}, fh)
        print(f"  inputs of the parts for {case} in {time.perf_counter() - t0:.0f} s "
              f"({len(puncta)} puncta, {int(labels.max()) if labels is not None else 0} cells)", flush=True)


# --------------------------------------------------------------------------- one measurement


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _call(case: str, part: str, data: np.ndarray, deps: dict[str, Any],
          channels: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Any:
    """The work of one part (returns its result so that nothing is freed early).  ``channels``
    (:func:`_channels`) are made before the peak is reset: the projections of the microglia and
    CD68 channels are the benchmark's, not the part's (``quantify`` makes its own from ``data``)."""
    from analysis.measure import engulfment
    from analysis.measure import microglia
    from analysis.measure import quality
    from analysis.measure import area
    from analysis.measure import puncta as synapses
    from analysis.pipeline.quantify import QUALITY_DEFAULTS, quantify_image
    from analysis.pipeline.readouts import image_seed

    syn, mg, lys = channels
    dz = Z_STEP if syn.ndim == 3 else None
    if part == "quantify":
        three = data.shape[0] >= 3
        return quantify_image(data, PX, synapse_channel=0, microglia_channel=1 if three else None,
                              lysosome_channel=2 if three else None, z_step_um=dz, return_puncta=True)
    puncta = deps["puncta"]
    puncta.attrs.update(deps["puncta_attrs"])
    if part == "detect":
        return synapses.detect_puncta(syn, PX, z_step_um=dz)
    if part == "mask":
        return area.analysed_area_mask(syn, PX, puncta=puncta)
    if part == "quality":
        qp = dict(QUALITY_DEFAULTS)
        qp.pop("spike_in")
        seed = qp.pop("seed")
        mask = deps["mask"]
        n = int(mask[np.clip(np.rint(puncta["y"]).astype(int), 0, mask.shape[0] - 1),
                     np.clip(np.rint(puncta["x"]).astype(int), 0, mask.shape[1] - 1)].sum())
        detect_params = {"z_step_um": dz} if dz else {}
        return quality.image_quality(syn, PX, puncta, mask=mask if syn.ndim == 2 else None, n_detected=n,
                                     seed=image_seed(seed, syn), detect_params=detect_params, **qp)
    if part == "microglia":
        labels = microglia.segment_microglia(mg, PX)
        return labels, microglia.measure_microglia(labels, mg, PX)
    if part == "engulfment":
        lys_mask = engulfment.segment_lysosomes(lys, PX)
        pts = puncta.drop(columns="z") if "z" in puncta else puncta
        return lys_mask, engulfment.measure_engulfment(deps["labels"], lys_mask, pts, PX)
    raise ValueError(f"unknown part {part!r}; one of {PARTS}")


def measure_here(case: str, part: str, mode: str) -> dict[str, Any]:
    """Load the inputs, run one part and return its peak memory (run in a fresh process)."""
    import analysis.pipeline.quantify  # noqa: F401  (imports are not part of the call)

    p = _paths(case)
    data = np.load(p["image"])
    with open(p["deps"], "rb") as fh:
        deps = pickle.load(fh)
    channels = _channels(data)
    gc.collect()
    base_kb = _status_kb("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    if mode == "traced":
        tracemalloc.start()
        result = _call(case, part, data, deps, channels)
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    else:
        result = _call(case, part, data, deps, channels)
        traced_peak = None
    seconds = time.perf_counter() - t0
    hwm_kb = _status_kb("VmHWM") if reset else None
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del result
    plane_bytes = data[0].nbytes
    return {"case": case, "part": part, "mode": mode, "shape": "x".join(map(str, data.shape)),
            "plane_mb": plane_bytes / MB, "image_mb": data.nbytes / MB, "seconds": seconds,
            "base_rss_mb": (base_kb or 0) / 1024.0,
            "peak_rss_mb": (hwm_kb if hwm_kb is not None else maxrss_kb) / 1024.0,
            "ru_maxrss_mb": maxrss_kb / 1024.0,
            "traced_peak_mb": None if traced_peak is None else traced_peak / MB}


# --------------------------------------------------------------------------- driver


def run_one(case: str, part: str, mode: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_measure", case, part, mode]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise RuntimeError(f"{case}/{part}/{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    df = pd.DataFrame(rows)
    rss = df[df["mode"] == "rss"].set_index(["case", "part"])
    out = rss[["shape", "plane_mb", "image_mb", "seconds", "base_rss_mb", "peak_rss_mb", "ru_maxrss_mb"]].copy()
    out["rss_work_mb"] = out["peak_rss_mb"] - out["base_rss_mb"]
    out["rss_work_x"] = out["rss_work_mb"] / out["plane_mb"]
    out["rss_work_image_x"] = out["rss_work_mb"] / out["image_mb"]
    out["rss_peak_x"] = out["peak_rss_mb"] / out["plane_mb"]
    traced = df[df["mode"] == "traced"].set_index(["case", "part"])["traced_peak_mb"]
    out["traced_mb"] = traced.reindex(out.index)
    out["traced_x"] = out["traced_mb"] / out["plane_mb"]
    return out.reset_index()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {CASES}")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    ap.add_argument("--no-traced", action="store_true", help="skip the tracemalloc runs")
    ap.add_argument("--fresh", action="store_true", help="re-render the inputs")
    ap.add_argument("--out", default=str(RESULTS / "memory.csv"))
    ap.add_argument("--_measure", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_prepare", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._measure:
        print(json.dumps(measure_here(*args._measure)))
        return
    if args._prepare:
        prepare(args._prepare, fresh=args.fresh)
        return
    import pandas as pd

    cases = [c for c in args.cases.split(",") if c]
    parts = [p for p in args.parts.split(",") if p]
    modes = ["rss"] + ([] if args.no_traced else ["traced"])
    rows: list[dict[str, Any]] = []
    for case in cases:
        # inputs are rendered in their own process (the rendering's peak must not count)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_prepare", case]
                       + (["--fresh"] if args.fresh else []), check=True)
        for part in parts:
            if case in ONE_CHANNEL and part in ("microglia", "engulfment"):
                continue
            for mode in modes:
                r = run_one(case, part, mode)
                rows.append(r)
                extra = f"traced {r['traced_peak_mb']:.0f} MB" if mode == "traced" else (
                    f"peak {r['peak_rss_mb']:.0f} MB, work {r['peak_rss_mb'] - r['base_rss_mb']:.0f} MB "
                    f"({(r['peak_rss_mb'] - r['base_rss_mb']) / r['plane_mb']:.1f}x the plane)")
                print(f"{case:10s} {part:11s} {mode:6s} {r['seconds']:7.1f} s  {extra}", flush=True)
    out = table(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.out)
    tmp = path.with_suffix(".tmp")
    out.to_csv(tmp, index=False, float_format="%.4g")
    tmp.replace(path)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(out.round(1).to_string(index=False))
    print(f"written {path}")


if __name__ == "__main__":
    main()
