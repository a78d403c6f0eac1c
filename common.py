"""
Where and how a process computes: the device, the precision, and the processes of a DDP run.

    env = setup(device="auto", dtype="auto")   # Env(rank, world, device, dtype); starts DDP under torchrun
    with autocast(env.device, env.dtype): ...  # mixed precision for a forward pass (a no-op for float32)
    print0("only rank 0 prints")

dtype=auto is bf16 on CUDA (fp16 where the GPU lacks bf16) and on CPUs that multiply bf16 in hardware
(AVX512-BF16 or AMX), else fp32. compile=None (resolve_compile) compiles on CUDA, and on a CPU for a long
budget (longer in fp32, where compiling gains less), or a short one where a compiled run has left the
model's graphs in Inductor's cache. Under torchrun, RANK/WORLD_SIZE/LOCAL_RANK come from the environment;
CUDA processes talk over NCCL, CPU ones over gloo. On a CPU, setup also has malloc keep freed memory for
the next step (keep_freed_memory).
"""
import contextlib
import ctypes
import functools
import hashlib
import importlib
import json
import os
import shutil
import signal
import sysconfig
from dataclasses import dataclass

import torch

from configurator import UserError

# minutes of time_budget from which a CPU run compiles by default, by the dtype it trains in: compiling fuses
# autocast's casts with the elementwise ops around them, so a bf16 step gains far more than an fp32 one (a CPU
# without native bf16), and an fp32 run must be longer to earn its compile back (README, "The training step on a CPU")
COMPILE_MIN_BUDGET = {"bfloat16": 5.0, "float32": 15.0}
COMPILE_WARM_MIN_BUDGET = 1.0  # minutes: ... and one with at least this, where its graphs are in Inductor's cache
KEEP_FREED = 256 << 20  # bytes: on a CPU, malloc serves buffers up to this from its heap and keeps this much freed
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def sync(device):
    """Wait for the device's queued work (timings of GPU work are meaningless without it); a CPU has none."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def resolve_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if name not in ("cpu", "mps", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise UserError(f"device must be auto, cpu, cuda, cuda:N or mps, not '{name}'")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is visible; use --device=cpu (or auto)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"device={name} but only {torch.cuda.device_count()} GPU(s) are visible")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device=mps but MPS is not available here; use --device=cpu (or auto)")
    return name


@functools.cache
def cpu_has_native_bf16():
    """Whether this CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX; read from Linux's /proc/cpuinfo).
    There bf16 autocast trains faster than fp32 (the README's training table); elsewhere bf16 is emulated,
    and a bf16 matrix product runs many times slower than an fp32 one (an AVX2-only CPU: README)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_dtype(name, device):
    """'auto' is bfloat16 where the device has it (CUDA, and CPUs with native bf16 matmuls), else float32;
    CUDA GPUs without bf16 get float16 (with a GradScaler)."""
    if name == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "bfloat16" if device == "cpu" and cpu_has_native_bf16() else "float32"
    if name == "float16" and not device.startswith("cuda"):
        raise UserError("dtype=float16 needs a CUDA GPU (it relies on a GradScaler); use bfloat16 or float32")
    return name


def resolve_compile(flag, device, dtype, budget=0.0, graphs=""):
    """compile=None (auto) compiles on CUDA, and on a CPU where Inductor can build CPU kernels
    (cpu_kernels_buildable) for a time_budget of COMPILE_MIN_BUDGET[dtype] minutes or more, or of
    COMPILE_WARM_MIN_BUDGET or more where Inductor's on-disk cache holds the run's graphs (`graphs`, a
    key that graphs_key makes). On a CPU compiling costs seconds (the cache warm) to a minute or more (a
    fresh machine) before the first step, and then a step takes less time: about half in bf16, a little
    less in fp32. So it is worth it in a run of several minutes (in fp32, of a quarter of an hour), and in
    a short one only where the cache is warm (README, "The training step on a CPU"). A run without a budget
    has no known length: eager."""
    if flag is not None:
        return flag
    if device.startswith("cuda"):
        return True
    if device != "cpu" or budget < COMPILE_WARM_MIN_BUDGET or not cpu_kernels_buildable():
        return False
    return budget >= COMPILE_MIN_BUDGET[dtype] or graphs_cached(graphs)


def graphs_key(**shape):
    """A name for the graphs a compiled model builds, from what decides them (the model's args, the batch
    shape, the dtype, ...), the torch version and the CPU threads (Inductor's CPU kernels are built for
    their number: a cache filled on 2 threads is cold for a run on 1)."""
    text = json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), **shape}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _graphs_marker(key):
    """The file that says a compiled run built the graphs `key`: in Inductor's cache folder itself, so it goes
    when the cache goes (a new machine, a cleaned /tmp, TORCHINDUCTOR_CACHE_DIR pointed elsewhere)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir  # (it creates the folder)
    return os.path.join(cache_dir(), "lm-graphs", key)


def graphs_cached(key):
    """Whether a compiled run on this machine built the graphs `key` (mark_graphs_cached), so compiling them
    again reads them from Inductor's cache. A cache folder that cannot be made or read: no."""
    try:
        return bool(key) and os.path.exists(_graphs_marker(key))
    except (ImportError, OSError):
        return False


