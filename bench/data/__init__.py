"""The benchmark's data as a user without ../shared/data gets it: a manifest of every file (public
source pinned to a revision, license, size, SHA-256), a fetch that downloads, checks and lays the
files out under the cache, and a check of any tree against the manifest (docs/fetch.md)."""
