"""Telemetry: device health (psutil, tegrastats, nvpmodel, jetson_clocks, NVML) and inference health (pipeline,
engine, agent, from daemon providers) joined in one versioned document. Transport-free: the daemon publishes
it (agent/daemon/telemetry_publisher.py).

    tegrastats.py  parser for every JetPack generation + TegrastatsReader (subprocess, latest sample)
    jetson.py      the `jetson` section: tegrastats, nvpmodel, jetson_clocks
    system.py      the `system` section: psutil and sysfs
    nvml.py        the `gpu` section: NVML on discrete GPUs (`python -m agent.telemetry.nvml`)
    schema.py      the document as msgspec Structs (TelemetryDocument): validation, compact keys, the docs table and JSON Schema
    document.py    TelemetryCollector, validate_document, to_compact / from_compact

Submodules are imported where used, so parsing a tegrastats log needs neither psutil nor the broker.
"""
