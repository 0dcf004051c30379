"""Running trials to the budget: rounds of up to ``population`` trials trained in lockstep in
this process, and ``jobs`` worker processes on one machine.

One round asks up to P trials (Optuna ask/tell, a heartbeat thread per trial), and no more after
one that costs by itself what P of the cheapest candidates cost (`step_cost`: e.g. PPO's 16
updates with a critic), so that no round holds trials while another worker has none to train.
It trains them in lockstep batches of at most P (one batch of one when P = 1), rung by rung
with the reference (`grape_evo.search.campaign.rungs`), and tells each its result.
Candidates are ordered by data kind and group size before they are cut into batches, so
members of a batch sample alike. On Ctrl-C or SIGTERM every trial not yet told is recorded as
FAIL and queued again
(`storage.fail_and_retry`), so a resumed campaign trains the same candidates and spends its
whole budget; on any other error they are recorded as FAIL, as ``study.optimize`` records its
trial. `train_packed` trains runs outside the study (the re-evaluation), a
candidate's seeds packed into one population, its seeds split over the ``jobs`` processes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from grape_evo.objective import ObjectiveSpec, build_objective
from grape_evo.search.campaign.ledger import FINISHED, budget_claimed, waiting
from grape_evo.search.campaign.rungs import train_rungs
from grape_evo.search.campaign.storage import ask, fail_and_retry, fail_stale_trials, heartbeat
from grape_evo.search.campaign.trials import (
    Candidate,
    Rejected,
    Surplus,
    conclude,
    prepare,
    reuse,
)
from grape_evo.search.evaluator import CandidateResult
from grape_evo.training.losses import separate_critic

if TYPE_CHECKING:
    from grape_evo.search.campaign import Campaign

OnTrial = Callable[[optuna.Study, FrozenTrial], None]
PROGRESS_SECONDS = 1.0
"""How often a campaign with ``jobs > 1`` looks for trials its worker processes finished, and
how often a process that waits for trials running elsewhere looks at the study."""
STOP_SECONDS = 30.0
"""After Ctrl-C, how long worker processes get to record their interrupted trials."""
CHEAPEST_STEP = 2
"""`step_cost` of a candidate with one update per batch and no critic of its own."""


def run_to_budget(
    campaign: Campaign,
    study: optuna.Study,
    budget: int,
    on_trial: OnTrial | None = None,
    wait_for_running: bool = False,
) -> None:
    """Run rounds in this process until the study has ``budget`` finished trials (see
    `Campaign.optimize`)."""
    campaign.budget = budget
    if campaign.jobs > 1:
        run_worker_processes(campaign, study, budget, on_trial)
    while True:
        fail_stale_trials(study)
        if waiting(study) or budget_claimed(study) < budget:
            run_round(campaign, study, budget, on_trial)
            continue
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running or not wait_for_running:
            return
        time.sleep(min(campaign.heartbeat_interval, PROGRESS_SECONDS))


def run_round(
    campaign: Campaign, study: optuna.Study, budget: int, on_trial: OnTrial | None
) -> None:
    """Ask up to ``population`` trials, train them together and tell each its result."""
    untold: dict[int, optuna.Trial] = {}

    def tell(trial: optuna.Trial, values: Any, state: TrialState) -> None:
        frozen = study.tell(trial, values, state=state, skip_if_finished=True)
        del untold[trial.number]
        if on_trial is not None:
            on_trial(study, frozen)

    with contextlib.ExitStack() as beats:
        try:
            candidates: list[Candidate] = []
            while len(candidates) < campaign.population and (
                waiting(study) or budget_claimed(study) < budget
            ):
                trial = ask(study)
                untold[trial.number] = trial
                try:
                    candidate = prepare(campaign, trial)
                except Surplus:  # the budget is claimed: ask no more
                    tell(trial, None, TrialState.FAIL)
                    break
                except Rejected:  # stage one: a formula failed its cheap checks
                    tell(trial, None, TrialState.FAIL)
                    continue
                if candidate is None:  # another worker runs it and tells it
                    del untold[trial.number]
                    continue
                beats.enter_context(heartbeat(trial))
                reused = reuse(candidate)
                if reused is not None:
                    tell(trial, reused, TrialState.COMPLETE)
                    continue
                candidates.append(candidate)
                if step_cost(candidate.run.spec) >= campaign.population * CHEAPEST_STEP:
                    break
            for batch in batches(candidates, campaign.population):
                outcomes = train_rungs(campaign, study, batch)
                for candidate, (result, fitness) in zip(batch, outcomes, strict=True):
                    assert candidate.trial is not None
                    tell(candidate.trial, *conclude(candidate, result, fitness))
        except (KeyboardInterrupt, SystemExit):
            for trial in untold.values():
                fail_and_retry(study, trial)
            raise
        except BaseException:
            for trial in untold.values():
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise


def step_cost(spec: ObjectiveSpec) -> int:
    """A rough cost of one training step of one of the candidate's runs, in passes over the
    batch: 1 (sampling and the passes without gradient) plus its updates (epochs x
    minibatches), twice over with a value model of its own (it trains alongside)."""
    canonical = spec.canonical()
    models = 2 if separate_critic(build_objective(canonical)) else 1
    return 1 + canonical.epochs * canonical.minibatches * models


def by_kind(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates ordered by data kind and group size, so that neighbours sample alike."""

    def kind(candidate: Candidate) -> tuple[str, int]:
        spec = candidate.run.spec.canonical()
        return spec.data, spec.group_size

    return sorted(candidates, key=kind)


