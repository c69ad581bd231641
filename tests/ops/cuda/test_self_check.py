"""The CUDA self-check (``python -m dcn.ops.check``) and ``backend="auto"``'s fallback, on the CPU.

The candidate backend is the CuPy backend's own orchestration run over the host-compiled CUDA
kernels (the same source, grid and block as on a GPU); a deliberately wrong candidate must fail
the check, and ``backend="auto"`` must then pick the PyTorch path with one warning.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from functools import partial
from types import SimpleNamespace

import host_kernels
import pytest
import torch

from dcn.ops import _cupy_deform_conv, _cupy_deform_roi_pool, _dispatch, check

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def host_backends(host_kernel_cache):
    """op -> a module-like CuPy backend whose kernels run on the CPU through the host shim."""
    backends = {}
    for op, module in (("deform_conv2d", _cupy_deform_conv), ("deform_roi_pool", _cupy_deform_roi_pool)):
        launch = host_kernels.HostKernels(module.SOURCE, host_kernels.build(module.SOURCE, host_kernel_cache))
        forward = partial(getattr(module, f"{op}_forward"), launch=launch)
        backward = partial(getattr(module, f"{op}_backward"), launch=launch)
        backends[op] = SimpleNamespace(**{f"{op}_forward": forward, f"{op}_backward": backward})
    return backends


def _perturbed(backends, op, tensor_index, amount=1e-2):
    """A candidate whose ``op`` backward returns one gradient off by ``amount`` everywhere."""
    real = backends[op]

    def backward(*args):
        grads = list(getattr(real, f"{op}_backward")(*args))
        grads[tensor_index] = grads[tensor_index] + amount
        return grads

    return SimpleNamespace(**{f"{op}_forward": getattr(real, f"{op}_forward"), f"{op}_backward": backward})


def test_host_kernels_agree_with_the_pytorch_path(host_backends):
    rows = check.check(CPU, dtypes=(torch.float32, torch.float64), candidate=host_backends.__getitem__)
    assert len(rows) == 2 * (len(check.CONV_CASES) + len(check.ROI_CASES))
    assert all(row.ok for row in rows), check.format_rows(rows)
    # The comparison is not vacuous: float32 kernels differ from the float64 reference a little.
    assert any(0 < row.error for row in rows if row.dtype == torch.float32)


def test_a_wrong_gradient_fails_the_check(host_backends):
    wrong = dict(host_backends, deform_conv2d=_perturbed(host_backends, "deform_conv2d", 1))
    rows = check.check(CPU, ("deform_conv2d",), (torch.float32,), candidate=wrong.__getitem__)
    assert rows and not any(row.ok for row in rows)
    assert {row.worst for row in rows} == {"grad offset"}
    assert "FAILED" in check.format_rows(rows)


def test_a_wrong_roi_pool_gradient_fails_the_check(host_backends):
    wrong = dict(host_backends, deform_roi_pool=_perturbed(host_backends, "deform_roi_pool", 0, amount=1e-3))
    rows = check.check(CPU, ("deform_roi_pool",), (torch.float64,), candidate=wrong.__getitem__)
    assert not any(row.ok for row in rows)
    assert {row.worst for row in rows} == {"grad input"}


def test_a_kernel_that_raises_is_a_failure(host_backends):
    def broken(*args):
        raise RuntimeError("CUDA_ERROR_NO_BINARY_FOR_GPU")

    candidate = SimpleNamespace(deform_conv2d_forward=broken, deform_conv2d_backward=broken)
    rows = check.check(CPU, ("deform_conv2d",), (torch.float32,), quick=True, candidate=lambda op: candidate)
    assert len(rows) == 2 and not any(row.ok for row in rows)
    assert "CUDA_ERROR_NO_BINARY_FOR_GPU" in rows[0].failure


def test_quick_failure_names_the_configuration(monkeypatch, host_backends):
    wrong = dict(host_backends, deform_conv2d=_perturbed(host_backends, "deform_conv2d", 3))
    real_check = check.check
    monkeypatch.setattr(check, "check", lambda *a, **k: real_check(*a, **k, candidate=wrong.__getitem__))
    reason = check.quick_failure("deform_conv2d", CPU)
    assert reason is not None and reason.startswith("3x3, float32: grad weight off by")
    monkeypatch.setattr(
        check, "check", lambda *a, **k: real_check(*a, **k, candidate=host_backends.__getitem__)
    )
    assert check.quick_failure("deform_conv2d", CPU) is None


def test_check_leaves_global_modes_as_it_found_them(host_backends):
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.enable_grad():
            check.check(
                CPU, ("deform_roi_pool",), (torch.float32,), quick=True, candidate=host_backends.__getitem__
            )
            assert torch.is_grad_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


# --------------------------------------------------------------------------------------
# backend="auto" and the verdict
# --------------------------------------------------------------------------------------
@pytest.fixture
def cupy_usable(monkeypatch):
    """CuPy reported usable, verdict cache empty; returns the list of self-check calls."""
    monkeypatch.setattr(_dispatch, "cupy_unavailable_reason", lambda op="deform_conv2d": None)
    monkeypatch.setattr(_dispatch, "_self_check_verdicts", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.delenv("DCN_SELF_CHECK", raising=False)
    calls = []
    return calls


def test_auto_falls_back_once_with_one_warning(monkeypatch, cupy_usable):
    def failing(op, device):
        cupy_usable.append((op, device))
        return "3x3, float32: grad offset off by 1.0e-02 (tolerance 2e-04)"

    monkeypatch.setattr(check, "quick_failure", failing)
    cuda1 = torch.device("cuda", 1)
    with pytest.warns(
        RuntimeWarning, match=r"deform_conv2d disagree .* on cuda:1 .*grad offset.*--device cuda:1"
    ):
        assert _dispatch.resolve_backend("auto", cuda1) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cached: no second warning, no second check
        assert _dispatch.resolve_backend("auto", cuda1) == "torch"
    assert cupy_usable == [("deform_conv2d", torch.device("cuda", 1))]
    # An explicit backend="cupy" is the user's choice: used as asked.
    assert _dispatch.resolve_backend("cupy", cuda1) == "cupy"


def test_auto_uses_the_kernels_where_the_check_passes(monkeypatch, cupy_usable):
    monkeypatch.setattr(check, "quick_failure", lambda op, device: cupy_usable.append(op))
    assert _dispatch.resolve_backend("auto", torch.device("cuda", 0), "deform_roi_pool") == "cupy"
    assert _dispatch.resolve_backend("auto", torch.device("cuda", 0), "deform_roi_pool") == "cupy"
    assert _dispatch.resolve_backend("auto", torch.device("cuda", 0), "deform_conv2d") == "cupy"
    assert cupy_usable == ["deform_roi_pool", "deform_conv2d"]  # once per op and device


def test_self_check_can_be_switched_off(monkeypatch, cupy_usable):
    monkeypatch.setenv("DCN_SELF_CHECK", "0")
    monkeypatch.setattr(check, "quick_failure", lambda op, device: pytest.fail("the check ran"))
    assert _dispatch.resolve_backend("auto", torch.device("cuda", 0)) == "cupy"


def test_no_check_during_a_cuda_graph_capture(monkeypatch, cupy_usable):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(
        check, "quick_failure", lambda op, device: pytest.fail("a check would launch kernels")
    )
    assert _dispatch.resolve_backend("auto", torch.device("cuda", 0)) == "cupy"
    assert _dispatch._self_check_verdicts == {}  # decided at the first call outside a capture


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------
def test_command_without_cuda_says_why_and_exits_2():
    if _dispatch.cupy_unavailable_reason() is None:
        pytest.skip("CuPy can run here: the command would check the GPU")
    proc = subprocess.run(
        [sys.executable, "-m", "dcn.ops.check"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "nothing to check" in proc.stderr


def test_command_rejects_a_cpu_device(capsys):
    with pytest.raises(SystemExit) as exc:
        check.main(["--device", "cpu"])
    assert exc.value.code == 2
    assert "--device must be a CUDA device" in capsys.readouterr().err


def test_command_exit_codes(monkeypatch, capsys, host_backends):
    """0 when every row agrees, 1 on a mismatch; the table names the failing row."""
    monkeypatch.setattr(_dispatch, "cupy_unavailable_reason", lambda op="deform_conv2d": None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    real_check = check.check

    def on_cpu(candidate):
        return lambda device, *a, **k: real_check(CPU, *a, dtypes=(torch.float64,), candidate=candidate)

    monkeypatch.setattr(check, "check", on_cpu(host_backends.__getitem__))
    assert check.main([]) == 0
    assert "checks agree" in capsys.readouterr().out
    wrong = dict(host_backends, deform_roi_pool=_perturbed(host_backends, "deform_roi_pool", 1))
    monkeypatch.setattr(check, "check", on_cpu(wrong.__getitem__))
    assert check.main([]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "grad offset" in out


def test_verdict_is_a_compile_time_constant(monkeypatch, cupy_usable):
    """The verdict (which runs kernels the first time) must not break a fullgraph torch.compile."""
    monkeypatch.setattr(check, "quick_failure", lambda op, device: cupy_usable.append(op) or "wrong")
    device = torch.device("cuda", 0)

    def fn(x):
        return x + (1.0 if _dispatch.resolve_backend("auto", device) == "cupy" else 2.0)

    with pytest.warns(RuntimeWarning, match="disagree"):
        compiled = torch.compile(fn, fullgraph=True, backend="eager")
        assert torch.equal(compiled(torch.zeros(3)), torch.full((3,), 2.0))
    assert cupy_usable == ["deform_conv2d"]
