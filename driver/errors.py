"""The one error tree of pyoverlay.

Every failure a handler can report is a ``DriverError``; ``driver.app`` maps it, in one
place, to a non-2xx answer with ``{"Err": message}`` (dockerd reads ``Err`` on every
non-200 answer, for the IPAM API too).

    DriverError (500)
     ├── InvalidRequest (400)     malformed body, wrong type, bad CIDR/option value,
     │                            unknown network/endpoint ID
     ├── Conflict (409)           address taken, pool overlaps, port already published
     ├── Exhausted (409)          no free address / pool left
     ├── TooLarge (413)           a request body over the size limit
     ├── Unsupported (501)        the kernel or host lacks what the request needs
     ├── StorageError (507)       the state directory cannot be written (full, read-only)
     └── Unavailable (503)        a bounded wait (kernel, iptables, store) ran out

No handler answers 404: dockerd reads a 404 as "verb not implemented" (and ignores it
for Program/Revoke), so only unknown paths get one, from the app itself.

Messages reach the docker CLI verbatim: they name the object and the problem and never
carry secrets.
"""

from __future__ import annotations


class DriverError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(DriverError):
    status = 400


class Conflict(DriverError):
    status = 409


class Exhausted(DriverError):
    status = 409


class TooLarge(DriverError):
    status = 413


class Unsupported(DriverError):
    status = 501


class StorageError(DriverError):
    status = 507


class Unavailable(DriverError):
    status = 503
