"""The service's routes by area: ``pages`` (the page, the API's description, session cookies), ``search``
(searches and labels), ``items`` (an item's metadata, preview and file; the collection's facts)."""
