"""CuPy plumbing (dcn.ops._cupy_runtime) checked without a GPU, against a stand-in ``cupy``: the
availability check, the launcher's module cache and argument check; and conftest.py's
``DCN_REQUIRE_CUPY`` hook."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dcn.ops import _cupy_deform_conv, _cupy_runtime
from dcn.ops._cupy_runtime import CTYPES, KernelSource, kernel_argument


@pytest.fixture
def fresh_runtime(monkeypatch):
    """Empty kernel caches and availability cache, restored afterwards."""
    for name in ("_modules", "_streams"):
        monkeypatch.setattr(_cupy_runtime, name, {})
    _cupy_runtime.unavailable_reason.cache_clear()
    yield
    _cupy_runtime.unavailable_reason.cache_clear()


def test_name_expressions_cover_every_kernel_and_dtype():
    exprs = _cupy_deform_conv.SOURCE.name_expressions()
    assert len(exprs) == len(set(exprs)) == 2 * len(CTYPES)
    assert "dcn::deform_conv2d_im2col<dcn::bfloat16_t>" in exprs
    assert "dcn::deform_conv2d_backward_sample<double>" in exprs


def test_unsupported_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="float32.*got torch.int32"):
        KernelSource.name_expression("deform_conv2d_im2col", torch.int32)


def test_options_carry_include_dir_and_header_digest():
    opts = _cupy_deform_conv.SOURCE.options()
    assert f"-I{_cupy_runtime.CUDA_SOURCE_DIR}" in opts
    digest = _cupy_deform_conv.SOURCE.digest()
    assert any(o == f"-DDCN_SOURCE_DIGEST=0x{digest}" for o in opts)
    assert (_cupy_runtime.CUDA_SOURCE_DIR / "common.cuh").exists()


def test_kernel_argument_conversion():
    t = torch.arange(10.0)
    assert kernel_argument(t) == t.data_ptr()
    assert kernel_argument(t[3:]) == t.data_ptr() + 3 * t.element_size()  # slices keep their offset
    assert kernel_argument(None) == 0
    assert kernel_argument(2**40) == 2**40
    with pytest.raises(ValueError, match="contiguous"):
        kernel_argument(torch.zeros(3, 4).t())
    with pytest.raises(TypeError, match="float"):
        kernel_argument(1.5)
    with pytest.raises(TypeError, match="bool"):
        kernel_argument(True)


def test_unavailable_reason_without_cupy(fresh_runtime, monkeypatch):
    def missing():
        raise ImportError("No module named 'cupy'")

    monkeypatch.setattr(_cupy_runtime, "_import_cupy", missing)
    assert _cupy_deform_conv.unavailable_reason() == "CuPy is not installed"


def test_unavailable_reason_with_broken_cupy_does_not_raise(fresh_runtime, monkeypatch):
    def broken():
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(_cupy_runtime, "_import_cupy", broken)
    reason = _cupy_deform_conv.unavailable_reason()
    assert "CuPy failed to import" in reason and "insufficient" in reason


def test_unavailable_reason_without_cuda_device(fresh_runtime, monkeypatch):
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: SimpleNamespace())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _cupy_deform_conv.unavailable_reason().startswith("no CUDA device")


class FakeCupy:
    """Stands in for ``cupy`` on a machine with one CUDA device: records what the runtime asks of
    it. ``runtime_version`` is what ``cupy.cuda.runtime.runtimeGetVersion()`` returns;
    ``get_function_error``, if set, is raised by every ``RawModule.get_function`` (the module
    compiles and loads at the first one in CuPy)."""

    def __init__(self, runtime_version=13000, get_function_error=None):
        self.modules, self.calls, self.devices = [], [], []
        fake = self

        class RawModule:
            def __init__(self, code, options, name_expressions):
                self.code, self.options, self.name_expressions = code, options, name_expressions
                self.requested = []
                fake.modules.append(self)

            def get_function(self, name):
                if get_function_error is not None:
                    raise get_function_error
                self.requested.append(name)
                return lambda grid, block, args: fake.calls.append((name, grid, block, args))

        @contextlib.contextmanager
        def device(index):
            fake.devices.append(index)
            yield

        runtime = SimpleNamespace(getDeviceCount=lambda: 1, runtimeGetVersion=lambda: runtime_version)
        self.RawModule = RawModule
        self.cuda = SimpleNamespace(Device=device, runtime=runtime)


@pytest.fixture
def cuda_torch(monkeypatch):
    """torch as on a machine with one CUDA 13 device (nothing is run on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", "13.0")


def test_unavailable_reason_reports_a_cuda_major_mismatch(fresh_runtime, monkeypatch, cuda_torch):
    fake = FakeCupy(runtime_version=12080)  # cupy-cuda12x beside a cu13 torch
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: fake)
    reason = _cupy_deform_conv.unavailable_reason()
    assert reason == (
        "CuPy is built for CUDA 12 but torch for CUDA 13: pip install cupy-cuda13x "
        "(dcn's extra: pip install -e .[cuda13])"
    )
    assert fake.modules == []  # nothing compiled with the wrong runtime


