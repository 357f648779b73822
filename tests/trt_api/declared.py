"""Every TensorRT name the thin layer uses, with the TensorRT versions in which the code branch using it runs.

Plain data, checked by `python -m tests.trt_api.check` against the real bindings of every TensorRT on PyPI:
a use found in the sources but missing here fails, an entry no longer used fails, and an entry absent from a
version inside its range fails (docs/tensorrt-api.md).

Columns: name as the bindings spell it (`Class.member`, `Class` for a subclassed base, a module function),
ranges (half-open `since-until`, `since-` for "and later", several separated by commas), guard ("hasattr" when
the code tests the member before using it, so that its absence is handled), and why the range is what it is.

Where the ranges come from (the branches of the thin layer, by TensorRT version):
- everything runs from 8.5 (the oldest TensorRT the project supports) unless said otherwise;
- agent/engine/trt_builder.py `_network_flags`: EXPLICIT_BATCH before 10.0 only;
- trt_builder `build`: BuilderFlag FP16/INT8, the calibrator and per-tensor dynamic ranges before 11.0 only
  (11 removed implicit INT8: `agent.calib.routes.implicit_int8_supported`); the INT8 routes by
  `choose_int8_route`, the builder flags by `builder_flags` (agent/calib/routes.py);
- trt_builder `build`: the progress monitor from 10.0 (`version >= (10, 0, 0)`);
- DLA (`agent.calib.routes.dla_support`): before 10.8 and from 11.4.1 on;
- STRONGLY_TYPED networks from 10.0 (`agent.calib.routes.builder_flags`).
"""

from __future__ import annotations

from typing import List, Tuple

ALL = "8.5-"
IMPLICIT_INT8 = "8.5-11.0"
DLA = "8.5-10.8,11.4.1-"
INT8_OR_DLA = "8.5-11.0,11.4.1-"

