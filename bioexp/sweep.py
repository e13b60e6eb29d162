"""Optuna sweeps that survive interruptions, failures and several workers (a Hydra sweeper).

``hydra-optuna-sweeper`` runs ``n_trials`` *new* trials per invocation, lets a NaN objective crash the
sweep and cannot tell a crashed worker's trial from a running one. This sweeper keeps its config
schema (``conf/hydra/sweeper/bioexp_optuna.yaml`` extends its ``optuna`` node; the Hydra plugin class is
``hydra_plugins.bioexp_sweeper``) and changes the loop:

- ``n_trials`` is the size of the *study*: each round asks only for the trials still missing, counting
  every finished trial and every trial another live worker is running, so an interrupted sweep re-run
  with the same command runs exactly the missing ones, and workers sharing one storage split the work.
- A trial whose worker died (same host, process gone) is marked failed (``fail_reason: interrupted``)
  and not counted; a trial asked beyond the budget by a racing worker is dropped (``surplus``).
- A raising job, a non-finite objective or a non-numeric return is a failed trial with its reason in
  the log and in the trial's ``fail_reason`` attribute; the sweep goes on unless more than
  ``max_failure_rate`` of this invocation's trials failed.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, Trial, TrialState

log = logging.getLogger(__name__)
WORKER = f"{socket.gethostname()}:{os.getpid()}"
UNCOUNTED = ("interrupted", "surplus")  # failed trials that do not use up the budget


def _alive(worker: str) -> bool:
    """Whether a worker ``host:pid`` may still be running (other hosts cannot be checked: assume yes)."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial uses up the budget: finished (not interrupted/surplus) or running on a live worker."""
    if trial.state == TrialState.RUNNING:
        return _alive(str(trial.user_attrs.get("worker", "")))
    return trial.user_attrs.get("fail_reason") not in UNCOUNTED


def objective(ret: JobReturn) -> tuple[float | None, str | None]:
    """A job's objective, or ``(None, reason)`` when it raised or returned something non-finite."""
    try:
        value = float(ret.return_value)  # re-raises the job's exception
    except Exception as error:  # noqa: BLE001 — any failure of a job is a failed trial, never a dead sweep
        return None, " ".join(f"{type(error).__name__}: {error}".split())[:500]  # one line for the log
    if not math.isfinite(value):
        return None, f"non-finite objective {value}"
    return value, None


def open_study(attempts: int = 5, **kwargs: Any) -> optuna.Study:
    """``optuna.create_study``, retried: workers started together on a new database race to create its
    schema, and the loser gets an IntegrityError/OperationalError although the study is fine a moment later."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(1, attempts):
        try:
            return optuna.create_study(**kwargs)
        except (IntegrityError, OperationalError):
            log.info("Study storage busy (another worker is creating it); retrying")
            time.sleep(0.5 * attempt)
    return optuna.create_study(**kwargs)


class StudySweep(OptunaSweeperImpl):
    """The sweep loop (the plugin's search-space parsing and trial configuration are reused)."""

    def sweep(self, arguments: list[str]) -> None:
        if not isinstance(self.sampler, optuna.samplers.BaseSampler):
            raise ValueError("bioexp's Optuna sweeper takes TPE/Random/CmaEs samplers; for a grid use "
                             "Hydra's basic sweeper (`-m key=a,b,c`)")
        self._process_searchspace_config()
        distributions, fixed = create_params_from_overrides([*self._parse_sweeper_params_config(), *arguments])
        distributions = {**(self.search_space_distributions or {}), **distributions}
        for name in fixed:
            distributions.pop(name, None)
        if isinstance(self.storage, str) and self.storage.startswith("sqlite:///"):
            Path(self.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        study = open_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                           directions=self._get_directions(), load_if_exists=True)
        self._fail_interrupted(study)
        done = sum(counts(t) for t in study.get_trials(deepcopy=False))
        log.info("Study %s (%s): %d of %d trials done or running", study.study_name, self.storage, done, self.n_trials)
        launched = failed = 0
        while batch := self._ask(study):
            overrides = self._configure_trials(batch, distributions, fixed)
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret in zip(batch, returns, strict=True):
                value, reason = objective(ret)
                if reason is None:
                    study.tell(trial, value)
                    continue
                trial.set_user_attr("fail_reason", reason)
                study.tell(trial, state=TrialState.FAIL)
                log.warning("Trial %d failed (%s); the sweep goes on", trial.number, reason)
                failed += 1
            launched += len(returns)
            if failed > self.max_failure_rate * launched:
                raise RuntimeError(f"{failed} of {launched} trials failed, more than hydra.sweeper.max_failure_rate="
                                   f"{self.max_failure_rate}: see the warnings above")
        self._write_results(study)

    def _fail_interrupted(self, study: optuna.Study) -> None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not counts(t):
                Trial(study, t._trial_id).set_user_attr("fail_reason", "interrupted")
                study.tell(t.number, state=TrialState.FAIL)
                log.warning("Trial %d was left running by a worker that died: marked failed, will be re-run", t.number)

    def _ask(self, study: optuna.Study) -> list[Trial]:
        """Up to ``n_jobs`` new trials, none beyond the study's ``n_trials`` (also against racing workers)."""
        missing = self.n_trials - sum(counts(t) for t in study.get_trials(deepcopy=False))
        batch = []
        for _ in range(max(0, min(self.n_jobs, missing))):
            trial = study.ask()
            trial.set_user_attr("worker", WORKER)
            batch.append(trial)
        if not batch:
            return []
        budget = sorted(t.number for t in study.get_trials(deepcopy=False) if counts(t))[: self.n_trials]
        keep = [t for t in batch if t.number in budget]
        for trial in batch:
            if trial not in keep:
                trial.set_user_attr("fail_reason", "surplus")
                study.tell(trial, state=TrialState.FAIL)
        return keep

    def _write_results(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        summary: dict[str, Any] = {
            "name": "optuna", "study_name": study.study_name, "storage": self.storage,
            "n_complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "n_failed": sum(t.state == TrialState.FAIL and counts(t) for t in trials),
        }
        if summary["n_complete"]:
            if len(study.directions) == 1:
                summary.update(best_params=study.best_trial.params, best_value=study.best_trial.value)
                log.info("Best value %s with %s", study.best_trial.value, study.best_trial.params)
            else:
                summary["solutions"] = [{"params": t.params, "values": t.values} for t in study.best_trials]
        out = Path(self.config.hydra.sweep.dir)
        out.mkdir(parents=True, exist_ok=True)  # absent when every trial was already done
        OmegaConf.save(OmegaConf.create(summary), out / "optimization_results.yaml")

