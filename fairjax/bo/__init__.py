"""Multi-objective Bayesian optimisation: 2-D hypervolume, exact EHVI, a GP,
and equal-budget optimisers behind one ask/tell-by-history `propose`."""

from fairjax.bo import gp
from fairjax.bo.ehvi import ehvi
from fairjax.bo.hypervolume import hypervolume, pareto_front, pareto_mask
from fairjax.bo.optimizers import (
    OPTIMIZERS,
    BOConfig,
    default_ref,
    optimize,
    propose,
    sobol_point,
)

__all__ = ["OPTIMIZERS", "BOConfig", "default_ref", "ehvi", "gp",
           "hypervolume", "optimize", "pareto_front", "pareto_mask",
           "propose", "sobol_point"]
