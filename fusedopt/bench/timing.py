"""How steps are timed: one clock per device type, round-robin sampling, copy bandwidth."""
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Sequence

import torch


class CpuClock:
    """Wall time of a call; CPU ops are synchronous, so that is the step's time."""

    def time_ms(self, call: Callable[[], object]) -> float:
        start = time.perf_counter()
        call()
        return (time.perf_counter() - start) * 1e3

    def synchronize(self) -> None:
        pass


class CudaClock:
    """GPU time of a call, measured with CUDA events from an idle GPU.

    Synchronizing first means a host-bound step (launch overhead) shows up in
    the measurement instead of hiding behind queued work from the previous call.
    """

    def time_ms(self, call: Callable[[], object]) -> float:
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def synchronize(self) -> None:
        torch.cuda.synchronize()


def clock_for(device: torch.device):
    return CudaClock() if device.type == "cuda" else CpuClock()


def round_robin(
    calls: Sequence[Callable[[], object]], warmup: int, steps: int, clock
) -> List[List[float]]:
    """Milliseconds of each of ``steps`` calls of every callable, after ``warmup`` untimed ones.

    Contenders alternate call by call, so drift in clock speed, temperature or
    background load spreads over all of them; the starting contender rotates
    each round so none is always the one that follows a particular other.
    """
    for _ in range(warmup):
        for call in calls:
            call()
    clock.synchronize()
    samples: List[List[float]] = [[] for _ in calls]
    for round_index in range(steps):
        for offset in range(len(calls)):
            index = (round_index + offset) % len(calls)
            samples[index].append(clock.time_ms(calls[index]))
    return samples


@dataclass(frozen=True)
class CopyBandwidth:
    tensor_bytes: int  # size of the source (and of the destination)
    bytes_moved: int  # read + write per copy
    median_ms: float
    gbps: float


def measure_copy_bandwidth(
    device: torch.device, tensor_bytes: int, repeats: int, clock
) -> CopyBandwidth:
    """Bandwidth of ``dst.copy_(src)``, counting the bytes read plus the bytes written."""
    source = torch.ones(tensor_bytes // 4, device=device, dtype=torch.float32)
    destination = torch.empty_like(source)
    # The warm-up copy faults in the destination's pages.
    samples = round_robin([lambda: destination.copy_(source)], warmup=1, steps=repeats, clock=clock)[0]
    median_ms = statistics.median(samples)
    size = source.numel() * source.element_size()
    return CopyBandwidth(size, 2 * size, median_ms, 2 * size / median_ms / 1e6)