def test_unavailable_reason_without_a_cuda_torch(fresh_runtime, monkeypatch, cuda_torch):
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: FakeCupy())
    monkeypatch.setattr(torch.version, "cuda", None)  # e.g. a ROCm build
    assert _cupy_deform_conv.unavailable_reason() == (
        "this torch is not built for CUDA (torch.version.cuda is None)"
    )


def test_unavailable_reason_reports_a_module_that_cannot_compile(fresh_runtime, monkeypatch, cuda_torch):
    error = RuntimeError("CuPy failed to load libnvrtc.so.13: OSError: cannot open shared object file\nmore")
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: FakeCupy(get_function_error=error))
    reason = _cupy_deform_conv.unavailable_reason()
    assert reason == (
        "CuPy cannot compile or load deform_conv.cu on cuda:0 (RuntimeError: CuPy failed to load "
        "libnvrtc.so.13: OSError: cannot open shared object file)"
    )
    # The op-independent check (what deform_roi_pool's unavailable_reason() asks) compiles nothing.
    assert _cupy_runtime.unavailable_reason() is None
    assert _cupy_runtime._modules == {}


def test_unavailable_reason_never_raises(fresh_runtime, monkeypatch, cuda_torch):
    def failing():
        raise RuntimeError("cudaErrorInsufficientDriver")

    fake = FakeCupy()
    fake.cuda.runtime.runtimeGetVersion = failing
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: fake)
    assert _cupy_deform_conv.unavailable_reason() == (
        "CuPy cannot query the CUDA runtime (RuntimeError: cudaErrorInsufficientDriver)"
    )


def test_availability_check_builds_the_module_the_launcher_uses(fresh_runtime, monkeypatch, cuda_torch):
    fake = FakeCupy()
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: fake)
    assert _cupy_deform_conv.unavailable_reason() is None
    assert len(fake.modules) == 1
    assert fake.modules[0].requested == list(_cupy_deform_conv.SOURCE.name_expressions())
    _cupy_runtime.cupy_launcher(_cupy_deform_conv.SOURCE, torch.device("cuda", 0))
    assert len(fake.modules) == 1  # compiled once, in the check


def _im2col_args(x, batch):
    """deform_conv2d_im2col's arguments: input, offset, mask, columns, then 16 index_t."""
    return (x, x, None, x, batch, *range(1, 16))


def test_cupy_launcher_loads_every_kernel_once_and_passes_pointers(fresh_runtime, monkeypatch):
    fake = FakeCupy()
    checked = []
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: fake)
    monkeypatch.setattr(_cupy_runtime, "_stream", lambda index: contextlib.nullcontext())
    # CPU tensors stand in for CUDA ones here: record the argument check instead of running it.
    monkeypatch.setattr(KernelSource, "check_arguments", lambda self, *a: checked.append(a))
    source = _cupy_deform_conv.SOURCE
    launch = _cupy_runtime.cupy_launcher(source, torch.device("cuda", 1))
    assert len(fake.modules) == 1  # one module per device, compiled and loaded when the launcher is made
    module = fake.modules[0]
    assert module.code == source.code()
    assert module.options == source.options()
    assert module.name_expressions == list(source.name_expressions())
    # Every kernel function is fetched now: no launch compiles or loads (e.g. inside a graph capture).
    assert module.requested == list(source.name_expressions())

    x = torch.zeros(4)
    launch("deform_conv2d_im2col", torch.float32, (3, 1, 1), (256, 1, 1), _im2col_args(x, 7))
    launch("deform_conv2d_im2col", torch.float32, (5, 1, 1), (256, 1, 1), _im2col_args(x[1:], 8))
    _cupy_runtime.cupy_launcher(source, torch.device("cuda", 1))
    assert len(fake.modules) == 1 and module.requested == list(source.name_expressions())

    p = x.data_ptr()
    assert fake.calls == [
        ("dcn::deform_conv2d_im2col<float>", (3, 1, 1), (256, 1, 1), (p, p, 0, p, 7, *range(1, 16))),
        (
            "dcn::deform_conv2d_im2col<float>",
            (5, 1, 1),
            (256, 1, 1),
            (p + 4, p + 4, 0, p + 4, 8, *range(1, 16)),
        ),
    ]
    assert [c[:3] for c in checked] == [("deform_conv2d_im2col", torch.float32, torch.device("cuda", 1))] * 2
    assert set(fake.devices) == {1}  # compiled and launched on the tensors' device


