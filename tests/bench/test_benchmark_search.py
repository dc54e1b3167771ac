"""The largest-batch search: exact against brute force on fake allocators, few probes, clear failures."""

from __future__ import annotations

import math

import pytest

from tresnet.bench.batch_search import GIB, is_out_of_memory, largest_batch
from tresnet.errors import ConfigError


def brute_force(measure, budget, max_batch):
    best = 0
    for batch in range(1, max_batch + 1):
        if measure(batch) <= budget:
            best = batch
        else:
            break
    return best


FAKE_ALLOCATORS = {
    "linear": lambda b: 300e6 + 80e6 * b,
    "large constant": lambda b: 2.5e9 + 7e6 * b,
    "convex": lambda b: 1e8 + 1e6 * b * b,
    "concave": lambda b: 1e8 + 4e8 * math.sqrt(b),
    "step": lambda b: 1e9 * (b // 16 + 1),
    # out of memory above 37 although the reported peaks stay small: only the failure tells
    "oom wall": lambda b: 1e6 * b if b <= 37 else math.inf,
}


@pytest.mark.parametrize("name", sorted(FAKE_ALLOCATORS))
@pytest.mark.parametrize("budget", [1.0 * GIB, 3.0 * GIB, 20.0 * GIB])
def test_search_returns_the_largest_batch_within_budget(name, budget):
    measure = FAKE_ALLOCATORS[name]
    if measure(1) > budget:
        with pytest.raises(ConfigError):
            largest_batch(measure, budget, max_batch=1024)
        return
    result = largest_batch(measure, budget, max_batch=1024)
    assert result.max_batch == brute_force(measure, budget, 1024)
    assert measure(result.max_batch) <= budget
    assert all(b == result.max_batch or (v <= budget) == (b < result.max_batch) for b, v in result.probes)


def test_linear_peak_is_found_in_few_probes():
    calls = []

    def measure(batch):
        calls.append(batch)
        return 500e6 + 61e6 * batch  # 500 MB runtime + 61 MB per image

    result = largest_batch(measure, 8 * GIB, max_batch=4096)
    assert result.max_batch == int((8 * GIB - 500e6) // 61e6)
    assert len(calls) <= 5
    assert [b for b, _ in result.probes] == calls


@pytest.mark.parametrize("name", sorted(FAKE_ALLOCATORS))
def test_search_from_known_peaks_is_exact_and_measures_them_no_more(name):
    measure = FAKE_ALLOCATORS[name]
    budget = 3.0 * GIB
    calls = []

    def counted(batch):
        calls.append(batch)
        return measure(batch)

    known = {8: measure(8), 16: measure(16)}
    result = largest_batch(counted, budget, max_batch=1024, min_batch=2, known=known)
    assert result.max_batch == brute_force(measure, budget, 1024)
    assert not set(calls) & set(known) and result.probes[:2] == sorted(known.items())
    assert [b for b, _ in result.probes[2:]] == calls


def test_known_linear_peaks_put_the_first_try_on_the_limit():
    def measure(batch):
        return 1.4e9 + 14e6 * batch

    calls = []
    result = largest_batch(lambda b: calls.append(b) or measure(b), 3 * GIB, min_batch=2,
                           known={8: measure(8), 16: measure(16)})
    assert calls[0] == result.max_batch == int((3 * GIB - 1.4e9) // 14e6) and len(calls) == 2
    # a known peak over the budget bounds the search from above; none fitting measures min_batch first
    calls.clear()
    assert largest_batch(lambda b: calls.append(b) or measure(b), 1.6e9, min_batch=2, known={16: measure(16)}).max_batch \
        == 14 and calls[0] == 2 and max(calls) < 16


def test_peaks_out_of_order_by_noise_take_a_longer_base_instead_of_doubling():
    def measure(batch):  # 43 MB per image, but batch 42 measured 9 MB under batch 41 (the noise of a peak)
        return 1.3e9 + 43e6 * batch - (52e6 if batch == 42 else 0)

    calls = []
    known = {b: measure(b) for b in (8, 16, 41, 42)}
    result = largest_batch(lambda b: calls.append(b) or measure(b), 3 * GIB, min_batch=2, known=known)
    assert result.max_batch == 44 == int((3 * GIB - 1.3e9) // 43e6)
    assert calls[0] <= 46 and len(calls) <= 3  # not 84, the doubling of 42


def test_cap_single_batch_and_lower_bound():
    assert largest_batch(lambda b: 1.0, 10.0, max_batch=50).max_batch == 50
    assert largest_batch(lambda b: 1.0, 10.0, max_batch=1).max_batch == 1
    result = largest_batch(lambda b: 1e6 * b, 9.5e6, min_batch=2)
    assert result.max_batch == 9 and result.probes[0][0] == 2
    with pytest.raises(ConfigError, match="a batch of 2"):
        largest_batch(lambda b: 1e6 * b, 1.5e6, min_batch=2)
    with pytest.raises(ConfigError, match="min batch"):
        largest_batch(lambda b: 1.0, 10.0, min_batch=5, max_batch=4)


def test_batch_of_one_over_budget_fails_in_one_line():
    with pytest.raises(ConfigError, match=r"a batch of 1 needs 2\.00 GiB, over the memory budget of 1\.00 GiB"):
        largest_batch(lambda b: 2.0 * GIB * b, 1.0 * GIB)
    with pytest.raises(ConfigError, match="out of memory"):
        largest_batch(lambda b: math.inf, 1.0 * GIB)


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
