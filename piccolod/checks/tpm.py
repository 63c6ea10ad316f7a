"""The ``tpm`` check: a TPM 2.0 answers through ``tpm2-pytss`` (ESAPI over a TCTI).

It reads the fixed properties ``TPM2_PT_FAMILY_INDICATOR`` .. ``TPM2_PT_MANUFACTURER`` (0x100..0x105,
TPM 2.0 Part 2, "TPM_PT") in one ``TPM2_GetCapability`` call and PCR 0 of the SHA-256 bank with
``TPM2_PCR_Read``. The manufacturer is a 4-byte vendor ID (TCG "TPM Vendor ID Registry"), shown as its
ASCII text without padding ("IBM", "INTC", "MSFT", ...).

The TCTI comes from ``checks.tpm.tcti`` as ``name:config`` (tpm2-tools syntax): ``device:/dev/tpmrm0``,
``swtpm:path=/run/swtpm/sock``, ``swtpm:port=2321``. Every call opens its own TCTI and ESAPI context and
finalises both, so thousands of checks leak no file descriptors. A TPM that is gone fails at once (the
TCTI cannot connect); one that stops answering mid-command is cut off at the deadline by
:func:`~piccolod.checks.bounded.race` (ESAPI's one-call functions retry a response timeout forever, so
``Esys_SetTimeout`` would not help).
"""

from __future__ import annotations

from dataclasses import dataclass

from piccolod.checks.bounded import race
from piccolod.policy import PolicyFile
from piccolod.result import Outcome

PT_FAMILY_INDICATOR = 0x100
PT_MANUFACTURER = 0x105


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


def check_tpm(policy: PolicyFile, timeout: float) -> Outcome:
    tcti = policy.health_policy.checks.tpm.tcti
    details: dict[str, str | None] = {
        "version": None,
        "manufacturer": None,
        "pcr0_sha256": None,
        "tcti": tcti,
    }
    result = race({"tpm": lambda: read_tpm(tcti)}, timeout)["tpm"]
    if isinstance(result, BaseException):
        why = " ".join(str(result).split()) or type(result).__name__
        return Outcome(False, f"TPM via {tcti} did not answer: {why}", details)
    details.update(version=result.family, manufacturer=result.manufacturer, pcr0_sha256=result.pcr0_sha256)
    if result.family != "2.0":
        return Outcome(False, f"TPM via {tcti} is family {result.family!r}, not 2.0", details)
    return Outcome(True, f"TPM 2.0 by {result.manufacturer} answers via {tcti}", details)
