"""Local stand-ins for Supabase used by the tests and the one-command local run.

Nothing here runs in production: it recreates, on plain PostgreSQL, what Supabase
provides (platform objects, a Storage-compatible server) so the real code paths can run.
"""
