"""The ``#DW`` lines of a batch script, read the way Slurm reads them.

Slurm's burst_buffer plugin honours ``#DW`` lines only in the leading comment block of the script (it
stops at the first line that does not start with ``#``) and joins lines ending in ``\\``. A bare ``#DW``
(nothing after it) makes the job a burst buffer job but is not a directive, as in upstream DWS.
"""

from __future__ import annotations

import re
from pathlib import Path

#: The job id in the path of slurmctld's copy of the script: ``StateSaveLocation/hash.N/job.<id>/script``.
_SCRIPT_PATH = re.compile(r"(?:^|/)job\.(\d+)/script$")
#: DWS directives are whitespace-separated ``key=value`` words with no quoting, so quotes and shell
#: metacharacters are never meaningful. Rejecting them keeps every directive inert if any consumer ever
#: passed one to a shell or a YAML template.
_UNSAFE = re.compile(r"[\"'`;|&<>(){}\\\x00-\x08\x0b-\x1f\x7f]")
MAX_SCRIPT_BYTES = 4 * 1024 * 1024


class ScriptError(ValueError):
    """The script or one of its directives cannot be used; the message is shown to the user."""


def job_id_from_script_path(path: str) -> str | None:
    """The job id encoded in slurmctld's script path, or None."""
    match = _SCRIPT_PATH.search(path)
    return match.group(1) if match else None


def read_script(path: str | Path) -> str:
    """The script text; ScriptError if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SCRIPT_BYTES + 1)
    except OSError as exc:
        raise ScriptError(f"cannot read the job script {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_SCRIPT_BYTES:
        raise ScriptError(f"the job script {path} is larger than {MAX_SCRIPT_BYTES} bytes")
    return data.decode("utf-8", errors="replace")


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    pending = ""
    for raw in text.split("\n"):  # Slurm splits at newlines only, never at \v, \f, U+2028...
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        lines.append(pending + raw)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def extract_directives(text: str, directive: str = "DW") -> list[str]:
    """The ``#DW ...`` directives Slurm passes on, in order, whitespace-normalised at the ends."""
    prefix = f"#{directive}"
    found: list[str] = []
    for number, line in enumerate(_logical_lines(text), start=1):
        if number == 1 and line.startswith("#!"):
            continue
        if not line:
            continue  # Slurm splits the script with strtok, which never yields empty lines
        if not line.startswith("#"):
            break
        if not line.startswith(prefix):
            continue
        rest = line[len(prefix) :]
        if rest and not rest[0].isspace():
            continue  # "#DWX" is some other directive
        if rest.strip():
            found.append(f"{prefix} {rest.strip()}")
    return found


def check_safe(directives: list[str]) -> None:
    """ScriptError naming the first directive with a quote, shell metacharacter or control character."""
    for index, directive in enumerate(directives, start=1):
        match = _UNSAFE.search(directive)
        if match:
            char = match.group(0)
            shown = repr(char) if char.isprintable() else f"\\x{ord(char):02x}"
            raise ScriptError(
                f"#DW directive {index} ({directive!r}) contains {shown}: quotes, backslashes, control "
                f"characters and the shell metacharacters ; | & < > ( ) {{ }} ` are not allowed in "
                f"directives. DWS directives are plain key=value words; remove the character."
            )
