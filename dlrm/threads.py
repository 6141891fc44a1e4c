"""The threads of a OneFlow CPU process: finding OneFlow's job launcher and keeping it ahead of
the rest, and per-thread CPU accounting for the benchmarks. Linux only; elsewhere nothing changes.

OneFlow 0.9.0 races itself on short graph steps. Its job launcher (LaunchLazyJob's Compute in
vm/lazy_job_instruction_policy.h, on a VM worker thread of its own) hands a step to the actor
threads and only then puts the graph in LazyJobStreamPolicy's queue, which the step's finish
callback pops. When the launcher loses its core in between for longer than the step takes (to an
actor thread it has just woken; a 64-row CPU eval step is ~0.1 ms), the pop comes first, on an
empty std::queue: undefined behaviour that segfaults a few steps later in DequeueNNGraph, hangs
the next graph's launch, or corrupts the heap. On 2 cores, 12 of 30 runs with 400 64-row eval steps
died or hung.

So the launcher must not lose its core there. Where the process may, the launcher goes to
SCHED_FIFO, which no normal thread preempts, and every other thread of the process to
SCHED_BATCH (a woken SCHED_BATCH thread does not preempt a running one, kernel/sched/fair.c
check_preempt_wakeup_fair); else the others go to SCHED_IDLE (allowed without privilege). Threads
made later inherit the policy of the thread that makes them. Runs of 600 32-row eval steps on
2 cores: 11 of 20 failed as OneFlow runs its threads; 0 of 140 with the launcher at SCHED_FIFO;
without privilege 3 of 70 with the others at SCHED_BATCH, 0 of 60 at SCHED_IDLE. Nice levels do
not do it (3 of 30 of a milder kind failed with the others 10 below, 12 of 30 without): the
launcher's spin-wait between instructions sched_yield()s, and each yield pushes its scheduling
deadline later than the woken threads'. SCHED_BATCH also made a 2-process training 1.5x faster:
OneFlow's threads no longer preempt each other at every hand-off.
"""
import os

TASK_DIR = "/proc/self/task"
_PROBES = []  # lead_launcher's graph, alive as long as the process
# lead_launcher's default for the other threads: a process whose threads start other programs that
# must not inherit SCHED_BATCH or SCHED_IDLE (the test runner) sets it to False before its first graph
LEAD_OTHERS = True


def task_ids():
    """The thread ids of this process."""
    try:
        return {int(t) for t in os.listdir(TASK_DIR)}
    except OSError:
        return set()


def lead_launcher(others=None):
    """Start OneFlow's job launcher with a tiny graph of its own and put it ahead of every other
    thread of this process. Where the process may (CAP_SYS_NICE, as root usually, or an rtprio
    limit) the launcher goes to SCHED_FIFO, which no normal thread preempts, and the others to
    SCHED_BATCH; else the launcher to SCHED_OTHER and the others to SCHED_IDLE, which never keeps
    a normal thread off a core, so the run gives way to every other program on the machine.
    Threads made later inherit the policy of the thread that makes them (OneFlow's actor threads
    for a graph compiled later: the calling thread). Call it before the process's first graph run
    on the CPU. Returns (the launcher's thread id, the others' policy name), or (None, None) when
    the launcher could not be told apart or put ahead (then nothing is changed). others=False (a
    process whose threads start other programs, which would inherit their policy: the test
    runner): only the launcher moves, to SCHED_FIFO where permitted, else nothing; the others'
    policy is returned as None. others=None: LEAD_OTHERS.

    The probe graph's run starts exactly two threads, both from this thread: the VM's worker for
    the critical-section stream, then the one for the launcher stream (framework/
    instructions_builder.cpp LaunchLazyJob, vm/virtual_machine.cpp CreateThreadCtx; every other
    stream kind shares a thread that exists already, and its compile, which starts the actor
    threads, comes before the snapshot). Linux hands out thread ids in creation order. Its step
    is an addition: no BLAS call that could start BLAS threads meanwhile."""
    import oneflow as flow

    others = LEAD_OTHERS if others is None else others

    class Probe(flow.nn.Graph):
        def build(self, x):
            return x + 1

    # global over every rank's CPU, as the package's graphs: each rank runs it, and it is kept
    # alive as they are (a multi-process graph freed early waits on the other ranks)
    probe, x = Probe(), flow.zeros(4, placement=flow.env.all_device_placement("cpu"), sbp=flow.sbp.broadcast)
    _PROBES.append(probe)
    probe._compile(x)  # what nn.Graph.__call__ does first: the actor threads start here
    before = task_ids()
    probe(x).numpy()
    new = sorted(task_ids() - before)
    if len(new) not in (1, 2) or not hasattr(os, "sched_setscheduler"):
        return None, None  # another thread started threads meanwhile: leave them all
    launcher = new[-1]
    try:
        # It runs a few microseconds per step, then spin-waits at most 200 us for the next
        # instruction (WorkerLoop), so it cannot hold a core for long.
        os.sched_setscheduler(launcher, os.SCHED_FIFO, os.sched_param(1))
        policy = "SCHED_BATCH"
    except OSError:
        if not others:
            return None, None
        try:  # its maker's policy, maybe SCHED_BATCH or SCHED_IDLE inherited from a parent process
            os.sched_setscheduler(launcher, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            return None, None  # an unprivileged thread may not leave SCHED_IDLE
        policy = "SCHED_IDLE"
    if not others:
        return launcher, None
    for tid in task_ids() - {launcher}:
        try:
            os.sched_setscheduler(tid, getattr(os, policy), os.sched_param(0))
        except OSError:
            pass  # the thread ended meanwhile, or runs under a policy we may not change
    return launcher, policy


def launcher_note(tid, others):
    """The log's words for lead_launcher's outcome."""
    if not tid:
        return "OneFlow's job launcher could not be put ahead, threads as OneFlow runs them"
    if others in ("SCHED_BATCH", None):
        return (f"OneFlow's job launcher (thread {tid}) at SCHED_FIFO leads, the other threads "
                f"{'at SCHED_BATCH' if others else 'unchanged'}")
    return (f"OneFlow's job launcher (thread {tid}) leads, the other threads at SCHED_IDLE (no privilege for "
            f"SCHED_FIFO: this run gives way to other programs)")


def thread_times():
    """{tid: (CPU nanoseconds, voluntary context switches)} of this process's threads."""
    out = {}
    for tid in task_ids():
        try:
            with open(os.path.join(TASK_DIR, str(tid), "schedstat")) as f:
                cpu_ns = int(f.read().split()[0])
            with open(os.path.join(TASK_DIR, str(tid), "status")) as f:
                vol = next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue  # the thread ended meanwhile
        out[tid] = (cpu_ns, vol)
    return out


def find_spinner(before, after, exclude=(), min_cpu_ns=1_000_000, max_blocks=4):
    """The thread that ran (nearly) without blocking between two thread_times() snapshots taken
    around a synced graph step, and used the most CPU doing so (at least min_cpu_ns): OneFlow's VM
    scheduler, which loops on sched_yield() while an instruction is in flight (a whole graph step
    is one; vm/virtual_machine.cpp, ScheduleLoop). Kernel threads block between kernels (dozens
    of times a step); the spinner only on a rare lock, hence max_blocks. exclude: the calling
    thread, which blocked on the sync. None if no thread qualifies."""
    spinning = [(a[0] - before[t][0], t) for t, a in after.items()
                if t in before and t not in exclude and a[1] - before[t][1] <= max_blocks
                and a[0] - before[t][0] >= min_cpu_ns]
    return max(spinning)[1] if spinning else None
