"""Study storage: SQLite, any SQLAlchemy URL or a journal file, with heartbeats.

This is the only module that touches Optuna's private API (``optuna.storages._rdb``,
``optuna.storages._heartbeat``, ``Study._storage``, ``Trial._trial_id``); re-check it when
Optuna is upgraded.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from grape_evo.search.samplers.evolution import GENOME_KEY

STUDY_FILE = "study.db"
STORAGE_FILE = "storage.json"
"""Where a campaign folder whose study lives elsewhere (``--storage``) says where: the storage
URL, its password left out (libpq reads it from ``PGPASSWORD`` or ``~/.pgpass``), and the
study's name."""


MAX_RETRY = 3
"""How often one trial is retried after its worker died or was interrupted; a trial stopped
more often than that stays FAIL and counts toward the budget."""


class CampaignError(ValueError):
    """A user-facing problem with a campaign's folder, storage or study."""


def default_storage_url(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / STUDY_FILE).resolve()}"


def make_storage(
    url: str, heartbeat_interval: int = 10, grace_period: int | None = None
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (SQLAlchemy URL or ``journal:PATH``); SQLite waits up to
    60 s for a lock, so several local workers can share one file."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    heartbeat: dict[str, Any] = {
        "heartbeat_interval": heartbeat_interval,
        "grace_period": grace_period or 2 * heartbeat_interval,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
                heartbeat["heartbeat_stale_trial_callback"] = _retry_callback()
            else:
                heartbeat["failed_trial_callback"] = _retry_callback()
            return RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
    except Exception as err:  # SQLAlchemy raises many types for a bad URL
        raise CampaignError(f"cannot open storage '{url}': {err}") from None


def redacted(url: str) -> str:
    """``url`` without the password of its user part (``user:secret@host`` -> ``user@host``)."""
    scheme, sep, rest = url.partition("://")
    user, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in user:
        return url
    return f"{scheme}://{user.split(':', 1)[0]}@{host}"


def record_storage(run_dir: Path, url: str, study_name: str) -> None:
    """Write ``RUN/storage.json`` (`STORAGE_FILE`) for a study stored outside ``run_dir``."""
    if url == default_storage_url(Path(run_dir)):
        return
    path = Path(run_dir) / STORAGE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"storage": redacted(url), "study": study_name}, indent=2) + "\n")
    os.replace(tmp, path)


def load_run_study(run_dir: Path, study_name: str | None = None) -> optuna.Study:
    """The study of the campaign folder ``run_dir``: in its ``study.db`` (the only study there,
    or ``study_name``), else where its ``storage.json`` points."""
    path = Path(run_dir) / STUDY_FILE
    pointer = Path(run_dir) / STORAGE_FILE
    if path.is_file():
        storage = make_storage(default_storage_url(Path(run_dir)))
    elif pointer.is_file():
        try:
            stored = json.loads(pointer.read_text())
            url, study_name = str(stored["storage"]), study_name or str(stored["study"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CampaignError(f"{pointer} is unreadable: {err}") from None
        storage = make_storage(url)
        path = Path(url)
    else:
        raise CampaignError(
            f"{run_dir} holds no campaign (no {STUDY_FILE} or {STORAGE_FILE}); `grape evolve "
            f"SPACE --out {run_dir}` writes one"
        )
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if study_name is None:
        if len(names) != 1:
            raise CampaignError(f"{path} holds {len(names)} studies {names}; name one")
        study_name = names[0]
    if study_name not in names:
        raise CampaignError(f"{path} holds no study '{study_name}'; studies there: {names}")
    return optuna.load_study(study_name=study_name, storage=storage)


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's stale-trial check, plus RUNNING trials that never sent a heartbeat.

    Optuna fails a trial only once its last heartbeat is older than the grace period; a worker
    killed between creating a trial and its first heartbeat leaves it RUNNING with none, and
    a campaign waiting for it would wait forever. Such a trial is failed (and retried like any
    stale trial) once its start is older than the grace period (hosts' clocks must agree).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # a study wraps it in a cache
    if not isinstance(backend, RDBStorage) or backend.heartbeat_interval is None:
        return
    grace = backend.grace_period or 2 * backend.heartbeat_interval
    now = datetime.datetime.now()
    old = [
        t._trial_id
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace
    ]
    if not old:
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session) as session:
        query = session.query(models.TrialHeartbeatModel.trial_id)
        beating = {row[0] for row in query.filter(models.TrialHeartbeatModel.trial_id.in_(old))}
    get_callback = getattr(storage, "get_heartbeat_stale_trial_callback", None)
    get_callback = get_callback or storage.get_failed_trial_callback
    for trial_id in old:
        if trial_id in beating:
            continue
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first
        callback = get_callback()
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))


def _retry_callback() -> Any:
    """Optuna's callback that queues a failed trial again (``retry_history`` chains retries)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
            return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        return optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRY)


def fail_and_retry(study: optuna.Study, trial: optuna.Trial) -> None:
    """Record ``trial``, interrupted (Ctrl-C, SIGTERM), as FAIL and queue its retry, as a trial
    whose worker died is retried once its heartbeat is stale: an interrupted campaign resumes
    with the same candidates, and the interrupted trials do not count toward its budget. At
    most `MAX_RETRY` retries per trial; a trial already finished is left as it is."""
    if current_state(trial).is_finished():
        return
    queue_retry(study, study.tell(trial, state=TrialState.FAIL, skip_if_finished=True))


def queue_retry(study: optuna.Study, failed: FrozenTrial) -> None:
    """Queue a retry of the FAIL trial ``failed``: a WAITING trial with its parameters, user
    attributes and genome (``failed_trial`` and ``retry_history`` name the trials before it),
    unless it was retried `MAX_RETRY` times already."""
    _retry_callback()(study, failed)


def ask(study: optuna.Study) -> optuna.Trial:
    """A new trial (an enqueued one first); its heartbeat is sent by `heartbeat`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed")
        return study.ask()


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial) -> Iterator[None]:
    """Send ``trial``'s heartbeats (when the storage has them) while the block runs."""
    with get_heartbeat_thread(trial._trial_id, trial.study._storage):
        yield


def current_state(trial: optuna.Trial) -> TrialState:
    """``trial``'s state as the storage has it now (another worker may have finished it)."""
    return trial.study._storage.get_trial(trial._trial_id).state


def planned_genome(trial: optuna.Trial) -> dict[str, Any] | None:
    """The genome a sampler planned for ``trial`` (the evolution sampler's; None for others):
    it holds the formulas of expression axes, which Optuna's parameters cannot."""
    return trial.study._storage.get_trial_system_attrs(trial._trial_id).get(GENOME_KEY)


def is_enqueued(trial: optuna.Trial) -> bool:
    """Whether ``trial`` was enqueued (a baseline) or is the retry of a failed trial."""
    attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
    return "fixed_params" in attrs or "failed_trial" in attrs
