"""Imported by the indexer's fork server only (``set_forkserver_preload``), never by the main process.

The fork server needs no death signal of its own: multiprocessing ends it when the process that started it
dies, whatever the death (it reads the end of a pipe only that process holds). A death signal would be
wrong here: Linux sends it when the *thread* that started the server ends, and ``xsearch serve`` starts it
from a request thread. Its workers do ask for one (``xsearch.decode.lifeline``): their parent is the fork
server's only thread.
"""
