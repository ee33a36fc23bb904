"""Policies: the policy file, its validation, and the decision it makes for a name."""
