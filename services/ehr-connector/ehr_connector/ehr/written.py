"""The portal's resource versions this process's client wrote lately, for the inbound
side's echo check: a Subscription notifies of our own writes too, and a version named here
is ours without reading it back from the EHR (`inbound.service.processor`). Only writes
carrying the portal's origin tag count: the canary writes untagged lab results on purpose,
to see them come back as events.

The write log (`ehr_connector.store.is_own_write`) stays the authority: it survives
restarts and covers the other replicas' writes, but it is committed after the use case's
last EHR call, so a notification usually arrives before it. This memory holds a version
from the moment the EHR answered the write; what it has forgotten is decided from the log.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ehr_connector.outbound.domain.tags import has_origin_tag

# About a day of a busy practice's bookings and messages: an echo comes back in seconds,
# and a version forgotten only costs one read of the resource.
_CAPACITY = 20_000


class WrittenVersions:
    """A bounded memory of `(type, id, version)` written by this client, oldest first out."""

    def __init__(self, capacity: int = _CAPACITY) -> None:
        self._capacity = capacity
        self._versions: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def note_write(self, sent: dict[str, Any], fhir_id: str, version_id: str) -> None:
        """Remember the version the EHR said our write of `sent` produced, if `sent` was
        the portal's (origin-tagged)."""
        # A server that keeps no versions leaves nothing exact to recognise later.
        if not version_id or not has_origin_tag(sent):
            return
        key = (str(sent["resourceType"]), fhir_id, version_id)
        self._versions[key] = None
        self._versions.move_to_end(key)
        while len(self._versions) > self._capacity:
            self._versions.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._versions

    def __len__(self) -> int:
        return len(self._versions)
