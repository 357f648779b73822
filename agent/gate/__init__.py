"""The accuracy gate: no engine serves until it has matched its FP32 reference on a validation set.

validation.py  the validation set artifact (frames + FP32 reference outputs + metadata) and how to make one
metrics.py     agreement metrics by task (pure numpy)
thresholds.py  GateThresholds, the deployment's `accuracy` block
gate.py        run_gate(runner, validation, thresholds, table) -> GateResult
culprits.py    suspicious table scales and saturated tensors
divergence.py  the layer-by-layer FP32 vs Q/DQ comparison on onnxruntime (a failed INT8 gate, explained)
box_decoders.py  the box decoder a detection set names (the postprocessing plugins, normalised)
autocalib.py   calib make --method auto: every calibration method measured by the gate's metric

Import the modules themselves: the package imports nothing, so reading a deployment's `accuracy` block
(thresholds.py) loads neither numpy nor onnx.
"""

from __future__ import annotations
