//! Which replica serves each node's agent (`sessions`, PostgreSQL only;
//! docs/ha.md §5).
