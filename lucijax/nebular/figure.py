"""The figure of :class:`~lucijax.nebular.PhysicsResult`: the main physical maps and the
[NII] BPT diagram with its dividing lines."""

from __future__ import annotations

import numpy as np

from lucijax.nebular.diagnostics import BPT_CLASSES, kauffmann03, kewley01, schawinski07
from lucijax.plots import _finish, _robust_limits, plt

PANELS = (("LOG_NII_HA", "log [NII]/Ha"), ("LOG_SII_HA", "log [SII]/Ha"), ("DENSITY", "n_e (cm-3)"),
          ("EBV", "E(B-V)"), ("OH_N2", "12+log(O/H) N2"), ("BPT_CLASS", "BPT class"))
CLASS_COLOURS = {1: "tab:blue", 2: "tab:green", 3: "tab:orange", 4: "tab:red"}


def plot_physics(maps: dict, units: dict, path=None):
    """Up to six maps and, with [OIII]/Hbeta, the BPT diagram of every classified pixel."""
    from matplotlib.colors import ListedColormap

    panels = [(n, t) for n, t in PANELS if n in maps]
    bpt = "LOG_OIII_HB" in maps and "LOG_NII_HA" in maps
    n = len(panels) + int(bpt)
    ncols = min(3, max(n, 1))
    nrows = int(np.ceil(max(n, 1) / ncols))
    fig = plt.figure(figsize=(4.6 * ncols, 4.0 * nrows))
    for k, (name, title) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        img = np.asarray(maps[name], float)
        if name == "BPT_CLASS":
            img = np.where(img > 0, img, np.nan)
            cmap = ListedColormap([CLASS_COLOURS[c] for c in sorted(CLASS_COLOURS)])
            im = ax.imshow(img, origin="lower", cmap=cmap, vmin=0.5, vmax=4.5, interpolation="nearest")
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, ticks=[1, 2, 3, 4])
            cb.ax.set_yticklabels([BPT_CLASSES[c] for c in sorted(BPT_CLASSES)])
        else:
            if name == "DENSITY":
                img = np.log10(np.where(img > 0, img, np.nan))
                title = "log n_e (cm-3)"
            vmin, vmax = _robust_limits(img)
            im = ax.imshow(img, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(units.get(name, ""))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x (pixel)")
        ax.set_ylabel("y (pixel)")
    if bpt:
        ax = fig.add_subplot(nrows, ncols, len(panels) + 1)
        x, y = np.asarray(maps["LOG_NII_HA"], float).ravel(), np.asarray(maps["LOG_OIII_HB"], float).ravel()
        cls = np.asarray(maps.get("BPT_CLASS", np.zeros_like(x)), int).ravel()
        for c, colour in CLASS_COLOURS.items():
            sel = cls == c
            if sel.any():
                ax.scatter(x[sel], y[sel], s=3, c=colour, label=BPT_CLASSES[c], alpha=0.6, rasterized=True)
        xs = np.linspace(-2.0, 0.04, 200)
        ax.plot(xs, kauffmann03(xs), "k--", lw=1, label="Kauffmann+03")
        xs = np.linspace(-2.0, 0.46, 200)
        ax.plot(xs, kewley01(xs), "k-", lw=1, label="Kewley+01")
        xs = np.linspace(-0.18, 1.0, 50)
        ax.plot(xs, schawinski07(xs), "k:", lw=1, label="Schawinski+07")
        ax.set_xlim(-2.0, 1.0)
        ax.set_ylim(-1.5, 1.5)
        ax.set_xlabel("log [NII]6583/Halpha")
        ax.set_ylabel("log [OIII]5007/Hbeta")
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title("BPT", fontsize=10)
    return _finish(fig, path)
