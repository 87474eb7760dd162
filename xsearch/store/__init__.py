"""The LanceDB store: the source of truth for what is indexed.

One module a job:

- ``schema``: the tables' Arrow schemas, the records written to them (``ItemRecord``, ``Moment``);
- ``filters``: ``ItemFilter``, the only SQL text in xsearch, and the bounds of a caller's predicate;
- ``lance_errors``: storage failures as one-line errors (damage, disk full, read-only);
- ``side_files``: the files beside the tables, behind one object (``SideFiles``; a backend is a subclass);
- ``leases``: the writer lock and the readers' leases on the versions they read;
- ``ids``: the id high-water mark;
- ``view``: ``TableView``, one table at one version, read-only;
- ``database``: ``Database``, open/create, latest views, snapshots, and every write.
"""

from xsearch.store.database import INDEX_FOLDERS, MOMENT_SETTINGS, Database, Snapshot
from xsearch.store.filters import ItemFilter
from xsearch.store.leases import (
    KEEP_SECONDS_ENV,
    LEASE_SECONDS,
    READERS,
    ReaderLease,
    held_since,
    unleased_keep,
    writer_lock,
)
from xsearch.store.schema import (
    ERRORS,
    ITEMS,
    META,
    MOMENTS,
    SCHEMA_VERSION,
    ItemRecord,
    Moment,
    embeddings_to_numpy,
    items_schema,
    moments_schema,
)
from xsearch.store.side_files import LocalSideFiles, SideFiles
from xsearch.store.view import TableView

__all__ = [
    "ERRORS",
    "INDEX_FOLDERS",
    "ITEMS",
    "LEASE_SECONDS",
    "META",
    "KEEP_SECONDS_ENV",
    "MOMENTS",
    "MOMENT_SETTINGS",
    "READERS",
    "SCHEMA_VERSION",
    "Database",
    "ItemFilter",
    "ItemRecord",
    "LocalSideFiles",
    "Moment",
    "ReaderLease",
    "SideFiles",
    "Snapshot",
    "TableView",
    "embeddings_to_numpy",
    "held_since",
    "unleased_keep",
    "items_schema",
    "moments_schema",
    "writer_lock",
]
