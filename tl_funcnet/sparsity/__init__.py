"""Training-free activation sparsity of MLP neurons as hook interventions: magnitude (TEAL-style), WINA and CHESS
thresholds calibrated to a target sparsity, with FN-aware variants that never zero functional networks' key units.
"""

from .calibrate import METHODS as METHODS
from .calibrate import ActivationSparsity as ActivationSparsity
from .calibrate import calibrate_sparsity as calibrate_sparsity

__all__ = ["METHODS", "ActivationSparsity", "calibrate_sparsity"]
