"""Speed and memory of the quantification on images of the ``large`` preset.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_quantify.py``).  Measures, in
one run on this machine:

- per-image time of :func:`analysis.pipeline.quantify._quantify_row` (read + quantify, in this process),
  the time a second, profiled run spends inside scipy.ndimage's compiled filters, and the
  *floor* for the same image: reading it plus one Gaussian filter pass
  (``scipy.ndimage.gaussian_filter``, sigma 2 px, float32, along the axes longer than 1: a
  single plane is filtered in YX only) per channel; medians per image, per megapixel per
  channel, and the ratio of the full time to the floor (target <= 4);
- throughput (images/s) of :func:`analysis.pipeline.quantify.quantify_study` on a dask LocalCluster of 1
  and of 2 worker processes (cluster start-up excluded, reported separately), and the scaling
  efficiency ``throughput2 / (2 * throughput1)`` (target >= 0.8); each is run ``--repeat`` times
  and the fastest run counts (the machine may be shared);
- peak resident memory of the whole process tree (parent, scheduler, nanny and worker
  processes; RSS summed, sampled every 0.25 s with psutil) for a 100-image and a 1,000-image
  sheet (target: within 20 %);
- a cProfile of one synapse and one terminal image (``results/profile_*.txt``).

To keep the benchmark under 15 minutes on 2 cores, 1,000 of the 2,528 images of the ``large``
design are rendered (every k-th image, which keeps the synapse/terminal mix); the 100-image
sheet is every 10th of those.  (With ``--big`` above ``--distinct`` the sheet lists the
distinct files repeatedly under their own image ids; each row is still quantified, as every
run starts with an empty cache.)  The rendered study is kept in the work folder and reused.
Results go to ``benchmarks/results/`` (git-ignored): ``bench_quantify.json`` and
``per_image.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import itertools
import json
import os
import pstats
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def render_subset(raw: Path, n_distinct: int, seed: int) -> pd.DataFrame:
    """Render every k-th image of the ``large`` design into ``raw`` (reused when present)."""
    from analysis.sim.design import PRESETS, build_design
    from analysis.sim.simulate import SAMPLE_COLUMNS, _render_one
    from analysis.sim.truth import calibrated_model

    preset = PRESETS["large"]
    design = build_design(preset, calibrated_model(), seed)
    picked = design.iloc[np.linspace(0, len(design) - 1, n_distinct).round().astype(int)]
    sheet = raw / "samples_distinct.csv"
    if sheet.exists() and len(pd.read_csv(sheet)) == n_distinct:
        return pd.read_csv(sheet, dtype=str, keep_default_na=False)
    shutil.rmtree(raw, ignore_errors=True)
    (raw / "images").mkdir(parents=True)
    (raw / "truth").mkdir()
    common = {"out_dir": str(raw), "seed": seed, "synapse_shape": preset.synapse_shape,
              "terminal_shape": preset.terminal_shape}
    tasks = [{**common, **rec} for rec in picked.to_dict("records")]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_render_one, tasks, chunksize=4))
    print(f"rendered {len(tasks)} images of the large preset in {time.perf_counter() - t0:.0f} s", flush=True)
    shutil.rmtree(raw / "truth")  # not needed here
    picked[SAMPLE_COLUMNS].to_csv(sheet, index=False)
    return pd.read_csv(sheet, dtype=str, keep_default_na=False)


def write_sheet(distinct: pd.DataFrame, n: int, path: Path) -> None:
    """A sheet of ``n`` images: every k-th distinct image, or the distinct ones cycled (own ids)."""
    if n <= len(distinct):
        distinct.iloc[np.linspace(0, len(distinct) - 1, n).round().astype(int)].to_csv(path, index=False)
        return
    idx = np.arange(n)
    rows = distinct.iloc[idx % len(distinct)].copy()
    rows["image_id"] = [f"{i}_r{k}" for i, k in zip(rows.image_id, idx // len(distinct), strict=True)]
    rows.to_csv(path, index=False)


def per_image_times(sheet: Path) -> pd.DataFrame:
    """Full per-image time and the floor (read + one Gaussian pass per channel), in this process."""
    from scipy import ndimage

    from analysis.io import load_samples, read_image
    from analysis.pipeline.quantify import QuantifyParams, _quantify_row

    samples = load_samples(sheet, check_images=False)
    params = QuantifyParams()
    out = []
    for r in samples.to_dict("records"):
        data, _ = read_image(r["abs_path"])  # warm the page cache: both timings read from memory
        roles = [r[k] for k in ("synapse_channel", "microglia_channel", "lysosome_channel") if not pd.isna(r[k])]
        t0 = time.perf_counter()
        data, _ = read_image(r["abs_path"])
        for ch in roles:
            plane = data[int(ch)]  # (Z)YX; along a length-1 axis the pass is a costly identity
            ndimage.gaussian_filter(plane.astype(np.float32), sigma=[2.0 if n > 1 else 0.0 for n in plane.shape])
        floor = time.perf_counter() - t0
        task = {**r, "params": params}
        t0 = time.perf_counter()
        _, _, failure = _quantify_row(task)
        full = time.perf_counter() - t0
        assert failure is None, failure
        prof = cProfile.Profile()  # a second run, profiled: time inside the ndimage filters
        prof.runcall(_quantify_row, task)
        out.append({"image_id": r["image_id"], "kind": "terminal" if len(roles) > 1 else "synapse",
                    "channels": len(roles), "megapixels": data.shape[-1] * data.shape[-2] / 1e6,
                    "floor_s": floor, "full_s": full, "ndimage_s": _ndimage_seconds(pstats.Stats(prof))})
    df = pd.DataFrame(out)
    df["full_s_per_mp_channel"] = df.full_s / (df.megapixels * df.channels)
    df["ratio_to_floor"] = df.full_s / df.floor_s
    df["ndimage_to_floor"] = df.ndimage_s / df.floor_s
    return df


def _ndimage_seconds(stats: pstats.Stats) -> float:
    """Seconds spent inside scipy.ndimage's compiled filters (the full-image passes)."""
    return sum(tt for (_file, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items()
               if "scipy.ndimage._nd_image." in func)


def profile_image(sheet: Path, kind: str, dest: Path) -> list[tuple[str, float]]:
    """cProfile of one image of ``kind``; writes the report and returns the top functions."""
    from analysis.io import load_samples
    from analysis.pipeline.quantify import QuantifyParams, _quantify_row

    samples = load_samples(sheet, check_images=False)
    is_term = samples.microglia_channel.notna()
    r = samples[is_term if kind == "terminal" else ~is_term].iloc[0].to_dict()
    prof = cProfile.Profile()
    prof.runcall(_quantify_row, {**r, "params": QuantifyParams()})
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("cumulative")
    stats.print_stats(40)
    dest.write_text(buf.getvalue())
    total = stats.total_tt
    top = []
    for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        if "/analysis/" in file and func not in {"_quantify_row", "quantify_image"}:
            top.append((f"{Path(file).stem}.{func}", ct / total))
    return sorted(top, key=lambda x: -x[1])[:8]


def measured_run(sheet: Path, out: Path, workers: int) -> dict[str, float]:
    """Run :func:`quantify_study` on a fresh LocalCluster in a child process; time and peak memory.

    The resident memory of the child and all its descendants is summed every 0.25 s (the list
    of descendants is refreshed every second, which keeps the sampler's own CPU use small).
    """
    import psutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "_run", "--sheet", str(sheet), "--out", str(out), "--workers", str(workers)]
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        procs: list[Any] = [root]
        for tick in itertools.count():
            if done.is_set():
                return
            if tick % 4 == 0:
                with contextlib.suppress(psutil.Error):
                    procs = [root, *root.children(recursive=True)]
            total = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            peak = max(peak, total)
            time.sleep(0.25)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    stdout, _ = proc.communicate()
    done.set()
    t.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {proc.returncode}")
    res = json.loads(stdout.strip().splitlines()[-1])
    res["peak_rss_mb"] = peak / 2**20
    res["load_avg_1min_before"] = load_before
    return res


