"""Calibration after a rewrite: BatchNorm statistics, least-squares reconstruction, sampled-channel
rescaling. Batches and model runs (hooks, eval mode) come from `structprune.data.batches` and
`structprune.data.running`."""
from structprune.calibrate.batchnorm import recalibrate_batchnorm
from structprune.calibrate.reconstruct import LayerFit, ReconstructionReport, reconstruct
from structprune.calibrate.scales import apply_channel_scales

__all__ = ["LayerFit", "ReconstructionReport", "apply_channel_scales", "recalibrate_batchnorm", "reconstruct"]
