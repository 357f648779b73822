"""Coverage-guided fuzzing with atheris (libFuzzer) of the decoders that tests/hardening/test_fuzz.py covers with
hypothesis. Optional and outside the CI budget: hypothesis runs there; this finds what random search does not.

    pip install atheris          # a manylinux wheel exists for CPython 3.11
    python tests/hardening/fuzz_atheris.py -max_total_time=60 [corpus_dir]

The first input byte picks the decoder, the rest is its input. Anything but the package's own AgentError
subclasses (the tegrastats parser: anything at all) is a crash, and libFuzzer saves the input that caused it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, List

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def targets() -> List[Callable[[bytes], Any]]:
    from agent.calib.table import parse_table
    from agent.fleet.artifact_protocol import decode_block, decode_manifest, decode_request
    from agent.fleet.commands import decode_command, decode_reply
    from agent.fleet.deployment import decode_desired
    from agent.fleet.messages import decode
    from agent.telemetry.tegrastats import parse_line

    return [
        decode,
        decode_desired,
        lambda data: decode_command(data, device_id="dev1", source="group:g", topic_prefix="edge"),
        decode_reply,
        decode_manifest,
        decode_block,
        decode_request,
        parse_table,
        lambda data: parse_line(data.decode("utf-8", "replace")).to_dict(),
    ]


def main(argv: List[str]) -> int:
    try:
        import atheris
    except ImportError:
        sys.stderr.write("atheris is not installed (pip install atheris); tests/hardening/test_fuzz.py covers the same decoders\n")
        return 2
    with atheris.instrument_imports():
        decoders = targets()
    from agent.errors import AgentError

    def one_input(data: bytes) -> None:
        if not data:
            return
        try:
            decoders[data[0] % len(decoders)](data[1:])
        except AgentError:
            pass

    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