def _cpu_seconds() -> float:
    """User + system CPU time of the calling process (run on each worker)."""
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def child_run(sheet: str, out: str, workers: int) -> None:
    """Child process of :func:`measured_run`: start the cluster, then time the quantification.

    Besides wall time it reports the CPU seconds the workers and this process spent on the
    run, so that the scaling can be judged apart from other load on a shared machine.
    """
    from distributed import Client

    from analysis.pipeline.quantify import _local_cluster, quantify_study

    t0 = time.perf_counter()
    with _local_cluster(workers) as cluster, Client(cluster, set_as_default=False) as client:
        startup = time.perf_counter() - t0
        before = client.run(_cpu_seconds)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        m = quantify_study(sheet, out, scheduler=client, progress=False)
        seconds = time.perf_counter() - t0
        parent_cpu = time.process_time() - cpu0
        after = client.run(_cpu_seconds)
    worker_cpu = {w: after[w] - before[w] for w in after}
    print(json.dumps({"images": len(m), "seconds": seconds, "startup_s": startup,
                      "worker_cpu_s": sorted(worker_cpu.values()), "parent_cpu_s": parent_cpu}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a folder in the system temp dir)")
    parser.add_argument("--distinct", type=int, default=1000, help="distinct images rendered from the large design")
    parser.add_argument("--small", type=int, default=100, help="images of the small run")
    parser.add_argument("--big", type=int, default=1000, help="images of the big run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs per worker count for the throughput; the fastest counts (default: 2)")
    args = parser.parse_args()
    import tempfile

    work = Path(args.workdir or Path(tempfile.gettempdir()) / "analysis-bench")
    raw = work / "raw"
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    distinct = render_subset(raw, args.distinct, args.seed)
    small, big = raw / f"samples_{args.small}.csv", raw / f"samples_{args.big}.csv"
    write_sheet(distinct, args.small, small)
    write_sheet(distinct, args.big, big)

    per = per_image_times(small)
    per.to_csv(RESULTS / "per_image.csv", index=False)
    profiles = {k: profile_image(small, k, RESULTS / f"profile_{k}.txt") for k in ("synapse", "terminal")}
    runs: dict[str, dict[str, float]] = {}
    plan = [("1 worker, small", small, 1), ("2 workers, small", small, 2)] * args.repeat
    for name, sheet, workers in [*plan, ("2 workers, big", big, 2)]:
        res = measured_run(sheet, work / "out", workers)
        print(f"{name}: {res}", flush=True)
        if name not in runs or res["seconds"] < runs[name]["seconds"]:  # the least disturbed run
            runs[name] = {**res, "peak_rss_mb": max(res["peak_rss_mb"], runs.get(name, res)["peak_rss_mb"])}
    shutil.rmtree(work / "out", ignore_errors=True)

    thr1 = runs["1 worker, small"]["images"] / runs["1 worker, small"]["seconds"]
    thr2 = runs["2 workers, small"]["images"] / runs["2 workers, small"]["seconds"]
    cpu1, cpu2 = (sum(runs[k]["worker_cpu_s"]) / runs[k]["images"] for k in ("1 worker, small", "2 workers, small"))
    # the cores the two workers actually got (2.0 on an idle machine): busy CPU / wall time
    core_share = sum(runs["2 workers, small"]["worker_cpu_s"]) / runs["2 workers, small"]["seconds"]
    mem_small, mem_big = runs["2 workers, small"]["peak_rss_mb"], runs["2 workers, big"]["peak_rss_mb"]
    by_kind = per.groupby("kind").agg(n=("full_s", "size"), median_full_s=("full_s", "median"),
                                      median_floor_s=("floor_s", "median"),
                                      median_s_per_mp_channel=("full_s_per_mp_channel", "median"),
                                      median_ratio=("ratio_to_floor", "median"),
                                      median_ndimage_ratio=("ndimage_to_floor", "median"))
    summary = {
        "machine_cpus": os.cpu_count(),
        "images_distinct": len(distinct),
        "median_s_per_image": float(per.full_s.median()),
        "mean_s_per_image": float(per.full_s.mean()),
        "median_s_per_mp_channel": float(per.full_s_per_mp_channel.median()),
        "median_floor_s": float(per.floor_s.median()),
        "ratio_to_floor_median_per_image": float(per.ratio_to_floor.median()),
        "ratio_to_floor_total": float(per.full_s.sum() / per.floor_s.sum()),
        "ndimage_to_floor_median_per_image": float(per.ndimage_to_floor.median()),
        "by_kind": by_kind.reset_index().to_dict("records"),
        "throughput_1_worker_img_per_s": thr1,
        "throughput_2_workers_img_per_s": thr2,
        "scaling_efficiency_2_workers": thr2 / (2 * thr1),
        "cpu_s_per_image_1_worker": cpu1,
        "cpu_s_per_image_2_workers": cpu2,
        "cpu_efficiency_2_workers": cpu1 / cpu2,
        "core_share_2_workers": core_share,
        "peak_rss_mb_small": mem_small,
        "peak_rss_mb_big": mem_big,
        "peak_rss_growth": mem_big / mem_small - 1,
        "runs": runs,
        "profiles": profiles,
        "bench_seconds": time.perf_counter() - started,
    }
    (RESULTS / "bench_quantify.json").write_text(json.dumps(summary, indent=2) + "\n")

    print("\nper image (in-process, %d images of the large preset):" % len(per))
    print(by_kind.round(4).to_string())
    rows = [
        ("median s / image", f"{summary['median_s_per_image']:.3f}", ""),
        ("median s / megapixel / channel", f"{summary['median_s_per_mp_channel']:.3f}", ""),
        ("per-image time / floor (median of ratios)", f"{summary['ratio_to_floor_median_per_image']:.1f}", "<= 4"),
        ("total time / total floor", f"{summary['ratio_to_floor_total']:.1f}", "<= 4"),
        ("time inside ndimage filters / floor (median)", f"{summary['ndimage_to_floor_median_per_image']:.1f}", ""),
        ("throughput 1 worker (img/s)", f"{thr1:.2f}", ""),
        ("throughput 2 workers (img/s)", f"{thr2:.2f}", ""),
        ("scaling efficiency, 2 workers (wall)", f"{summary['scaling_efficiency_2_workers']:.2f}", ">= 0.8"),
        ("CPU s / image, 1 worker", f"{cpu1:.3f}", ""),
        ("CPU s / image, 2 workers", f"{cpu2:.3f}", ""),
        ("CPU efficiency, 2 workers (cpu1 / cpu2)", f"{cpu1 / cpu2:.2f}", ""),
        ("cores the 2 workers got (CPU s / wall s)", f"{core_share:.2f}", "2.00 if idle"),
        (f"peak RSS {args.small} images (MB)", f"{mem_small:.0f}", ""),
        (f"peak RSS {args.big} images (MB)", f"{mem_big:.0f}", ""),
        ("peak RSS growth", f"{summary['peak_rss_growth']:+.1%}", "within 20 %"),
    ]
    print()
    print(pd.DataFrame(rows, columns=["figure", "value", "target"]).to_string(index=False))
    for kind, top in profiles.items():
        print(f"\nprofile, one {kind} image (share of its time, cumulative):")
        for name, share in top:
            print(f"  {share:6.1%}  {name}")
    print(f"\nresults in {RESULTS}; benchmark took {summary['bench_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        p = argparse.ArgumentParser()
        p.add_argument("_run")
        p.add_argument("--sheet")
        p.add_argument("--out")
        p.add_argument("--workers", type=int)
        a = p.parse_args()
        child_run(a.sheet, a.out, a.workers)
    else:
        main()
