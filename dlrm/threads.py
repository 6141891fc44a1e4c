"""The threads of a OneFlow CPU process: which one is OneFlow's VM scheduler, and keeping it off
the cores the kernels need.

OneFlow 0.9.0's virtual-machine scheduler thread loops on sched_yield() for as long as an
instruction is in flight (vm/virtual_machine.cpp, ScheduleLoop), and a whole nn.Graph step is one
such instruction. So during every training step it takes a core's share next to the two kernel
threads: on 2 cores it held a third of the CPU (perf: 30% of samples in sched_yield), and the
kernels ran on about 1.3 cores. At SCHED_IDLE it runs only when a core would otherwise be idle;
its job (starting the next instruction) waits for the kernels, which is when it is needed.
Linux only; elsewhere nothing changes.

Off unless DLRM_IDLE_VM_SCHEDULER=1: on a 2-vCPU AMD EPYC VM, 2-process CPU runs with the
scheduler idled crashed in OneFlow's runtime (segfaults in Regst::~Regst and
Regst::GetBlobByOrdinal, heap corruption) in 9 of 11 runs of the quickstart's training, with MKL
or OneFlow's OpenBLAS, and ran slower (67 s vs 52 s); left as OneFlow runs it, 7 of 7 passed.
"""
import os
import threading

TASK_DIR = "/proc/self/task"
IDLE_ENV = "DLRM_IDLE_VM_SCHEDULER"  # "1": dlrm_train_eval.py idles the VM scheduler


def idle_requested():
    return os.environ.get(IDLE_ENV) == "1"


def thread_times():
    """{tid: (CPU nanoseconds, voluntary context switches)} of this process's threads."""
    out = {}
    try:
        tids = os.listdir(TASK_DIR)
    except OSError:
        return out
    for tid in tids:
        try:
            with open(os.path.join(TASK_DIR, tid, "schedstat")) as f:
                cpu_ns = int(f.read().split()[0])
            with open(os.path.join(TASK_DIR, tid, "status")) as f:
                vol = next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue  # the thread ended meanwhile
        out[int(tid)] = (cpu_ns, vol)
    return out


def find_spinner(before, after, exclude=(), min_cpu_ns=1_000_000, max_blocks=4):
    """The thread that ran (nearly) without blocking between two thread_times() snapshots taken
    around a synced graph step, and used the most CPU doing so (at least min_cpu_ns): the VM
    scheduler. Kernel threads block between kernels (dozens of times a step); the spinner only
    on a rare lock (e.g. when the kernel maps memory), hence max_blocks. exclude: the calling
    thread, which blocked on the sync. None if no thread qualifies."""
    spinning = [(a[0] - before[t][0], t) for t, a in after.items()
                if t in before and t not in exclude and a[1] - before[t][1] <= max_blocks
                and a[0] - before[t][0] >= min_cpu_ns]
    return max(spinning)[1] if spinning else None


def idle_vm_scheduler(step, tries=5):
    """Run step() (a graph step that returns a tensor) and wait for it, until a thread is seen
    spinning meanwhile (at most `tries` steps: it spins when an instruction waits on the step,
    which most steps show), and put that thread at SCHED_IDLE. Returns (the last step's output,
    the thread id or None)."""
    caller = (threading.get_native_id(),)
    for _ in range(tries):
        before = thread_times()
        out = step()
        out.to_local().numpy() if out.is_global else out.numpy()  # the step has finished
        tid = find_spinner(before, thread_times(), exclude=caller)
        if tid is not None:
            break
    if tid is not None and hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            tid = None
    return out, tid
