"""The ``tpm`` check: a TPM 2.0 answers, read by a short-lived child process (``tpm2-pytss``, ESAPI).

What is read (family, manufacturer, PCR 0 of the SHA-256 bank) and how is in
:mod:`piccolod.checks.tpm_probe`. The TCTI comes from ``checks.tpm.tcti`` as ``name:config``
(tpm2-tools syntax): ``device:/dev/tpmrm0``, ``swtpm:path=/run/swtpm/sock``, ``swtpm:port=2321``.

Why a child process per check, not a call inside the agent:

- **Fault isolation.** The TSS is C code reached through ``cffi``; a crash there (a bad pointer, an
  ``abort()`` in a library) would kill the agent and with it the health API and the first-boot gate. In
  a child it is one failed check ("TPM probe died with signal 11").
- **Hangs end for real.** ESAPI's one-call functions retry a response timeout forever, so a TPM that
  stops answering mid-command used to leave a thread stuck in C code inside the agent, one per hang,
  for the agent's lifetime, and could hold up its exit. The child is killed (SIGKILL) at the deadline
  and reaped; nothing is left behind. The probe also ends itself shortly after the deadline or when the
  agent is gone.
- **Memory.** The agent never imports ``tpm2_pytss`` (nor ``cffi`` and ``cryptography``, which it
  pulls in): about 16 MiB that the agent would otherwise keep for its whole life are resident only
  while a probe runs.

The price is starting a Python interpreter per check (about 0.1 s of CPU, see ``bench/agent.py``),
which a check every ``check_interval_seconds`` can afford. The child runs with ``TSS2_LOG=all+NONE`` so
the TSS does not print its own ERROR lines (a missing TPM is reported once, as this check's reason), and
with ``PYTHONWARNINGS=ignore`` so that library warnings do not either (tpm2-pytss 2.3 imports Camellia
and CFB from where recent cryptography releases deprecate them); what it writes to stderr anyway ends
up in the reason when it fails.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

from piccolod import run as child
from piccolod.checks.tpm_probe import TpmReading, parse_tcti, vendor_text
from piccolod.policy import PolicyFile
from piccolod.result import Outcome

PROBE = Path(__file__).with_name("tpm_probe.py")
TSS2_LOG_QUIET = "all+NONE"
MAX_REASON = 300


class ProbeError(RuntimeError):
    """The probe ran and reported (or showed) a failure."""


def _tail(stderr: bytes) -> str:
    """The last non-empty line the child wrote to stderr, shortened."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def probe_argv(tcti: str, timeout: float) -> list[str]:
    return [sys.executable, str(PROBE), tcti, f"{timeout:g}"]


def read_tpm(tcti: str, timeout: float) -> TpmReading:
    """Run the probe for ``tcti``; the reading, or :class:`ProbeError`/:class:`TimeoutError`/`OSError`."""
    env = child.python_env(TSS2_LOG=TSS2_LOG_QUIET, PYTHONWARNINGS="ignore")
    try:
        done = child.run(probe_argv(tcti, timeout), timeout, env)
    except child.ChildTimeout as exc:
        said = _tail(exc.stderr)
        raise TimeoutError(f"timed out after {timeout:g}s" + (f" ({said})" if said else "")) from None
    answer: Any = None
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    if lines:
        try:
            answer = json.loads(lines[-1])
        except ValueError:
            answer = None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        said = _tail(done.stderr)
        raise ProbeError(f"TPM probe died with {name}" + (f": {said}" if said else ""))
    if isinstance(answer, dict) and done.returncode == 0:
        try:
            return TpmReading(
                family=str(answer["family"]),
                manufacturer=str(answer["manufacturer"]),
                pcr0_sha256=str(answer["pcr0_sha256"]),
            )
        except KeyError as exc:
            raise ProbeError(f"TPM probe answer lacks {exc}") from None
    if isinstance(answer, dict) and "error" in answer:
        said = _tail(done.stderr)
        raise ProbeError(str(answer["error"]) + (f" ({said})" if said else ""))
    said = _tail(done.stderr) or "no answer"
    raise ProbeError(f"TPM probe exited with status {done.returncode}: {said}")


def check_tpm(policy: PolicyFile, timeout: float) -> Outcome:
    tcti = policy.health_policy.checks.tpm.tcti
    details: dict[str, str | None] = {
        "version": None,
        "manufacturer": None,
        "pcr0_sha256": None,
        "tcti": tcti,
    }
    try:
        parse_tcti(tcti)
        result = read_tpm(tcti, timeout)
    except Exception as exc:  # every way the probe can fail is this check's verdict
        why = " ".join(str(exc).split()) or type(exc).__name__
        return Outcome(False, f"TPM via {tcti} did not answer: {why}", details)
    details.update(version=result.family, manufacturer=result.manufacturer, pcr0_sha256=result.pcr0_sha256)
    if result.family != "2.0":
        return Outcome(False, f"TPM via {tcti} is family {result.family!r}, not 2.0", details)
    return Outcome(True, f"TPM 2.0 by {result.manufacturer} answers via {tcti}", details)


__all__ = ["PROBE", "ProbeError", "TpmReading", "check_tpm", "parse_tcti", "read_tpm", "vendor_text"]
