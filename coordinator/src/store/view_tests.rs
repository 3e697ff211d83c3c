//! View and group-commit tests.
