"""Reading weights from untrusted files: allow-list unpicklers."""
