"""Run one task script in a sandbox: the only place where Taskforge executes user code.

A package by concern: config (SandboxConfig, RunResult), output (output_text, chunking), uids
(per-run uid leases), files, janitor, bwrap, seccomp, limits (rlimits, cgroup), supervisor
(_Supervisor) and run (run_script); this module re-exports the public names.

The worker calls :func:`run_script` once per execution, from one of its threads, and turns the
returned :class:`RunResult` into database writes. This module knows nothing about Django models;
the only Django touch point is :meth:`SandboxConfig.from_settings`, which reads the
``TASKFORGE_SANDBOX_*`` settings lazily.

Public API
==========

``SandboxConfig``
    Frozen dataclass of limits and knobs. ``SandboxConfig()`` gives the SPEC defaults without
    touching Django; ``SandboxConfig.from_settings(**overrides)`` reads the settings.

``run_script(*, script, script_type, timeout_seconds, on_output, should_cancel, env_extra=None,
params=None, on_started=None, config=None) -> RunResult``
    Runs the script to the end and returns. It never raises for anything that happens to the
    script (spawn failures included: outcome ``spawn_failed``). It raises ``ValueError`` for
    programming errors in its arguments (unknown ``script_type``, an ``env_extra`` key outside the
    allow-list, params that are not JSON), before anything is created. An exception raised by one
    of the worker's callbacks is re-raised *after* the process group has been killed and the work
    directory removed, so a failing callback never leaves a script running unsupervised.

    * ``on_output(stream, data)``: ``stream`` is ``"stdout"`` or ``"stderr"``, ``data`` non-empty
      ``bytes`` of at most ``config.chunk_bytes``. Chunks are flushed at least every
      ``config.flush_interval_seconds`` so a UI can follow live. Chunks never split a UTF-8
      character (an incomplete trailing sequence is held back until its remaining bytes arrive),
      so the worker can decode each chunk on its own with ``errors="replace"``. At most
      ``config.output_cap_bytes`` are delivered per stream; the rest is read and discarded.
    * ``should_cancel()``: polled every ``config.cancel_poll_seconds`` (0.25 s) while the script
      runs. Return ``None`` to continue, ``"cancelled"`` (a user cancelled the execution: outcome
      ``cancelled``) or ``"worker_shutdown"`` (the worker is stopping: outcome ``killed``, error
      ``worker_shutdown``). Either stops the run within ``cancel_poll_seconds +
      cancel_grace_seconds`` (about 1.25 s by default, inside the SPEC's 2 s).
    * ``on_started(pid)``: called once the process exists, with its pid, which is also its
      process-group id.

``RunResult``
    ``outcome`` is one of ``succeeded`` (exit 0), ``failed`` (non-zero exit, or death by a signal
    the sandbox did not send, such as SIGXCPU or an out-of-memory kill), ``timed_out``,
    ``cancelled``, ``killed`` (stopped for ``worker_shutdown``) or ``spawn_failed``. ``error`` uses
    the SPEC's codes (``timeout``, ``cancelled``, ``worker_shutdown``, ``spawn_failed``, and
    ``memory_exceeded`` for a failed run whose cgroup saw an OOM kill) and is ``None`` otherwise;
    ``error_detail`` is human-readable text for logs.

How the sandbox is built, and why
=================================

* **Work directory**: ``tempfile.mkdtemp`` per run, HOME is the directory itself and TMPDIR a
  ``tmp`` directory inside it; the script (``script.py``/``script.sh``) and ``params.json`` are
  written there. It is removed in every case: when the run ends, or after its uid sweep (below).
* **Environment**: built from scratch (never ``os.environ``): PATH, LANG, HOME, TMPDIR,
  TASKFORGE_PARAMS_FILE, plus ``env_extra`` keys matching ``PARAM_*``,
  ``TASKFORGE_EXECUTION_ID`` and ``TASKFORGE_TASK_ID``. Anything else is a ``ValueError``.
  (Under bwrap, its ``--chdir`` also sets PWD to the work directory.)
* **Interpreters**: Python scripts run with the *system* ``python3`` found on the sandbox PATH
  (``config.python``), not ``sys.executable``: the worker's interpreter lives in a virtualenv
  (often under a home directory the unprivileged user cannot read, and outside what bubblewrap
  exposes) and would hand the script Django and every installed package. Python runs with
  ``-u`` so output is live without the script flushing. Bash scripts run with ``/bin/bash``.
* **Resource limits and the child's setup** come from two util-linux programs (an essential
  package on Debian, so bash scripts need nothing else), exec'd in turn by the process Popen
  creates, so pid == pgid throughout: ``prlimit --as --fsize --nofile --core=0 --cpu=soft:hard
  [--nproc] -- <next>`` sets RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE (0), RLIMIT_CPU
  (ceil(timeout) + ``cpu_extra_seconds``, soft; hard one second later, so the script first gets
  a catchable SIGXCPU) and, with a per-run uid, RLIMIT_NPROC on itself, then execs; without
  bwrap, ``setpriv [--reuid --regid --clear-groups] --pdeathsig KILL --no-new-privs --
  <interpreter> <script>`` follows (the script dies if the worker is killed with SIGKILL; setuid
  binaries cannot regain root). Under bwrap, prlimit execs bwrap (through ``setpriv --reuid
  --regid --clear-groups`` with a per-run uid): ``--die-with-parent`` is the parent-death signal
  and bwrap sets ``no_new_privs`` in the sandbox itself (setting it before a setuid bwrap, as
  some distributions ship, would stop bwrap from working). ``Popen(restore_signals=True)``, the
  default, resets SIGPIPE and SIGXFSZ (Python ignores them; ignored signals survive exec) in C.
  Why not the alternatives: ``preexec_fn`` runs Python code between fork and exec and can
  deadlock when other threads hold locks (the worker is threaded); ``resource.prlimit(pid,
  ...)`` after spawn races with the script, which is already running; a ``python3 -I -S``
  trampoline (the previous design) cost 6.5 ms (``-c pass``) to ~14 ms (with its imports) of CPU
  per run, and made bash scripts need python3. Failures are found before spawning where they can
  be: a missing prlimit/setpriv (``_SpawnError`` naming it), a limit above the worker's own hard
  limit (an unprivileged child can only lower what it inherits). What is left (a kernel refusing
  a limit, an exec that fails) makes the tool print ``prlimit: ...``/``setpriv: ...`` and exit
  1, 126 or 127: under bwrap no sandbox was started (bwrap never reported it), without bwrap the
  exit status, that stderr line and an empty stdout are read as ``spawn_failed``; only the
  script itself could imitate that, and only for its own run. The parent-death signal is set a
  moment after the fork: a worker killed inside that window leaves a script behind, which the
  uid sweep below ends.
* **A uid of its own per run**: when the worker runs as root, each run takes a uid of
  ``config.uid_range`` (default 200000-200999; its gid is the same number; numeric ids need no
  /etc/passwd entry; the range is refused if a user or group of the host owns one of them, or
  if the worker's user namespace does not map it),
  by an exclusive non-blocking ``flock`` of ``<uid>.lock`` in a root-owned directory
  (``config.uid_lock_dir``, default /run/taskforge-sandbox, or one in the system temp dir). The
  kernel drops the lock when the worker dies, however it dies, so workers on one host never share
  a uid (they must share the directory and range), and the lowest free uid is taken, so a few
  uids serve most runs. ``setpriv --reuid --regid --clear-groups``, exec'd by prlimit, drops to
  it (Popen's ``user=``/``group=`` would do it too, safely with threads, but make Popen fork the
  whole worker instead of using vfork: 2.2 ms of CPU per run against 0.1 ms). The work
  directory and its files are chowned to it (mode 0700/0600).
  **The uid sweep** SIGKILLs every process whose real, effective, saved or filesystem uid is the
  run's (a /proc scan of ``status``; pidfds so a recycled pid is never hit), again until none
  remain, for at most ``UID_SWEEP_SECONDS``. It runs after the main process exits (after the
  group kill), so a process that called ``setsid()`` or double-forked dies with the run: at once
  when such a process still holds the run's pipes (the sweep closes them; the run cannot end
  before), otherwise within ``JANITOR_INTERVAL`` (0.1 s) after the run, in one scan for every
  run that ended meanwhile (a scan is ~2 ms of CPU, a tenth of a trivial run's cost when it was
  made per run), followed by the removal of the work directory; the uid stays locked until
  then. It also runs when a uid is acquired whose lock file does not say ``clean`` (written
  only after a sweep found nothing), which ends whatever a worker killed mid-run left behind.
  Under bwrap the exit sweep is skipped: the PID namespace already is one.
  RLIMIT_NPROC is therefore per run. A worker that is not root cannot switch users: scripts then
  run as the worker's own uid, without RLIMIT_NPROC and without the sweep.
* **A memory and pids cgroup per run** (``use_cgroup``, ``memory_bytes``; see
  ``executions/engine/cgroups.py``): when the host allows one, the process Popen creates is first a
  ``/bin/sh`` that writes its own pid into the run's ``cgroup.procs`` file(s) and execs
  prlimit (pid == pgid still), so the run is born inside it and everything it holds in memory,
  tmpfs included, counts against ``memory_bytes``. An OOM kill there (``oom_kill`` in the
  cgroup's evidence) turns a failed run into error ``memory_exceeded``. After the run the
  cgroup is emptied and removed (by the janitor if killed processes are still exiting).
* **Process group**: ``start_new_session=True`` gives the child its own session and process group
  (pgid == pid), and no controlling terminal (no TIOCSTI injection into an operator's shell).
  Stopping means SIGTERM to the group, then SIGKILL after a grace (``kill_grace_seconds`` for
  timeouts, ``cancel_grace_seconds`` for cancellation and shutdown). When the main process
  exits, whatever it left in its group is SIGKILLed before the process is reaped (``waitid`` with
  ``WNOWAIT``), so the group id can never be recycled under us.
* **Bubblewrap** (``use_bwrap``: ``auto`` = when ``bwrap`` is on PATH and a cached probe shows it
  works; ``always`` = required, otherwise ``spawn_failed``; ``never``): ``--unshare-all`` (no
  network: only a loopback inside a fresh network namespace; own PID, IPC, UTS, cgroup and user
  namespaces), read-only binds of /usr, /bin, /sbin, /lib*, /etc, a fresh /proc, /dev and /tmp,
  the work directory bound read-write at the same path, ``--cap-drop ALL``, ``--die-with-parent``
  and ``--new-session``. prlimit and the user drop apply *outside* bwrap, to bwrap itself, and are
  inherited by everything inside (bwrap then runs unprivileged and uses a user namespace, so the
  sandbox never holds real root; the bwrap probe runs as a uid of the range too). Because of
  ``--new-session`` the sandboxed processes form their own group, whose id bwrap reports on
  ``--json-status-fd``; SIGTERM goes to that group only, so the script gets its real grace
  period (signalling the outer bwrap would make it die and take the sandbox down with SIGKILL at
  once). SIGKILL goes to that group first (the namespace's init dies and the kernel kills
  everything inside), then to the outer bwrap if it lingers. bwrap reports a sandbox killed by
  signal N as exit code 128 + N.

Known limits (documented, not solved here): when the worker is not root, every run has the
worker's uid: without bubblewrap a process that calls ``setsid()`` then escapes the group kill
and concurrent runs can see (and signal) each other's processes; with bubblewrap the PID
namespace closes both holes. Without bubblewrap, files a script leaves outside its work
directory (/tmp, /dev/shm) stay readable by a later run that gets the same uid. Workers in
separate containers on one host must be given disjoint uid ranges (or one shared lock
directory): their locks would not see each other. Without a cgroup per run (the host allows
none, or ``use_cgroup="never"``) RLIMIT_AS bounds each process, not the run. bwrap leaves
its exited init for PID 1 to reap, and so does killing
a group (or a uid) for grandchildren: run workers in containers under an init (``docker --init``,
tini) so such zombies are collected (a worker that is PID 1 says so at start, ``reaping_problem``),
and on a host whose PID 1 collects them promptly (zombies count against RLIMIT_NPROC).
"""

