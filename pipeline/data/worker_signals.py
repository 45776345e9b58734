"""Stop signals in a loader worker: the worker ends when its rank says so, and leaves every other
SIGTERM / SIGINT to the rank (:mod:`pipeline.engine.stop`), which saves a checkpoint first.

Why: a stop reaches the workers too — torchrun's agent stops a rank with ``killpg``, Slurm and
the ``deepspeed`` launcher signal every process of the job, a terminal's Ctrl-C the whole
foreground group. A worker killed by it made its rank fail ("DataLoader worker is killed by
signal") before the rank could reach the step boundary where it saves. But a worker must still
die of its rank's own SIGTERM (``DataLoader`` shutdown and ``multiprocessing``'s exit call
``terminate()`` and then wait for it), so SIGTERM is not simply ignored: a thread takes it with
its sender's pid and ends the process only when the sender is the rank. SIGKILL (the launchers'
and the kubelet's last word) and the rank's death (torch's watchdog) still end a worker.
"""

from __future__ import annotations

import os
import signal
import threading


def leave_stop_signals_to_the_rank(_worker_id: int) -> None:
    """``worker_init_fn`` of the loader's ``DataLoader`` (runs in each worker's main thread)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit it
    rank = os.getppid()
    threading.Thread(target=_end_on_the_ranks_sigterm, args=(rank,), daemon=True).start()


def _end_on_the_ranks_sigterm(rank: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != rank:
        pass  # another sender's stop: the rank stops at its next step boundary
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # the default action: terminated
