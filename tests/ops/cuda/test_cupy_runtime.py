"""CuPy plumbing (dcn.ops._cupy_runtime) checked without a GPU, against a stand-in ``cupy``."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from dcn.ops import _cupy_deform_conv, _cupy_runtime
from dcn.ops._cupy_runtime import CTYPES, KernelSource, kernel_argument


@pytest.fixture
def fresh_runtime(monkeypatch):
    """Empty kernel caches and availability cache, restored afterwards."""
    for name in ("_modules", "_functions", "_streams"):
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
    """Records what the launcher asks of CuPy."""

    def __init__(self):
        self.modules, self.calls, self.devices = [], [], []
        fake = self

        class RawModule:
            def __init__(self, code, options, name_expressions):
                self.code, self.options, self.name_expressions = code, options, name_expressions
                self.requested = []
                fake.modules.append(self)

            def get_function(self, name):
                self.requested.append(name)
                return lambda grid, block, args: fake.calls.append((name, grid, block, args))

        @contextlib.contextmanager
        def device(index):
            fake.devices.append(index)
            yield

        self.RawModule = RawModule
        self.cuda = SimpleNamespace(Device=device)


def test_cupy_launcher_compiles_once_and_passes_pointers(fresh_runtime, monkeypatch):
    fake = FakeCupy()
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: fake)
    monkeypatch.setattr(_cupy_runtime, "_stream", lambda index: contextlib.nullcontext())
    source = _cupy_deform_conv.SOURCE
    launch = _cupy_runtime.cupy_launcher(source, torch.device("cuda", 1))
    x = torch.zeros(4)
    launch("deform_conv2d_im2col", torch.float32, (3, 1, 1), (256, 1, 1), (x, None, 7))
    launch("deform_conv2d_im2col", torch.float32, (5, 1, 1), (256, 1, 1), (x[1:], x, 8))
    launch("deform_conv2d_backward_sample", torch.bfloat16, (1, 1, 1), (256, 1, 1), ())

    assert len(fake.modules) == 1  # one module per device, compiled once
    module = fake.modules[0]
    assert module.code == source.code()
    assert module.options == source.options()
    assert module.name_expressions == list(source.name_expressions())
    assert module.requested == [
        "dcn::deform_conv2d_im2col<float>",
        "dcn::deform_conv2d_backward_sample<dcn::bfloat16_t>",
    ]
    assert fake.calls == [
        ("dcn::deform_conv2d_im2col<float>", (3, 1, 1), (256, 1, 1), (x.data_ptr(), 0, 7)),
        ("dcn::deform_conv2d_im2col<float>", (5, 1, 1), (256, 1, 1), (x.data_ptr() + 4, x.data_ptr(), 8)),
        ("dcn::deform_conv2d_backward_sample<dcn::bfloat16_t>", (1, 1, 1), (256, 1, 1), ()),
    ]
    assert set(fake.devices) == {1}  # compiled and launched on the tensors' device


def test_cupy_launcher_rejects_cpu_device():
    with pytest.raises(ValueError, match="CUDA tensors"):
        _cupy_runtime.cupy_launcher(_cupy_deform_conv.SOURCE, torch.device("cpu"))
