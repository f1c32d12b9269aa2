"""Training (optax) and evaluation of a filter's network on simulated spectra."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lucijax.mdn.config import FilterRecipe, NetConfig, TrainConfig
from lucijax.mdn.data import make_dataset
from lucijax.mdn.network import SpectrumNet, apply_batch, split_outputs, to_kms, to_normalised

#: Seed offset of the held-out evaluation spectra (never used in training).
EVAL_SEED_OFFSET = 1_000_003


def loss_fn(net: SpectrumNet, params, x, s, t, mdn: bool, nll_beta: float = 0.0):
    """Mean Gaussian negative log-likelihood (MDN) or squared error (CNN), normalised units.

    With ``nll_beta > 0`` each spectrum's NLL is weighted by ``stop_gradient(sigma**(2 *
    nll_beta))`` (beta-NLL, see :class:`~lucijax.mdn.config.TrainConfig`)."""
    mean, sigma = split_outputs(apply_batch(net, params, x, s), mdn)
    if mdn:
        z = (t - mean) / sigma
        nll = jnp.log(sigma) + 0.5 * z**2
        if nll_beta:
            nll = nll * jax.lax.stop_gradient(sigma ** (2.0 * nll_beta))
        return jnp.mean(nll)
    return jnp.mean((t - mean) ** 2)


def train(recipe: FilterRecipe, net_cfg: NetConfig, train_cfg: TrainConfig, progress: bool = True, log=print,
          init_params=None):
    """Simulate the training set from ``train_cfg.seed`` and fit the network.

    ``init_params``: start from these weights (a network of the same architecture and
    input size, e.g. another filter's with the same lines) instead of a random draw.
    Returns ``(params, history)``; history holds the per-epoch train and validation losses.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    data = make_dataset(recipe, train_cfg.n_train + train_cfg.n_val, train_cfg.seed, progress=progress)
    log(f"simulated {train_cfg.n_train + train_cfg.n_val} spectra in {time.perf_counter() - t0:.0f} s")
    x = jnp.asarray(data["x"])
    s = jnp.asarray(data["scalars"])
    t = to_normalised(jnp.asarray(data["theta"], jnp.float32))
    n_tr = train_cfg.n_train
    x_tr, s_tr, t_tr = x[:n_tr], s[:n_tr], t[:n_tr]
    x_va, s_va, t_va = x[n_tr:], s[n_tr:], t[n_tr:]

    net = SpectrumNet(net_cfg, recipe)
    key = jax.random.PRNGKey(train_cfg.seed)
    params = net.init(key, x[0], s[0])
    if init_params is not None:
        if jax.tree.structure(init_params) != jax.tree.structure(params) or any(
                a.shape != b.shape for a, b in zip(jax.tree.leaves(init_params), jax.tree.leaves(params))):
            raise ValueError("init_params do not match the network's architecture and input size")
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), init_params)
    bs = train_cfg.batch_size
    steps_per_epoch = n_tr // bs
    total = steps_per_epoch * train_cfg.epochs
    sched = optax.warmup_cosine_decay_schedule(0.0, train_cfg.learning_rate, min(500, total // 10), total, 1e-2 * train_cfg.learning_rate)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=train_cfg.weight_decay))
    opt_state = opt.init(params)
    mdn = net_cfg.mdn

    def step(carry, idx):
        p, o = carry
        loss, grads = jax.value_and_grad(
            lambda q: loss_fn(net, q, x_tr[idx], s_tr[idx], t_tr[idx], mdn, train_cfg.nll_beta))(p)
        updates, o = opt.update(grads, o, p)
        return (optax.apply_updates(p, updates), o), loss

    @jax.jit
    def run_steps(p, o, idx):
        (p, o), losses = jax.lax.scan(step, (p, o), idx)
        return p, o, jnp.mean(losses)

    @jax.jit
    def val_loss(p):  # the plain NLL (or MSE), comparable across nll_beta
        return loss_fn(net, p, x_va, s_va, t_va, mdn)

    rng = np.random.default_rng(train_cfg.seed)
    history = []
    per_call = 50
    for epoch in range(train_cfg.epochs):
        perm = rng.permutation(n_tr)[: steps_per_epoch * bs].reshape(steps_per_epoch, bs)
        losses = []
        for i in tqdm(range(0, steps_per_epoch, per_call), desc=f"epoch {epoch + 1}/{train_cfg.epochs}",
                      disable=not progress, leave=False):
            chunk = perm[i : i + per_call]
            if chunk.shape[0] < per_call:  # keep one compiled shape: drop the remainder
                break
            params, opt_state, loss = run_steps(params, opt_state, jnp.asarray(chunk))
            losses.append(float(loss))
        vl = float(val_loss(params))
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": vl,
                        "elapsed_s": time.perf_counter() - t0})
        log(f"epoch {epoch + 1}: train {np.mean(losses):.4f} val {vl:.4f} ({time.perf_counter() - t0:.0f} s)")
    return params, history


