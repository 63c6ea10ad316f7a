"""The TPM probe: a tiny program that reads a TPM 2.0 through ``tpm2-pytss`` and prints one JSON line.

``python /path/to/tpm_probe.py TCTI DEADLINE`` opens the TCTI (``name:config``, tpm2-tools syntax:
``device:/dev/tpmrm0``, ``swtpm:path=/run/swtpm/sock``, ``swtpm:port=2321``), reads the fixed
properties ``TPM2_PT_FAMILY_INDICATOR`` .. ``TPM2_PT_MANUFACTURER`` (0x100..0x105, TPM 2.0 Part 2,
"TPM_PT") in one ``TPM2_GetCapability`` call and PCR 0 of the SHA-256 bank with ``TPM2_PCR_Read``, and
prints ``{"family": ..., "manufacturer": ..., "pcr0_sha256": ...}`` (exit 0) or ``{"error": ...}``
(exit 1). The manufacturer is a 4-byte vendor ID (TCG "TPM Vendor ID Registry"), shown as its ASCII
text without padding ("IBM", "INTC", "MSFT", ...).

It runs in a short-lived child process of the agent (:mod:`piccolod.checks.tpm` starts it), so the agent
never loads ``tpm2-pytss``, ``cffi`` or ``cryptography`` and a crash or hang inside the TSS cannot take
the agent down. The parent kills it at the check's deadline; as a second line of defence it ends itself
once ``DEADLINE`` seconds (plus a second) have passed or when its parent is gone. It is run by path, not
with ``-m``, so that it imports nothing of ``piccolod`` (whose package imports would cost time and
memory): everything here is standard library plus ``tpm2-pytss``, imported only inside :func:`read_tpm`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PT_FAMILY_INDICATOR = 0x100
PT_MANUFACTURER = 0x105
SELF_DESTRUCT_MARGIN = 1.0  # seconds after the deadline at which the probe exits on its own


@dataclass(frozen=True)
class TpmReading:
    family: str
    manufacturer: str
    pcr0_sha256: str


def parse_tcti(text: str) -> tuple[str, str | None]:
    """``"swtpm:port=2321"`` -> ``("swtpm", "port=2321")``; ``"swtpm"`` -> ``("swtpm", None)``."""
    name, sep, config = text.partition(":")
    if not name:
        raise ValueError(f"TCTI {text!r} has no name (expected name:config, e.g. device:/dev/tpmrm0)")
    return name, (config if sep and config else None)


def vendor_text(value: int) -> str:
    """A TPM_PT 32-bit value holding up to four ASCII characters, e.g. 0x49424D00 -> ``"IBM"``."""
    raw = value.to_bytes(4, "big")
    return "".join(chr(b) for b in raw if 0x20 < b < 0x7F)


def read_tpm(tcti: str) -> TpmReading:
    """Open ``tcti``, read the family, manufacturer and PCR 0 (SHA-256), and close everything again."""
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import TPM2_CAP
    from tpm2_pytss.types import TPML_PCR_SELECTION

    name, config = parse_tcti(tcti)
    ctx = TCTILdr(name, config)
    try:
        esapi = ESAPI(ctx)
        try:
            _, caps = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, PT_FAMILY_INDICATOR, 6)
            tagged = caps.data.tpmProperties
            props = {int(tagged[i].property): int(tagged[i].value) for i in range(tagged.count)}
            _, _, digests = esapi.pcr_read(TPML_PCR_SELECTION.parse("sha256:0"))
        finally:
            esapi.close()
    finally:
        ctx.close()
    if digests.count < 1:
        raise RuntimeError("the TPM has no SHA-256 PCR bank (PCR 0 not returned)")
    for prop in (PT_FAMILY_INDICATOR, PT_MANUFACTURER):
        if prop not in props:
            raise RuntimeError(f"the TPM did not report property 0x{prop:x}")
    return TpmReading(
        family=vendor_text(props[PT_FAMILY_INDICATOR]),
        manufacturer=vendor_text(props[PT_MANUFACTURER]),
        pcr0_sha256=bytes(digests[0]).hex(),
    )


def _watch(deadline: float, parent: int) -> None:
    """End this process when the deadline has passed or the agent that started it is gone."""
    while True:
        if time.monotonic() >= deadline or os.getppid() != parent:
            os._exit(124)
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(json.dumps({"error": "usage: tpm_probe.py TCTI DEADLINE_SECONDS"}))
        return 2
    tcti, seconds = argv[0], float(argv[1])
    deadline = time.monotonic() + seconds + SELF_DESTRUCT_MARGIN
    threading.Thread(target=_watch, args=(deadline, os.getppid()), daemon=True).start()
    try:
        reading = read_tpm(tcti)
    except ImportError as exc:
        top = (exc.name or "tpm2_pytss").partition(".")[0]
        text = f"the Python module {top!r} is not installed (pip install tpm2-pytss)"
        print(json.dumps({"error": text}), flush=True)
        return 1
    except Exception as exc:  # the parent turns this into the check's reason
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(json.dumps({"error": text}), flush=True)
        return 1
    print(json.dumps(asdict(reading)), flush=True)
    return 0


if __name__ == "__main__":
    # Run by path, Python puts this file's directory (piccolod/checks) first on sys.path, where modules
    # named like libraries (docker.py, api.py) live: take it off before anything else is imported.
    here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or os.curdir).resolve() == here:
        del sys.path[0]
    sys.exit(main(sys.argv[1:]))
