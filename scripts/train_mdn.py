#!/usr/bin/env python
"""Regenerate the training spectra of a filter and retrain its network from a seed.

    python scripts/train_mdn.py --filter SN3 --seed 0            # MDN -> lucijax/mdn/weights/
    python scripts/train_mdn.py --filter SN3 --seed 0 --cnn      # point-estimate CNN
    python scripts/train_mdn.py --filter SN2 --out /tmp/mdn      # somewhere else

Writes ``{FILTER}_{mdn|cnn}.msgpack`` (flax.serialization) and ``.json`` (recipe,
architecture, training settings, losses, held-out metrics) and prints the acceptance-1
table (held-out spectra, SNR >= 10 and per SNR bin).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

# one CPU device using every core (lucijax.set_cpu_devices() reads it; its default is one
# device per core)
os.environ.setdefault("LUCIJAX_CPU_DEVICES", "1")

#: Epochs of the shipped networks (filter, kind) where they differ from TrainConfig's default.
DEFAULT_EPOCHS = {("SN1", "mdn"): 24, ("SN2", "mdn"): 24, ("SN3", "mdn"): 24, ("SN3", "cnn"): 10,
                  ("C1", "mdn"): 12, ("C2", "mdn"): 8, ("C3", "mdn"): 6, ("C4", "mdn"): 16}
#: beta-NLL weight of the shipped MDNs where it differs from TrainConfig's default (0).
DEFAULT_NLL_BETA = {"SN1": 0.5, "SN2": 0.5, "SN3": 0.5, "C1": 0.5, "C2": 0.5, "C3": 0.5, "C4": 0.5}


#: Training spectra of the shipped networks where they differ from TrainConfig's default
#: (the C filters' networks were trained on a shared 2-core machine in a time budget).
DEFAULT_N_TRAIN = {"C1": 50_000, "C2": 50_000, "C3": 50_000}
#: Shipped MDN the training starts from (same lines, grid size and architecture).
DEFAULT_INIT_FROM = {"C3": "SN2"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default="SN3", choices=["SN1", "SN2", "SN3", "C1", "C2", "C3", "C4"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cnn", action="store_true", help="point-estimate CNN trained by MSE (mdn=False)")
    ap.add_argument("--out", default=None, help="output folder (default: the package's weights folder)")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--nll-beta", type=float, default=None,
                    help="beta of the beta-NLL loss (MDN; default: the shipped network's)")
    ap.add_argument("--init-from", default=None,
                    help="start from the shipped MDN of this filter (same lines and grid size; default: "
                         "the shipped network's, e.g. C3 from SN2)")
    ap.add_argument("--n-eval", type=int, default=20000)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from flax import serialization

    import lucijax
    from lucijax.mdn import WEIGHTS_DIR
    from lucijax.mdn.config import RECIPES, NetConfig, TrainConfig, save_config
    from lucijax.mdn.train import evaluation_set, format_table, predict_features, snr_rows, train

    lucijax.set_cpu_devices()  # before any computation
    lucijax.enable_compilation_cache()
    recipe = RECIPES[args.filter]
    net_cfg = NetConfig(mdn=not args.cnn)
    tc = TrainConfig(seed=args.seed)
    n_train = args.n_train or DEFAULT_N_TRAIN.get(args.filter)
    if n_train:
        tc = dataclasses.replace(tc, n_train=n_train)
    epochs = args.epochs or DEFAULT_EPOCHS.get((args.filter, "mdn" if net_cfg.mdn else "cnn"))
    if epochs:
        tc = dataclasses.replace(tc, epochs=epochs)
    beta = args.nll_beta if args.nll_beta is not None else DEFAULT_NLL_BETA.get(args.filter, 0.0)
    if net_cfg.mdn and beta:
        tc = dataclasses.replace(tc, nll_beta=beta)
    out = args.out or str(WEIGHTS_DIR)
    os.makedirs(out, exist_ok=True)
    kind = "mdn" if net_cfg.mdn else "cnn"
    t0 = time.perf_counter()
    init_from = args.init_from if args.init_from is not None else DEFAULT_INIT_FROM.get(args.filter)
    init = None
    if init_from and net_cfg.mdn:
        from lucijax.mdn import load_network

        init = load_network(init_from, True)[1]
        print(f"starting from the shipped {init_from} MDN")
    params, history = train(recipe, net_cfg, tc, progress=not args.no_progress, init_params=init)
    train_s = time.perf_counter() - t0

    ev = evaluation_set(recipe, args.seed, args.n_eval)
    mean, sigma = predict_features(recipe, net_cfg, params, ev["x"], ev["scalars"])
    rows = snr_rows(ev, mean, sigma)
    stem = os.path.join(out, f"{args.filter}_{kind}")
    with open(stem + ".msgpack", "wb") as f:
        f.write(serialization.to_bytes(params))
    save_config(stem + ".json", recipe, net_cfg, tc, extra={
        "history": history,
        "train_seconds": train_s,
        "heldout_metrics": {label: m for label, m in rows},
        "heldout_seed": args.seed,
        "heldout_n": args.n_eval,
        "init_from": init_from if init is not None else None,
    })
    print(f"\n{args.filter} {kind}: trained in {train_s:.0f} s, weights {stem}.msgpack")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
