"""Bayesian posteriors of every pixel (after its MAP fit), with numpyro.

* :mod:`.problem`: one pixel's posterior (parameters, priors, log density) and :class:`Prior`;
* :mod:`.kernels`: the independence Metropolis-Hastings kernel and its proposal;
* :mod:`.samplers`: :class:`NUTS`, :class:`Ensemble`, :class:`MH`, :class:`Importance`, :class:`Nested`, each an
  object that owns only its options and samples ONE pixel;
* :mod:`.posterior`: a sampler as the per-spectrum program the engine maps over a cube;
* :mod:`.evidence`: :class:`EvidenceSelection`, one or two components by evidence.
"""

from lucijax.bayes.evidence import EvidenceSelection, Selection
from lucijax.bayes.posterior import Posterior, posterior_program
from lucijax.bayes.problem import PixelData, PixelProblem, Prior
from lucijax.bayes.samplers import MH, NUTS, SAMPLERS, Ensemble, Importance, Nested, Sampler

__all__ = ["NUTS", "Ensemble", "MH", "Importance", "Nested", "Sampler", "SAMPLERS", "Prior", "EvidenceSelection", "Selection",
           "Posterior", "PixelData", "PixelProblem", "posterior_program"]