from executions.engine.sandbox.bwrap import _bwrap_args, _bwrap_base_args, _bwrap_features, _bwrap_seal_args
from executions.engine.sandbox.config import (
    ALLOWED_EXTRA_ENV,
    BWRAP_MODES,
    GIB,
    KIB,
    MIB,
    SAFE_PATH,
    SCRIPT_TYPES,
    STOP_REASONS,
    BwrapMode,
    CancelCallback,
    Outcome,
    OutputCallback,
    RunResult,
    SandboxConfig,
    ScriptType,
    StartedCallback,
    StopReason,
    StreamName,
)
from executions.engine.sandbox.janitor import finish_cleanup
from executions.engine.sandbox.output import output_text, utf8_safe_cut
from executions.engine.sandbox.run import describe_isolation, reaping_problem, run_script
from executions.engine.sandbox.seccomp import seccomp_program
from executions.engine.sandbox.uids import _id_map_covers

__all__ = [
    "ALLOWED_EXTRA_ENV",
    "BWRAP_MODES",
    "GIB",
    "KIB",
    "MIB",
    "SAFE_PATH",
    "SCRIPT_TYPES",
    "STOP_REASONS",
    "BwrapMode",
    "CancelCallback",
    "Outcome",
    "OutputCallback",
    "RunResult",
    "SandboxConfig",
    "ScriptType",
    "StartedCallback",
    "StopReason",
    "StreamName",
    "_bwrap_args",
    "_bwrap_base_args",
    "_bwrap_features",
    "_bwrap_seal_args",
    "_id_map_covers",
    "describe_isolation",
    "finish_cleanup",
    "output_text",
    "reaping_problem",
    "run_script",
    "seccomp_program",
    "utf8_safe_cut",
]
