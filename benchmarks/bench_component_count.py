"""One or two components per pixel: the fast BIC map against the nested-sampling evidence.

Issue 21 item 6 and issue 16 acceptance 4. Spectra hold Halpha + [NII]6583/6548 once or
twice (``bench_bayes.two_component_set``): by default the second component 150-300 km/s
away at half the amplitude, Halpha SNR (peak / noise) log-uniform in 10-40, broadenings
20-60 km/s. Both selections run on the same spectra through the engine:

* ``lucijax.fit(cube, model, lucijax.Components(select=True))``: the one- and ordered
  two-component MAP fits, N = 2 where the BIC difference exceeds the threshold;
* ``lucijax.sample(cube, fit, lucijax.EvidenceSelection(estimator=...))``: the evidence of
  both models by importance sampling (the default) or nested sampling (``--estimator``;
  ``both`` runs each and compares their log Z), N = 2 where log Z2 - log Z1 > 0.

Printed: the right-N share of each kind for both, their agreement, the agreement as a
function of the BIC threshold (its calibration), and the time per spectrum of each (the
BIC fit's second run, compilation excluded; the evidence's one run, compilation included,
which is a small part of it) and their ratio.

    python benchmarks/bench_component_count.py --out /tmp/ncount --n-pixels 48 --estimator both
    python benchmarks/bench_component_count.py --out /tmp/ncount64 --n-pixels 2048
    python benchmarks/bench_component_count.py --out /tmp/ncount64 --n-pixels 2048 --no-evidence
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pair(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(":"))
    return lo, hi


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-pixels", type=int, default=48, help="spectra of each kind (one and two components)")
    p.add_argument("--snr", type=pair, default=(10.0, 40.0), help="Halpha SNR range of the first component")
    p.add_argument("--separation", type=pair, default=(150.0, 300.0), help="km/s between the components")
    p.add_argument("--broadening", type=pair, default=(20.0, 60.0), help="km/s, each component")
    p.add_argument("--second-ratio", type=float, default=0.5, help="second component's amplitude / the first's")
    p.add_argument("--bic-threshold", type=float, default=0.0)
    p.add_argument("--no-evidence", action="store_true", help="the BIC map only (large sets)")
    p.add_argument("--estimator", choices=["importance", "nested", "both"], default="importance",
                   help="the evidence's estimator (both: each, and their log Z compared)")
    p.add_argument("--importance-samples", type=int, default=2000)
    p.add_argument("--live-points", type=int, default=50)
    p.add_argument("--nested-slices", type=int, default=1)
    p.add_argument("--evidence-batch", type=int, default=24)
    p.add_argument("--seed", type=int, default=40)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*JAXopt is no longer maintained.*")

    import lucijax
    from bench_bayes import spectra_cube, two_component_set
    from lucijax.io.memory import MemoryCube
    from lucijax.simulate import make_cube

    lucijax.set_cpu_devices()
    lucijax.enable_compilation_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    header = MemoryCube.from_synthetic(make_cube(2, 2, seed=1)).header
    model = lucijax.Model(["Halpha", "NII6583", "NII6548"], profile="sincgauss", window=(15000.0, 15400.0))
    bound = model.bind(header)
    n = args.n_pixels
    y, fwhm, truth = two_component_set(bound, n, n, args.snr[0], args.seed, snr_max=args.snr[1],
                                       separation_kms=args.separation, broadening_kms=args.broadening,
                                       second_ratio=args.second_ratio)
    cube = spectra_cube(header, bound, y, fwhm)
    quiet = lucijax.Execution(progress=False)
    solver = lucijax.Components(select=True, bic_threshold=args.bic_threshold)
    t0 = time.perf_counter()
    lucijax.fit(cube, model, solver, execution=quiet)  # compiles
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    bic = lucijax.fit(cube, model, solver, execution=quiet)
    t_bic = time.perf_counter() - t0
    n_bic = bic.maps["N_COMPONENTS"][0].astype(int)
    dbic = bic.maps["DELTA_BIC"][0].astype(np.float64)
    two, one = truth == 2, truth == 1
    record = dict(spectra=int(y.shape[0]), channels=int(y.shape[1]), snr=args.snr, separation_kms=args.separation,
                  broadening_kms=args.broadening, second_ratio=args.second_ratio, seed=args.seed,
                  bic_threshold=args.bic_threshold, bic_first_run_s=t_first, bic_s=t_bic,
                  bic_spectra_per_s=y.shape[0] / t_bic,
                  bic_two_when_two=float(np.mean(n_bic[two] == 2)), bic_one_when_one=float(np.mean(n_bic[one] == 1)),
                  delta_bic_two_min=float(np.min(dbic[two])), delta_bic_one_max=float(np.max(dbic[one])))
    print(f"BIC map: {y.shape[0]} spectra in {t_bic:.2f} s ({record['bic_spectra_per_s']:.0f} spectra/s; first run "
          f"with compilation {t_first:.0f} s); right N: two {record['bic_two_when_two']:.1%}, "
          f"one {record['bic_one_when_one']:.1%}")
    if not args.no_evidence:
        fit1 = lucijax.fit(cube, model, lucijax.MAP(start="matched"), execution=quiet)
        estimators = {"importance": lucijax.Importance(num_samples=args.importance_samples),
                      "nested": lucijax.Nested(num_live_points=args.live_points, slices_per_dim=args.nested_slices,
                                               num_samples=300)}
        names = list(estimators) if args.estimator == "both" else [args.estimator]
        runs = {}
        for name in names:
            t0 = time.perf_counter()
            sel = lucijax.sample(cube, fit1, lucijax.EvidenceSelection(estimator=estimators[name]),
                                 execution=lucijax.Execution(batch_size=args.evidence_batch, progress=True))
            t_ev = time.perf_counter() - t0
            n_ev = sel.maps["N_COMPONENTS"][0].astype(int)
            dlogz = sel.maps["DELTA_LOGZ"][0].astype(np.float64)
            logz = {m: sel.maps[f"LOGZ_{m}COMP"][0].astype(np.float64) for m in (1, 2)}
            runs[name] = (n_ev, logz)
            thresholds = np.arange(-10.0, 20.5, 2.0)
            agree_by = {float(t): float(np.mean(np.where(dbic > t, 2, 1) == n_ev)) for t in thresholds}
            rec = dict(seconds=t_ev, spectra_per_s=y.shape[0] / t_ev,
                       speed_ratio=(t_ev / y.shape[0]) / (t_bic / y.shape[0]),
                       two_when_two=float(np.mean(n_ev[two] == 2)), one_when_one=float(np.mean(n_ev[one] == 1)),
                       agreement=float(np.mean(n_bic == n_ev)), agreement_two=float(np.mean(n_bic[two] == n_ev[two])),
                       agreement_one=float(np.mean(n_bic[one] == n_ev[one])), agreement_by_threshold=agree_by,
                       delta_logz=[float(v) for v in dlogz], logz_err_max=float(np.nanmax(np.stack(
                           [sel.maps[f"LOGZ_ERR_{m}COMP"][0] for m in (1, 2)]))) if "LOGZ_ERR_1COMP" in sel.maps else None)
            if name == "nested":
                rec.update(live_points=args.live_points, nested_slices=args.nested_slices)
            record[f"evidence_{name}"] = rec
            print(f"evidence ({name}): {y.shape[0]} spectra in {t_ev:.1f} s ({rec['spectra_per_s']:.3f} spectra/s, "
                  f"compilation included); right N: two {rec['two_when_two']:.1%}, one {rec['one_when_one']:.1%}")
            print(f"  BIC vs evidence: same N for {rec['agreement']:.1%} (two-component spectra "
                  f"{rec['agreement_two']:.1%}, one-component {rec['agreement_one']:.1%}); BIC "
                  f"{rec['speed_ratio']:.0f}x faster per spectrum")
            print("  agreement by BIC threshold: " + ", ".join(f"{t:+.0f}: {a:.1%}" for t, a in agree_by.items()))
        record["delta_bic"] = [float(v) for v in dbic]
        if len(runs) == 2:
            (n_i, lz_i), (n_n, lz_n) = runs["importance"], runs["nested"]
            diff = {m: lz_i[m] - lz_n[m] for m in (1, 2)}
            record["importance_vs_nested"] = dict(
                same_n=float(np.mean(n_i == n_n)),
                **{f"logz{m}_diff_median": float(np.median(diff[m])) for m in (1, 2)},
                **{f"logz{m}_diff_p05_p95": [float(np.percentile(diff[m], 5)), float(np.percentile(diff[m], 95))]
                   for m in (1, 2)})
            print("importance - nested: same N for {same_n:.1%}; log Z1 difference median {logz1_diff_median:+.2f} "
                  "(5-95 %: {logz1_diff_p05_p95}), log Z2 {logz2_diff_median:+.2f} (5-95 %: {logz2_diff_p05_p95})"
                  .format(**record["importance_vs_nested"]))
    (args.out / "bench_component_count.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out / 'bench_component_count.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
