"""Independent WSGI middlewares, each usable around any WSGI application.

Nothing in this package imports ``goodrepo``.
"""
