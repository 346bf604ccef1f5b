"""gridhub app SDK: what an LV-CAP app developer imports.

``App`` does the LV-CAP start-up, status, configuration, shutdown and Last Will protocol; the
standard objects, codes and queries are re-exported from ``gridhub.formats.lvcap``.
"""

from gridhub.formats.lvcap import (
    CommandCode,
    CoordinateObject,
    Errno,
    MetadataObject,
    QueryResponse,
    QueryStatus,
    ScalarObject,
    SeriesObject,
    StatusCode,
    StorageQuery,
    UploadedNotice,
)
from gridhub.sdk.app import App, ConfigurationError, Input, InputHandler, Role, now
from gridhub.sdk.mqtt import BrokerAddress, MarketplaceError

__all__ = [
    "App",
    "BrokerAddress",
    "CommandCode",
    "ConfigurationError",
    "CoordinateObject",
    "Errno",
    "Input",
    "InputHandler",
    "MarketplaceError",
    "MetadataObject",
    "QueryResponse",
    "QueryStatus",
    "Role",
    "ScalarObject",
    "SeriesObject",
    "StatusCode",
    "StorageQuery",
    "UploadedNotice",
    "now",
]
