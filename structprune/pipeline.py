"""End-to-end jobs behind the CLI: load -> compress (or apply a plan) -> export -> write artifacts.

Everything a job writes lands in a staging folder that replaces the output folder only when the job
succeeded, so a failure (bad input, failed verification, failed parity, Ctrl-C) leaves nothing behind.
A Hugging Face model folder also gets `hf/` (save_pretrained and the folder's tokenizer files), and
`--data FILE.txt` is tokenised with that folder's tokenizer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from structprune.api import CompressResult, apply_plan, compress, export
from structprune.artifacts import Written, read_back
from structprune.capture.deploy import SavedPt2, save_pt2
from structprune.compress_config import CompressConfig
from structprune.criteria import get_criterion
from structprune.data import DATA_SOURCES, DataBundle, load_data
from structprune.data.load import text_source
from structprune.data.text import TEXT_MAX_LENGTH, length_batched
from structprune.errors import PlanError, UsageError
from structprune.graph.cost import count_macs, count_params
from structprune.group_lasso import GroupLassoConfig, prune_sparse, sparsify
from structprune.hf import without_cache
from structprune.hf.folder import save_folder
from structprune.io import atomic_torch_save, atomic_write_text, load_model, staged_output_dir
from structprune.io.arch import build_arch
from structprune.io.hf_folder import max_positions
from structprune.io.load import LoadedModel
from structprune.iterative import iterative_prune
from structprune.quality import (
    check_gate_can_run,
    check_labels_fit,
    quality_gate,
    with_accuracy,
    with_published_accuracy,
)
from structprune.recover import ActivateWhilePruning, AllReducedCriterion, is_main_process, recover
from structprune.recover.config import RecoveryConfig
from structprune.recover.distributed import barrier, current_context
from structprune.recover.recover import SCRATCH_METHODS
from structprune.report.summary import job_summary
from structprune.report.writers import write_reports
from structprune.selection import Plan, compose_plans


@dataclass(frozen=True)
class JobOptions:
    """Options of `structprune compress` / `apply`: how to prune and verify (`compress`, whose seed
    also seeds zoo weights and the data split), how to recover (`recovery`; none while its epochs
    are 0), and the job's own flags. Building one checks the flags that depend on each other
    (UsageError, worded for the command line); each config checks its own fields.

    >>> JobOptions("zoo:mlp", CompressConfig(ratio=0.3), data="digits").compress.ratio
    0.3
    """

    model: str
    compress: CompressConfig = field(default_factory=CompressConfig)
    recovery: RecoveryConfig = field(default_factory=lambda: RecoveryConfig(epochs=0))
    arch: str | None = None
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    trust_pickle: bool = False
    input_shape: tuple[int, ...] | None = None
    data: str | None = None
    batch_size: int = 64
    out: str | None = None
    force: bool = False
    onnx: bool = True
    plan: str | None = None
    latency_runs: int = 20
    iterative: int = 0
    ap: float | None = None
    max_accuracy_drop: float | None = None
    sparsity: GroupLassoConfig | None = None  # --sparsity-train: group-lasso training, then threshold pruning

    def __post_init__(self) -> None:
        _check_job(self)


@dataclass(frozen=True)
class JobResult:
    out_dir: Path
    report: dict
    summary: str


def run_job(options: JobOptions) -> JobResult:
    """Run one compress/apply job and write its artifacts; raises UsageError for bad input,
    VerificationError or QualityError for a result that does not hold up."""
    torch.manual_seed(options.compress.seed)  # zoo:NAME models are built from the seed, so runs are reproducible
    loaded = load_model(options.model, arch=options.arch, arch_kwargs=dict(options.arch_kwargs),
                        trust_pickle=options.trust_pickle, input_shape=options.input_shape)
    bundle = _load_bundle(options, loaded)
    check_labels_fit(loaded, bundle)
    check_gate_can_run(options, loaded, bundle)
    plan = _load_plan(options.plan) if options.plan else None
    out_dir = Path(options.out) if options.out else Path("export") / loaded.name
    if not is_main_process():  # under torchrun: take part in training and all-reduces, write nothing
        _compress(loaded, options, plan, bundle)
        barrier()
        return JobResult(out_dir, {}, "")
    steps = tqdm(total=5 if options.onnx else 4, desc="structprune", unit="step", disable=None, leave=False)
    with staged_output_dir(out_dir, options.force) as stage:
        report = _build_artifacts(stage, loaded, options, plan, bundle, steps)
    steps.close()
    barrier()
    return JobResult(out_dir, report, job_summary(report, out_dir))


def _build_artifacts(stage: Path, loaded: LoadedModel, options: JobOptions, plan: Plan | None,
                     bundle: DataBundle | None, steps: tqdm) -> dict:
    """Compress, write every artifact into `stage`, read each one back and check it, gate, report."""
    steps.set_postfix_str("compress + verify")
    result = _compress(loaded, options, plan, bundle)
    steps.update()
    report = with_accuracy(result, loaded, bundle)
    quality_gate(report, options)  # fail on the in-memory model before spending time on export
    steps.set_postfix_str("save model")
    tokenizer_files = _write_hf(stage, loaded, result)  # before the others: it saves the user's use_cache
    with without_cache(result.model):  # a causal LM's KV cache is no output torch.export or ONNX can hold
        saved = _write_models(stage, loaded, result)
    steps.update()
    parity = None
    if options.onnx:
        steps.set_postfix_str("onnx export + parity + latency")
        report = report.with_extra(onnx=_export_and_check(stage, loaded, result, options.latency_runs))
        parity = report.extra["onnx"].get("parity")
        steps.update()
    steps.set_postfix_str("read back artifacts")
    written = Written(result.model, result.plan, saved, _rebuilder(loaded, result.plan), parity,
                      loaded.folder if loaded.source == "hf" else None, tokenizer_files)
    with without_cache(result.model):
        checked = read_back(stage, written)
    report = report.with_extra(artifacts=checked, pt2_dynamic_batch=saved.dynamic_batch)
    report = with_published_accuracy(report, stage, saved, bundle, result.model)
    quality_gate(report, options)  # the gate judges what is published, not only the in-memory model
    steps.update()
    _write_reports(stage, report.to_json())
    steps.update()
    return report.to_json()


def _rebuilder(loaded: LoadedModel, plan: Plan):
    """A function that rebuilds the pruned architecture from `--arch` (or the zoo), or None."""
    if loaded.arch is None:
        return None

    def rebuild() -> torch.nn.Module:
        fresh = build_arch(loaded.arch, loaded.arch_kwargs).model
        return apply_plan(fresh, loaded.example_inputs, plan, verify=False)

    return rebuild


def _check_job(options: JobOptions) -> None:
    """UsageError for flags that contradict each other or need others (the configs check their own)."""
    criterion = get_criterion(options.compress.criterion)
    if getattr(criterion, "needs_data", False) and options.data is None:
        raise UsageError(f"--criterion {getattr(criterion, 'name', options.compress.criterion)} is data-driven: "
                         "pass --data (digits, PATH.npz, a folder, or module:function)")
    if options.recovery.epochs and options.data is None:
        raise UsageError("--finetune-epochs needs training data: pass --data digits, PATH.npz, a folder, or "
                         "module:function")
    if options.max_accuracy_drop is not None and options.data is None:
        raise UsageError("--max-accuracy-drop needs labelled validation data: pass --data")
    if options.max_accuracy_drop is not None and options.max_accuracy_drop < 0:
        raise UsageError("--max-accuracy-drop is in accuracy points and must be >= 0, got "
                         f"{options.max_accuracy_drop:g}")
    if options.recovery.resume and not options.recovery.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir (the folder the interrupted run saved its checkpoints in)")
    if options.out is not None and not str(options.out).strip():
        raise UsageError("--out is empty; pass a folder name, or leave --out out for export/<model-name>/")
    if options.iterative < 0 or (options.ap is not None and not 0.0 < options.ap < 1.0):
        raise UsageError("--iterative must be >= 0 and --ap a share in (0, 1), e.g. 0.02")
    if options.iterative and options.compress.target is not None:
        raise UsageError("--iterative prunes by --ratio in cycles; it does not take --target-macs or --target-params")
    if options.iterative and options.recovery.method in SCRATCH_METHODS:
        raise UsageError(f"--iterative recovers the kept weights after every cycle and --recover "
                         f"{options.recovery.method} re-initialises them; use --recover finetune or distill with "
                         "--iterative, or drop --iterative to retrain the pruned architecture once")


def _load_bundle(options: JobOptions, loaded: LoadedModel) -> DataBundle | None:
    if options.data is None:
        return None
    return load_data(options.data, input_shape=loaded.sample_shape, batch_size=options.batch_size,
                     seed=options.compress.seed, sources=data_sources(loaded))


def data_sources(loaded: LoadedModel) -> tuple:
    """The data spec table; a Hugging Face folder's tokenizer reads `FILE.txt` (at most as many tokens
    as the model has positions)."""
    if loaded.folder is None:
        return DATA_SOURCES
    limit = max_positions(loaded.model.config.get_text_config()) or TEXT_MAX_LENGTH
    return (text_source(loaded.folder, min(TEXT_MAX_LENGTH, limit)), *DATA_SOURCES)


def _load_plan(path: str) -> Plan:
    try:
        return Plan.load(path)
    except FileNotFoundError as exc:
        raise UsageError(f"plan file '{path}' does not exist") from exc
    except (OSError, ValueError) as exc:
        raise UsageError(f"plan file '{path}' is not a structprune plan: {exc}") from exc


def _compress(loaded: LoadedModel, options: JobOptions, plan: Plan | None, bundle) -> CompressResult:
    if options.iterative and plan is None:
        return iterative_result(loaded, options, bundle)
    if options.sparsity is not None and plan is None:
        return recover_result(sparse_result(loaded, options, bundle), loaded, options, bundle)
    result = _compress_once(loaded, options, plan, bundle)
    return recover_result(result, loaded, options, bundle)


def _criterion(options: JobOptions):
    """The criterion object: AP-wrapped with --ap, rank-averaged under torchrun."""
    criterion = get_criterion(options.compress.criterion)
    if options.ap is not None:
        criterion = ActivateWhilePruning(options.compress.criterion, share=options.ap)
    return AllReducedCriterion(criterion) if current_context().enabled else criterion


def _compress_once(loaded: LoadedModel, options: JobOptions, plan: Plan | None, bundle) -> CompressResult:
    if plan is not None:
        try:
            return compress(loaded.model, loaded.example_inputs, config=options.compress, plan=plan)
        except PlanError as exc:  # a plan that does not fit the model is bad input
            raise UsageError(exc.message) from exc
    samples = criterion_samples(options.compress.criterion)
    return compress(loaded.model, loaded.example_inputs, config=options.compress, criterion=_criterion(options),
                    data=calibration_loader(bundle, samples) if bundle else None)


def recover_result(result: CompressResult, loaded, options, bundle) -> CompressResult:
    """Fine-tune / distill / retrain the pruned model when epochs and data are given."""
    if not options.recovery.epochs or bundle is None:
        return result
    report = result.report
    recovered = recover(result.model, bundle.train, bundle.val, options.recovery, dense=loaded.model,
                        dense_macs=report.macs_before, pruned_macs=report.macs_after)
    return CompressResult(recovered.model, result.plan, report.with_extra(recovery=recovered.to_json()),
                          result.graph)


def sparse_result(loaded, options, bundle) -> CompressResult:
    """`--sparsity-train E --group-lasso LAMBDA`: group-lasso training on the job's data (optimizer, LR and
    seed of the recovery flags), then threshold pruning by group norm (`structprune.group_lasso`)."""
    if bundle is None:
        raise UsageError("--sparsity-train trains on data: pass --data (digits, PATH.npz, a folder, or "
                         "module:function)")
    sparse = sparsify(loaded.model, loaded.example_inputs, bundle.train, bundle.val, options.sparsity,
                      training=options.recovery, config=options.compress)
    return prune_sparse(sparse, loaded.example_inputs, config=options.compress, data=calibration_loader(bundle))


def iterative_result(loaded, options, bundle) -> CompressResult:
    """`--iterative N`: N cycles, each pruning 1-(1-ratio)^(1/N) of what remains, then recovering. The
    cycles' plans are composed into one plan on the dense model's groups, so `structprune apply` can
    rebuild the final architecture from the original one."""
    if bundle is None or not options.recovery.epochs:
        raise UsageError("--iterative needs --data and --finetune-epochs (recovery runs after every cycle)")
    if options.compress.group_ratios:
        raise UsageError("--iterative prunes one ratio per cycle, spread over the cycles; drop --group-ratio, or "
                         "prune once with it")
    fraction = 1.0 - (1.0 - options.compress.ratio) ** (1.0 / options.iterative)
    dense = loaded.model if options.recovery.method in ("auto", "distill") else None
    outcome = iterative_prune(loaded.model, loaded.example_inputs, bundle.train, bundle.val,
                              cycles=options.iterative, fraction=fraction, criterion=options.compress.criterion,
                              config=options.recovery, dense=dense, ap_share=options.ap,
                              compress_kwargs={"config": options.compress})
    last = outcome.cycles[-1].report
    report = dataclasses.replace(last, params_before=count_params(loaded.model),
                                 macs_before=count_macs(loaded.model, loaded.example_inputs))
    section = {**outcome.to_json(), "fraction_per_cycle": round(fraction, 6),
               "accuracy_per_cycle": [c.recovery.final_val_accuracy for c in outcome.cycles]}
    return CompressResult(outcome.model, compose_plans(outcome.plans), report.with_extra(iterative=section),
                          None)


CALIBRATION_SAMPLES = 1024  # training samples handed to compress, unless the criterion reads more


def criterion_samples(criterion) -> int:
    """Training samples to hand `criterion` for scoring and calibration: its own `max_samples` where that is
    more than CALIBRATION_SAMPLES (obs reads 2048), else CALIBRATION_SAMPLES (the reconstruction that
    follows a data-driven criterion reads 1024 by default).

    >>> criterion_samples("obs"), criterion_samples("dropnet"), criterion_samples("l1")
    (2048, 1024, 1024)
    """
    asked = getattr(get_criterion(criterion), "max_samples", None)
    return max(CALIBRATION_SAMPLES, asked) if isinstance(asked, int) and not isinstance(asked, bool) \
        else CALIBRATION_SAMPLES


def calibration_loader(bundle: DataBundle, samples: int = CALIBRATION_SAMPLES, batch_size: int = 128):
    """A fixed, unshuffled loader over the first `samples` training samples (with labels), so scoring
    and calibration see the same data on every call (the training split is already in seeded order);
    texts are batched with texts of similar length (`length_batched`), so little of a pass is padding."""
    dataset = bundle.train.dataset
    chosen = length_batched(dataset, list(range(min(samples, len(dataset)))), batch_size)
    return DataLoader(Subset(dataset, chosen), batch_size=batch_size, shuffle=False, collate_fn=bundle.train.collate_fn)


def _write_hf(stage: Path, loaded: LoadedModel, result: CompressResult) -> tuple[str, ...]:
    """`hf/` for a model loaded from a Hugging Face folder: save_pretrained and the folder's tokenizer
    files (their names are returned; the read-back checks both)."""
    if loaded.source != "hf":
        return ()
    return save_folder(result.model, stage / "hf", loaded.folder)


def _write_models(stage: Path, loaded: LoadedModel, result: CompressResult) -> SavedPt2:
    atomic_write_text(stage / "plan.json", result.plan.to_json())
    atomic_torch_save(result.model.state_dict(), stage / "state_dict.pt")
    return save_pt2(result.model, loaded.example_inputs, stage / "model.pt2")


def _export_and_check(stage: Path, loaded: LoadedModel, result: CompressResult, runs: int) -> dict:
    section = export(result.model, loaded.example_inputs, stage / "model.onnx", dense=loaded.model,
                     latency_runs=runs)
    section["path"] = "model.onnx"
    return section


def _write_reports(stage: Path, report: dict) -> None:
    write_reports(report, stage)