def test_cupy_launcher_checks_arguments_against_its_device(fresh_runtime, monkeypatch):
    fake = FakeCupy()
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: fake)
    launch = _cupy_runtime.cupy_launcher(_cupy_deform_conv.SOURCE, torch.device("cuda", 1))
    with pytest.raises(ValueError, match=r"args\[0\] \(T\* input\) must be on cuda:1, got a tensor on cpu"):
        launch("deform_conv2d_im2col", torch.float32, (1, 1, 1), (256, 1, 1), _im2col_args(torch.zeros(4), 1))
    assert fake.calls == []


def test_cupy_launcher_rejects_cpu_device():
    with pytest.raises(ValueError, match="CUDA tensors"):
        _cupy_runtime.cupy_launcher(_cupy_deform_conv.SOURCE, torch.device("cpu"))


def test_signature_parsing_errors_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(_cupy_runtime, "CUDA_SOURCE_DIR", tmp_path)
    (tmp_path / "k.cu").write_text(
        "template <typename T>\n__global__ void good(const T* __restrict__ x, /* n */ index_t n) {}\n"
        "template <typename T>\n__global__ void bad(const T* x, float scale) {}\n"
    )
    assert [(p.ctype, p.name) for p in KernelSource("k.cu", ("good",)).signature("good")] == [
        ("T*", "x"),
        ("index_t", "n"),
    ]
    with pytest.raises(ValueError, match="k.cu: bad: parameter 'float scale' has type 'float'"):
        KernelSource("k.cu", ("bad",)).signature("bad")
    with pytest.raises(ValueError, match="k.cu declares no __global__ kernel 'missing'"):
        KernelSource("k.cu", ("missing",)).signature("missing")


_GPU_TEST_FILE = """
import pytest

from dcn.ops import _cupy_runtime


def _hidden():
    raise ImportError("hidden by the test")


_cupy_runtime._import_cupy = _hidden  # CuPy unavailable, whatever this machine has


@pytest.mark.gpu
@pytest.mark.skipif(True, reason="needs a CUDA device and CuPy")
def test_on_the_gpu():
    pass


@pytest.mark.skip(reason="not a GPU test")
def test_elsewhere():
    pass
"""


@pytest.mark.parametrize("require", [None, "1"], ids=["unset", "DCN_REQUIRE_CUPY=1"])
def test_require_cupy_turns_gpu_skips_into_failures(tmp_path, require):
    """conftest.py's hook, loaded as a plugin into a pytest run of a tiny test file."""
    (tmp_path / "test_tiny.py").write_text(_GPU_TEST_FILE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA device\n")
    env = {k: v for k, v in os.environ.items() if k != "DCN_REQUIRE_CUPY"}
    # conftest.py, this checkout's dcn and the caller's path, absolute (the run is in tmp_path and
    # the GPU machines use PYTHONPATH=src).
    inherited = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    dcn_root = Path(_cupy_runtime.__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent), str(dcn_root), *inherited])
    if require is not None:
        env["DCN_REQUIRE_CUPY"] = require
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rA", "test_tiny.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    if require is None:
        assert proc.returncode == 0 and "2 skipped" in summary, proc.stdout
    else:
        # A skipif skip happens in the setup phase, so its failure is reported as an error.
        assert proc.returncode == 1 and "1 skipped, 1 error" in summary, proc.stdout
        assert "DCN_REQUIRE_CUPY=1 but the CuPy kernels cannot run here: CuPy is not installed" in proc.stdout