def batches(candidates: list[Candidate], size: int) -> list[list[Candidate]]:
    """Candidates cut into lockstep batches of at most ``size``, `by_kind`."""
    ordered = by_kind(candidates)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def train_packed(campaign: Campaign, candidates: list[Candidate]) -> list[CandidateResult]:
    """Train candidates without reporters (the re-evaluation) on the space's tasks and
    seeds, `by_kind`, packed (`Campaign.train_runs`).

    With ``jobs > 1`` the seeds are cut into ``jobs`` contiguous parts, each packed and
    trained in one of ``jobs`` spawned processes (``cores // jobs`` torch threads each), as
    the search's trials are; a candidate's runs are merged back in (task, seed) order. A run
    is the same wherever it trains (it depends only on its seed), and an interrupted call
    leaves its finished run folders to be read back."""
    ordered = by_kind(candidates)
    runs = [c.run for c in ordered]
    if not runs:
        return []
    if campaign.jobs == 1:
        packed = _train_runs((campaign, runs))
    else:
        seeds = runs[0].seed_indices()
        size = -(-len(seeds) // campaign.jobs)
        calls = [
            (
                campaign,
                [replace(run, seeds=seeds[start : start + size]) for run in runs],
            )
            for start in range(0, len(seeds), size)
        ]
        threads = max(1, usable_cores() // campaign.jobs)
        context = multiprocessing.get_context("spawn")
        with context.Pool(campaign.jobs, torch_threads, (threads,)) as pool:  # exit: terminate()
            parts = pool.map(_train_runs, calls, chunksize=1)
        slugs = [task.slug for task in campaign.space.tasks]
        packed = [CandidateResult() for _ in runs]
        for results in parts:
            for into, result in zip(packed, results, strict=True):
                into.runs += result.runs
                into.stopped = into.stopped or result.stopped
        for result in packed:
            result.order_runs(slugs)
    by_candidate = {id(c): result for c, result in zip(ordered, packed, strict=True)}
    return [by_candidate[id(c)] for c in candidates]


def torch_threads(threads: int) -> None:
    """A worker process's initialiser: ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)


def _train_runs(call: tuple[Campaign, list[Any]]) -> list[CandidateResult]:
    """A campaign's runs without reporters, packed (one picklable argument, for a pool)."""
    campaign, runs = call
    return campaign.train_runs(runs)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_worker_processes(
    campaign: Campaign, study: optuna.Study, budget: int, on_trial: OnTrial | None
) -> None:
    """Run ``jobs`` worker processes to the budget; report their trials as they finish.

    Each has ``max(1, cores // jobs)`` torch threads. Processes are spawned (not forked: CUDA
    cannot be forked). On Ctrl-C (or any error here) the workers are interrupted, get
    :data:`STOP_SECONDS` to record their trials as FAIL and queue their retries (a resumed
    campaign trains them), and are killed after that; a killed worker's RUNNING trial is
    retried on its stale heartbeat.
    """
    threads = max(1, usable_cores() // campaign.jobs)
    context = multiprocessing.get_context("spawn")
    worker = replace(campaign, jobs=1)
    processes = [
        context.Process(
            target=_worker_process, args=(worker, budget, threads), name=f"grape-worker-{i}"
        )
        for i in range(campaign.jobs)
    ]
    reported = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}

    def report_finished() -> None:
        for t in study.get_trials(deepcopy=False, states=FINISHED):
            if t.number not in reported:
                reported.add(t.number)
                if on_trial is not None:
                    on_trial(study, t)

    try:
        for process in processes:
            process.start()
        while any(p.is_alive() for p in processes):
            wait([p.sentinel for p in processes if p.is_alive()], timeout=PROGRESS_SECONDS)
            report_finished()
    except BaseException:
        _stop(processes)
        raise
    failed = [f"{p.name} (pid {p.pid}): {p.exitcode}" for p in processes if p.exitcode]
    if failed:
        warnings.warn(
            f"worker processes exited with an error status: {', '.join(failed)}; "
            "their unfinished trials are retried",
            RuntimeWarning,
            stacklevel=3,
        )


def _worker_process(campaign: Campaign, budget: int, threads: int) -> None:
    """One worker process of a campaign with ``jobs > 1``: trials until the budget is done.

    SIGTERM stops it as Ctrl-C does (whatever SIGINT's inherited disposition). When the
    campaign's process dies (even by SIGKILL) it sends itself one, and exits anyway
    :data:`STOP_SECONDS` later (Python drops an interrupt that lands in a finalizer), so a
    killed campaign leaves no orphaned workers training on.
    """
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    parent = multiprocessing.parent_process()
    if parent is not None:

        def stop_when_orphaned() -> None:
            wait([parent.sentinel])
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(STOP_SECONDS)
            os._exit(128 + signal.SIGTERM)  # its RUNNING trial is retried once stale

        threading.Thread(target=stop_when_orphaned, daemon=True).start()
    try:
        campaign.optimize(campaign.open(create=False), budget, wait_for_running=True)
    except KeyboardInterrupt:  # its trials are FAIL and queued again: exit without a traceback
        sys.exit(128 + signal.SIGINT)


def _raise_keyboard_interrupt(signum: int, _frame: Any) -> None:
    """A signal handler that stops the process as Ctrl-C does."""
    raise KeyboardInterrupt(f"signal {signum}")


def _stop(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """Stop worker processes: those that did not get the terminal's Ctrl-C themselves get a
    SIGTERM (which they handle as Ctrl-C); any still running after :data:`STOP_SECONDS` is
    killed."""
    started = [p for p in processes if p.pid is not None]
    _join_all(started, 2.0)  # a Ctrl-C typed in the terminal reached every worker too
    for process in started:
        if process.is_alive():
            process.terminate()
    _join_all(started, STOP_SECONDS)
    for process in started:
        if process.is_alive():
            process.kill()
            process.join()


def _join_all(processes: list[multiprocessing.process.BaseProcess], seconds: float) -> None:
    """Wait until every process has exited, or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while (alive := [p.sentinel for p in processes if p.is_alive()]) and (
        left := deadline - time.monotonic()
    ) > 0:
        wait(alive, timeout=left)
