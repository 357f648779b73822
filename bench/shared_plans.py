"""Build once per hardware class: deploy-to-serving with a shared plan against a build on every device.

On one local mosquitto: the operator publishes the real EfficientNet-Lite0 with its INT8 table and a validation set
(../shared/testdata), asks the designated builder of this machine's class for a plan (`fleet deploy --build-plans`),
then deploys to N simulated identical devices (default 20; 4 with --quick) and one device of another class (this
machine without the VNNI extension, as an older x86 CPU would be). Each simulated device runs the daemon's own
deployment steps (fetch, table check, build or shared plan, accuracy gate) with its own state folder and MQTT
connection, one after another (2 shared cores: concurrent devices would time the machine, not the protocol).

Printed: the time from deploy to serving for the first device (which waits for the build: the builder's fetch,
build, gate and publish, then its own steps) and the median of the others (shared plan); their ratio; the fixed
costs of a shared plan apart (pull, trial load in a child, the device's own accuracy gate, and the fetch of the
deployment's other artifacts, which a device does whoever builds); the build seconds the fleet did not spend; and the other-class device, which must build locally and say
why. onnxruntime builds this model in seconds here; a TensorRT build on a Jetson takes minutes, so the ratio there
is far lower: the fixed costs do not grow with the build.

Usage: python bench/shared_plans.py [--devices N] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.fleet.deployment import deployment_from_dict  # noqa: E402
from agent.fleet.link import MqttLink, unique_client_id  # noqa: E402
from agent.fleet.local_broker import LocalBroker  # noqa: E402
from agent.fleet.signing import generate_keys, load_private_key  # noqa: E402
from agent.operator.plan_builds import PlanBuilder, request_build, with_plans  # noqa: E402
from tests.daemon.fleet_kit import FleetKit  # noqa: E402
from tests.helpers import shared_dir  # noqa: E402
from tests.plans.plan_kit import SimDevice, device_config  # noqa: E402


def material(tmp: Path) -> Dict[str, Path]:
    base = shared_dir()
    models = base / "testdata" / "models" if base is not None else None
    if models is None or not (models / "efficientnet_lite0.onnx").is_file():
        raise SystemExit("the real EfficientNet-Lite0 is missing (../shared/testdata/models; deploy/demo/fetch_demo_data.py makes it)")
    import cv2

    from agent.gate.validation import make_validation

    assert base is not None
    read = (cv2.imread(str(p)) for p in sorted((base / "testdata" / "images").glob("*.*")))
    frames = [f for f in read if f is not None][:8]
    validation = tmp / "effnet.validation.npz"
    make_validation(models / "efficientnet_lite0.onnx", iter(frames), n=8, preprocess="efficientnet_lite").save(validation)
    return {"model": models / "efficientnet_lite0.onnx", "table": models / "efficientnet_lite0.cache", "validation": validation}


def timed_apply(device: SimDevice, deployment: Any) -> Dict[str, Any]:
    started = time.monotonic()
    engine, gate = device.apply(deployment)
    plan = engine.plan or {}
    return {
        "seconds": time.monotonic() - started,
        "source": plan.get("source"),
        "built": bool(device.named("engine.build_started")),
        "pull_s": float(plan.get("pull_s") or 0.0),
        "trial_s": float(plan.get("trial_s") or 0.0),
        "gate_s": float(gate.get("seconds") or 0.0),
        "reason": plan.get("reason", ""),
        "refused": plan.get("refused"),
        "build_s": engine.build_s,
        "fetch_s": device.timings.get("fetch_s", 0.0),
        "steps": dict(device.timings),
    }


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=None, help="identical simulated devices (default 20; 4 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer devices (under a minute)")
    args = parser.parse_args(argv)
    count = args.devices or (4 if args.quick else 20)
    with tempfile.TemporaryDirectory(prefix="bench-plans-") as folder, LocalBroker() as broker:
        tmp = Path(folder)
        files = material(tmp)
        kit = FleetKit(broker, tmp / "operator", chunk_bytes=256 * 1024)
        keys = generate_keys(tmp / "builder-keys")
        builder = PlanBuilder(device_config(broker, tmp / "builder", "builder", operator_pub=kit.public_key),
                              load_private_key(keys.private_path)).start()
        asker = MqttLink(kit.broker_config, unique_client_id("bench-operator"), persistent_session=False)
        asker.start()
        devices: List[SimDevice] = []
        try:
            assert asker.wait_connected(10)
            deployment = deployment_from_dict({
                "id": "effnet-int8", "model": kit.publish(files["model"], "model"), "table": kit.publish(files["table"], "calib"),
                "validation": kit.publish(files["validation"], "validation"), "precision": "int8", "target": "cpu",
                "preprocess": "efficientnet_lite",
            })
            from agent.device.fingerprint import fingerprint
            from agent.engine.hardware_class import hardware_class

            klass = hardware_class(fingerprint(), builder.steps.build_spec(deployment).validate()).key

            def device(name: str, fp: Any = None) -> SimDevice:
                made = SimDevice(device_config(broker, tmp / name, name, operator_pub=kit.public_key, builder_pub=str(keys.public_path)), fp)
                devices.append(made)
                return made

            # deploy: ask the class's builder, then deploy naming its plan; the first device serves after both
            deployed_at = time.monotonic()
            answer = request_build(asker, "edge", deployment, klass, timeout_s=600)
            named = with_plans(deployment, {klass: answer["artifact_id"]})
            first = timed_apply(device("device-0"), named)
            first_s = time.monotonic() - deployed_at
            others = [timed_apply(device(f"device-{i}"), named) for i in range(1, count)]
            for made in devices:
                made.close()
            devices.clear()
            live = fingerprint()
            older_cpu = dataclasses.replace(live, cpu_features=[f for f in live.cpu_features if "vnni" not in f and "amx" not in f])
            other = timed_apply(device("other-class", older_cpu), named)
        finally:
            for made in devices:
                made.close()
            asker.stop()
            builder.stop()
            kit.close()
    shared = [o for o in others if o["source"] == "shared"]
    local_builds = builder.builds + sum(1 for o in [first, *others] if o["built"])
    median_shared = statistics.median(o["seconds"] for o in shared) if shared else float("nan")
    build_s = float(answer.get("build_s") or 0.0)
    refused = other.get("refused") or {}
    median = statistics.median
    print(f"builder: plan {answer['artifact_id'][:12]} for class {klass}, built in {build_s:.2f} s, gate {answer.get('gate')}")
    print(f"first device: {first_s:.2f} s from deploy to serving (source {first['source']}); "
          f"others: median {median_shared:.2f} s over {len(shared)}/{len(others)} on the shared plan")
    if shared:
        print("shared-plan device steps (median s): " + ", ".join(
            f"{k} {median(o['steps'].get(k, 0.0) for o in shared):.3f}" for k in ("fetch_s", "check_s", "build_s", "validate_s")))
    print(f"other class: {'built locally' if other['built'] else 'did not build'} in {other['seconds']:.2f} s: {other['reason']}")
    fields = {
        "devices": count,
        "local_builds": local_builds,
        "first_s": round(first_s, 3),
        "shared_median_s": round(median_shared, 3),
        "ratio": round(median_shared / first_s, 3) if first_s else float("nan"),
        "build_s": round(build_s, 3),
        "pull_s": round(median(o["pull_s"] for o in shared), 3) if shared else float("nan"),
        "trial_s": round(median(o["trial_s"] for o in shared), 3) if shared else float("nan"),
        "gate_s": round(median(o["gate_s"] for o in shared), 3) if shared else float("nan"),
        "fetch_s": round(median(o["fetch_s"] for o in shared), 3) if shared else float("nan"),
        "build_s_saved": round(build_s * (count - 1), 1),
        "other_class_built": int(other["built"]),
        "other_class_field": refused.get("field", "none"),
    }
    print(" ".join(f"{k}={v}" for k, v in fields.items()))
    return 0 if local_builds == 1 and other["built"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
