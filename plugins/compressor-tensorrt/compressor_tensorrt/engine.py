"""A built model.plan, callable on a numpy batch.

Device buffers are torch CUDA tensors and the engine runs on a torch CUDA stream (no pycuda).
A batch larger than the optimization profile's maximum runs in chunks. The build's record
(precision, TensorRT version, GPU) is read from model.plan.json beside the plan."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import UserError

from compressor_tensorrt.environment import cuda_problem, import_tensorrt
from compressor_tensorrt.logger import make_logger


def sidecar(plan: Path) -> Path:
    """model.plan.json: sorts after model.plan, so `load_engine(folder)` still finds the plan."""
    return plan.with_name(plan.name + ".json")


def torch_dtypes(trt) -> dict[Any, Any]:
    import torch

    pairs = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
             "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}
    return {getattr(trt.DataType, k): v for k, v in pairs.items() if hasattr(trt.DataType, k)}


class TensorRTEngine:
    """A deserialized TensorRT engine with one execution context on one GPU."""

    def __init__(self, path: str | Path, device: int = 0):
        import torch

        trt = import_tensorrt(key="engine")
        problem = cuda_problem(device)
        if problem:
            raise UserError(problem[1], key="engine")
        self.path = Path(path)
        meta_file = sidecar(self.path)
        self.meta: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        self.device = torch.device("cuda", device)
        self._logger = make_logger(trt)  # the runtime keeps a reference to it: keep it alive
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self._engine is None:
                built = f" (built with TensorRT {self.meta.get('tensorrt_version')} on {self.meta.get('gpu')})" \
                    if self.meta else ""
                raise UserError(f"TensorRT {trt.__version__} cannot load {self.path}{built}: "
                                f"{self._logger.last_error('a plan runs only with the TensorRT version and GPU model it was built for')}",
                                key="engine")
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(self.device)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise UserError(f"{self.path} has inputs {inputs}; this engine wrapper feeds exactly one", key="engine")
        self._dtypes = torch_dtypes(trt)
        self.input_name = inputs[0]
        self.input_shape = [int(d) for d in self._engine.get_tensor_shape(self.input_name)]  # -1: dynamic
        self._input_torch_dtype = self._dtypes[self._engine.get_tensor_dtype(self.input_name)]
        self.input_dtype = {torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32,
                            torch.int8: np.int8, torch.uint8: np.uint8}.get(self._input_torch_dtype, np.float32)
        self.max_batch = (self.input_shape[0] if self.input_shape[0] > 0 else
                          int(self._engine.get_tensor_profile_shape(self.input_name, 0)[2][0]))
        self.precision = self.meta.get("precision") or ("fp16" if self._input_torch_dtype == torch.float16 else "unknown")
        self.provider = f"tensorrt:{torch.cuda.get_device_name(self.device)}"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.shape[0] > self.max_batch:
            return np.concatenate([self(x[i:i + self.max_batch]) for i in range(0, x.shape[0], self.max_batch)])
        return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            inp = torch.as_tensor(x).to(self.device, self._input_torch_dtype).contiguous()
            if not self._context.set_input_shape(self.input_name, tuple(inp.shape)):
                raise UserError(f"a batch of shape {tuple(inp.shape)} does not fit {self.path} "
                                f"(input {self.input_shape}, batch up to {self.max_batch})", key="engine")
            self._context.set_tensor_address(self.input_name, inp.data_ptr())
            outputs = {}
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self._dtypes[self._engine.get_tensor_dtype(name)],
                                            device=self.device)
                self._context.set_tensor_address(name, outputs[name].data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run {self.path}: {self._logger.last_error('see compressor.log')}")
            result = outputs[self._outputs[0]].cpu()  # queued on the same stream: waits for the engine
        return result.numpy()
