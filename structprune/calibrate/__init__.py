"""Calibration after a rewrite: BatchNorm statistics, least-squares reconstruction, sampled-channel
rescaling; plus the hook and batch utilities the data-driven criteria share."""
from structprune.calibrate.batches import Batch, calibration_batches, model_device, run_model, split_batch
from structprune.calibrate.batchnorm import recalibrate_batchnorm
from structprune.calibrate.hooks import StopForward, eval_mode, forward_hooks, run_until
from structprune.calibrate.reconstruct import LayerFit, ReconstructionReport, reconstruct
from structprune.calibrate.scales import SCALES_KEY, apply_channel_scales

__all__ = ["Batch", "LayerFit", "ReconstructionReport", "SCALES_KEY", "StopForward", "apply_channel_scales",
           "calibration_batches", "eval_mode", "forward_hooks", "model_device", "recalibrate_batchnorm",
           "reconstruct", "run_model", "run_until", "split_batch"]