USED: List[Tuple[str, str, str, str]] = [
    # module level
    ("__version__", ALL, "", "every branch starts from the version"),
    ("init_libnvinfer_plugins", ALL, "", "builder and trial loader"),
    ("get_plugin_registry", ALL, "", "plugin libraries"),
    ("IPluginRegistry.load_library", ALL, "hasattr", "from 8.6; before it, ctypes.CDLL registers the creators"),
    # logging
    ("ILogger", ALL, "", "the capturing loggers subclass it"),
    ("ILogger.__init__", ALL, "", ""),
    ("ILogger.log", ALL, "", "override"),
    ("Logger.__init__", ALL, "", "the runner's logger"),
    ("Logger.WARNING", ALL, "", ""),
    # building
    ("Builder.__init__", ALL, "", ""),
    ("Builder.num_DLA_cores", ALL, "", "read on every DLA request, also to refuse it"),
    ("Builder.create_network", ALL, "", ""),
    ("Builder.create_builder_config", ALL, "", ""),
    ("Builder.create_optimization_profile", ALL, "", ""),
    ("Builder.build_serialized_network", ALL, "", ""),
    ("NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "8.5-10.0", "", "_network_flags: 8.x only"),
    ("NetworkDefinitionCreationFlag.STRONGLY_TYPED", "10.0-11.0", "", "builder_flags: strongly typed builds on 10.x (11 is always)"),
    ("OnnxParser.__init__", ALL, "", ""),
    ("OnnxParser.parse", ALL, "", ""),
    ("OnnxParser.num_errors", ALL, "", ""),
    ("OnnxParser.get_error", ALL, "", ""),
    ("ParserError.node", ALL, "", ""),
    ("ParserError.desc", ALL, "", ""),
    ("ParserError.node_name", ALL, "hasattr", "from 10.0"),
    ("ParserError.node_operator", ALL, "hasattr", "from 10.0"),
    ("INetworkDefinition.num_inputs", ALL, "", "optimization profile and INT8 tensors"),
    ("INetworkDefinition.get_input", ALL, "", ""),
    ("INetworkDefinition.num_outputs", IMPLICIT_INT8, "", "_activation_tensors (implicit INT8 routes)"),
    ("INetworkDefinition.get_output", IMPLICIT_INT8, "", "_activation_tensors"),
    ("INetworkDefinition.num_layers", INT8_OR_DLA, "", "_activation_tensors and _dla_layers_blocked"),
    ("INetworkDefinition.get_layer", INT8_OR_DLA, "", "_activation_tensors and _dla_layers_blocked"),
    ("ILayer.num_outputs", IMPLICIT_INT8, "", "_activation_tensors"),
    ("ILayer.get_output", IMPLICIT_INT8, "", "_activation_tensors"),
    ("ILayer.name", DLA, "", "_dla_layers_blocked"),
    ("ITensor.name", ALL, "", ""),
    ("ITensor.shape", ALL, "", "_add_profile"),
    ("ITensor.dtype", IMPLICIT_INT8, "", "_activation_tensors"),
    ("ITensor.set_dynamic_range", IMPLICIT_INT8, "", "Int8Method.DYNAMIC_RANGE"),
    ("DataType.FLOAT", IMPLICIT_INT8, "", "_activation_tensors"),
    ("Dims.__init__", ALL, "", "_add_profile"),
    ("IOptimizationProfile.set_shape", ALL, "", "dynamic batch"),
    ("IBuilderConfig.add_optimization_profile", ALL, "", ""),
    ("IBuilderConfig.set_memory_pool_limit", ALL, "", ""),
    ("MemoryPoolType.WORKSPACE", ALL, "", ""),
    ("IBuilderConfig.profiling_verbosity", ALL, "", ""),
    ("ProfilingVerbosity.DETAILED", ALL, "", ""),
    ("IBuilderConfig.set_flag", INT8_OR_DLA, "", "precision flags (8.x/10.x) and GPU_FALLBACK (DLA)"),
    ("BuilderFlag.FP16", IMPLICIT_INT8, "", "builder_flags: weakly typed FP16/INT8 builds, 8.x/10.x"),
    ("BuilderFlag.INT8", IMPLICIT_INT8, "", "builder_flags: weakly typed INT8 builds, 8.x/10.x"),
    ("BuilderFlag.GPU_FALLBACK", DLA, "", ""),
    ("IInt8EntropyCalibrator2", IMPLICIT_INT8, "", "Int8Method.CACHE_CALIBRATOR"),
    ("IInt8EntropyCalibrator2.__init__", IMPLICIT_INT8, "", ""),
    ("IInt8EntropyCalibrator2.get_batch_size", IMPLICIT_INT8, "", "override"),
    ("IInt8EntropyCalibrator2.get_batch", IMPLICIT_INT8, "", "override"),
    ("IInt8EntropyCalibrator2.read_calibration_cache", IMPLICIT_INT8, "", "override"),
    ("IInt8EntropyCalibrator2.write_calibration_cache", IMPLICIT_INT8, "", "override"),
    ("IBuilderConfig.int8_calibrator", IMPLICIT_INT8, "", "Int8Method.CACHE_CALIBRATOR"),
    ("IBuilderConfig.set_calibration_profile", IMPLICIT_INT8, "", "Int8Method.CACHE_CALIBRATOR with a dynamic batch"),
    ("IBuilderConfig.default_device_type", DLA, "", ""),
    ("DeviceType.DLA", DLA, "", ""),
    ("IBuilderConfig.DLA_core", DLA, "", ""),
    ("IBuilderConfig.can_run_on_DLA", DLA, "", "strict DLA builds list the layers DLA cannot run"),
    ("IBuilderConfig.create_timing_cache", ALL, "", ""),
    ("IBuilderConfig.set_timing_cache", ALL, "", ""),
    ("IBuilderConfig.get_timing_cache", ALL, "", ""),
    ("ITimingCache.serialize", ALL, "", ""),
    ("IProgressMonitor", "10.0-", "", "version >= (10, 0, 0)"),
    ("IProgressMonitor.__init__", "10.0-", "", ""),
    ("IProgressMonitor.phase_start", "10.0-", "", "override"),
    ("IProgressMonitor.step_complete", "10.0-", "", "override"),
    ("IProgressMonitor.phase_finish", "10.0-", "", "override"),
    ("IBuilderConfig.progress_monitor", "10.0-", "", ""),
    # loading and running
    ("Runtime.__init__", ALL, "", ""),
    ("Runtime.num_DLA_cores", ALL, "", "the runner checks a requested DLA core"),
    ("Runtime.DLA_core", DLA, "", ""),
    ("Runtime.deserialize_cuda_engine", ALL, "", ""),
    ("ICudaEngine.create_engine_inspector", ALL, "", "the build report"),
    ("EngineInspector.get_engine_information", ALL, "", ""),
    ("LayerInformationFormat.JSON", ALL, "", ""),
    ("ICudaEngine.create_execution_context", ALL, "", ""),
    ("ICudaEngine.num_io_tensors", ALL, "", "name-based tensors, 8.5+"),
    ("ICudaEngine.get_tensor_name", ALL, "", ""),
    ("ICudaEngine.get_tensor_mode", ALL, "", ""),
    ("ICudaEngine.get_tensor_shape", ALL, "", ""),
    ("ICudaEngine.get_tensor_dtype", ALL, "", ""),
    ("ICudaEngine.num_optimization_profiles", ALL, "", ""),
    ("ICudaEngine.get_tensor_profile_shape", ALL, "", ""),
    ("TensorIOMode.INPUT", ALL, "", ""),
    ("DataType.name", ALL, "", "the engine's I/O type -> numpy"),
    ("IExecutionContext.set_input_shape", ALL, "", ""),
    ("IExecutionContext.get_tensor_shape", ALL, "", ""),
    ("IExecutionContext.set_tensor_address", ALL, "", ""),
    ("IExecutionContext.execute_async_v3", ALL, "", ""),
]
