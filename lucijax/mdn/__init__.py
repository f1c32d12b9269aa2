"""Per-spectrum posteriors of the velocity and the broadening from a network (MDN).

``load_predictor(filter_name, axis_obs_cm1, redshift)`` returns a pure, jax-traceable
function of ONE spectrum giving the Gaussian posterior (mean, sigma) of
[velocity_kms, broadening_kms]; it starts and bounds the MAP fit. Weights for each filter
ship in ``lucijax/mdn/weights`` with the JSON config that made them
(``scripts/train_mdn.py`` regenerates them).
"""

from lucijax.mdn.predictor import (
    WEIGHTS_DIR,
    MissingWeightsError,
    Predictor,
    available_filters,
    load_network,
    load_predictor,
)

__all__ = ["WEIGHTS_DIR", "MissingWeightsError", "Predictor", "available_filters", "load_network", "load_predictor"]