def mark_graphs_cached(key):
    """Record that this run's compiled graphs `key` are in Inductor's cache (after it trained and evaluated).
    A mark that cannot be written only costs a later short run its compile."""
    try:
        path = _graphs_marker(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
    except (ImportError, OSError):
        pass


def cpu_kernels_buildable():
    """Whether Inductor can build CPU kernels here: it compiles them with a C++ compiler and binds them to
    Python, which takes Python's headers (Python.h: a python3-dev package on some Linux systems)."""
    compiler = any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++") if c)
    return compiler and os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))


def check_compile(device):
    """compile=True asked for where Inductor cannot build CPU kernels: one clear line now, rather than a
    compiler's traceback at the first compiled step."""
    if device == "cpu" and not cpu_kernels_buildable():
        raise UserError("compile=True on a CPU needs a C++ compiler (g++ or clang++, or $CXX) and Python's headers "
                        "(Python.h, e.g. the python3-dev package) to build Inductor's kernels: install them, or "
                        "pass --compile=False")


def autocast(device, dtype):
    """The mixed-precision context for the forward pass (a no-op for float32)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


@dataclass
class Env:
    """Where this process computes: rank `rank` of `world` processes, on `device` in `dtype`."""
    rank: int
    world: int
    device: str
    dtype: str

    @property
    def master(self):
        return self.rank == 0


def setup(device="auto", dtype="auto"):
    """This process's Env: from torchrun's environment (starting the process group), else rank 0 of 1."""
    try:
        world = int(os.environ.get("WORLD_SIZE", 1))
        rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    except ValueError:
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them); unset them "
                        "to train on one device") from None
    device = resolve_device(device)
    if world > 1:
        if "RANK" not in os.environ or not 0 <= rank < world:
            raise UserError(f"WORLD_SIZE={world} needs RANK in 0..{world - 1}: launch with torchrun, not by hand")
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        # torch.distributed.nn's functions take group=WORLD as a default argument, evaluated on first import.
        # DDP imports it (through torch._dynamo); imported after init_process_group it would pin the default
        # group for good, so destroy_process_group could not stop gloo's threads, and one of them freeing a
        # tensor of the last collective as the interpreter exits aborts the process
        importlib.import_module("torch.distributed.nn")  # (a plain import here would make `torch` local)
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):  # fp32 matmuls (outside autocast) on tensor cores: TF32's 10-bit mantissa
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if device == "cpu":
        keep_freed_memory()
    return Env(rank, world, device, resolve_dtype(dtype, device))


def keep_freed_memory():
    """Let glibc's malloc keep freed memory for reuse; True where it took the settings (Linux), else False.
    A CPU step allocates and frees the same large buffers every time (activations, gradients). By default
    malloc maps the largest fresh from the OS and unmaps them when freed, and gives the rest back once
    enough is free at once (its trim threshold), so every step page-faults and zeroes them in again (README,
    "Freed memory kept for reuse"). Here buffers up to KEEP_FREED come from the heap, and the heap keeps up
    to KEEP_FREED of freed memory. Memory in use is unchanged; a process just does not shrink below its peak."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already has loaded
    except (OSError, AttributeError, TypeError):  # no mallopt (macOS), or no such handle (Windows)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_FREED)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED))


def teardown(env):
    """End the process group: no process tears down its connections while another still uses them."""
    if env.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def gather_states(state, world, device):
    """Every rank's generator state, in rank order (just this one without DDP)."""
    if world == 1:
        return [state]
    state = state.to(device)  # NCCL gathers GPU tensors only
    states = [torch.empty_like(state) for _ in range(world)]
    torch.distributed.all_gather(states, state)
    return [s.cpu() for s in states]


def print0(*args, **kwargs):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def fmt_time(seconds):
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step (it then saves and evaluates), or the final
    evaluation to stop scoring (action says which); a second SIGINT exits at once."""

    def __init__(self, action="stopping after this step"):
        self.requested, self.action = False, action
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            print0("\nsecond interrupt: exiting now without saving")
            os._exit(130)
        self.requested = True
        print0(f"\n{signal.Signals(signum).name}: {self.action} (Ctrl-C again to quit at once)")

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
