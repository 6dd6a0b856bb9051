"""Signals held during writes that must not stop half-way (``sc_fm.signals.deferred_interrupts``)."""

from __future__ import annotations

import signal

import pytest

from sc_fm.signals import Terminated, deferred_interrupts, install_sigterm_handler


@pytest.fixture(autouse=True)
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_a_sigterm_inside_the_block_is_raised_when_the_block_ends():
    install_sigterm_handler()
    sigint = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(Terminated):
        with deferred_interrupts():
            signal.raise_signal(signal.SIGTERM)
            done.append("the write went on")
        done.append("not reached")
    assert done == ["the write went on"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # the command's handler ran, as without the block
    assert signal.getsignal(signal.SIGINT) is sigint


def test_a_second_ctrl_c_inside_the_block_raises_at_once():
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            done.append("held")
            signal.raise_signal(signal.SIGINT)
            done.append("not reached")
    assert done == ["held"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_signal_stays_ignored_inside_the_block():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job started in the background with &
    with deferred_interrupts():
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_block_with_no_signal_changes_nothing():
    install_sigterm_handler()
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with deferred_interrupts():
        pass
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_sigterm_during_an_mlflow_write_lets_the_run_be_marked_killed(tmp_path, monkeypatch):
    """The stop that used to leave the SQLite database locked: the signal lands inside a metrics
    write; the write completes, then the stop unwinds and the run is closed as KILLED."""
    from mlflow import MlflowClient

    from sc_fm.config import TrackingConfig
    from sc_fm.tracking import RunTracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    install_sigterm_handler()
    tracker = RunTracker.start(TrackingConfig(), tmp_path, params={}, tags={}, resume=False)
    real_log_batch = tracker.client.log_batch

    def interrupted_log_batch(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # arrives while the write is under way
        return real_log_batch(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "log_batch", interrupted_log_batch)
    tracker.log_metrics({"loss": 1.5}, step=3)
    with pytest.raises(Terminated):
        tracker.flush()
    tracker.finish("KILLED")
    run = MlflowClient(tracker.uri).get_run(tracker.run_id)
    assert run.info.status == "KILLED" and run.data.metrics == {"loss": 1.5}
