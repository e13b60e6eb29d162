"""Runner plumbing shared by the entry points."""
