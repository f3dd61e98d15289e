"""Care-team pool → EHR recipient, as data (`recipients.yaml`), checked against the EHR.

Messaging routes each message to a pool; this table says who in the EHR that pool is: a
CareTeam, a PractitionerRole or a Group. At start-up the connector reads every recipient
from the EHR: one the EHR does not know fails start-up with a message naming the pool and
the reference (a message filed to a non-existent recipient would sit unseen). When the EHR
cannot be reached at start-up the check is logged and skipped: readiness already reports
the EHR, and refusing to start would only delay the outbox's retries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ehr_connector.ehr.errors import EhrGone, EhrNotFound, EhrRejected, EhrUnavailable
from ehr_connector.ehr.port import EhrPort
from servicekit.logging import get_logger

log = get_logger(__name__)

RECIPIENT_TYPES = ("CareTeam", "PractitionerRole", "Group")
# R4 Task.owner takes a CareTeam or PractitionerRole, not a Group.
TASK_OWNER_TYPES = ("CareTeam", "PractitionerRole")
_REFERENCE = re.compile(r"^(CareTeam|PractitionerRole|Group)/[A-Za-z0-9\-.]{1,64}$")


class RecipientsError(ValueError):
    """The recipients file is invalid or names a recipient the EHR does not have."""


@dataclass(frozen=True)
class Recipients:
    """The EHR recipient of every pool, and the one for pools not listed."""

    version: str
    default: str
    pools: Mapping[str, str]

    def for_pool(self, pool: str | None) -> str:
        """The recipient reference (`CareTeam/<id>`...) of a pool, else the default."""
        return self.pools.get(pool or "", self.default)

    def task_owner(self, pool: str | None) -> str:
        """The recipient of a pool when it may own a Task, else the default."""
        reference = self.for_pool(pool)
        return reference if reference.split("/")[0] in TASK_OWNER_TYPES else self.default

    def references(self) -> set[str]:
        """Every reference the table names."""
        return {self.default, *self.pools.values()}


def parse(data: Any) -> Recipients:
    """Validated recipients from the file's content (parsed YAML)."""
    if not isinstance(data, dict):
        raise RecipientsError("the recipients file must be a mapping")
    version, default, pools = data.get("version"), data.get("default"), data.get("pools")
    if not isinstance(version, str) or not version:
        raise RecipientsError("version must be a non-empty string")
    if not isinstance(pools, dict):
        raise RecipientsError("pools must map pool names to references")
    checked: dict[str, str] = {}
    for where, ref in [("default", default), *((f"pools.{k}", v) for k, v in pools.items())]:
        if not isinstance(ref, str) or not _REFERENCE.match(ref):
            raise RecipientsError(
                f"{where} must be a reference to one of {', '.join(RECIPIENT_TYPES)} "
                f"(e.g. CareTeam/care-team-primary), not {ref!r}"
            )
        if where != "default":
            checked[where.removeprefix("pools.")] = ref
    assert isinstance(default, str)
    if default.startswith("Group/"):
        raise RecipientsError("default must be a CareTeam or PractitionerRole (it owns Tasks)")
    return Recipients(version=version, default=default, pools=checked)


def load(path: Path, overrides: Mapping[str, str] | None = None) -> Recipients:
    """The recipients of a file, with per-pool CareTeam ids from settings on top."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RecipientsError(f"cannot read recipients file {path}: {exc}") from exc
    if overrides and isinstance(data, dict):
        pools = dict(data.get("pools") or {})
        pools.update({pool: f"CareTeam/{team}" for pool, team in overrides.items()})
        data = {**data, "pools": pools}
    return parse(data)


async def verify(ehr: EhrPort, recipients: Recipients) -> None:
    """Read every recipient from the EHR; `RecipientsError` names the unknown ones."""
    missing: list[str] = []
    for reference in sorted(recipients.references()):
        resource_type, _, fhir_id = reference.partition("/")
        try:
            await ehr.read(resource_type, fhir_id)
        except (EhrNotFound, EhrGone):
            missing.append(reference)
        except EhrRejected as exc:
            # Not readable with our scopes: cannot tell, and writing to it may still work.
            log.warning("outbound.recipient_unreadable", reference=reference, status=exc.status)
        except EhrUnavailable as exc:
            log.warning("outbound.recipients_unchecked", error=type(exc).__name__)
            return
    if missing:
        pools = sorted(pool for pool, ref in recipients.pools.items() if ref in missing) + (
            ["(default)"] if recipients.default in missing else []
        )
        raise RecipientsError(
            f"recipients file {recipients.version}: the EHR has no {', '.join(missing)} "
            f"(pools: {', '.join(pools)}); fix the recipients file or the EHR before starting"
        )
    log.info("outbound.recipients_verified", count=len(recipients.references()))
