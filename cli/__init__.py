"""The xsearch command line."""
