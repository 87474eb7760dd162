"""Imported by the indexer's fork server only (``set_forkserver_preload``), never by the main process: the
fork server dies with the run that started it (see ``xsearch.indexer.lifeline``)."""

from xsearch.indexer.lifeline import die_with_parent

die_with_parent()
