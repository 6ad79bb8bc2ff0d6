"""Behavioural anomaly detection over the verdict stream: per-device streaming statistics, scores, the
leader's pass that acts on findings, and the findings' storage.

See README.md in this folder for what the package owns and what it may import.
"""

from hub.anomaly.scores import Assessment, assess
from hub.anomaly.stats import KINDS, DetectorConfig, DeviceStats
from hub.anomaly.watch import AnomalyWatch, PassResult, detector_config, fleet_counts

__all__ = [
    "KINDS", "AnomalyWatch", "Assessment", "DetectorConfig", "DeviceStats", "PassResult", "assess",
    "detector_config", "fleet_counts",
]