def predict_features(recipe: FilterRecipe, net_cfg: NetConfig, params, x, s, batch: int = 16384):
    """(mean, sigma) in km/s of preprocessed inputs (numpy, batched; broadening clipped at 0
    as in :func:`lucijax.mdn.load_predictor`)."""
    net = SpectrumNet(net_cfg, recipe)

    @jax.jit
    def f(xb, sb):
        mean, sigma = to_kms(*split_outputs(apply_batch(net, params, xb, sb), net_cfg.mdn))
        return mean.at[:, 1].set(jnp.maximum(mean[:, 1], 0.0)), sigma

    means, sigmas = [], []
    for i in range(0, x.shape[0], batch):
        m, sg = f(jnp.asarray(x[i : i + batch]), jnp.asarray(s[i : i + batch]))
        means.append(np.asarray(m))
        sigmas.append(np.asarray(sg))
    return np.concatenate(means), np.concatenate(sigmas)


def robust_std(x) -> float:
    x = np.asarray(x, np.float64)
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def metrics(theta, mean, sigma, select=None) -> dict:
    """Acceptance-1 numbers of predictions against truth: per parameter RMSE (km/s),
    fraction of truths inside mean +- 3 sigma, robust std of the z-scores."""
    sel = np.ones(len(theta), bool) if select is None else np.asarray(select)
    out = {"n": int(sel.sum())}
    for j, name in enumerate(("velocity", "broadening")):
        err = mean[sel, j] - theta[sel, j]
        out[f"{name}_rmse_kms"] = float(np.sqrt(np.mean(err**2)))
        out[f"{name}_bias_kms"] = float(np.mean(err))
        if np.all(np.isfinite(sigma[sel, j])):
            z = (theta[sel, j] - mean[sel, j]) / sigma[sel, j]
            out[f"{name}_coverage_3sigma"] = float(np.mean(np.abs(z) <= 3.0))
            out[f"{name}_z_robust_std"] = robust_std(z)
            out[f"{name}_median_sigma_kms"] = float(np.median(sigma[sel, j]))
    return out


def evaluation_set(recipe: FilterRecipe, seed: int, n: int, progress: bool = False):
    """Held-out spectra: simulated with ``seed + EVAL_SEED_OFFSET``."""
    return make_dataset(recipe, n, seed + EVAL_SEED_OFFSET, progress=progress)


def format_table(rows: list[tuple[str, dict]]) -> str:
    """A markdown table of :func:`metrics` rows."""
    head = ("| selection | n | v RMSE | v in ±3σ | v z-std | b RMSE | b in ±3σ | b z-std |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for label, m in rows:
        def g(k, fmt="{:.3f}"):
            return fmt.format(m[k]) if k in m else "–"
        lines.append(f"| {label} | {m['n']} | {g('velocity_rmse_kms', '{:.2f}')} | {g('velocity_coverage_3sigma')} | "
                     f"{g('velocity_z_robust_std')} | {g('broadening_rmse_kms', '{:.2f}')} | "
                     f"{g('broadening_coverage_3sigma')} | {g('broadening_z_robust_std')} |")
    return "\n".join(lines)


def snr_rows(data, mean, sigma, edges=(2, 3, 5, 10, 20, 50, 100)) -> list[tuple[str, dict]]:
    """Metrics at SNR >= 10 (the acceptance selection) and per SNR bin."""
    snr = data["snr"]
    rows = [("SNR >= 10", metrics(data["theta"], mean, sigma, snr >= 10))]
    for lo, hi in zip(edges[:-1], edges[1:]):
        rows.append((f"SNR {lo}-{hi}", metrics(data["theta"], mean, sigma, (snr >= lo) & (snr < hi))))
    return rows
